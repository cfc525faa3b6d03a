"""The `frankly` command: help everywhere, db upgrade, demo, FAQ files, agents, tokens, settings.

Real subprocesses of the console script against one temporary SQLite file per module (the
subprocess results are cached in module fixtures to keep the number of processes small).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import click
import httpx
import pytest
import typer.main
import yaml
from sqlalchemy import func, select
from typer.testing import CliRunner

from frankly.auth.models import Agent, Role
from frankly.cli import app as cli_app
from frankly.config import get_settings
from frankly.conversations.models import Conversation, Direction, Draft, DraftingState, Message
from frankly.db import Database
from frankly.demo.loader import ADMIN_EMAIL, DEMO_DIR
from frankly.knowledge.files import read_faq_file
from frankly.knowledge.models import FaqEntry
from frankly.main import create_app
from frankly.migrations.runner import current_heads
from frankly.worker.models import Job

FRANKLY = Path(sys.executable).parent / "frankly"
DEMO_PASSWORD = "demo-password-123"
COMMANDS = [
    [],
    ["serve"],
    ["worker"],
    ["db"],
    ["db", "upgrade"],
    ["demo"],
    ["faq"],
    ["faq", "import"],
    ["faq", "export"],
    ["agent"],
    ["agent", "add"],
    ["token"],
    ["token", "create"],
    ["eval"],
]


@dataclass
class Desk:
    dir: Path
    url: str

    def run(
        self, *args: str, input: str | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("FRANKLY_") and k not in {"COLUMNS", "LINES"}
        }
        clean["FRANKLY_DATABASE_URL"] = self.url
        clean.update(env)
        return subprocess.run(
            [str(FRANKLY), *args],
            cwd=self.dir,
            env=clean,
            input=input,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Desk:
    directory = tmp_path_factory.mktemp("cli")
    return Desk(directory, f"sqlite+aiosqlite:///{directory / 'f.db'}")


@pytest.fixture(scope="module")
def upgraded(desk: Desk) -> subprocess.CompletedProcess[str]:
    return desk.run("db", "upgrade")


@pytest.fixture(scope="module")
def demo(
    desk: Desk, upgraded: subprocess.CompletedProcess[str]
) -> subprocess.CompletedProcess[str]:
    assert upgraded.returncode == 0, upgraded.stderr
    return desk.run("demo", "--password", DEMO_PASSWORD)


@pytest.fixture(scope="module")
def bad_faq(desk: Desk) -> tuple[Path, int, subprocess.CompletedProcess[str]]:
    path = desk.dir / "faq-broken.yaml"
    path.write_text(
        "- slug: fine\n"
        "  question: Fine?\n"
        "  answers: {en: Yes.}\n"
        "- slug: broken\n"
        "  question: Where are the answers?\n"
        "  answers: {}\n",
        encoding="utf-8",
    )
    return path, 6, desk.run("faq", "import", str(path))


@pytest.fixture(scope="module")
def bad_settings(desk: Desk) -> dict[str, subprocess.CompletedProcess[str]]:
    return {
        "FRANKLY_PORT": desk.run("db", "upgrade", FRANKLY_PORT="notanumber"),
        "FRANKLY_DATABASE_URL": desk.run("db", "upgrade", FRANKLY_DATABASE_URL="mysql://x"),
    }


@pytest.fixture
async def database(desk: Desk) -> AsyncIterator[Database]:
    db = Database(desk.url)
    yield db
    await db.dispose()


def _api(db: Database) -> httpx.AsyncClient:
    settings = get_settings().model_copy(update={"run_workers": False, "database_url": db.url})
    application = create_app(settings, database=db)
    application.state.db = db
    application.state.worker = None
    transport = httpx.ASGITransport(app=application)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def _count(db: Database, column: object, *where: object) -> int:
    async with db.sessionmaker() as session:
        return int(await session.scalar(select(func.count(column)).where(*where)) or 0)  # type: ignore[arg-type]


class TestHelp:
    def test_every_command_is_listed_here(self) -> None:
        def walk(command: click.Command, path: list[str]) -> list[list[str]]:
            found = [path]
            for name, sub in getattr(command, "commands", {}).items():
                found += walk(sub, [*path, name])
            return found

        assert sorted(walk(typer.main.get_command(cli_app), [])) == sorted(COMMANDS)

    @pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "frankly")
    def test_help_exits_zero(self, command: list[str]) -> None:
        result = CliRunner().invoke(cli_app, [*command, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage:" in result.output
        expected = {
            "demo": "--if-empty",
            "add": "--password-stdin",
            "create": "--channel",
            "eval": "--target-precision",
            "serve": "--port",
            "worker": "--concurrency",
        }.get(command[-1] if command else "", "")
        assert expected in result.output

    def test_console_script_help(self, desk: Desk) -> None:
        result = desk.run("--help")
        assert result.returncode == 0, result.stderr
        for name in ("serve", "worker", "db", "demo", "faq", "agent", "token", "eval"):
            assert name in result.stdout


class TestDbUpgrade:
    async def test_fresh_sqlite_file_is_migrated_to_head(
        self, desk: Desk, upgraded: subprocess.CompletedProcess[str], database: Database
    ) -> None:
        assert upgraded.returncode == 0, upgraded.stderr
        assert "head" in upgraded.stdout
        assert (desk.dir / "f.db").is_file()
        async with database.engine.connect() as connection:
            from sqlalchemy import text

            revision = (
                await connection.execute(text("SELECT version_num FROM alembic_version"))
            ).scalar()
        assert {revision} == current_heads()


class TestDemo:
    async def test_demo_loads_a_drafted_desk_and_prints_a_login(
        self, desk: Desk, demo: subprocess.CompletedProcess[str], database: Database
    ) -> None:
        assert demo.returncode == 0, demo.stderr
        assert f"admin: {ADMIN_EMAIL}  password: {DEMO_PASSWORD}" in demo.stdout
        faq_entries = len(read_faq_file(DEMO_DIR / "faq.yaml"))
        conversations = yaml.safe_load((DEMO_DIR / "conversations.yaml").read_text("utf-8"))
        assert 20 <= faq_entries <= 30 and len(conversations) == 6
        assert await _count(database, FaqEntry.id) == faq_entries
        assert await _count(database, Conversation.id) == len(conversations)
        assert await _count(database, Message.id, Message.direction == Direction.OUT) == 0
        # drafting ran before the command returned: nothing left queued
        assert await _count(database, Job.id, Job.status == "queued") == 0
        assert await _count(database, Message.id, Message.drafting == DraftingState.QUEUED) == 0
        async with database.sessionmaker() as session:
            for conversation in (await session.scalars(select(Conversation))).all():
                last = await session.scalar(
                    select(Message)
                    .where(Message.conversation_id == conversation.id)
                    .order_by(Message.id.desc())
                    .limit(1)
                )
                assert last is not None
                assert last.drafting in {DraftingState.DRAFTED, DraftingState.ABSTAINED}
                drafts = await session.scalar(
                    select(func.count(Draft.id)).where(Draft.message_id == last.id)
                )
                assert bool(drafts) == (last.drafting == DraftingState.DRAFTED)
        assert await _count(database, Draft.id) >= 1

    async def test_demo_login_works_and_is_saved_privately(
        self, desk: Desk, demo: subprocess.CompletedProcess[str], database: Database
    ) -> None:
        saved = desk.dir / "var" / "demo-login.txt"
        assert f"admin {ADMIN_EMAIL} {DEMO_PASSWORD}" in saved.read_text("utf-8")
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        async with _api(database) as api:
            login = await api.post(
                "/api/v1/auth/login", json={"email": ADMIN_EMAIL, "password": DEMO_PASSWORD}
            )
        assert login.status_code == 200 and login.json()["agent"]["role"] == "admin"

    async def test_if_empty_loads_nothing_the_second_time(
        self, desk: Desk, demo: subprocess.CompletedProcess[str], database: Database
    ) -> None:
        before = [await _count(database, column) for column in (FaqEntry.id, Message.id, Agent.id)]
        again = desk.run("demo", "--if-empty")
        assert again.returncode == 0, again.stderr
        assert "nothing loaded" in again.stdout
        assert "password" not in again.stdout.split("nothing loaded")[0]
        after = [await _count(database, column) for column in (FaqEntry.id, Message.id, Agent.id)]
        assert after == before


class TestFaqFiles:
    async def test_export_then_import_is_all_unchanged(
        self, desk: Desk, demo: subprocess.CompletedProcess[str], database: Database
    ) -> None:
        entries = await _count(database, FaqEntry.id)
        assert entries > 0
        exported = desk.run("faq", "export", "x.yaml")
        assert exported.returncode == 0, exported.stderr
        assert f"{entries} entries" in exported.stdout
        assert len(read_faq_file(desk.dir / "x.yaml")) == entries
        imported = desk.run("faq", "import", "x.yaml")
        assert imported.returncode == 0, imported.stderr
        assert f"x.yaml: 0 created, 0 updated, {entries} unchanged" in imported.stdout
        assert await _count(database, FaqEntry.id) == entries

    def test_bad_file_exits_nonzero_naming_file_line_and_field(
        self, bad_faq: tuple[Path, int, subprocess.CompletedProcess[str]]
    ) -> None:
        path, line, result = bad_faq
        assert result.returncode != 0
        message = " ".join(result.stderr.split())
        assert f"{path.name} line {line}: field 'answers'" in message, result.stderr
        assert "Traceback" not in result.stderr

    def test_bad_file_error_is_one_line(
        self, bad_faq: tuple[Path, int, subprocess.CompletedProcess[str]]
    ) -> None:
        path, line, result = bad_faq
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert f"{path.name} line {line}: field 'answers'" in lines[0]


class TestAgentsAndTokens:
    async def test_agent_add_reads_the_password_from_stdin(
        self, desk: Desk, upgraded: subprocess.CompletedProcess[str], database: Database
    ) -> None:
        result = desk.run(
            "agent",
            "add",
            "Boss@Example.com",
            "--admin",
            "--password-stdin",
            input="a-long-password\n",
        )
        assert result.returncode == 0, result.stderr
        assert "added admin boss@example.com" in result.stdout
        async with database.sessionmaker() as session:
            agent = await session.scalar(select(Agent).where(Agent.email == "boss@example.com"))
        assert agent is not None and agent.role == Role.ADMIN
        async with _api(database) as api:
            login = await api.post(
                "/api/v1/auth/login",
                json={"email": "boss@example.com", "password": "a-long-password"},
            )
        assert login.status_code == 200, login.text

    async def test_channel_token_printed_once_works_against_the_api(
        self, desk: Desk, upgraded: subprocess.CompletedProcess[str], database: Database
    ) -> None:
        result = desk.run("token", "create", "website", "--channel", "api")
        assert result.returncode == 0, result.stderr
        token = result.stdout.strip()
        assert token.startswith("frk_") and "\n" not in token
        async with _api(database) as api:
            accepted = await api.post(
                "/api/v1/inbound",
                json={"conversation_id": "cli-1", "message_id": "cli-1-1", "text": "hello"},
                headers={"Authorization": f"Bearer {token}"},
            )
            refused = await api.get(
                "/api/v1/conversations", headers={"Authorization": f"Bearer {token}"}
            )
        assert accepted.status_code == 202, accepted.text
        assert refused.status_code == 403
        async with database.sessionmaker() as session:
            conversation = await session.get(Conversation, accepted.json()["conversation_id"])
        assert conversation is not None and conversation.channel == "api"


class TestBadSettings:
    @pytest.mark.parametrize("name", ["FRANKLY_PORT", "FRANKLY_DATABASE_URL"])
    def test_bad_setting_exits_2_naming_it(
        self, name: str, bad_settings: dict[str, subprocess.CompletedProcess[str]]
    ) -> None:
        result = bad_settings[name]
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert result.stderr.startswith(f"error: {name}:"), result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""

    @pytest.mark.parametrize("name", ["FRANKLY_PORT", "FRANKLY_DATABASE_URL"])
    def test_bad_setting_error_is_one_line(
        self, name: str, bad_settings: dict[str, subprocess.CompletedProcess[str]]
    ) -> None:
        lines = bad_settings[name].stderr.strip().splitlines()
        assert len(lines) == 1, lines

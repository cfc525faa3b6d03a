"""Alembic migrations on empty SQLite and PostgreSQL databases: up, down, up, and no drift."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from frankly.db import make_engine
from frankly.migrations.runner import alembic_config, current_heads, upgrade_async
from frankly.models import Base
from tests.conftest import IN_CI, PG_ADMIN_DB, PG_HOST, PG_PORT, PG_USER, pg_url

MODEL_TABLES = set(Base.metadata.tables)


async def _admin() -> asyncpg.Connection:
    return await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, database=PG_ADMIN_DB, timeout=3
    )


@pytest.fixture(params=["sqlite", "postgres"])
async def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A brand-new, never migrated database of our own."""
    if request.param == "sqlite":
        path = tmp_path / "nested" / "empty.db"  # the runner creates the folder
        yield f"sqlite+aiosqlite:///{path}"
        return
    try:
        admin = await _admin()
    except (OSError, asyncpg.PostgresError) as exc:
        reason = f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT} ({exc})"
        if IN_CI:
            pytest.fail(f"{reason}; required under CI=true")
        pytest.skip(reason)
    name = f"frankly_mig_{os.getpid()}_{request.node.name.split('[')[0][-20:]}".lower()
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    try:
        yield pg_url(name)
    finally:
        admin = await _admin()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _alembic(url: str, action: str, revision: str) -> None:
    """Run an alembic command on a connection of our own async engine."""
    config = alembic_config(url)
    engine = make_engine(url)
    try:
        async with engine.begin() as connection:

            def go(sync_connection: Any) -> None:
                config.attributes["connection"] = sync_connection
                getattr(command, action)(config, revision)

            await connection.run_sync(go)
    finally:
        await engine.dispose()


async def _state(url: str) -> tuple[set[str], str | None]:
    """(tables, alembic revision) of the database."""
    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            tables = set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
            revision = None
            if "alembic_version" in tables:
                revision = (
                    await connection.execute(text("SELECT version_num FROM alembic_version"))
                ).scalar()
    finally:
        await engine.dispose()
    return tables - {"alembic_version"}, revision


async def _drift(url: str) -> list[Any]:
    engine = make_engine(url)
    try:
        async with engine.connect() as connection:

            def compare(sync_connection: Any) -> list[Any]:
                context = MigrationContext.configure(
                    sync_connection,
                    opts={"compare_type": True, "compare_server_default": True},
                )
                return list(compare_metadata(context, Base.metadata))

            return await connection.run_sync(compare)
    finally:
        await engine.dispose()


class TestUpgrade:
    async def test_upgrade_head_on_an_empty_database(self, empty_url: str) -> None:
        if empty_url.startswith("sqlite"):
            assert not Path(empty_url.split(":///", 1)[1]).parent.exists()
        else:
            assert await _state(empty_url) == (set(), None)
        await upgrade_async(empty_url)
        tables, revision = await _state(empty_url)
        assert tables == MODEL_TABLES
        assert {revision} == current_heads()

    async def test_upgrade_twice_is_a_no_op(self, empty_url: str) -> None:
        await upgrade_async(empty_url)
        await upgrade_async(empty_url)
        assert await _state(empty_url) == (MODEL_TABLES, next(iter(current_heads())))

    async def test_one_head_only(self) -> None:
        assert len(current_heads()) == 1


class TestDowngrade:
    async def test_downgrade_base_then_upgrade_again(self, empty_url: str) -> None:
        await upgrade_async(empty_url)
        await _alembic(empty_url, "downgrade", "base")
        tables, revision = await _state(empty_url)
        assert tables == set() and revision is None
        await upgrade_async(empty_url)
        assert await _state(empty_url) == (MODEL_TABLES, next(iter(current_heads())))
        assert await _drift(empty_url) == []


class TestNoDrift:
    async def test_migrated_schema_matches_the_models(self, empty_url: str) -> None:
        await upgrade_async(empty_url)
        differences = await _drift(empty_url)
        assert differences == [], "\n".join(map(str, differences))


class TestDataSurvives:
    async def test_upgrade_from_0001_keeps_conversations_and_messages(self, empty_url: str) -> None:
        """0002 rebuilds `conversations` on SQLite: the old table's DROP must not cascade."""
        from sqlalchemy import text

        from frankly.db import make_engine
        from frankly.migrations.runner import ensure_sqlite_dir

        ensure_sqlite_dir(empty_url)
        await _alembic(empty_url, "upgrade", "0001")
        engine = make_engine(empty_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(
                    text(
                        "INSERT INTO contacts (channel, external_id, created_at) "
                        "VALUES ('api', 'x', CURRENT_TIMESTAMP)"
                    )
                )
                await connection.execute(
                    text(
                        "INSERT INTO conversations (channel, external_id, contact_id, status,"
                        " context, needs_reply, needs_human, suggestions, last_activity_at,"
                        " created_at) VALUES ('api', 'x', (SELECT id FROM contacts), 'open', '{}',"
                        " false, false, '[]', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                    )
                )
                await connection.execute(
                    text(
                        "INSERT INTO messages (conversation_id, channel, direction, text,"
                        " attachments, created_at) VALUES ((SELECT id FROM conversations), 'api',"
                        " 'in', 'hi', '[]', CURRENT_TIMESTAMP)"
                    )
                )
            await _alembic(empty_url, "upgrade", "head")
            async with engine.connect() as connection:
                count = (await connection.execute(text("SELECT count(*) FROM messages"))).scalar()
                claimed = (
                    await connection.execute(text("SELECT claimed_by_id FROM conversations"))
                ).scalar()
        finally:
            await engine.dispose()
        assert count == 1
        assert claimed is None

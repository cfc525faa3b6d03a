"""Two app processes on one PostgreSQL database: an event published through one reaches a socket
on the other (LISTEN/NOTIFY), and the publishing instance's own sockets too."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from frankly.db import Database
from frankly.migrations.runner import upgrade
from tests.conftest import IN_CI, PG_ADMIN_DB, PG_HOST, PG_PORT, PG_USER, pg_url
from tests.factories import Desk, make_desk, post_inbound
from tests.live.conftest import LiveClient, free_port, live_connect, login, publish

REPO = Path(__file__).resolve().parents[2]


async def _admin() -> asyncpg.Connection:
    return await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, database=PG_ADMIN_DB, timeout=3
    )


@pytest.fixture
async def shared_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database, migrated, for both instances."""
    try:
        admin = await _admin()
    except (OSError, asyncpg.PostgresError) as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI=true ({exc})")
        pytest.skip(f"PostgreSQL not reachable ({exc})")
    name = f"frankly_live_{os.getpid()}"
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = pg_url(name)
    await asyncio.to_thread(upgrade, url)
    yield url
    admin = await _admin()
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture
async def desk(shared_url: str) -> AsyncIterator[Desk]:
    database = Database(shared_url)
    yield await make_desk(database, faq=[])
    await database.dispose()


def _start(url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "FRANKLY_DATABASE_URL": url,
        "FRANKLY_RUN_WORKERS": "false",
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")]),
    }
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "tests.live.launcher:build",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def _tail(log: Path) -> str:
    return log.read_text()[-4000:]


async def _ready(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=1) as http:
        for _ in range(300):
            assert process.poll() is None, f"instance exited:\n{_tail(log)}"
            try:
                if (await http.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    pytest.fail(f"instance at {base} did not become ready:\n{_tail(log)}")


@pytest.fixture
async def instances(desk: Desk, shared_url: str, tmp_path: Path) -> AsyncIterator[list[str]]:
    """Two uvicorn processes (A, B) serving the same database; their base URLs."""
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"instance-{n}.log" for n in range(2)]
    processes = [_start(shared_url, port, log) for port, log in zip(ports, logs, strict=True)]
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        await asyncio.gather(
            *(_ready(b, p, log) for b, p, log in zip(bases, processes, logs, strict=True))
        )
        yield bases
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                await asyncio.to_thread(process.wait, 10)
            except subprocess.TimeoutExpired:
                process.kill()


class TestTwoInstances:
    async def test_an_inbound_message_on_a_reaches_sockets_on_a_and_b(
        self, instances: list[str], desk: Desk
    ) -> None:
        base_a, base_b = instances
        cookie_b = await login(base_b, desk.agent.email)
        cookie_a = await login(base_a, desk.agent.email)
        async with (
            live_connect(base_b, cookie_b) as ws_b,
            live_connect(base_a, cookie_a) as ws_a,
        ):
            on_b, on_a = LiveClient(ws_b), LiveClient(ws_a)
            await on_b.subscribe("inbox")
            await on_a.subscribe("inbox")

            async with httpx.AsyncClient(base_url=base_a) as http:
                accepted = await post_inbound(http, desk, "which bank?")
            for client in (on_b, on_a):
                event = await client.next("event", within=5)
                assert event["kind"] == "message.new"
                assert event["data"]["conversation_id"] == accepted["conversation_id"]

            # A third writer (neither instance) is seen by both through NOTIFY alone.
            other = await publish(desk.db, "inbox", "note", wake=False)
            assert (await on_b.next("event", within=5))["id"] == other
            assert (await on_a.next("event", within=5))["id"] == other

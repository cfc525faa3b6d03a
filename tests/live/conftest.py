"""Live-update fixtures: a real uvicorn server on the test's loop, a WebSocket client, publish()."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from frankly.db import Database, commit
from frankly.live import service as live_service
from frankly.live.hub import Hub
from tests.factories import PASSWORD, Desk, make_desk
from tests.live.launcher import ensure_live

TIMEOUT = 5.0


async def publish(
    db: Database, topic: str = "inbox", kind: str = "test", *, wake: bool = True, **data: Any
) -> int:
    """Publish one event in its own transaction; wake=False commits like another instance would."""
    async with db.sessionmaker() as session:
        event = await live_service.publish(session, topic=topic, kind=kind, data=data)
        if wake:
            await commit(session)
        else:
            session.info.pop("after_commit", None)
            await session.commit()
        return event.id


async def next_event(subscription: Any, within: float = TIMEOUT) -> dict[str, Any]:
    event: dict[str, Any] = await asyncio.wait_for(subscription.__anext__(), within)
    return event


async def wait_until(condition: Any, within: float = TIMEOUT) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """The test app under a real uvicorn on this event loop (so it shares the test's database)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = ensure_live(app)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._uvicorn: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def hub(self) -> Hub:
        hub: Hub = self.app.state.hub
        return hub

    async def start(self) -> None:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        running = self._uvicorn = uvicorn.Server(config)
        task = self._task = asyncio.create_task(running.serve())
        await wait_until(lambda: running.started or task.done(), within=10)
        assert running.started, "uvicorn did not start"

    async def stop(self) -> None:
        if self._uvicorn is not None and self._task is not None:
            self._uvicorn.should_exit = True
            await asyncio.wait_for(self._task, 10)
        self._uvicorn = self._task = None


@pytest.fixture
async def server(app: FastAPI) -> AsyncIterator[Server]:
    running = Server(app)
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def desk(db: Database) -> Desk:
    """An admin and the agent Anna, no FAQ (signing in is all these tests need)."""
    return await make_desk(db, faq=[])


async def login(base: str, email: str) -> str:
    """Sign in over HTTP; the session cookie's value."""
    async with httpx.AsyncClient(base_url=base) as http:
        response = await http.post(
            "/api/v1/auth/login", json={"email": email, "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        return str(response.cookies["frankly_session"])


@dataclass
class LiveClient:
    """A WebSocket client speaking the live protocol; unmatched messages wait in a buffer."""

    ws: ClientConnection
    buffer: list[dict[str, Any]] = field(default_factory=list)

    async def send(self, **message: Any) -> None:
        await self.ws.send(json.dumps(message))

    async def next(self, kind: str | None = None, within: float = TIMEOUT) -> dict[str, Any]:
        """The next message of this type (any but ping when None)."""
        for index, message in enumerate(self.buffer):
            if message["type"] == kind or (kind is None and message["type"] != "ping"):
                return self.buffer.pop(index)
        async with asyncio.timeout(within):
            while True:
                message = json.loads(await self.ws.recv())
                if message["type"] == kind or (kind is None and message["type"] != "ping"):
                    return dict(message)
                self.buffer.append(message)

    async def subscribe(self, *topics: str, last_event_id: int | None = None) -> dict[str, Any]:
        await self.send(type="subscribe", topics=list(topics), last_event_id=last_event_id)
        return await self.next("subscribed")

    async def events(self, count: int, within: float = TIMEOUT) -> list[dict[str, Any]]:
        return [await self.next("event", within) for _ in range(count)]


def live_connect(target: Server | str, cookie: str | None, *, origin: str | None = "same") -> Any:
    """websockets.connect to a server (or base URL) with the session cookie and its own Origin."""
    base = target if isinstance(target, str) else target.base
    headers: dict[str, str] = {}
    if cookie is not None:
        headers["Cookie"] = f"frankly_session={cookie}"
    url = base.replace("http://", "ws://") + "/ws"
    return connect(
        url,
        additional_headers=headers,
        origin=base if origin == "same" else origin,  # type: ignore[arg-type]
        open_timeout=TIMEOUT,
    )


async def closed_code(client: LiveClient) -> int:
    """The close code the server ended the socket with."""
    with pytest.raises(ConnectionClosed) as closed:
        await client.next("never", within=5)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code

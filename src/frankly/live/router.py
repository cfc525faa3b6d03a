"""The live-updates WebSocket: relays hub events on the topics a signed-in agent may see.

Protocol (JSON text frames). Client: {"type": "subscribe", "topics": [...], "last_event_id": N}
(again to change topics) and optionally {"type": "ping"}. Server: {"type": "subscribed",
"topics", "position"} (position: the id the stream starts after), {"type": "event", "id",
"topic", "kind", "data", "created_at"}, {"type": "resync", "id"}, {"type": "ping"},
{"type": "pong"} and {"type": "error", "message"}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from frankly.auth import service as auth_service
from frankly.auth.deps import SESSION_COOKIE
from frankly.auth.models import Agent
from frankly.db import Database
from frankly.live.hub import RESYNC, Hub, LiveEvent, Subscription
from frankly.live.service import ADMIN, INBOX

log = logging.getLogger("frankly.live")
router = APIRouter(tags=["live"])

PING_SECONDS = 20.0
SESSION_CHECK_SECONDS = 60.0
MAX_TOPICS = 50
MAX_MESSAGE_CHARS = 16_384
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_UNAVAILABLE = 1011
_CONVERSATION_TOPIC = re.compile(r"conversation:[1-9][0-9]{0,17}")
_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


class TopicError(ValueError):
    """A subscribe message named a topic that does not exist or the agent may not see."""


def allowed_topics(raw: object, *, is_admin: bool) -> frozenset[str]:
    """The topics of a subscribe message, checked against what this agent may see."""
    if not isinstance(raw, list) or len(raw) > MAX_TOPICS:
        raise TopicError(f"topics must be a list of at most {MAX_TOPICS} names")
    topics: set[str] = set()
    for topic in raw:
        if not isinstance(topic, str):
            raise TopicError("topics must be strings")
        if topic == ADMIN:
            if not is_admin:
                raise TopicError("topic 'admin' is for admins only")
        elif topic != INBOX and not _CONVERSATION_TOPIC.fullmatch(topic):
            raise TopicError(f"unknown topic {topic[:100]!r}")
        topics.add(topic)
    return frozenset(topics)


def _authority(scheme: str, netloc: str) -> str:
    netloc = netloc.strip().lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default and netloc.endswith(f":{default}") and not netloc.endswith("]"):
        netloc = netloc[: -len(default) - 1]
    return netloc


def same_origin(origin: str | None, host: str | None) -> bool:
    """Browsers always send Origin on a WebSocket; it must name this host (no cross-site use).

    A client without Origin is not a browser, so it cannot be a hijacked page; it is let through.
    """
    if origin is None:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in {"http", "https"} or not parts.netloc or not host:
        return False
    return _authority(parts.scheme, parts.netloc) == _authority(parts.scheme, host)


async def _signed_in_agent(database: Database, token: str | None) -> Agent | None:
    if not token:
        return None
    async with database.sessionmaker() as session:
        found = await auth_service.resolve_session(session, token=token)
    return None if found is None else found[1]


@router.websocket("/ws")
async def live_socket(websocket: WebSocket) -> None:
    """One browser tab's live connection; closes with 4401 when not (or no longer) signed in."""
    if not same_origin(websocket.headers.get("origin"), websocket.headers.get("host")):
        # Closing before accepting answers the handshake with HTTP 403.
        await websocket.close(code=CLOSE_FORBIDDEN)
        return
    hub: Hub | None = getattr(websocket.app.state, "hub", None)
    database: Database = websocket.app.state.db
    token = websocket.cookies.get(SESSION_COOKIE)
    agent = await _signed_in_agent(database, token)
    await websocket.accept()
    if agent is None or token is None:
        await websocket.close(code=CLOSE_UNAUTHORIZED, reason="sign in first")
        return
    if hub is None:
        await websocket.close(code=CLOSE_UNAVAILABLE, reason="live updates are not running")
        return
    await LiveSocket(websocket, hub=hub, database=database, token=token, agent=agent).run()


class LiveSocket:
    """Three loops share one socket: client messages, relayed events, pings and session checks."""

    def __init__(
        self, websocket: WebSocket, *, hub: Hub, database: Database, token: str, agent: Agent
    ) -> None:
        self.websocket = websocket
        self.hub = hub
        self.database = database
        self.token = token
        self.is_admin = agent.is_admin
        self.subscription: Subscription | None = None
        self._changed = asyncio.Event()
        self._send_lock = asyncio.Lock()

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._receive_loop()),
            asyncio.create_task(self._relay_loop()),
            asyncio.create_task(self._watch_loop()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            if self.subscription is not None:
                self.subscription.close()
        for result in results:
            if isinstance(result, Exception) and not _gone(result):
                log.error("live socket failed", exc_info=result)
        if self.websocket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.websocket.close(code=CLOSE_UNAVAILABLE)

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.websocket.send_text(json.dumps(message, separators=(",", ":")))

    async def _error(self, message: str) -> None:
        await self.send({"type": "error", "message": message})

    # Client messages --------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                await self._error("send JSON text frames")
            elif len(text) > MAX_MESSAGE_CHARS:
                await self._error(f"messages are at most {MAX_MESSAGE_CHARS} characters")
            else:
                await self._handle(text)

    async def _handle(self, text: str) -> None:
        try:
            body = json.loads(text)
        except ValueError:
            await self._error("not JSON")
            return
        kind = body.get("type") if isinstance(body, dict) else None
        if kind == "ping":
            await self.send({"type": "pong"})
        elif kind == "subscribe":
            await self._subscribe(body)
        else:
            await self._error("unknown message type; expected 'subscribe' or 'ping'")

    async def _subscribe(self, body: dict[str, Any]) -> None:
        try:
            topics = allowed_topics(body.get("topics"), is_admin=self.is_admin)
        except TopicError as exc:
            await self._error(str(exc))
            return
        last = body.get("last_event_id")
        if last is not None and (type(last) is not int or last < 0):
            await self._error("last_event_id must be a non-negative integer or null")
            return
        current = self.subscription
        if current is None or current.closed or current.dropped:
            self.subscription = self.hub.subscribe(topics, last_event_id=last)
            self._changed.set()
        else:
            current.set_topics(topics, last_event_id=last)
        # Where the stream starts: a tab with no last id yet resumes from here after a drop.
        position = self.hub.position
        await self.send({"type": "subscribed", "topics": sorted(topics), "position": position})

    # Events -----------------------------------------------------------------------------------

    async def _relay_loop(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            subscription = self.subscription
            if subscription is None:
                continue
            async for event in subscription:
                if event["kind"] == RESYNC:
                    if subscription.dropped:
                        # Too far behind: start again from now; the resync makes the page reload.
                        self.subscription = self.hub.subscribe(
                            subscription.topics, last_event_id=None
                        )
                        self._changed.set()
                    await self.send({"type": "resync", "id": event["id"]})
                else:
                    await self.send(_event_message(event))
            if not subscription.dropped and subscription is self.subscription:
                return  # the hub stopped (shutdown): the client reconnects elsewhere or later

    # Heartbeat and session ------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        now = time.monotonic()
        next_ping = now + PING_SECONDS
        next_check = now + SESSION_CHECK_SECONDS
        while True:
            await asyncio.sleep(max(min(next_ping, next_check) - time.monotonic(), 0.0))
            now = time.monotonic()
            if now >= next_check:
                next_check = now + SESSION_CHECK_SECONDS
                if not await self._still_signed_in():
                    await self.websocket.close(code=CLOSE_UNAUTHORIZED, reason="signed out")
                    return
            if now >= next_ping:
                next_ping = now + PING_SECONDS
                await self.send({"type": "ping"})

    async def _still_signed_in(self) -> bool:
        """Re-read the session: False once it ended; a lost admin role drops the admin topic."""
        try:
            agent = await _signed_in_agent(self.database, self.token)
        except Exception:
            log.warning("live socket: session check failed; trying again later", exc_info=True)
            return True
        if agent is None:
            return False
        self.is_admin = agent.is_admin
        subscription = self.subscription
        if not self.is_admin and subscription is not None and ADMIN in subscription.topics:
            subscription.set_topics(subscription.topics - {ADMIN})
            await self._error("topic 'admin' is for admins only")
        return True


def _event_message(event: LiveEvent) -> dict[str, Any]:
    return {"type": "event", **event}


def _gone(exc: BaseException) -> bool:
    """The client went away mid-send: normal for a socket, not an error."""
    return isinstance(exc, WebSocketDisconnect | OSError | asyncio.CancelledError) or (
        isinstance(exc, RuntimeError) and "close" in str(exc)
    )

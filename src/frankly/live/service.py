"""Publishing live events: a row in the event log, written in the caller's transaction.

Subscribers (the hub, in every app instance) read the log after commit: in this process the
session's after-commit hook wakes the hub; on PostgreSQL a NOTIFY (delivered only on commit)
wakes the hubs of other instances. A reconnecting tab replays the log from its last event id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from frankly.db import after_commit, transaction_state
from frankly.live.models import Event

NOTIFY_CHANNEL = "frankly_events"
INBOX = "inbox"
ADMIN = "admin"

_waker: Callable[[], None] | None = None


def set_waker(waker: Callable[[], None] | None) -> None:
    """The in-process hub registers how to wake it (None when it stops)."""
    global _waker
    _waker = waker


def conversation_topic(conversation_id: int) -> str:
    return f"conversation:{conversation_id}"


async def publish(session: AsyncSession, *, topic: str, kind: str, data: dict[str, Any]) -> Event:
    """Add an event to the caller's transaction (flushed with its other writes, not alone)."""
    event = Event(topic=topic, kind=kind, data=data)
    session.add(event)
    state = transaction_state(session)
    if session.get_bind().dialect.name == "postgresql" and not state.get("notified"):
        # Delivered at commit, once per transaction; hubs read the log, the payload is unused.
        await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})
        state["notified"] = True
    if _waker is not None and not state.get("waking"):
        state["waking"] = True
        after_commit(session, _waker)
    return event


async def publish_conversation(
    session: AsyncSession, *, conversation_id: int, kind: str, data: dict[str, Any]
) -> None:
    """An event for the inbox list and for the open conversation view."""
    payload = {"conversation_id": conversation_id, **data}
    await publish(session, topic=INBOX, kind=kind, data=payload)
    await publish(session, topic=conversation_topic(conversation_id), kind=kind, data=payload)


async def current_position(session: AsyncSession) -> int:
    """The newest event id (0 for an empty log)."""
    from sqlalchemy import func, select

    return int(await session.scalar(select(func.max(Event.id))) or 0)


async def prune(session: AsyncSession, *, older_than_days: int) -> int:
    """Delete events older than the retention; a tab behind that gets a resync."""
    from datetime import timedelta

    from sqlalchemy import delete

    from frankly.db import utcnow

    result = await session.execute(
        delete(Event).where(Event.created_at < utcnow() - timedelta(days=older_than_days))
    )
    return int(getattr(result, "rowcount", 0) or 0)

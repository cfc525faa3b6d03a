"""The outbox: queue a sent message in the send's transaction, claim due items, record results.

Delivery happens outside any transaction (outbox.delivery); a crash between "the provider took
it" and "we recorded it" leads to a retry with the same channel key, which the channel's own
idempotency (Bybit msgUuid, email Message-ID, widget id) turns into a no-op.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from frankly import metrics
from frankly.audit import service as audit_service
from frankly.auth.models import Agent
from frankly.channels.models import ChannelKind
from frankly.channels.registry import REGISTRY, UnconfiguredChannel
from frankly.conversations.models import Contact, Conversation, DeliveryStatus, Direction, Message
from frankly.db import after_commit, utcnow
from frankly.errors import Conflict, NotFound
from frankly.live import service as live_service
from frankly.outbox.models import OutboxItem, OutboxStatus
from frankly.worker import service as worker_service

_WAKERS: set[Callable[[], None]] = set()


def on_enqueue(callback: Callable[[], None]) -> Callable[[], None]:
    """Register a delivery loop to wake when a reply is committed; returns the unregister call."""
    _WAKERS.add(callback)
    return lambda: _WAKERS.discard(callback)


def _wake_all() -> None:
    for wake in list(_WAKERS):
        wake()


MAX_ATTEMPTS = 8
# Kinds whose replies get a placeholder key when no account exists (UnconfiguredChannel).
UNCONFIGURED_KINDS = frozenset({ChannelKind.EMAIL.value, ChannelKind.BYBIT.value})
BASE_DELAY_SECONDS = 2.0
MAX_DELAY_SECONDS = 600.0


async def enqueue(
    session: AsyncSession, *, message: Message, conversation: Conversation
) -> OutboxItem:
    """Queue a just-sent message; its channel key is fixed now, before any attempt."""
    channel, account = await REGISTRY.for_conversation(
        session, channel=conversation.channel, account_id=conversation.channel_account_id
    )
    key = channel.new_channel_key(message_id=message.id)
    message.channel_message_id = key
    item = OutboxItem(
        message_id=message.id,
        conversation_id=conversation.id,
        channel=conversation.channel,
        account_id=account.id if account else None,
        channel_key=key,
    )
    session.add(item)
    await session.flush()
    after_commit(session, _wake_all)
    return item


async def claim(
    session: AsyncSession, *, worker_id: str, lease_seconds: int, limit: int = 8
) -> list[OutboxItem]:
    """Take due items for one delivery attempt each (the job table's claim); commit after."""
    now = utcnow()
    return await worker_service.claim_rows(
        session,
        OutboxItem,
        due=(OutboxItem.status == OutboxStatus.QUEUED)
        & (OutboxItem.next_attempt_at <= now)
        & (OutboxItem.locked_until.is_(None) | (OutboxItem.locked_until < now)),
        order_by=(OutboxItem.next_attempt_at, OutboxItem.id),
        limit=limit,
        owner=worker_id,
        values={
            "locked_until": now + timedelta(seconds=lease_seconds),
            "attempts": OutboxItem.attempts + 1,
            "last_attempt_at": now,
        },
    )


@dataclass(frozen=True, slots=True)
class Loaded:
    item: OutboxItem
    message: Message
    conversation: Conversation
    contact: Contact | None
    thread_ids: list[str]


async def load(session: AsyncSession, *, item: OutboxItem) -> Loaded:
    message = await session.get(Message, item.message_id)
    conversation = await session.get(Conversation, item.conversation_id)
    if message is None or conversation is None:
        raise NotFound(f"outbox item {item.id}: its message is gone")
    contact = await session.get(Contact, conversation.contact_id)
    thread = (
        await session.scalars(
            select(Message.channel_message_id)
            .where(
                Message.conversation_id == conversation.id,
                Message.id < message.id,
                Message.direction != Direction.SYSTEM,
                Message.channel_message_id.is_not(None),
            )
            .order_by(Message.id)
        )
    ).all()
    return Loaded(item, message, conversation, contact, [t for t in thread if t])


async def _set_message_status(
    session: AsyncSession, *, item: OutboxItem, status: DeliveryStatus, error: str | None
) -> None:
    now = utcnow()
    await session.execute(
        update(Message)
        .where(Message.id == item.message_id)
        .values(
            delivery_status=status,
            delivery_error=error,
            delivered_at=now if status == DeliveryStatus.DELIVERED else None,
        )
    )
    await live_service.publish_conversation(
        session,
        conversation_id=item.conversation_id,
        kind="message.delivery",
        data={"message_id": item.message_id, "status": status.value, "error": error},
    )


async def mark_delivered(session: AsyncSession, *, item: OutboxItem) -> bool:
    """Record success (False if our lease ran out and someone else owns the item now)."""
    done = await session.execute(
        update(OutboxItem)
        .where(OutboxItem.id == item.id, OutboxItem.locked_by == item.locked_by)
        .values(
            status=OutboxStatus.DELIVERED,
            delivered_at=utcnow(),
            locked_until=None,
            last_error=None,
        )
    )
    if not done.rowcount:  # type: ignore[attr-defined]
        return False
    await _set_message_status(session, item=item, status=DeliveryStatus.DELIVERED, error=None)
    metrics.DELIVERIES.labels(item.channel, "delivered").inc()
    return True


async def mark_failed(
    session: AsyncSession, *, item: OutboxItem, error: str, permanent: bool
) -> bool:
    """Record a failed attempt: retried later with backoff, or failed for good. True if final."""
    final = permanent or item.attempts >= MAX_ATTEMPTS
    delay = min(BASE_DELAY_SECONDS * 2 ** max(item.attempts - 1, 0), MAX_DELAY_SECONDS)
    error = error[:2000]
    done = await session.execute(
        update(OutboxItem)
        .where(OutboxItem.id == item.id, OutboxItem.locked_by == item.locked_by)
        .values(
            status=OutboxStatus.FAILED if final else OutboxStatus.QUEUED,
            next_attempt_at=utcnow() + timedelta(seconds=delay),
            locked_until=None,
            last_error=error,
        )
    )
    if not done.rowcount:  # type: ignore[attr-defined]
        return final
    if final:
        await _set_message_status(session, item=item, status=DeliveryStatus.FAILED, error=error)
    else:
        # Still queued; the inbox shows the last error next to "sending…".
        await session.execute(
            update(Message).where(Message.id == item.message_id).values(delivery_error=error)
        )
    metrics.DELIVERIES.labels(item.channel, "failed" if final else "retry").inc()
    return final


async def get_for_message(session: AsyncSession, *, message: Message) -> OutboxItem:
    item = await session.scalar(select(OutboxItem).where(OutboxItem.message_id == message.id))
    if item is None:
        raise NotFound(f"message {message.id} has no delivery record")
    return item


async def retry(session: AsyncSession, *, agent: Agent, message: Message) -> OutboxItem:
    """A person asks to try a failed delivery again (same channel key: never a duplicate)."""
    item = await get_for_message(session, message=message)
    if item.status != OutboxStatus.FAILED:
        raise Conflict(f"message {message.id} is {item.status.value}, not failed")
    if (
        item.account_id is None
        and item.channel in UNCONFIGURED_KINDS
        and UnconfiguredChannel.is_placeholder(
            item.channel_key, kind=item.channel, message_id=item.message_id
        )
    ):
        # Queued when no account could deliver it: its key is a placeholder no provider ever
        # saw (not a Message-ID, say). If an account exists now, key it for that channel.
        conversation = await session.get(Conversation, item.conversation_id)
        if conversation is not None:
            channel, account = await REGISTRY.for_conversation(
                session, channel=conversation.channel, account_id=conversation.channel_account_id
            )
            if account is not None:
                item.account_id = account.id
                item.channel_key = channel.new_channel_key(message_id=message.id)
                message.channel_message_id = item.channel_key
    item.status = OutboxStatus.QUEUED
    item.attempts = 0
    item.next_attempt_at = utcnow()
    item.locked_until = None
    message.delivery_status = DeliveryStatus.QUEUED
    message.delivery_error = None
    await audit_service.record(
        session,
        agent=agent,
        action="message.retry_delivery",
        target_type="message",
        target_id=message.id,
        detail={"conversation_id": message.conversation_id, "last_error": item.last_error},
    )
    await live_service.publish_conversation(
        session,
        conversation_id=message.conversation_id,
        kind="message.delivery",
        data={"message_id": message.id, "status": "queued", "error": None},
    )
    await session.flush()
    return item


async def counts(session: AsyncSession) -> dict[str, int]:
    from sqlalchemy import func

    rows = await session.execute(
        select(OutboxItem.status, func.count(OutboxItem.id)).group_by(OutboxItem.status)
    )
    return {str(getattr(s, "value", s)): n for s, n in rows.all()}

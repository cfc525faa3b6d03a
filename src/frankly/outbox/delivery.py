"""The delivery loop body: claim due outbox items, hand each to its channel, record the results.

One round: one claiming transaction, one read session to prepare every item, then the channel
calls concurrently and outside any transaction, each result recorded as soon as it is known.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from frankly.channels.base import Channel, DeliveryError, OutboundMessage
from frankly.channels.registry import REGISTRY
from frankly.db import Database, commit
from frankly.drafting import disclosure
from frankly.outbox import service as outbox_service
from frankly.outbox.models import OutboxItem

log = logging.getLogger("frankly.outbox")
# Longer than a channel's own timeouts together (e-mail: SMTP 30 s + the Sent copy 30 s), so a
# send that went through is never cut off while filing its copy and then retried.
ATTEMPT_TIMEOUT_SECONDS = 150.0


@dataclass(slots=True)
class _Attempt:
    item: OutboxItem
    channel: Channel | None = None
    outbound: OutboundMessage | None = None
    error: str | None = None
    permanent: bool = False


async def deliver_due(
    database: Database, *, worker_id: str, lease_seconds: int = 120, limit: int = 16
) -> int:
    """One round: returns how many items were attempted."""
    async with database.writing(), database.sessionmaker() as session:
        items = await outbox_service.claim(
            session, worker_id=worker_id, lease_seconds=lease_seconds, limit=limit
        )
        await session.commit()
    if not items:
        return 0
    async with database.sessionmaker() as session:
        attempts = [await _prepare(session, item) for item in items]
    done: asyncio.Queue[_Attempt] = asyncio.Queue()

    async def send(attempt: _Attempt) -> None:
        await _send(attempt)
        done.put_nowait(attempt)

    senders = [asyncio.create_task(send(attempt)) for attempt in attempts]
    recorded = 0
    try:
        while recorded < len(attempts):
            # Results are recorded as soon as they are known (a slow provider call never holds
            # back the others' "delivered"), those that finished together in one transaction.
            batch = [await done.get()]
            await asyncio.sleep(0)
            while not done.empty():
                batch.append(done.get_nowait())
            await _record(database, batch)
            recorded += len(batch)
    finally:
        for task in senders:
            task.cancel()
    return len(items)


async def _record(database: Database, batch: list[_Attempt]) -> None:
    async with database.writing(), database.sessionmaker() as session:
        for attempt in batch:
            if attempt.error is None:
                await outbox_service.mark_delivered(session, item=attempt.item)
            else:
                log.warning(
                    "delivery of message %s failed: %s", attempt.item.message_id, attempt.error
                )
                await outbox_service.mark_failed(
                    session, item=attempt.item, error=attempt.error, permanent=attempt.permanent
                )
        await commit(session)


async def _prepare(session: AsyncSession, item: OutboxItem) -> _Attempt:
    attempt = _Attempt(item)
    try:
        loaded = await outbox_service.load(session, item=item)
        attempt.channel, _ = await REGISTRY.for_conversation(
            session,
            channel=loaded.conversation.channel,
            account_id=item.account_id or loaded.conversation.channel_account_id,
        )
        message = loaded.message
        attempt.outbound = OutboundMessage(
            message_id=message.id,
            conversation_external_id=loaded.conversation.external_id,
            channel_key=item.channel_key,
            text=message.text,
            body_text=message.body_text or message.text,
            origin=message.origin.value if message.origin else "human_written",
            disclosure=disclosure.text_of(message.disclosure_id, message.language),
            language=message.language,
            context=dict(loaded.conversation.context),
            contact_external_id=loaded.contact.external_id if loaded.contact else None,
            contact_name=loaded.contact.display_name if loaded.contact else None,
            thread_ids=tuple(loaded.thread_ids),
            # Any earlier failure (also before a manual Retry, which restarts the count) means
            # an earlier attempt may have reached the provider: the channel checks first.
            attempt=item.attempts if item.last_error is None else max(item.attempts, 2),
        )
    except Exception as exc:  # e.g. undecryptable secrets: recorded, retried, never a crash
        log.exception("preparing outbox item %s failed", item.id)
        attempt.error = f"{type(exc).__name__}: {exc}"
    return attempt


async def _send(attempt: _Attempt) -> None:
    if attempt.channel is None or attempt.outbound is None:
        return
    try:
        await asyncio.wait_for(
            attempt.channel.deliver(attempt.outbound), timeout=ATTEMPT_TIMEOUT_SECONDS
        )
    except DeliveryError as exc:
        attempt.error, attempt.permanent = str(exc), exc.permanent
    except TimeoutError:
        attempt.error = f"the channel did not answer within {ATTEMPT_TIMEOUT_SECONDS:.0f} s"
    except Exception as exc:  # a channel bug must not kill the loop; the item is retried
        log.exception("delivery of outbox item %s crashed", attempt.item.id)
        attempt.error = f"{type(exc).__name__}: {exc}"

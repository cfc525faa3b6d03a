"""The delivery loop body: claim due outbox items, hand each to its channel, record the result."""

from __future__ import annotations

import asyncio
import logging

from frankly.channels.base import DeliveryError, OutboundMessage
from frankly.channels.registry import REGISTRY
from frankly.db import Database, commit
from frankly.drafting import disclosure
from frankly.outbox import service as outbox_service
from frankly.outbox.models import OutboxItem

log = logging.getLogger("frankly.outbox")
ATTEMPT_TIMEOUT_SECONDS = 60.0


async def deliver_due(
    database: Database, *, worker_id: str, lease_seconds: int = 120, limit: int = 8
) -> int:
    """One round: returns how many items were attempted."""
    async with database.writing(), database.sessionmaker() as session:
        items = await outbox_service.claim(
            session, worker_id=worker_id, lease_seconds=lease_seconds, limit=limit
        )
        await session.commit()
    if not items:
        return 0
    await asyncio.gather(*(_attempt(database, item) for item in items))
    return len(items)


async def _attempt(database: Database, item: OutboxItem) -> None:
    error: str | None = None
    permanent = False
    try:
        async with database.sessionmaker() as session:
            loaded = await outbox_service.load(session, item=item)
            channel, _ = await REGISTRY.for_conversation(
                session,
                channel=loaded.conversation.channel,
                account_id=item.account_id or loaded.conversation.channel_account_id,
            )
            message = loaded.message
            outbound = OutboundMessage(
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
            )
        await asyncio.wait_for(channel.deliver(outbound), timeout=ATTEMPT_TIMEOUT_SECONDS)
    except DeliveryError as exc:
        error, permanent = str(exc), exc.permanent
    except TimeoutError:
        error = f"the channel did not answer within {ATTEMPT_TIMEOUT_SECONDS:.0f} s"
    except Exception as exc:  # a channel bug must not kill the loop; the item is retried
        log.exception("delivery of outbox item %s crashed", item.id)
        error = f"{type(exc).__name__}: {exc}"
    async with database.writing(), database.sessionmaker() as session:
        if error is None:
            await outbox_service.mark_delivered(session, item=item)
        else:
            log.warning("delivery of message %s failed: %s", item.message_id, error)
            await outbox_service.mark_failed(session, item=item, error=error, permanent=permanent)
        await commit(session)

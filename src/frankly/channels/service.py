"""Bringing channel messages in: ingest with attachments, context updates, drafting queued."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from frankly.channels.base import ContextUpdate, InboundAttachment, InboundMessage
from frankly.conversations import service as conversation_service
from frankly.conversations.models import (
    Attachment,
    Contact,
    Conversation,
    DraftingState,
    Message,
)
from frankly.drafting import service as drafting_service
from frankly.errors import Invalid, TooLarge
from frankly.live import service as live_service
from frankly.textutil import clean_text

MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024
ATTACHMENT_TYPES = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "application/pdf": ".pdf",
}


def check_attachment(attachment: InboundAttachment) -> None:
    """Raise Invalid (422) or TooLarge-style Invalid for a file Frankly does not keep."""
    if attachment.content_type not in ATTACHMENT_TYPES:
        raise Invalid(
            f"attachment {attachment.filename!r}: type {attachment.content_type!r} is not "
            f"accepted (allowed: {', '.join(sorted(ATTACHMENT_TYPES))})"
        )
    if len(attachment.data) > MAX_ATTACHMENT_BYTES:
        raise Invalid(
            f"attachment {attachment.filename!r} is {len(attachment.data)} bytes; the limit is "
            f"{MAX_ATTACHMENT_BYTES} bytes"
        )


def sniff_content_type(data: bytes, declared: str) -> str:
    """The type the bytes really are, for the kinds Frankly keeps (a PNG named .pdf is a PNG)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    return declared


def provider_text(text: str, *, limit_bytes: int) -> str:
    """A provider's text as stored: cleaned, and cut (saying so) past the size limit. Never
    raises: one long or blank message must not fail the poll and stall its mailbox or chat."""
    try:
        return clean_text(text, limit_bytes=limit_bytes) if text else ""
    except TooLarge:
        pass
    except Invalid:  # nothing left once cleaned (blank, only control characters)
        return ""
    note = f"\n\n[shortened: the message was longer than {limit_bytes} bytes]"
    room = max(limit_bytes - len(note.encode()), 0)
    try:
        head = clean_text(text, limit_bytes=len(text.encode()) * 4 + 16)
    except Invalid:
        return ""
    head = head.encode()[:room].decode("utf-8", errors="ignore").rstrip()
    return f"{head}{note}" if head else note.strip()


def fit_id(value: str, limit: int = 255) -> str:
    """A provider id as stored: as it is when it fits the column, else a stable digest of it
    (the same long id always maps to the same value, so dedupe still holds)."""
    if len(value) <= limit:
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


async def ingest_inbound(
    session: AsyncSession,
    *,
    channel: str,
    inbound: InboundMessage,
    account_id: int | None = None,
    max_text_bytes: int = 16 * 1024,
) -> conversation_service.IngestResult:
    """Store one inbound message from a channel (deduplicated on the channel's id), its
    attachments, and queue drafting for it, all in the caller's transaction."""
    text = provider_text(inbound.text, limit_bytes=max_text_bytes)
    files = [
        InboundAttachment(a.filename, sniff_content_type(a.data, a.content_type), a.data)
        for a in inbound.attachments
    ]
    kept = []
    for attachment in files:
        try:
            check_attachment(attachment)
        except Invalid:
            continue  # a provider sent something we don't keep: the text still arrives
        kept.append(attachment)
    if not text and not kept and not inbound.system:
        text = "(empty message)"
    conversation_external_id = fit_id(inbound.conversation_external_id)
    if inbound.thread_refs and inbound.contact_external_id:
        # Only the same customer joins a thread by its references: anyone who learns a
        # Message-ID (a CC'd party) must not write into someone else's conversation.
        known = await session.scalar(
            select(Conversation.external_id)
            .join(Message, Message.conversation_id == Conversation.id)
            .join(Contact, Contact.id == Conversation.contact_id)
            .where(
                Message.channel == channel,
                Message.channel_message_id.in_([fit_id(r) for r in inbound.thread_refs[-50:]]),
                Contact.external_id == inbound.contact_external_id,
            )
            .order_by(Message.id.desc())
            .limit(1)
        )
        if known is not None:
            conversation_external_id = known
    result = await conversation_service.ingest(
        session,
        channel=channel,
        conversation_external_id=conversation_external_id,
        message_external_id=fit_id(inbound.message_external_id),
        text=text or "(attachment)",
        contact_external_id=fit_id(inbound.contact_external_id)
        if inbound.contact_external_id
        else None,
        contact_name=(inbound.contact_name or "")[:200] or None,
        context=inbound.context,
        created_at=inbound.created_at,
        system=inbound.system,
        skip_drafting=inbound.skip_drafting,
        channel_account_id=account_id,
    )
    if result.duplicate:
        return result
    if kept:
        await add_attachments(session, message=result.message, files=kept)
    if result.message.drafting == DraftingState.QUEUED:
        await drafting_service.enqueue_drafting(session, message=result.message)
    return result


async def add_attachments(
    session: AsyncSession, *, message: Message, files: list[InboundAttachment]
) -> list[Attachment]:
    rows = [
        Attachment(
            message_id=message.id,
            filename=(a.filename or "file")[:255],
            content_type=a.content_type,
            size=len(a.data),
            sha256=hashlib.sha256(a.data).hexdigest(),
            data=a.data,
        )
        for a in files
    ]
    session.add_all(rows)
    await session.flush()
    message.attachments = [
        {"id": r.id, "filename": r.filename, "content_type": r.content_type, "size": r.size}
        for r in rows
    ]
    return rows


async def get_attachment(session: AsyncSession, *, attachment_id: int) -> Attachment:
    from frankly.errors import NotFound

    row = await session.get(Attachment, attachment_id)
    if row is None:
        raise NotFound(f"attachment {attachment_id} not found")
    return row


async def apply_context(session: AsyncSession, *, channel: str, update: ContextUpdate) -> bool:
    """Merge new facts into a known conversation's context; False if it is not known yet."""
    conversation = await session.scalar(
        select(Conversation).where(
            Conversation.channel == channel,
            Conversation.external_id == update.conversation_external_id,
        )
    )
    if conversation is None:
        return False
    merged = {**conversation.context, **update.context}
    if merged != conversation.context:
        conversation.context = merged
        await live_service.publish_conversation(
            session, conversation_id=conversation.id, kind="conversation.context", data={}
        )
    return True


# What the customer typed or their browser sent is not a fact the assistant may state: only
# context a merchant's system or the provider's API vouches for reaches the LLM as "facts".
_UNVOUCHED_ORDER_KEYS = {"counterparty", "counterparty_id"}


def trusted_context(channel: str, context: dict[str, Any]) -> dict[str, Any]:
    """The part of a conversation's context that the LLM (and its grounding check) may treat
    as facts: everything an API integration sent; a Bybit order's facts from Bybit's API (not
    the counterparty's self-chosen nickname); nothing from e-mail headers or a visitor's browser."""
    if channel in {"widget", "email"}:
        return {}
    if channel == "bybit":
        order = context.get("order")
        if not isinstance(order, dict):
            return {}
        return {"order": {k: v for k, v in order.items() if k not in _UNVOUCHED_ORDER_KEYS}}
    return dict(context)

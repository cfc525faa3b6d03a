"""The web chat widget's domain: desks (widget accounts), a visitor's one conversation per desk,
storing what they send through the shared ingest, and the customer's view of the thread.

The customer view is deliberately narrow: the visitor's own messages and the replies a person
sent in *their* conversation; never drafts, never provenance (origin, agent, FAQ entry).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from frankly.channels.base import InboundAttachment, InboundMessage
from frankly.channels.models import ChannelAccount, ChannelKind
from frankly.channels.service import (
    ATTACHMENT_TYPES,
    MAX_ATTACHMENT_BYTES,
    check_attachment,
    ingest_inbound,
    sniff_content_type,
)
from frankly.conversations.models import Attachment, Conversation, Direction, Message
from frankly.conversations.service import IngestResult
from frankly.errors import Invalid, NotFound, TooLarge

CHANNEL = ChannelKind.WIDGET.value
PAGE_SIZE = 200
ATTACHMENT_PLACEHOLDER = "(attachment)"  # what ingest stores as the text of a bare file
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f/\\]")


@dataclass(frozen=True, slots=True)
class Desk:
    """A widget account as the chat page needs it (`name` is the `{desk}` in its URLs)."""

    account_id: int
    name: str
    title: str | None
    greeting: str | None
    allowed_origins: tuple[str, ...]


def _text_setting(settings: dict[str, Any], key: str, limit: int) -> str | None:
    value = settings.get(key)
    return value.strip()[:limit] or None if isinstance(value, str) else None


def allowed_origins(settings: dict[str, Any]) -> tuple[str, ...]:
    """The merchant origins allowed to frame the chat; malformed entries are ignored (they would
    otherwise end up in a response header)."""
    raw = settings.get("allowed_origins") or ()
    if isinstance(raw, str):
        raw = raw.replace(",", " ").split()
    if not isinstance(raw, list | tuple):
        return ()
    return tuple(
        item.strip().rstrip("/").lower()
        for item in raw
        if isinstance(item, str) and _ORIGIN.fullmatch(item.strip().rstrip("/"))
    )


async def find_desk(session: AsyncSession, *, name: str) -> Desk:
    """The enabled widget account called `name`; NotFound otherwise."""
    account = await session.scalar(
        select(ChannelAccount).where(
            ChannelAccount.name == name,
            ChannelAccount.kind == ChannelKind.WIDGET,
            ChannelAccount.enabled.is_(True),
        )
    )
    if account is None:
        raise NotFound(f"no chat called {name[:64]!r}")
    settings = dict(account.settings or {})
    return Desk(
        account_id=account.id,
        name=account.name,
        title=_text_setting(settings, "title", 80),
        greeting=_text_setting(settings, "greeting", 500),
        allowed_origins=allowed_origins(settings),
    )


def conversation_external_id(desk: Desk, visitor: str) -> str:
    return f"{desk.name}:{visitor}"


async def find_conversation(
    session: AsyncSession, *, desk: Desk, visitor: str
) -> Conversation | None:
    """The visitor's conversation with this desk, if they have written yet."""
    return await session.scalar(
        select(Conversation).where(
            Conversation.channel == CHANNEL,
            Conversation.external_id == conversation_external_id(desk, visitor),
        )
    )


def clean_filename(name: str | None) -> str:
    """A display-safe file name: no path, no control characters, at most 120 characters."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = _CONTROL.sub("", unicodedata.normalize("NFC", base)).strip(" .")
    return base[:120] or "file"


def checked_attachment(filename: str | None, data: bytes) -> InboundAttachment:
    """The upload as an attachment Frankly keeps: 413 over the size limit, 422 unless its bytes
    really are a JPEG, PNG, GIF, WebP image or a PDF (the declared type is not trusted)."""
    name = clean_filename(filename)
    if len(data) > MAX_ATTACHMENT_BYTES:
        raise TooLarge(
            f"{name} is {len(data)} bytes; files can be at most {MAX_ATTACHMENT_BYTES} bytes "
            f"({MAX_ATTACHMENT_BYTES // (1024 * 1024)} MiB)"
        )
    if not data:
        raise Invalid(f"{name} is empty")
    kind = sniff_content_type(data, "application/octet-stream")
    if kind not in ATTACHMENT_TYPES:
        raise Invalid(f"{name}: only JPEG, PNG, GIF or WebP images and PDF files can be sent")
    attachment = InboundAttachment(name, kind, data)
    check_attachment(attachment)
    return attachment


def page_url(value: str | None) -> str | None:
    """The merchant page the chat was opened from, if it is a plain http(s) URL."""
    if not value or len(value) > 500:
        return None
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. "http://[x": an unbalanced IPv6 bracket
        return None
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


async def send(
    session: AsyncSession,
    *,
    desk: Desk,
    visitor: str,
    client_id: str,
    text: str,
    attachments: list[InboundAttachment] | None = None,
    context: dict[str, Any] | None = None,
    max_text_bytes: int,
) -> IngestResult:
    """Store a visitor's message once per client id (a retry returns the first one); the
    browser context (page, user agent, language) is recorded with their first message."""
    external_id = conversation_external_id(desk, visitor)
    first = await find_conversation(session, desk=desk, visitor=visitor) is None
    result = await ingest_inbound(
        session,
        channel=CHANNEL,
        inbound=InboundMessage(
            conversation_external_id=external_id,
            # Namespaced by desk and visitor: another visitor reusing an id cannot collide.
            message_external_id=f"{external_id}:{client_id}",
            text=text,
            contact_external_id=visitor,
            contact_name=f"Web visitor {visitor[:6]}" if first else None,
            attachments=attachments or [],
            context={k: v for k, v in (context or {}).items() if v} if first else None,
        ),
        account_id=desk.account_id,
        max_text_bytes=max_text_bytes,
    )
    if result.conversation.external_id != external_id:  # cannot happen with namespaced ids
        raise NotFound("message not found")
    return result


async def customer_messages(
    session: AsyncSession, *, conversation: Conversation, after: int, limit: int = PAGE_SIZE
) -> list[Message]:
    """The visitor's messages and the replies sent to them, after message id `after`."""
    query = (
        select(Message)
        .where(
            Message.conversation_id == conversation.id,
            Message.direction.in_([Direction.IN, Direction.OUT]),
            Message.id > after,
        )
        .order_by(Message.id)
        .limit(limit)
    )
    return list((await session.scalars(query)).all())


async def visitor_attachment(
    session: AsyncSession, *, conversation: Conversation | None, attachment_id: int
) -> Attachment:
    """A file from this visitor's own conversation; NotFound for anyone else's."""
    row = None
    if conversation is not None:
        row = await session.scalar(
            select(Attachment)
            .join(Message, Message.id == Attachment.message_id)
            .where(Attachment.id == attachment_id, Message.conversation_id == conversation.id)
        )
    if row is None:
        raise NotFound(f"no file {attachment_id} in this chat")
    return row


@dataclass(frozen=True, slots=True)
class CustomerAttachment:
    id: int
    filename: str
    content_type: str
    size: int


@dataclass(frozen=True, slots=True)
class CustomerMessage:
    """A message as the visitor may see it: who wrote it (them or the desk), text, files."""

    id: int
    author: str  # "visitor" | "desk"
    text: str
    created_at: datetime
    attachments: list[CustomerAttachment]


def customer_view(message: Message) -> CustomerMessage:
    files = [
        CustomerAttachment(
            id=int(a["id"]),
            filename=str(a.get("filename", "file")),
            content_type=str(a.get("content_type", "")),
            size=int(a.get("size", 0)),
        )
        for a in message.attachments or []
        if isinstance(a, dict) and "id" in a
    ]
    text = message.text
    if files and text == ATTACHMENT_PLACEHOLDER:
        text = ""
    return CustomerMessage(
        id=message.id,
        author="visitor" if message.direction == Direction.IN else "desk",
        text=text,
        created_at=message.created_at,
        attachments=files,
    )

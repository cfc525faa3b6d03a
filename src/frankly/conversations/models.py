"""Contacts, conversations, messages (with outbound provenance) and drafts."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, LargeBinary, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

import frankly.channels.models  # noqa: F401  (conversations.channel_account_id points there)
from frankly.db import Base, str_enum, utcnow


class ConversationStatus(StrEnum):
    OPEN = "open"
    SNOOZED = "snoozed"
    RESOLVED = "resolved"


class Direction(StrEnum):
    IN = "in"
    OUT = "out"
    # A provider's notice shown in the thread (order status changes); never drafted for.
    SYSTEM = "system"


class Origin(StrEnum):
    DRAFT_AS_IS = "draft_as_is"
    DRAFT_EDITED = "draft_edited"
    HUMAN_WRITTEN = "human_written"


class DeliveryStatus(StrEnum):
    QUEUED = "queued"
    DELIVERED = "delivered"
    FAILED = "failed"


class DraftingState(StrEnum):
    """Where an inbound message is in drafting (outbound messages have none)."""

    QUEUED = "queued"
    DRAFTED = "drafted"
    ABSTAINED = "abstained"
    SKIPPED = "skipped"


class DraftStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DISCARDED = "discarded"
    SUPERSEDED = "superseded"
    # An LLM is still writing it: shown live, not sendable until it ends.
    STREAMING = "streaming"


class Contact(Base):
    __tablename__ = "contacts"
    __table_args__ = (UniqueConstraint("channel", "external_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(50))
    external_id: Mapped[str] = mapped_column(String(255))
    display_name: Mapped[str | None] = mapped_column(String(200))
    language: Mapped[str | None] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("channel", "external_id"),
        Index("ix_conversations_activity", "last_activity_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(50))
    external_id: Mapped[str] = mapped_column(String(255))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    status: Mapped[ConversationStatus] = mapped_column(
        str_enum(ConversationStatus), default=ConversationStatus.OPEN
    )
    language: Mapped[str | None] = mapped_column(String(8))
    channel_account_id: Mapped[int | None] = mapped_column(
        ForeignKey("channel_accounts.id", ondelete="SET NULL")
    )
    assigned_agent_id: Mapped[int | None] = mapped_column(
        ForeignKey("agents.id", ondelete="SET NULL")
    )
    claimed_by_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    claimed_at: Mapped[datetime | None]
    snoozed_until: Mapped[datetime | None]
    context: Mapped[dict[str, Any]] = mapped_column(default=dict)
    needs_reply: Mapped[bool] = mapped_column(default=False)
    needs_human: Mapped[bool] = mapped_column(default=False)
    suggestions: Mapped[list[dict[str, Any]]] = mapped_column(default=list)
    last_activity_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Message(Base):
    """A customer message (in) or a reply a person sent (out, with its provenance)."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("channel", "channel_message_id"),
        UniqueConstraint("sent_by_id", "idempotency_key"),
        Index("ix_messages_conversation", "conversation_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(50))
    direction: Mapped[Direction] = mapped_column(str_enum(Direction, 8))
    text: Mapped[str] = mapped_column(Text)
    attachments: Mapped[list[dict[str, Any]]] = mapped_column(default=list)
    channel_message_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    language: Mapped[str | None] = mapped_column(String(8))
    drafting: Mapped[DraftingState | None] = mapped_column(str_enum(DraftingState))
    # Outbound provenance (all NULL for inbound messages).
    origin: Mapped[Origin | None] = mapped_column(str_enum(Origin))
    draft_id: Mapped[int | None] = mapped_column(
        ForeignKey("drafts.id", ondelete="SET NULL", use_alter=True)
    )
    faq_entry_id: Mapped[int | None] = mapped_column(
        ForeignKey("faq_entries.id", ondelete="SET NULL")
    )
    faq_version: Mapped[int | None]
    sent_by_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    body_text: Mapped[str | None] = mapped_column(Text)
    similarity: Mapped[float | None]
    disclosure_id: Mapped[str | None] = mapped_column(String(64))
    disclosure_version: Mapped[int | None]
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    delivery_status: Mapped[DeliveryStatus | None] = mapped_column(str_enum(DeliveryStatus))
    delivery_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None]


class Draft(Base):
    """A proposed reply to one inbound message; only a person can turn it into a message."""

    __tablename__ = "drafts"
    __table_args__ = (Index("ix_drafts_conversation", "conversation_id", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    text: Mapped[str] = mapped_column(Text)
    language: Mapped[str] = mapped_column(String(8))
    faq_entry_id: Mapped[int | None] = mapped_column(
        ForeignKey("faq_entries.id", ondelete="SET NULL")
    )
    faq_version: Mapped[int | None]
    confidence: Mapped[float | None]
    engine: Mapped[str] = mapped_column(String(50))
    status: Mapped[DraftStatus] = mapped_column(str_enum(DraftStatus), default=DraftStatus.PENDING)
    why: Mapped[dict[str, Any]] = mapped_column(default=dict)
    requested_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("agents.id", ondelete="SET NULL")
    )
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    decided_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # LLM drafts: the prompt that wrote it, grounding flags, cost and latency.
    prompt_version: Mapped[str | None] = mapped_column(String(64))
    flags: Mapped[list[dict[str, Any]]] = mapped_column(default=list, server_default="[]")
    tokens_in: Mapped[int | None]
    tokens_out: Mapped[int | None]
    ttft_ms: Mapped[float | None]
    stop_requested: Mapped[bool] = mapped_column(default=False, server_default=false())


class Attachment(Base):
    """A file that came with a customer message (image, PDF), stored in the database."""

    __tablename__ = "attachments"
    __table_args__ = (Index("ix_attachments_message", "message_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

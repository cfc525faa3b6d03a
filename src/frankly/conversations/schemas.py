"""API shapes for inbound messages, conversations, messages, drafts and sends."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from frankly.conversations.models import (
    ConversationStatus,
    DeliveryStatus,
    Direction,
    DraftStatus,
    Origin,
)

MAX_CONTEXT_KEYS = 100


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InboundContact(Strict):
    id: str | None = Field(default=None, min_length=1, max_length=255)
    name: str | None = Field(default=None, max_length=200)
    language: str | None = Field(default=None, pattern=r"^[a-z]{2}$")


class InboundCreate(Strict):
    conversation_id: str = Field(min_length=1, max_length=255)
    message_id: str = Field(min_length=1, max_length=255)
    text: str  # size is checked after cleaning (413 past the limit)
    contact: InboundContact | None = None
    context: dict[str, Any] | None = None

    @field_validator("context")
    @classmethod
    def _context(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(value) > MAX_CONTEXT_KEYS:
            raise ValueError(f"at most {MAX_CONTEXT_KEYS} keys")
        return value


class InboundAccepted(BaseModel):
    conversation_id: int
    message_id: int
    duplicate: bool
    drafting: str | None


class ContactRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    external_id: str
    display_name: str | None
    language: str | None


class MessageRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    direction: Direction
    text: str
    created_at: datetime
    language: str | None
    attachments: list[dict[str, Any]]
    drafting: str | None = None
    origin: Origin | None = None
    draft_id: int | None = None
    faq_entry_id: int | None = None
    faq_version: int | None = None
    sent_by: int | None = Field(default=None, validation_alias="sent_by_id")
    similarity: float | None = None
    disclosure_id: str | None = None
    disclosure_version: int | None = None
    delivery_status: DeliveryStatus | None = None
    delivery_error: str | None = None
    delivered_at: datetime | None = None
    channel_message_id: str | None = None
    idempotency_key: str | None = None


class DraftRead(BaseModel):
    id: int
    conversation_id: int
    message_id: int
    status: DraftStatus
    text: str
    language: str
    faq_entry: str | None
    faq_entry_id: int | None
    faq_version: int | None
    confidence: float | None
    engine: str
    why: dict[str, Any]
    created_at: datetime
    flags: list[dict[str, Any]] = []
    prompt_version: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    ttft_ms: float | None = None


class ConversationRead(BaseModel):
    id: int
    channel: str
    external_id: str
    status: ConversationStatus
    language: str | None
    assigned_agent_id: int | None
    claimed_by_id: int | None
    claimed_at: datetime | None
    snoozed_until: datetime | None
    context: dict[str, Any]
    needs_reply: bool
    needs_human: bool
    has_draft: bool
    suggestions: list[dict[str, Any]]
    last_activity_at: datetime
    created_at: datetime
    contact: ContactRead


class ConversationDetail(ConversationRead):
    messages: list[MessageRead]
    drafts: list[DraftRead]


class ConversationPage(BaseModel):
    items: list[ConversationRead]
    next_cursor: str | None


class SendDraft(Strict):
    text: str | None = None
    idempotency_key: str = Field(min_length=1, max_length=128)


class WriteReply(Strict):
    text: str
    idempotency_key: str = Field(min_length=1, max_length=128)


class UseFaq(Strict):
    faq_entry: int | str


class PreviewRequest(Strict):
    text: str | None = None


class ProvenancePreview(BaseModel):
    origin: Origin
    similarity: float | None
    disclosure_id: str | None
    disclosure_text: str | None
    text: str


class SendResponse(BaseModel):
    created: bool
    message: MessageRead
    draft: DraftRead | None


class RegenerateResponse(BaseModel):
    draft: DraftRead | None
    suggestions: list[dict[str, Any]]
    # An LLM variant is being written: it arrives over the WebSocket as draft.* events.
    streaming: bool = False


class RewriteRequest(Strict):
    kind: Literal["shorter", "formal", "translate"]
    # The text in the agent's editor, when it differs from the stored draft.
    text: str | None = Field(default=None, max_length=20000)


class ClaimRequest(Strict):
    take_over: bool = False


class AssignRequest(Strict):
    agent_id: int | None


class StatusRequest(Strict):
    status: ConversationStatus
    snoozed_until: datetime | None = None

"""The protocol every channel implements, and the plain data that crosses it.

A channel never touches the database and can never create an outbound message: it turns what a
provider holds into `InboundMessage`s (the runner ingests them), and it delivers an
`OutboundMessage` that a person already sent through the send gate (the outbox calls it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class InboundAttachment:
    filename: str
    content_type: str
    data: bytes


@dataclass(slots=True)
class InboundMessage:
    """One message from the provider, identified by the provider's own id (dedupe key)."""

    conversation_external_id: str
    message_external_id: str
    text: str
    contact_external_id: str | None = None
    contact_name: str | None = None
    created_at: datetime | None = None
    attachments: list[InboundAttachment] = field(default_factory=list)
    # Replaces keys of the conversation's context (order amount, status, subject…).
    context: dict[str, Any] | None = None
    # A system notice (order status, "buyer marked paid"): shown as an event, never drafted for.
    system: bool = False
    # Stored and shown but never drafted for (auto-replies, bounces).
    skip_drafting: bool = False
    skip_reason: str | None = None
    # Provider ids this message refers to (email In-Reply-To/References): when one of them is a
    # message Frankly already has, the message joins that message's conversation.
    thread_refs: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ContextUpdate:
    """New facts about a conversation without a message (an order changed status)."""

    conversation_external_id: str
    context: dict[str, Any]


@dataclass(slots=True)
class PollResult:
    messages: list[InboundMessage] = field(default_factory=list)
    contexts: list[ContextUpdate] = field(default_factory=list)
    # Stored in the same transaction as the ingested messages: a restart resumes here.
    cursor: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutboundAttachment:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """A reply a person sent. `text` already carries the disclosure (the send gate applied it)."""

    message_id: int
    conversation_external_id: str
    # The channel's idempotency key, fixed when the message entered the outbox (Bybit msgUuid,
    # email Message-ID, widget message id): a retry after a crash reuses it.
    channel_key: str
    text: str
    body_text: str
    origin: str  # draft_as_is | draft_edited | human_written
    disclosure: str | None
    language: str | None
    context: dict[str, Any]
    contact_external_id: str | None = None
    contact_name: str | None = None
    # Provider ids of earlier messages in the thread, oldest first (email References).
    thread_ids: Sequence[str] = ()
    attachments: Sequence[OutboundAttachment] = ()
    # 1 for the first try; above 1 an earlier attempt may have reached the provider unrecorded.
    attempt: int = 1


class DeliveryError(Exception):
    """Delivery failed. `permanent` errors are not retried (bad address, order closed…)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class ContextField:
    label: str
    value: str


@runtime_checkable
class Channel(Protocol):
    """What the runner and the outbox need from a channel."""

    kind: str

    def new_channel_key(self, *, message_id: int) -> str:
        """A fresh idempotency key for an outbound message (stored before any attempt)."""
        ...

    async def deliver(self, message: OutboundMessage) -> None:
        """Deliver once; the same `channel_key` twice must not reach the customer twice."""
        ...

    def describe_context(self, context: dict[str, Any]) -> list[ContextField]:
        """The conversation context as labelled fields for the inbox's side panel."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class PollingChannel(Channel, Protocol):
    """A channel that fetches inbound messages (Bybit, IMAP) rather than receiving them."""

    poll_seconds: float

    async def poll(self, cursor: dict[str, Any]) -> PollResult:
        """Everything new since `cursor`; must be safe to repeat (the runner dedupes by id)."""
        ...

    async def wait_for_activity(self, timeout: float) -> None:
        """Return early when the provider signals news (IMAP IDLE), else after `timeout`."""
        ...


def generic_context(context: dict[str, Any]) -> list[ContextField]:
    """Context fields as they are, for channels with no special layout."""
    out = []
    for key, value in context.items():
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            out.append(ContextField(key.replace("_", " ").capitalize(), str(value)))
    return out

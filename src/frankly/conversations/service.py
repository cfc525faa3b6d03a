"""Conversations: ingest of customer messages, listing, and the one human send gate."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, exists, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from frankly import metrics
from frankly.audit import service as audit_service
from frankly.auth.models import Agent
from frankly.conversations.models import (
    Contact,
    Conversation,
    ConversationStatus,
    DeliveryStatus,
    Direction,
    Draft,
    DraftingState,
    DraftStatus,
    Message,
    Origin,
)
from frankly.conversations.similarity import DERIVED_THRESHOLD, same_text, similarity
from frankly.db import utcnow
from frankly.drafting import disclosure
from frankly.errors import Conflict, Forbidden, Invalid, NotFound
from frankly.knowledge import service as knowledge_service
from frankly.knowledge.models import ExampleLabel, FaqEntry
from frankly.live import service as live_service


def _insert(session: AsyncSession, model: type[Any]) -> Any:
    """An INSERT that can say ON CONFLICT DO NOTHING (both backends support it)."""
    dialect = session.get_bind().dialect.name
    return (pg_insert if dialect == "postgresql" else sqlite_insert)(model)


async def _insert_ignore(
    session: AsyncSession, model: type[Any], values: dict[str, Any], keys: Sequence[str]
) -> None:
    statement = _insert(session, model).values(**values)
    await session.execute(statement.on_conflict_do_nothing(index_elements=list(keys)))


@dataclass(frozen=True, slots=True)
class IngestResult:
    conversation: Conversation
    message: Message
    duplicate: bool


async def _conversation_for(
    session: AsyncSession,
    *,
    channel: str,
    external_id: str,
    contact_external_id: str | None,
    contact_name: str | None,
    contact_language: str | None,
    context: dict[str, Any] | None,
) -> Conversation:
    """Find or create the conversation (and its contact), race-safe on both backends."""
    query = select(Conversation).where(
        Conversation.channel == channel, Conversation.external_id == external_id
    )
    conversation = await session.scalar(query)
    if conversation is not None and not (contact_name or contact_language):
        return conversation
    now = utcnow()
    contact_key = contact_external_id or external_id
    await _insert_ignore(
        session,
        Contact,
        {
            "channel": channel,
            "external_id": contact_key,
            "display_name": contact_name,
            "language": contact_language,
            "created_at": now,
        },
        ("channel", "external_id"),
    )
    contact = await session.scalar(
        select(Contact).where(Contact.channel == channel, Contact.external_id == contact_key)
    )
    assert contact is not None
    if contact_name and contact.display_name != contact_name:
        contact.display_name = contact_name
    if contact_language and contact.language != contact_language:
        contact.language = contact_language
    if conversation is not None:
        return conversation
    await _insert_ignore(
        session,
        Conversation,
        {
            "channel": channel,
            "external_id": external_id,
            "contact_id": contact.id,
            "status": ConversationStatus.OPEN.value,
            "language": contact_language,
            "context": {},
            "needs_reply": False,
            "needs_human": False,
            "suggestions": [],
            "last_activity_at": now,
            "created_at": now,
        },
        ("channel", "external_id"),
    )
    conversation = await session.scalar(query)
    assert conversation is not None
    return conversation


async def ingest(
    session: AsyncSession,
    *,
    channel: str,
    conversation_external_id: str,
    message_external_id: str,
    text: str,
    contact_external_id: str | None = None,
    contact_name: str | None = None,
    contact_language: str | None = None,
    context: dict[str, Any] | None = None,
    attachments: list[dict[str, Any]] | None = None,
    created_at: datetime | None = None,
    system: bool = False,
    skip_drafting: bool = False,
    channel_account_id: int | None = None,
) -> IngestResult:
    """Store one customer message, once per (channel, message id); never creates outbound messages.

    A new message is queued for drafting (the caller enqueues the job in the same transaction),
    unless it is a provider's system notice (`system`) or must not be drafted for
    (`skip_drafting`: auto-replies, bounces).
    """
    conversation = await _conversation_for(
        session,
        channel=channel,
        external_id=conversation_external_id,
        contact_external_id=contact_external_id,
        contact_name=contact_name,
        contact_language=contact_language,
        context=context,
    )
    now = utcnow()
    inserted = await session.scalars(
        _insert(session, Message)
        .values(
            conversation_id=conversation.id,
            channel=channel,
            direction=(Direction.SYSTEM if system else Direction.IN).value,
            text=text,
            attachments=attachments or [],
            channel_message_id=message_external_id,
            created_at=created_at or now,
            drafting=(
                None
                if system
                else (DraftingState.SKIPPED if skip_drafting else DraftingState.QUEUED).value
            ),
        )
        .on_conflict_do_nothing(index_elements=["channel", "channel_message_id"])
        .returning(Message)
    )
    message = inserted.first()
    if message is None:
        # Seen before (a retry, a poller restart, or a concurrent twin): report the first result.
        metrics.INBOUND_DUPLICATES.labels(channel).inc()
        first = await session.scalar(
            select(Message).where(
                Message.channel == channel, Message.channel_message_id == message_external_id
            )
        )
        assert first is not None
        if first.conversation_id != conversation.id:
            conversation = await get_conversation(session, conversation_id=first.conversation_id)
        return IngestResult(conversation, first, duplicate=True)

    if context:
        conversation.context = {**conversation.context, **context}
    if contact_language and not conversation.language:
        conversation.language = contact_language
    if channel_account_id is not None and conversation.channel_account_id is None:
        conversation.channel_account_id = channel_account_id
    conversation.last_activity_at = now
    if system or skip_drafting:
        await live_service.publish_conversation(
            session,
            conversation_id=conversation.id,
            kind="message.new",
            data={"message_id": message.id, "direction": message.direction.value},
        )
        return IngestResult(conversation, message, duplicate=False)
    conversation.needs_reply = True
    if conversation.status != ConversationStatus.OPEN:
        conversation.status = ConversationStatus.OPEN
        conversation.snoozed_until = None
    # No flush here: the conversation update, the events and the drafting job reach the
    # database together at commit, which keeps SQLite's write lock short.
    await live_service.publish_conversation(
        session,
        conversation_id=conversation.id,
        kind="message.new",
        data={"message_id": message.id, "direction": "in"},
    )
    metrics.INBOUND.labels(channel).inc()
    return IngestResult(conversation, message, duplicate=False)


# ---------------------------------------------------------------- reading


async def get_conversation(session: AsyncSession, *, conversation_id: int) -> Conversation:
    conversation = await session.get(Conversation, conversation_id)
    if conversation is None:
        raise NotFound(f"no conversation with id {conversation_id}")
    return conversation


async def get_contact(session: AsyncSession, *, conversation: Conversation) -> Contact:
    contact = await session.get(Contact, conversation.contact_id)
    assert contact is not None
    return contact


async def get_message(session: AsyncSession, *, message_id: int) -> Message:
    message = await session.get(Message, message_id)
    if message is None:
        raise NotFound(f"no message with id {message_id}")
    return message


async def list_messages(session: AsyncSession, *, conversation: Conversation) -> list[Message]:
    query = select(Message).where(Message.conversation_id == conversation.id).order_by(Message.id)
    return list((await session.scalars(query)).all())


async def recent_customer_texts(
    session: AsyncSession, *, message: Message, limit: int = 3
) -> list[str]:
    """The customer's messages just before `message` (oldest first), for follow-up questions."""
    query = (
        select(Message.text)
        .where(
            Message.conversation_id == message.conversation_id,
            Message.direction == Direction.IN,
            Message.id < message.id,
        )
        .order_by(Message.id.desc())
        .limit(limit)
    )
    return list(reversed((await session.scalars(query)).all()))


async def latest_inbound(session: AsyncSession, *, conversation: Conversation) -> Message | None:
    query = (
        select(Message)
        .where(Message.conversation_id == conversation.id, Message.direction == Direction.IN)
        .order_by(Message.id.desc())
        .limit(1)
    )
    return await session.scalar(query)


async def get_draft(session: AsyncSession, *, draft_id: int) -> Draft:
    draft = await session.get(Draft, draft_id)
    if draft is None:
        raise NotFound(f"no draft with id {draft_id}")
    return draft


async def list_drafts(session: AsyncSession, *, conversation: Conversation) -> list[Draft]:
    query = select(Draft).where(Draft.conversation_id == conversation.id).order_by(Draft.id)
    return list((await session.scalars(query)).all())


@dataclass(slots=True)
class ConversationFilters:
    status: ConversationStatus | None = None
    needs_reply: bool | None = None
    has_draft: bool | None = None
    abstained: bool | None = None
    assigned: str | None = None  # "me", "none", "any" or an agent id
    channel: str | None = None
    language: str | None = None
    q: str | None = None


def _has_pending_draft() -> Any:
    return exists().where(
        Draft.conversation_id == Conversation.id, Draft.status == DraftStatus.PENDING
    )


def filtered_query(filters: ConversationFilters, *, agent: Agent) -> Select[Conversation]:
    query = select(Conversation)
    now = utcnow()
    snooze_over = and_(
        Conversation.status == ConversationStatus.SNOOZED, Conversation.snoozed_until <= now
    )
    if filters.status == ConversationStatus.OPEN:
        # A snooze that has run out puts the conversation back among the open ones.
        query = query.where(or_(Conversation.status == ConversationStatus.OPEN, snooze_over))
    elif filters.status == ConversationStatus.SNOOZED:
        query = query.where(Conversation.status == filters.status, ~snooze_over)
    elif filters.status is not None:
        query = query.where(Conversation.status == filters.status)
    if filters.needs_reply is not None:
        query = query.where(Conversation.needs_reply.is_(filters.needs_reply))
    if filters.has_draft is not None:
        query = query.where(_has_pending_draft() if filters.has_draft else ~_has_pending_draft())
    if filters.abstained is not None:
        query = query.where(Conversation.needs_human.is_(filters.abstained))
    if filters.assigned == "me":
        query = query.where(Conversation.assigned_agent_id == agent.id)
    elif filters.assigned == "none":
        query = query.where(Conversation.assigned_agent_id.is_(None))
    elif filters.assigned == "any":
        query = query.where(Conversation.assigned_agent_id.is_not(None))
    elif filters.assigned:
        if not filters.assigned.isdigit():
            raise Invalid("assigned must be 'me', 'none', 'any' or an agent id")
        query = query.where(Conversation.assigned_agent_id == int(filters.assigned))
    if filters.channel:
        query = query.where(Conversation.channel == filters.channel)
    if filters.language:
        query = query.where(Conversation.language == filters.language)
    if filters.q:
        pattern = "%" + filters.q.lower().replace("\\", "\\\\").replace("%", "\\%") + "%"
        query = query.where(
            exists().where(
                Message.conversation_id == Conversation.id,
                func.lower(Message.text).like(pattern, escape="\\"),
            )
        )
    return query


def encode_cursor(conversation: Conversation) -> str:
    raw = f"{conversation.last_activity_at.isoformat()}|{conversation.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        stamp, ident = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(stamp), int(ident)
    except (ValueError, UnicodeDecodeError):
        raise Invalid("cursor is not one this API returned") from None


async def list_conversations(
    session: AsyncSession,
    *,
    agent: Agent,
    filters: ConversationFilters,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[Conversation], str | None]:
    """Newest activity first, with an opaque cursor for the next page."""
    query = filtered_query(filters, agent=agent)
    if cursor:
        stamp, ident = decode_cursor(cursor)
        query = query.where(
            or_(
                Conversation.last_activity_at < stamp,
                and_(Conversation.last_activity_at == stamp, Conversation.id < ident),
            )
        )
    query = query.order_by(Conversation.last_activity_at.desc(), Conversation.id.desc())
    rows = list((await session.scalars(query.limit(limit + 1))).all())
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


async def pending_draft_ids(session: AsyncSession, *, conversation_ids: Sequence[int]) -> set[int]:
    if not conversation_ids:
        return set()
    query = select(Draft.conversation_id).where(
        Draft.conversation_id.in_(conversation_ids), Draft.status == DraftStatus.PENDING
    )
    return set((await session.scalars(query)).all())


async def _supersede_pending(
    session: AsyncSession, *, conversation_id: int, agent: Agent | None = None
) -> None:
    """Every pending draft of the conversation becomes superseded (it no longer answers it)."""
    await session.execute(
        update(Draft)
        .where(Draft.conversation_id == conversation_id, Draft.status == DraftStatus.PENDING)
        .values(
            status=DraftStatus.SUPERSEDED,
            decided_by_id=agent.id if agent else None,
            decided_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )


async def _decide(
    session: AsyncSession, *, draft: Draft, status: DraftStatus, agent: Agent
) -> bool:
    """Move one draft out of PENDING; False when someone else decided it first."""
    now = utcnow()
    result = await session.execute(
        update(Draft)
        .where(Draft.id == draft.id, Draft.status == DraftStatus.PENDING)
        .values(status=status, decided_by_id=agent.id, decided_at=now)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        return False
    draft.status, draft.decided_by_id, draft.decided_at = status, agent.id, now
    return True


# ---------------------------------------------------------------- drafts (written by drafting)


async def record_draft(
    session: AsyncSession,
    *,
    message: Message,
    text: str,
    language: str,
    entry: FaqEntry | None,
    confidence: float | None,
    engine: str,
    why: dict[str, Any],
    requested_by: Agent | None = None,
    flags: list[dict[str, Any]] | None = None,
) -> Draft:
    """Store a proposed reply; older pending drafts in the conversation become superseded."""
    conversation = await get_conversation(session, conversation_id=message.conversation_id)
    await _supersede_pending(session, conversation_id=conversation.id)
    draft = Draft(
        conversation_id=conversation.id,
        message_id=message.id,
        text=text,
        language=language,
        faq_entry_id=entry.id if entry else None,
        faq_version=entry.version if entry else None,
        confidence=confidence,
        engine=engine,
        why=why,
        requested_by_id=requested_by.id if requested_by else None,
        flags=flags or [],
    )
    session.add(draft)
    conversation.needs_human = False
    await session.flush()
    await live_service.publish_conversation(
        session,
        conversation_id=conversation.id,
        kind="draft.new",
        data={"draft_id": draft.id, "message_id": message.id},
    )
    return draft


async def record_abstention(
    session: AsyncSession, *, message: Message, suggestions: list[dict[str, Any]]
) -> None:
    conversation = await get_conversation(session, conversation_id=message.conversation_id)
    conversation.needs_human = True
    conversation.suggestions = suggestions
    # A draft for an earlier message no longer answers the conversation as it now stands.
    await _supersede_pending(session, conversation_id=conversation.id)
    await session.flush()
    await live_service.publish_conversation(
        session,
        conversation_id=conversation.id,
        kind="draft.abstained",
        data={"message_id": message.id},
    )


async def claim_drafting(
    session: AsyncSession, *, message: Message, state: DraftingState, language: str | None
) -> bool:
    """Move an inbound message out of QUEUED exactly once; False if another run got there first."""
    result = await session.execute(
        update(Message)
        .where(Message.id == message.id, Message.drafting == DraftingState.QUEUED)
        .values(drafting=state, language=language)
        .execution_options(synchronize_session=False)
    )
    claimed = getattr(result, "rowcount", 0) == 1
    if claimed:
        message.drafting = state
        message.language = language
    return claimed


# ---------------------------------------------------------------- the send gate


@dataclass(frozen=True, slots=True)
class Provenance:
    origin: Origin
    similarity: float | None
    disclosure: disclosure.Disclosure | None
    body: str


async def _has_ai_reply(session: AsyncSession, *, conversation: Conversation) -> bool:
    query = select(Message.id).where(
        Message.conversation_id == conversation.id,
        Message.direction == Direction.OUT,
        Message.origin.in_([Origin.DRAFT_AS_IS, Origin.DRAFT_EDITED]),
    )
    return await session.scalar(query.limit(1)) is not None


async def classify(
    session: AsyncSession,
    *,
    conversation: Conversation,
    draft: Draft | None,
    text: str | None,
    threshold: float = DERIVED_THRESHOLD,
) -> Provenance:
    """The provenance a reply will get (used by the gate and by the inbox's preview)."""
    if draft is None:
        if text is None:
            raise Invalid("text is required for a reply written by a person")
        return Provenance(Origin.HUMAN_WRITTEN, None, None, text)
    body = draft.text if text is None else disclosure.strip(text)
    if not body:
        raise Invalid("text is empty once the disclosure is removed")
    score = similarity(draft.text, body)
    if same_text(draft.text, body):
        origin = Origin.DRAFT_AS_IS
    elif score >= threshold:
        origin = Origin.DRAFT_EDITED
    else:
        return Provenance(Origin.HUMAN_WRITTEN, score, None, body)
    kind = (
        disclosure.DisclosureKind.MARKER
        if await _has_ai_reply(session, conversation=conversation)
        else disclosure.DisclosureKind.INTRO
    )
    return Provenance(origin, score, disclosure.disclosure_for(kind, draft.language), body)


@dataclass(frozen=True, slots=True)
class SendResult:
    message: Message
    created: bool


async def _by_idempotency_key(session: AsyncSession, *, agent: Agent, key: str) -> Message | None:
    return await session.scalar(
        select(Message).where(Message.sent_by_id == agent.id, Message.idempotency_key == key)
    )


async def send_reply(
    session: AsyncSession,
    *,
    agent: Agent,
    conversation: Conversation,
    text: str | None,
    idempotency_key: str,
    draft: Draft | None = None,
    derived_threshold: float = DERIVED_THRESHOLD,
) -> SendResult:
    """THE ONLY WAY an outbound customer message is created: a person's action, with provenance.

    Repeating an idempotency key returns the first result and sends nothing; acting on a draft that
    is no longer pending is a Conflict. Disclosure is applied here, never by the client.
    """
    if not isinstance(agent, Agent) or not agent.is_active:
        raise Forbidden("only an active, signed-in agent can send a reply")
    key = idempotency_key.strip()
    if not key or len(key) > 128:
        raise Invalid("idempotency_key must be 1–128 characters")
    previous = await _by_idempotency_key(session, agent=agent, key=key)
    if previous is not None:
        same_target = previous.conversation_id == conversation.id and (
            draft is None or previous.draft_id == draft.id
        )
        if not same_target:
            raise Conflict("idempotency_key was already used for a different reply")
        return SendResult(previous, created=False)
    await ensure_not_claimed_by_other(session, agent=agent, conversation=conversation)
    if draft is not None:
        if draft.conversation_id != conversation.id:
            raise Invalid(f"draft {draft.id} does not belong to conversation {conversation.id}")
        if draft.status != DraftStatus.PENDING:
            raise Conflict(f"draft {draft.id} is already {draft.status.value}")

    provenance = await classify(
        session, conversation=conversation, draft=draft, text=text, threshold=derived_threshold
    )
    now = utcnow()
    if draft is not None:
        new_status = (
            DraftStatus.SUPERSEDED
            if provenance.origin == Origin.HUMAN_WRITTEN
            else DraftStatus.SENT
        )
        if not await _decide(session, draft=draft, status=new_status, agent=agent):
            raise Conflict(f"draft {draft.id} was acted on by someone else")

    sent_text = provenance.body
    if provenance.disclosure is not None:
        sent_text = disclosure.apply(provenance.body, provenance.disclosure)
    message = Message(
        conversation_id=conversation.id,
        channel=conversation.channel,
        direction=Direction.OUT,
        text=sent_text,
        body_text=provenance.body,
        origin=provenance.origin,
        draft_id=draft.id if draft else None,
        faq_entry_id=draft.faq_entry_id if draft else None,
        faq_version=draft.faq_version if draft else None,
        sent_by_id=agent.id,
        similarity=provenance.similarity,
        disclosure_id=provenance.disclosure.id if provenance.disclosure else None,
        disclosure_version=provenance.disclosure.version if provenance.disclosure else None,
        idempotency_key=key,
        delivery_status=DeliveryStatus.QUEUED,
        language=draft.language if draft else conversation.language,
        created_at=now,
    )
    session.add(message)
    # Any other pending draft is now stale: a person has answered.
    await _supersede_pending(session, conversation_id=conversation.id, agent=agent)
    conversation.needs_reply = False
    conversation.needs_human = False
    conversation.last_activity_at = now
    conversation.claimed_by_id = None
    conversation.claimed_at = None
    await session.flush()
    # Same transaction: the reply exists exactly when its delivery is queued.
    from frankly.outbox import service as outbox_service

    await outbox_service.enqueue(session, message=message, conversation=conversation)

    if draft is not None and draft.faq_entry_id and provenance.origin != Origin.HUMAN_WRITTEN:
        inbound = await get_message(session, message_id=draft.message_id)
        entry = await knowledge_service.get_entry(session, entry_id=draft.faq_entry_id)
        await knowledge_service.add_example(
            session,
            entry=entry,
            text=inbound.text,
            language=inbound.language,
            message_id=inbound.id,
            agent=agent,
        )
    await audit_service.record(
        session,
        agent=agent,
        action="message.send",
        target_type="message",
        target_id=message.id,
        detail={
            "conversation_id": conversation.id,
            "origin": provenance.origin.value,
            "draft_id": draft.id if draft else None,
            "similarity": provenance.similarity,
            "disclosure": provenance.disclosure.id if provenance.disclosure else None,
        },
    )
    await live_service.publish_conversation(
        session,
        conversation_id=conversation.id,
        kind="message.sent",
        data={"message_id": message.id, "origin": provenance.origin.value, "sent_by": agent.id},
    )
    metrics.SENDS.labels(provenance.origin.value).inc()
    return SendResult(message, created=True)


async def discard_draft(session: AsyncSession, *, agent: Agent, draft: Draft) -> Draft:
    """A person rejects a draft; its entry counts against this customer message from now on."""
    if not await _decide(session, draft=draft, status=DraftStatus.DISCARDED, agent=agent):
        await session.refresh(draft)
        raise Conflict(f"draft {draft.id} is already {draft.status.value}")
    if draft.faq_entry_id:
        inbound = await get_message(session, message_id=draft.message_id)
        entry = await knowledge_service.get_entry(session, entry_id=draft.faq_entry_id)
        await knowledge_service.add_example(
            session,
            entry=entry,
            text=inbound.text,
            label=ExampleLabel.REJECTED,
            language=inbound.language,
            message_id=inbound.id,
            agent=agent,
        )
    conversation = await get_conversation(session, conversation_id=draft.conversation_id)
    if conversation.needs_reply:
        conversation.needs_human = True
    await audit_service.record(
        session,
        agent=agent,
        action="draft.discard",
        target_type="draft",
        target_id=draft.id,
        detail={"conversation_id": draft.conversation_id, "faq_entry_id": draft.faq_entry_id},
    )
    await live_service.publish_conversation(
        session,
        conversation_id=draft.conversation_id,
        kind="draft.discarded",
        data={"draft_id": draft.id},
    )
    metrics.DRAFTS.labels("discarded").inc()
    return draft


async def supersede_draft(session: AsyncSession, *, agent: Agent, draft: Draft) -> None:
    if not await _decide(session, draft=draft, status=DraftStatus.SUPERSEDED, agent=agent):
        await session.refresh(draft)
        raise Conflict(f"draft {draft.id} is already {draft.status.value}")


async def count_outbound(session: AsyncSession) -> int:
    query = select(func.count(Message.id)).where(Message.direction == Direction.OUT)
    return int(await session.scalar(query) or 0)


# ---------------------------------------------------------------- claims, assignment, status

CLAIM_MINUTES = 10


def claim_is_live(conversation: Conversation) -> bool:
    return (
        conversation.claimed_by_id is not None
        and conversation.claimed_at is not None
        and conversation.claimed_at > utcnow() - timedelta(minutes=CLAIM_MINUTES)
    )


class ClaimedByOther(Conflict):
    error = "claimed"


async def ensure_not_claimed_by_other(
    session: AsyncSession, *, agent: Agent, conversation: Conversation
) -> None:
    """Another agent's live claim blocks replying until this agent takes over explicitly."""
    if claim_is_live(conversation) and conversation.claimed_by_id != agent.id:
        other = await session.get(Agent, conversation.claimed_by_id)
        name = other.name if other else "another agent"
        raise ClaimedByOther(f"{name} is replying to this conversation; take over to reply")


async def claim(
    session: AsyncSession, *, agent: Agent, conversation: Conversation, take_over: bool = False
) -> Conversation:
    """Mark `agent` as replying. Someone else's live claim is a Conflict unless `take_over`."""
    now = utcnow()
    previous = conversation.claimed_by_id if claim_is_live(conversation) else None
    condition = or_(
        Conversation.claimed_by_id.is_(None),
        Conversation.claimed_by_id == agent.id,
        Conversation.claimed_at <= now - timedelta(minutes=CLAIM_MINUTES),
    )
    statement = update(Conversation).where(Conversation.id == conversation.id)
    if not take_over:
        statement = statement.where(condition)
    result = await session.execute(
        statement.values(claimed_by_id=agent.id, claimed_at=now).execution_options(
            synchronize_session=False
        )
    )
    await session.refresh(conversation)
    if getattr(result, "rowcount", 0) != 1:
        await ensure_not_claimed_by_other(session, agent=agent, conversation=conversation)
    if previous != agent.id:
        await audit_service.record(
            session,
            agent=agent,
            action="conversation.take_over" if previous else "conversation.claim",
            target_type="conversation",
            target_id=conversation.id,
            detail={"previous": previous},
        )
        await live_service.publish_conversation(
            session,
            conversation_id=conversation.id,
            kind="conversation.claimed",
            data={"agent_id": agent.id, "agent_name": agent.name, "previous": previous},
        )
    return conversation


async def release(session: AsyncSession, *, agent: Agent, conversation: Conversation) -> None:
    if conversation.claimed_by_id != agent.id:
        return
    conversation.claimed_by_id = None
    conversation.claimed_at = None
    await session.flush()
    await live_service.publish_conversation(
        session,
        conversation_id=conversation.id,
        kind="conversation.released",
        data={"agent_id": agent.id},
    )


async def assign(
    session: AsyncSession, *, agent: Agent, conversation: Conversation, assignee_id: int | None
) -> Conversation:
    """Assign to an active agent (or to nobody with None)."""
    assignee = None
    if assignee_id is not None:
        assignee = await session.get(Agent, assignee_id)
        if assignee is None or not assignee.is_active:
            raise Invalid(f"no active agent with id {assignee_id}")
    before = conversation.assigned_agent_id
    conversation.assigned_agent_id = assignee.id if assignee else None
    await session.flush()
    await audit_service.record(
        session,
        agent=agent,
        action="conversation.assign",
        target_type="conversation",
        target_id=conversation.id,
        detail={"before": before, "after": conversation.assigned_agent_id},
    )
    await live_service.publish_conversation(
        session,
        conversation_id=conversation.id,
        kind="conversation.assigned",
        data={
            "agent_id": conversation.assigned_agent_id,
            "agent_name": assignee.name if assignee else None,
        },
    )
    return conversation


async def set_status(
    session: AsyncSession,
    *,
    agent: Agent,
    conversation: Conversation,
    status: ConversationStatus,
    snoozed_until: datetime | None = None,
) -> Conversation:
    snooze_in_past = snoozed_until is None or snoozed_until <= utcnow()
    if status == ConversationStatus.SNOOZED and snooze_in_past:
        raise Invalid("snoozing needs snoozed_until in the future")
    before = conversation.status
    conversation.status = status
    conversation.snoozed_until = snoozed_until if status == ConversationStatus.SNOOZED else None
    if status == ConversationStatus.RESOLVED:
        conversation.claimed_by_id = None
        conversation.claimed_at = None
    await session.flush()
    await audit_service.record(
        session,
        agent=agent,
        action="conversation.status",
        target_type="conversation",
        target_id=conversation.id,
        detail={"before": before.value, "after": status.value},
    )
    await live_service.publish_conversation(
        session,
        conversation_id=conversation.id,
        kind="conversation.status",
        data={"status": status.value},
    )
    return conversation


# ---------------------------------------------------------------- drafts an LLM streams


async def conversation_history(
    session: AsyncSession, *, message: Message, limit: int
) -> list[tuple[str, str]]:
    """The last `limit` customer and desk messages up to `message`, oldest first."""
    if limit <= 0:
        return []
    rows = (
        await session.execute(
            select(Message.direction, Message.text)
            .where(
                Message.conversation_id == message.conversation_id,
                Message.direction != Direction.SYSTEM,
                Message.id <= message.id,
            )
            .order_by(Message.id.desc())
            .limit(limit)
        )
    ).all()
    return [
        ("customer" if direction == Direction.IN else "agent", text)
        for direction, text in reversed(rows)
    ]


async def start_streaming_draft(
    session: AsyncSession,
    *,
    message: Message,
    language: str,
    entry: FaqEntry | None,
    confidence: float | None,
    why: dict[str, Any],
    requested_by: Agent | None = None,
) -> Draft:
    """A draft an LLM is still writing: visible live, never sendable until it is finished."""
    # A crashed earlier run may have left one behind for this message.
    await session.execute(
        update(Draft)
        .where(Draft.message_id == message.id, Draft.status == DraftStatus.STREAMING)
        .values(status=DraftStatus.SUPERSEDED, decided_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    draft = Draft(
        conversation_id=message.conversation_id,
        message_id=message.id,
        text="",
        language=language,
        faq_entry_id=entry.id if entry else None,
        faq_version=entry.version if entry else None,
        confidence=confidence,
        engine="llm",
        status=DraftStatus.STREAMING,
        why=why,
        requested_by_id=requested_by.id if requested_by else None,
    )
    session.add(draft)
    await session.flush()
    await live_service.publish_conversation(
        session,
        conversation_id=message.conversation_id,
        kind="draft.streaming",
        data={"draft_id": draft.id, "message_id": message.id},
    )
    return draft


async def publish_draft_delta(session: AsyncSession, *, draft: Draft, text: str) -> None:
    await live_service.publish(
        session,
        topic=f"conversation:{draft.conversation_id}",
        kind="draft.delta",
        data={"draft_id": draft.id, "text": text},
    )


async def stop_requested(session: AsyncSession, *, draft: Draft) -> bool:
    value = await session.scalar(select(Draft.stop_requested).where(Draft.id == draft.id))
    return bool(value)


async def request_stop(session: AsyncSession, *, agent: Agent, draft: Draft) -> Draft:
    """An agent stops a draft the LLM is writing; what was written so far stays as a draft."""
    if draft.status != DraftStatus.STREAMING:
        raise Conflict(f"draft {draft.id} is {draft.status.value}, not being written")
    draft.stop_requested = True
    await audit_service.record(
        session, agent=agent, action="draft.stop", target_type="draft", target_id=draft.id
    )
    await session.flush()
    return draft


async def finish_streaming_draft(
    session: AsyncSession,
    *,
    draft: Draft,
    text: str,
    entry: FaqEntry | None,
    engine: str,
    why: dict[str, Any],
    flags: list[dict[str, Any]],
    prompt_version: str | None,
    tokens_in: int | None,
    tokens_out: int | None,
    ttft_ms: float | None,
    confidence: float | None,
    replaces: Draft | None = None,
) -> Draft | None:
    """The LLM finished (or was stopped): the draft becomes the conversation's pending draft —
    unless the conversation moved on while it was written (a person replied, the customer wrote
    again, another run took over): then it is dropped and None returned."""
    stale = await _stale_reason(session, draft=draft, replaces=replaces)
    if stale is not None:
        await drop_streaming_draft(session, draft=draft, reason=stale)
        return None
    values: dict[str, Any] = {
        "text": text,
        "status": DraftStatus.PENDING,
        "engine": engine,
        "why": why,
        "flags": flags,
        "prompt_version": prompt_version,
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "ttft_ms": ttft_ms,
        "confidence": confidence,
    }
    if entry is not None:
        values |= {"faq_entry_id": entry.id, "faq_version": entry.version}
    # Conditional: only a draft still streaming (not one a crashed twin already settled).
    done = await session.execute(
        update(Draft)
        .where(Draft.id == draft.id, Draft.status == DraftStatus.STREAMING)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if getattr(done, "rowcount", 0) != 1:
        return None
    await session.execute(
        update(Draft)
        .where(
            Draft.conversation_id == draft.conversation_id,
            Draft.status == DraftStatus.PENDING,
            Draft.id != draft.id,
        )
        .values(status=DraftStatus.SUPERSEDED, decided_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    await session.refresh(draft)
    conversation = await get_conversation(session, conversation_id=draft.conversation_id)
    conversation.needs_human = False
    await session.flush()
    await live_service.publish_conversation(
        session,
        conversation_id=draft.conversation_id,
        kind="draft.new",
        data={"draft_id": draft.id, "message_id": draft.message_id},
    )
    return draft


async def _stale_reason(
    session: AsyncSession, *, draft: Draft, replaces: Draft | None
) -> str | None:
    """Why a draft that just finished streaming no longer answers the conversation, if so."""
    if replaces is not None:
        status = await session.scalar(select(Draft.status).where(Draft.id == replaces.id))
        if status != DraftStatus.PENDING:
            return f"the draft it rewrites is {status.value if status else 'gone'}"
    later = await session.scalar(
        select(Message.direction)
        .where(
            Message.conversation_id == draft.conversation_id,
            Message.id > draft.message_id,
            Message.direction.in_([Direction.IN, Direction.OUT]),
        )
        .order_by(Message.id.desc())
        .limit(1)
    )
    if later == Direction.OUT:
        return "a person replied while it was being written"
    if later == Direction.IN:
        return "the customer wrote again; the newest message gets its own draft"
    return None


async def drop_streaming_draft(session: AsyncSession, *, draft: Draft, reason: str) -> None:
    """The LLM produced nothing usable: the streaming draft disappears (kept for the record)."""
    await session.execute(
        update(Draft)
        .where(Draft.id == draft.id, Draft.status == DraftStatus.STREAMING)
        .values(
            status=DraftStatus.SUPERSEDED,
            decided_at=utcnow(),
            why={**draft.why, "dropped": reason},
        )
        .execution_options(synchronize_session=False)
    )
    await live_service.publish_conversation(
        session,
        conversation_id=draft.conversation_id,
        kind="draft.dropped",
        data={"draft_id": draft.id, "reason": reason},
    )


async def streaming_draft(session: AsyncSession, *, conversation: Conversation) -> Draft | None:
    return await session.scalar(
        select(Draft)
        .where(Draft.conversation_id == conversation.id, Draft.status == DraftStatus.STREAMING)
        .order_by(Draft.id.desc())
        .limit(1)
    )


async def drop_streaming_for_message(session: AsyncSession, *, message_id: int, reason: str) -> int:
    """Settle every draft still streaming for a message (a failed or dead LLM run)."""
    rows = (
        await session.scalars(
            select(Draft).where(
                Draft.message_id == message_id, Draft.status == DraftStatus.STREAMING
            )
        )
    ).all()
    for draft in rows:
        await drop_streaming_draft(session, draft=draft, reason=reason)
    return len(rows)


async def drop_abandoned_streams(session: AsyncSession, *, older_than_minutes: int) -> int:
    """Housekeeping: drafts that have been "being written" far longer than any provider call
    can take belong to runs that died; they go, and their message is no longer shown as
    waiting on them."""
    cutoff = utcnow() - timedelta(minutes=older_than_minutes)
    rows = (
        await session.scalars(
            select(Draft).where(Draft.status == DraftStatus.STREAMING, Draft.created_at < cutoff)
        )
    ).all()
    for draft in rows:
        await drop_streaming_draft(session, draft=draft, reason="abandoned")
    return len(rows)

"""Drafting replies for inbound messages: language, engine, then a draft or an abstention."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from frankly import metrics
from frankly.audit import service as audit_service
from frankly.auth.models import Agent
from frankly.config import get_settings
from frankly.conversations import service as conversation_service
from frankly.conversations.models import Conversation, Draft, DraftingState, DraftStatus, Message
from frankly.db import utcnow
from frankly.desk import service as desk_service
from frankly.drafting.engine import (
    DraftingEngine,
    DraftOutcome,
    DraftRequest,
    OfflineEngine,
    render_answer,
)
from frankly.drafting.language import detect_language
from frankly.drafting.placeholders import MissingValue
from frankly.errors import Invalid
from frankly.knowledge import service as knowledge_service
from frankly.knowledge.models import ExampleLabel, FaqEntry
from frankly.worker import service as worker_service

DRAFT_JOB = "draft_message"
_ENGINE: DraftingEngine = OfflineEngine()


def get_engine() -> DraftingEngine:
    return _ENGINE


def set_engine(engine: DraftingEngine) -> None:
    global _ENGINE
    _ENGINE = engine


async def enqueue_drafting(session: AsyncSession, *, message: Message) -> None:
    await worker_service.enqueue(
        session,
        name=DRAFT_JOB,
        payload={"message_id": message.id, "stored_at": message.created_at.isoformat()},
    )


@dataclass(frozen=True, slots=True)
class LanguageChoice:
    code: str
    source: str  # detected | conversation | desk


async def choose_language(
    session: AsyncSession, *, text: str, conversation: Conversation
) -> LanguageChoice:
    """The customer's language: detected, else the conversation's, else the desk default."""
    detected = detect_language(text, allowed=get_settings().languages, fallback=None)
    if detected:
        return LanguageChoice(detected, "detected")
    if conversation.language:
        return LanguageChoice(conversation.language, "conversation")
    return LanguageChoice(await desk_service.default_language(session), "desk")


async def _rejected_slugs(session: AsyncSession, *, message: Message) -> frozenset[str]:
    """Entries a person discarded for this very message: never proposed for it again."""
    from frankly.knowledge.models import LearnedExample

    query = (
        select(FaqEntry.slug)
        .join(LearnedExample, LearnedExample.entry_id == FaqEntry.id)
        .where(
            LearnedExample.message_id == message.id, LearnedExample.label == ExampleLabel.REJECTED
        )
    )
    return frozenset((await session.scalars(query)).all())


async def _outcome_for(
    session: AsyncSession,
    *,
    message: Message,
    conversation: Conversation,
    exclude: frozenset[str] = frozenset(),
) -> tuple[DraftOutcome, LanguageChoice]:
    """Ask the engine; reads only, so no write lock is held while it matches."""
    language = await choose_language(session, text=message.text, conversation=conversation)
    previous = await conversation_service.recent_customer_texts(session, message=message)
    request = DraftRequest(
        text=message.text,
        language=language.code,
        context=conversation.context,
        previous=previous,
        threshold=await desk_service.draft_threshold(session),
        exclude=exclude,
    )
    outcome = await get_engine().draft(session, request)
    outcome.why["language_source"] = language.source
    return outcome, language


async def _store(
    session: AsyncSession,
    *,
    message: Message,
    outcome: DraftOutcome,
    language: LanguageChoice,
    requested_by: Agent | None,
) -> Draft | None:
    if language.source == "detected":
        conversation = await conversation_service.get_conversation(
            session, conversation_id=message.conversation_id
        )
        if conversation.language != language.code:
            conversation.language = language.code
    if outcome.drafted and outcome.entry is not None and outcome.text is not None:
        entry = await knowledge_service.get_entry(session, entry_id=outcome.entry.id)
        metrics.DRAFTS.labels("drafted").inc()
        return await conversation_service.record_draft(
            session,
            message=message,
            text=outcome.text,
            language=language.code,
            entry=entry,
            confidence=outcome.confidence,
            engine=outcome.engine,
            why=outcome.why,
            requested_by=requested_by,
            flags=outcome.flags,
        )
    metrics.DRAFTS.labels("abstained").inc()
    await conversation_service.record_abstention(
        session, message=message, suggestions=[s.as_dict() for s in outcome.suggestions]
    )
    return None


async def offline_outcome(
    session: AsyncSession, *, message: Message, conversation: Conversation
) -> tuple[DraftOutcome, LanguageChoice]:
    """What the offline engine proposes for a message (nothing is stored)."""
    return await _outcome_for(session, message=message, conversation=conversation)


async def draft_for_message(session: AsyncSession, *, message_id: int) -> Draft | None:
    """The drafting job's body: runs once per inbound message, whoever runs it and how often.

    With an LLM provider configured and a plausible FAQ match, the LLM job takes over (it
    streams its draft and falls back to this engine's answer when the provider fails).
    """
    from frankly.drafting import llm_jobs

    started = time.perf_counter()
    message = await conversation_service.get_message(session, message_id=message_id)
    if message.drafting != DraftingState.QUEUED:
        return None
    conversation = await conversation_service.get_conversation(
        session, conversation_id=message.conversation_id
    )
    outcome, language = await _outcome_for(session, message=message, conversation=conversation)
    outcome.why.setdefault("timings_ms", {})["total"] = round(
        (time.perf_counter() - started) * 1000, 3
    )
    if llm_jobs.wants_llm(outcome) and await desk_service.llm_enabled(session):
        down = llm_jobs.BREAKER.down_for()
        if down is None:
            await llm_jobs.enqueue_llm_draft(session, message=message)
            return None
        # The provider failed several times in a row: don't make this customer wait for it.
        reason = f"the LLM provider is failing; asking it again in {down:.0f} s"
        outcome.why["llm"] = {"fallback": "provider_down", "reason": reason}
        outcome.flags.append({"kind": "llm_unavailable", "value": None, "detail": reason})
        metrics.LLM_FALLBACKS.labels("provider_down").inc()
    return await store_offline(session, message=message, outcome=outcome, language=language)


async def store_offline(
    session: AsyncSession, *, message: Message, outcome: DraftOutcome, language: LanguageChoice
) -> Draft | None:
    """Record the offline engine's draft or abstention, once per message."""
    state = DraftingState.DRAFTED if outcome.drafted else DraftingState.ABSTAINED
    if not await conversation_service.claim_drafting(
        session, message=message, state=state, language=language.code
    ):
        return None
    draft = await _store(
        session, message=message, outcome=outcome, language=language, requested_by=None
    )
    metrics.DRAFT_LATENCY.observe(max((utcnow() - message.created_at).total_seconds(), 0.0))
    return draft


async def regenerate(session: AsyncSession, *, agent: Agent, draft: Draft) -> Draft | None:
    """Replace a pending draft with the engine's next-best proposal (not the current entry).

    An LLM draft gets another LLM variant instead: it streams in and this returns None.
    """
    from frankly.drafting import llm_jobs

    if draft.status == DraftStatus.PENDING and await llm_jobs.regenerate_with_llm(
        session, agent=agent, draft=draft
    ):
        return None
    message = await conversation_service.get_message(session, message_id=draft.message_id)
    await conversation_service.supersede_draft(session, agent=agent, draft=draft)
    exclude: frozenset[str] = frozenset()
    if draft.faq_entry_id:
        current = await knowledge_service.get_entry(session, entry_id=draft.faq_entry_id)
        exclude = frozenset({current.slug})
    conversation = await conversation_service.get_conversation(
        session, conversation_id=message.conversation_id
    )
    exclude |= await _rejected_slugs(session, message=message)
    outcome, language = await _outcome_for(
        session, message=message, conversation=conversation, exclude=exclude
    )
    new = await _store(
        session, message=message, outcome=outcome, language=language, requested_by=agent
    )
    await audit_service.record(
        session,
        agent=agent,
        action="draft.regenerate",
        target_type="draft",
        target_id=draft.id,
        detail={"new_draft_id": new.id if new else None, "reason": outcome.reason},
    )
    return new


async def draft_from_entry(
    session: AsyncSession, *, agent: Agent, conversation: Conversation, entry: FaqEntry
) -> Draft:
    """ "Use this FAQ": a draft from the entry the agent picked, for the latest customer message.

    The pick is a human decision, so the customer message becomes a learned example right away.
    """
    message = await conversation_service.latest_inbound(session, conversation=conversation)
    if message is None:
        raise Invalid("the conversation has no customer message to answer")
    if not entry.enabled:
        raise Invalid(f"FAQ entry {entry.slug!r} is disabled")
    language = await choose_language(session, text=message.text, conversation=conversation)
    lang = language.code if language.code in entry.answers else next(iter(entry.answers))
    try:
        text = render_answer(entry, language=lang, context=conversation.context)
    except MissingValue as missing:
        raise Invalid(
            f"FAQ entry {entry.slug!r} needs {{{{{missing.path}}}}}, which this conversation's "
            "context does not have; write the reply instead"
        ) from None
    why: dict[str, Any] = {
        "engine": "agent_pick",
        "entry": {"slug": entry.slug, "version": entry.version},
        "picked_by": agent.id,
        "language": lang,
        "language_source": language.source if lang == language.code else "entry",
    }
    draft = await conversation_service.record_draft(
        session,
        message=message,
        text=text,
        language=lang,
        entry=entry,
        confidence=None,
        engine="agent_pick",
        why=why,
        requested_by=agent,
    )
    await knowledge_service.add_example(
        session,
        entry=entry,
        text=message.text,
        language=message.language,
        message_id=message.id,
        agent=agent,
    )
    await audit_service.record(
        session,
        agent=agent,
        action="draft.use_faq",
        target_type="draft",
        target_id=draft.id,
        detail={"conversation_id": conversation.id, "slug": entry.slug},
    )
    return draft


async def store_regenerated(
    session: AsyncSession,
    *,
    message: Message,
    outcome: DraftOutcome,
    language: LanguageChoice,
    agent: Agent | None,
) -> Draft | None:
    """A regenerate the LLM could not serve: the offline engine's draft, or an abstention."""
    return await _store(
        session, message=message, outcome=outcome, language=language, requested_by=agent
    )

"""LLM drafting as background jobs: stream a draft into the inbox, fall back when the provider
fails, and the agent's one-click rewrites.

The matcher still decides *whether* there is an FAQ answer: the LLM only writes from the top
entries it found (and may still say "no answer"). A failed or blocked generation never leaves
the inbox waiting: the offline engine's draft (or its abstention) is used and marked as such.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from frankly import metrics
from frankly.audit import service as audit_service
from frankly.auth.models import Agent
from frankly.channels.service import trusted_context
from frankly.config import get_settings
from frankly.conversations import service as conversation_service
from frankly.conversations.models import Draft, DraftingState, DraftStatus, Message
from frankly.db import commit
from frankly.desk import service as desk_service
from frankly.drafting import service as drafting_service
from frankly.drafting.engine import DraftOutcome, render_answer
from frankly.drafting.llm import Candidate, LlmConfig, LlmUnavailable, LlmWriter, WriteRequest
from frankly.drafting.placeholders import MissingValue
from frankly.errors import Conflict, Invalid
from frankly.knowledge import service as knowledge_service
from frankly.knowledge.models import FaqEntry
from frankly.textutil import clean_text
from frankly.worker import service as worker_service
from frankly.worker.runner import job

log = logging.getLogger("frankly.llm")

LLM_DRAFT_JOB = "llm_draft"
LLM_REWRITE_JOB = "llm_rewrite"
REWRITE_KINDS = ("shorter", "formal", "translate")
DELTA_EVERY_SECONDS = 0.12
STOP_CHECK_SECONDS = 0.25


class Breaker:
    """After FAILURES provider failures in a row, skip the LLM for OPEN_SECONDS: new messages
    get the offline draft at once instead of waiting out timeouts and retries. Per process."""

    FAILURES = 3
    OPEN_SECONDS = 60.0

    def __init__(self) -> None:
        self.failures = 0
        self.open_until = 0.0

    def down_for(self) -> float | None:
        """Seconds until the provider is tried again, or None when it may be asked now."""
        left = self.open_until - time.monotonic()
        return left if left > 0 else None

    def record(self, *, ok: bool) -> None:
        if ok:
            self.failures = 0
            self.open_until = 0.0
            return
        self.failures += 1
        if self.failures >= self.FAILURES:
            self.open_until = time.monotonic() + self.OPEN_SECONDS


BREAKER = Breaker()
_writers: dict[tuple[Any, ...], LlmWriter] = {}
_retired: list[LlmWriter] = []


async def writer_for(session: AsyncSession) -> LlmWriter | None:
    """The writer for the desk's current provider settings (None: no provider configured)."""
    values = await desk_service.llm_config_values(session)
    if values is None:
        return None
    config = LlmConfig(
        base_url=str(values["base_url"]),
        api_key=str(values.get("api_key") or "none"),
        model=str(values["model"]),
        timeout=float(values["timeout"]),
        max_tokens=int(values["max_tokens"]),
        temperature=float(values["temperature"]),
        requests_per_minute=int(values["requests_per_minute"]),
        max_retries=int(values["max_retries"]),
    )
    key = (
        config.base_url,
        config.api_key,
        config.model,
        config.timeout,
        config.max_tokens,
        config.temperature,
        config.requests_per_minute,
        config.max_retries,
    )
    writer = _writers.get(key)
    if writer is None:
        # Settings changed: drafts being written keep their writer; it is closed at shutdown.
        _retired.extend(_writers.values())
        _writers.clear()
        writer = _writers[key] = LlmWriter(config)
    return writer


async def close_writers() -> None:
    for writer in [*_writers.values(), *_retired]:
        await writer.aclose()
    _writers.clear()
    _retired.clear()


def wants_llm(outcome: DraftOutcome) -> bool:
    """Ask the LLM only when the matcher found a plausible entry that may be drafted from."""
    if not outcome.suggestions:
        return False
    if outcome.reason == "never_draft" or outcome.reason.startswith("missing_value"):
        return False
    return outcome.suggestions[0].confidence >= get_settings().llm_min_confidence


async def enqueue_llm_draft(
    session: AsyncSession,
    *,
    message: Message,
    variant: int = 0,
    avoid: list[str] | None = None,
    requested_by: Agent | None = None,
) -> None:
    await worker_service.enqueue(
        session,
        name=LLM_DRAFT_JOB,
        payload={
            "message_id": message.id,
            "variant": variant,
            "avoid": avoid or [],
            "requested_by": requested_by.id if requested_by else None,
        },
        max_attempts=2,
    )


async def _candidates(
    session: AsyncSession, *, outcome: DraftOutcome, language: str, context: dict[str, Any]
) -> tuple[list[Candidate], dict[str, FaqEntry]]:
    """The top entries with their answers in the customer's language, placeholders filled."""
    candidates: list[Candidate] = []
    entries: dict[str, FaqEntry] = {}
    for suggestion in outcome.suggestions[:3]:
        entry = await knowledge_service.get_entry(session, entry_id=suggestion.entry_id)
        if not entry.enabled or entry.never_draft:
            continue
        lang = language if language in entry.answers else next(iter(entry.answers), None)
        if lang is None:
            continue
        try:
            answer = render_answer(entry, language=lang, context=context)
        except MissingValue:
            continue  # an answer we cannot complete is not a source the model may use
        candidates.append(Candidate(entry.slug, entry.question, answer, suggestion.confidence))
        entries[entry.slug] = entry
    return candidates, entries


class _Stream:
    """Relays deltas to the inbox at most every DELTA_EVERY_SECONDS, and watches for Stop."""

    def __init__(self, session: AsyncSession, draft: Draft) -> None:
        self.session = session
        self.draft = draft
        self.text = ""
        self._last_publish = 0.0
        self._last_stop_check = 0.0
        self._stop = False

    async def on_delta(self, piece: str) -> None:
        self.text += piece
        now = time.monotonic()
        if now - self._last_publish >= DELTA_EVERY_SECONDS:
            self._last_publish = now
            await conversation_service.publish_draft_delta(
                self.session, draft=self.draft, text=self.text
            )
            await commit(self.session)

    async def should_stop(self) -> bool:
        now = time.monotonic()
        if not self._stop and now - self._last_stop_check >= STOP_CHECK_SECONDS:
            self._last_stop_check = now
            self._stop = await conversation_service.stop_requested(self.session, draft=self.draft)
        return self._stop


async def _finish_with_offline(
    session: AsyncSession,
    *,
    message: Message,
    draft: Draft,
    outcome: DraftOutcome,
    language: drafting_service.LanguageChoice,
    reason: str,
    kind: str,
    claim: bool,
) -> None:
    """The provider failed or its text was blocked: the offline engine's answer, marked."""
    metrics.LLM_FALLBACKS.labels(kind).inc()
    outcome.why["llm"] = {"fallback": kind, "reason": reason}
    if claim:
        state = DraftingState.DRAFTED if outcome.drafted else DraftingState.ABSTAINED
        if not await conversation_service.claim_drafting(
            session, message=message, state=state, language=language.code
        ):
            await conversation_service.drop_streaming_draft(session, draft=draft, reason="raced")
            return
    if outcome.drafted and outcome.entry is not None and outcome.text is not None:
        entry = await knowledge_service.get_entry(session, entry_id=outcome.entry.id)
        await conversation_service.finish_streaming_draft(
            session,
            draft=draft,
            text=outcome.text,
            entry=entry,
            engine="offline",
            why=outcome.why,
            flags=[{"kind": kind, "value": None, "detail": reason}],
            prompt_version=None,
            tokens_in=None,
            tokens_out=None,
            ttft_ms=None,
            confidence=outcome.confidence,
        )
    else:
        await conversation_service.drop_streaming_draft(session, draft=draft, reason=kind)
        await conversation_service.record_abstention(
            session, message=message, suggestions=[s.as_dict() for s in outcome.suggestions]
        )


async def llm_draft(
    session: AsyncSession,
    *,
    message_id: int,
    variant: int = 0,
    avoid: list[str] | None = None,
    requested_by_id: int | None = None,
) -> Draft | None:
    """Write a draft with the LLM for one inbound message, streaming it to the inbox."""
    message = await conversation_service.get_message(session, message_id=message_id)
    regenerate = requested_by_id is not None
    if not regenerate and message.drafting != DraftingState.QUEUED:
        return None
    conversation = await conversation_service.get_conversation(
        session, conversation_id=message.conversation_id
    )
    outcome, language = await drafting_service.offline_outcome(
        session, message=message, conversation=conversation
    )
    writer = await writer_for(session)
    requested_by = await session.get(Agent, requested_by_id) if requested_by_id else None
    if writer is None or not wants_llm(outcome):
        if regenerate:
            # The provider went away (or the match did): the offline answer, else "needs a
            # human" — never a conversation left with nothing.
            return await drafting_service.store_regenerated(
                session, message=message, outcome=outcome, language=language, agent=requested_by
            )
        return await drafting_service.store_offline(
            session, message=message, outcome=outcome, language=language
        )
    candidates, entries = await _candidates(
        session, outcome=outcome, language=language.code, context=conversation.context
    )
    top = entries.get(candidates[0].slug) if candidates else None
    draft = await conversation_service.start_streaming_draft(
        session,
        message=message,
        language=language.code,
        entry=top,
        confidence=outcome.suggestions[0].confidence if outcome.suggestions else None,
        why={"engine": "llm", "variant": variant},
        requested_by=requested_by,
    )
    await commit(session)
    if not candidates:
        await _finish_with_offline(
            session,
            message=message,
            draft=draft,
            outcome=outcome,
            language=language,
            reason="no FAQ answer could be completed for this conversation",
            kind="llm_skipped",
            claim=not regenerate,
        )
        return None
    history = await conversation_service.conversation_history(
        session, message=message, limit=get_settings().llm_history_messages
    )
    request = WriteRequest(
        customer_text=message.text,
        language=language.code,
        candidates=candidates,
        history=history[:-1] if history and history[-1][1] == message.text else history,
        context=trusted_context(conversation.channel, conversation.context),
        tone_notes=await desk_service.tone_notes(session),
        variant=variant,
        avoid=tuple(avoid or ()),
    )
    stream = _Stream(session, draft)
    try:
        result = await writer.write(
            request, on_delta=stream.on_delta, should_stop=stream.should_stop
        )
        BREAKER.record(ok=True)
    except LlmUnavailable as exc:
        BREAKER.record(ok=False)
        await _finish_with_offline(
            session,
            message=message,
            draft=draft,
            outcome=outcome,
            language=language,
            reason=str(exc),
            kind="llm_unavailable",
            claim=not regenerate,
        )
        return None
    _record_usage(result.tokens_in, result.tokens_out, result.ttft_ms)
    why = {
        **outcome.why,
        "engine": "llm",
        "variant": variant,
        "llm": {
            "prompt_version": result.prompt_version,
            "total_ms": round(result.total_ms, 1),
            "ttft_ms": result.ttft_ms,
            "candidates": [c.slug for c in candidates],
        },
    }
    if result.blocked:
        await _finish_with_offline(
            session,
            message=message,
            draft=draft,
            outcome=outcome,
            language=language,
            reason=result.blocked,
            kind="llm_blocked",
            claim=not regenerate,
        )
        return None
    if result.text is None or not result.text.strip():
        reason = result.no_answer_reason or "the model returned nothing"
        if not regenerate and not await conversation_service.claim_drafting(
            session, message=message, state=DraftingState.ABSTAINED, language=language.code
        ):
            await conversation_service.drop_streaming_draft(session, draft=draft, reason="raced")
            return None
        outcome.why["llm"] = {"no_answer": reason, "prompt_version": result.prompt_version}
        await conversation_service.drop_streaming_draft(session, draft=draft, reason="no_answer")
        await conversation_service.record_abstention(
            session, message=message, suggestions=[s.as_dict() for s in outcome.suggestions]
        )
        metrics.DRAFTS.labels("abstained").inc()
        return None
    if not regenerate and not await conversation_service.claim_drafting(
        session, message=message, state=DraftingState.DRAFTED, language=language.code
    ):
        await conversation_service.drop_streaming_draft(session, draft=draft, reason="raced")
        return None
    flags = list(result.flags)
    if result.stopped:
        flags.append({"kind": "stopped", "value": None, "detail": "stopped by an agent"})
    entry = entries.get(result.entry_slug or "", top)
    metrics.DRAFTS.labels("drafted").inc()
    return await conversation_service.finish_streaming_draft(
        session,
        draft=draft,
        text=result.text.strip(),
        entry=entry,
        engine="llm",
        why=why,
        flags=flags,
        prompt_version=result.prompt_version,
        tokens_in=result.tokens_in,
        tokens_out=result.tokens_out,
        ttft_ms=result.ttft_ms,
        confidence=next(
            (c.confidence for c in candidates if entry and c.slug == entry.slug),
            draft.confidence,
        ),
    )


def _record_usage(tokens_in: int | None, tokens_out: int | None, ttft_ms: float | None) -> None:
    if tokens_in:
        metrics.LLM_TOKENS.labels("in").inc(tokens_in)
    if tokens_out:
        metrics.LLM_TOKENS.labels("out").inc(tokens_out)
    if ttft_ms is not None:
        metrics.LLM_TTFT.observe(ttft_ms / 1000)


# ---------------------------------------------------------------- agent actions


async def regenerate_with_llm(session: AsyncSession, *, agent: Agent, draft: Draft) -> bool:
    """Another LLM variant of a pending LLM draft; False when the offline regenerate applies."""
    if draft.engine != "llm" or not await desk_service.llm_enabled(session):
        return False
    message = await conversation_service.get_message(session, message_id=draft.message_id)
    await conversation_service.supersede_draft(session, agent=agent, draft=draft)
    variant = int(draft.why.get("variant", 0)) + 1
    await enqueue_llm_draft(
        session, message=message, variant=variant, avoid=[draft.text], requested_by=agent
    )
    await audit_service.record(
        session,
        agent=agent,
        action="draft.regenerate",
        target_type="draft",
        target_id=draft.id,
        detail={"engine": "llm", "variant": variant},
    )
    return True


async def request_rewrite(
    session: AsyncSession, *, agent: Agent, draft: Draft, kind: str, text: str | None
) -> None:
    """Queue a one-click rewrite (shorter / more formal / translate) of the current draft."""
    if kind not in REWRITE_KINDS:
        raise Invalid(f"kind must be one of {', '.join(REWRITE_KINDS)}")
    if draft.status != DraftStatus.PENDING:
        raise Conflict(f"draft {draft.id} is {draft.status.value}, not pending")
    if not await desk_service.llm_enabled(session):
        raise Invalid("rewrites need an LLM provider; configure one in Settings")
    if text is not None:
        text = clean_text(text, limit_bytes=get_settings().max_message_bytes)
    await worker_service.enqueue(
        session,
        name=LLM_REWRITE_JOB,
        payload={"draft_id": draft.id, "kind": kind, "text": text, "agent_id": agent.id},
        max_attempts=2,
    )
    await audit_service.record(
        session,
        agent=agent,
        action="draft.rewrite",
        target_type="draft",
        target_id=draft.id,
        detail={"kind": kind},
    )


async def llm_rewrite(
    session: AsyncSession, *, draft_id: int, kind: str, text: str | None, agent_id: int | None
) -> Draft | None:
    original = await conversation_service.get_draft(session, draft_id=draft_id)
    if original.status != DraftStatus.PENDING:
        return None
    writer = await writer_for(session)
    if writer is None:
        return None
    message = await conversation_service.get_message(session, message_id=original.message_id)
    conversation = await conversation_service.get_conversation(
        session, conversation_id=original.conversation_id
    )
    entry = (
        await knowledge_service.get_entry(session, entry_id=original.faq_entry_id)
        if original.faq_entry_id
        else None
    )
    sources: list[Candidate] = []
    if entry is not None:
        lang = original.language if original.language in entry.answers else None
        if lang:
            try:
                answer = render_answer(entry, language=lang, context=conversation.context)
                sources.append(Candidate(entry.slug, entry.question, answer, 1.0))
            except MissingValue:
                pass
    language = (
        conversation.language or original.language if kind == "translate" else original.language
    )
    agent = await session.get(Agent, agent_id) if agent_id else None
    draft = await conversation_service.start_streaming_draft(
        session,
        message=message,
        language=language,
        entry=entry,
        confidence=original.confidence,
        why={**original.why, "rewrite": {"kind": kind, "of": original.id}},
        requested_by=agent,
    )
    await commit(session)
    stream = _Stream(session, draft)
    current = (text or original.text).strip()
    try:
        result = await writer.rewrite(
            text=current,
            kind=kind,  # type: ignore[arg-type]
            language=language,
            sources=sources,
            context=trusted_context(conversation.channel, conversation.context),
            on_delta=stream.on_delta,
            should_stop=stream.should_stop,
        )
    except LlmUnavailable as exc:
        await conversation_service.drop_streaming_draft(
            session, draft=draft, reason=f"rewrite failed: {exc}"
        )
        return None
    _record_usage(result.tokens_in, result.tokens_out, result.ttft_ms)
    if result.blocked or not result.text or not result.text.strip():
        await conversation_service.drop_streaming_draft(
            session, draft=draft, reason=result.blocked or "rewrite returned nothing"
        )
        return None
    flags = list(result.flags)
    if result.stopped:
        flags.append({"kind": "stopped", "value": None, "detail": "stopped by an agent"})
    return await conversation_service.finish_streaming_draft(
        session,
        draft=draft,
        text=result.text.strip(),
        entry=entry,
        engine="llm",
        why=draft.why,
        flags=flags,
        prompt_version=result.prompt_version,
        tokens_in=result.tokens_in,
        tokens_out=result.tokens_out,
        ttft_ms=result.ttft_ms,
        confidence=original.confidence,
        replaces=original,
    )


Handler = Callable[[AsyncSession, dict[str, Any]], Awaitable[None]]


@job(LLM_DRAFT_JOB)
async def llm_draft_job(session: AsyncSession, payload: dict[str, Any]) -> None:
    message_id = int(payload["message_id"])
    try:
        await llm_draft(
            session,
            message_id=message_id,
            variant=int(payload.get("variant", 0)),
            avoid=list(payload.get("avoid") or []),
            requested_by_id=payload.get("requested_by"),
        )
    except Exception:
        # Whatever broke (the database mid-stream, a deleted entry…), the message must not stay
        # "being written" or queued forever: settle it with the offline engine, then report.
        log.exception("LLM drafting of message %s failed; using the offline engine", message_id)
        await session.rollback()
        await settle_after_failure(session, message_id=message_id)
        await commit(session)


@job(LLM_REWRITE_JOB)
async def llm_rewrite_job(session: AsyncSession, payload: dict[str, Any]) -> None:
    draft_id = int(payload["draft_id"])
    try:
        await llm_rewrite(
            session,
            draft_id=draft_id,
            kind=str(payload["kind"]),
            text=payload.get("text"),
            agent_id=payload.get("agent_id"),
        )
    except Exception:
        log.exception("rewrite of draft %s failed; the draft stays as it was", draft_id)
        await session.rollback()
        original = await conversation_service.get_draft(session, draft_id=draft_id)
        await conversation_service.drop_streaming_for_message(
            session, message_id=original.message_id, reason="rewrite failed"
        )
        await commit(session)


async def settle_after_failure(session: AsyncSession, *, message_id: int) -> None:
    """After an unexpected LLM job error: no streaming leftovers, and the message drafted (or
    abstained) by the offline engine if it still waits."""
    await conversation_service.drop_streaming_for_message(
        session, message_id=message_id, reason="the LLM job failed"
    )
    message = await conversation_service.get_message(session, message_id=message_id)
    if message.drafting == DraftingState.QUEUED:
        conversation = await conversation_service.get_conversation(
            session, conversation_id=message.conversation_id
        )
        outcome, language = await drafting_service.offline_outcome(
            session, message=message, conversation=conversation
        )
        outcome.why["llm"] = {"fallback": "llm_error"}
        await drafting_service.store_offline(
            session, message=message, outcome=outcome, language=language
        )

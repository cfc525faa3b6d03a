"""The drafting engine protocol and the default offline engine (FAQ matching, or abstain)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from frankly.drafting.matcher import EntryText, Matcher
from frankly.drafting.placeholders import MissingValue, fill
from frankly.knowledge import service as knowledge_service
from frankly.knowledge.models import ExampleLabel

OFFLINE_ENGINE = "offline"


@dataclass(frozen=True, slots=True)
class IndexedEntry:
    id: int
    slug: str
    version: int
    question: str
    answers: dict[str, str]
    never_draft: bool


@dataclass(frozen=True, slots=True)
class Suggestion:
    entry_id: int
    slug: str
    question: str
    confidence: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "entry_id": self.entry_id,
            "slug": self.slug,
            "question": self.question,
            "confidence": round(self.confidence, 4),
        }


@dataclass(frozen=True, slots=True)
class DraftRequest:
    text: str
    language: str
    context: dict[str, Any]
    previous: Sequence[str] = ()
    threshold: float = 0.5
    exclude: frozenset[str] = frozenset()


@dataclass(slots=True)
class DraftOutcome:
    """Either a proposal (entry + text) or an abstention with a reason; suggestions either way."""

    entry: IndexedEntry | None
    text: str | None
    confidence: float | None
    reason: str
    suggestions: list[Suggestion] = field(default_factory=list)
    why: dict[str, Any] = field(default_factory=dict)
    engine: str = OFFLINE_ENGINE
    # Shown above the draft in the inbox (e.g. why the LLM was not asked).
    flags: list[dict[str, Any]] = field(default_factory=list)

    @property
    def drafted(self) -> bool:
        return self.text is not None


class DraftingEngine(Protocol):
    name: str

    async def draft(self, session: AsyncSession, request: DraftRequest) -> DraftOutcome: ...


@dataclass(slots=True)
class KnowledgeIndex:
    matcher: Matcher | None  # None while the FAQ has no enabled entry
    entries: dict[str, IndexedEntry]
    stamp: knowledge_service.KnowledgeStamp
    last_example_id: int


async def _build(
    session: AsyncSession, stamp: knowledge_service.KnowledgeStamp, previous: Matcher | None = None
) -> KnowledgeIndex:
    rows = await knowledge_service.list_entries(session, enabled_only=True)
    entries = {
        row.slug: IndexedEntry(
            id=row.id,
            slug=row.slug,
            version=row.version,
            question=row.question,
            answers=dict(row.answers),
            never_draft=row.never_draft,
        )
        for row in rows
    }
    texts = [
        EntryText(
            key=row.slug,
            question=row.question,
            paraphrases=tuple(row.paraphrases),
            answers=dict(row.answers),
        )
        for row in rows
    ]
    slug_by_id = {row.id: row.slug for row in rows}
    examples = await knowledge_service.list_examples(session)
    positives = [
        (ex.text, slug_by_id[ex.entry_id])
        for ex in examples
        if ex.entry_id in slug_by_id and ex.label == ExampleLabel.CONFIRMED
    ]
    negatives = [
        (ex.text, slug_by_id[ex.entry_id])
        for ex in examples
        if ex.entry_id in slug_by_id and ex.label == ExampleLabel.REJECTED
    ]
    matcher: Matcher | None = None
    if texts and previous is not None:
        # Reuses the old index's encodings: only texts it never saw are encoded again.
        matcher = await asyncio.to_thread(previous.rebuild, texts, positives, negatives)
    elif texts:
        matcher = await asyncio.to_thread(Matcher, texts, positives, negatives)
    last = max((ex.id for ex in examples), default=0)
    return KnowledgeIndex(matcher, entries, stamp, last)


class IndexCache:
    """One matcher per process, refreshed from the database when the knowledge changes.

    New learned examples are added incrementally (milliseconds); edited entries or removed
    examples trigger a rebuild. The database is the source of truth, so restarts lose nothing.
    """

    def __init__(self) -> None:
        self._index: KnowledgeIndex | None = None
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        self._index = None

    async def get(self, session: AsyncSession) -> KnowledgeIndex:
        async with self._lock:
            stamp = await knowledge_service.knowledge_stamp(session)
            index = self._index
            if index is not None and index.stamp == stamp:
                return index
            if (
                index is not None
                and index.stamp.entries_version == stamp.entries_version
                and stamp.examples[0] - index.stamp.examples[0]
                == stamp.examples[1] - index.stamp.examples[1]
                > 0
            ):
                await self._add_new_examples(session, index, stamp)
                return index
            self._index = await _build(session, stamp, index.matcher if index is not None else None)
            return self._index

    async def _add_new_examples(
        self, session: AsyncSession, index: KnowledgeIndex, stamp: knowledge_service.KnowledgeStamp
    ) -> None:
        slug_by_id = {entry.id: entry.slug for entry in index.entries.values()}
        matcher = index.matcher
        for example in await knowledge_service.examples_since(
            session, after_id=index.last_example_id
        ):
            slug = slug_by_id.get(example.entry_id)
            if slug is not None and matcher is not None:
                if example.label == ExampleLabel.CONFIRMED:
                    matcher.add_example(slug, example.text)
                else:
                    matcher.add_negative(slug, example.text)
            index.last_example_id = max(index.last_example_id, example.id)
        index.stamp = stamp


INDEX_CACHE = IndexCache()


class HasAnswers(Protocol):
    """An FAQ entry as stored or as indexed: its answers by language."""

    @property
    def answers(self) -> Mapping[str, str]: ...


def render_answer(entry: HasAnswers, *, language: str, context: dict[str, Any]) -> str:
    """The entry's answer in `language` with placeholders filled; raises LookupError if it can't."""
    answer = entry.answers.get(language)
    if answer is None:
        raise LookupError(f"no answer in {language!r}")
    return fill(answer, context)


class OfflineEngine:
    """Matches the message against the FAQ and drafts the best entry's answer, or abstains."""

    name = OFFLINE_ENGINE

    def __init__(self, cache: IndexCache | None = None) -> None:
        self.cache = cache or INDEX_CACHE

    async def draft(self, session: AsyncSession, request: DraftRequest) -> DraftOutcome:
        started = time.perf_counter()
        index = await self.cache.get(session)
        loaded = time.perf_counter()
        found = (
            index.matcher.match(request.text, context=request.previous, k=8)
            if index.matcher is not None
            else []
        )
        candidates = [c for c in found if c.key in index.entries and c.key not in request.exclude]
        matched = time.perf_counter()
        suggestions = [
            Suggestion(
                entry_id=index.entries[c.key].id,
                slug=c.key,
                question=index.entries[c.key].question,
                confidence=c.confidence,
            )
            for c in candidates[:3]
        ]
        why: dict[str, Any] = {
            "engine": self.name,
            "threshold": request.threshold,
            "language": request.language,
            "candidates": [s.as_dict() for s in suggestions],
            "runner_up": suggestions[1].as_dict() if len(suggestions) > 1 else None,
            "timings_ms": {
                "index": round((loaded - started) * 1000, 3),
                "match": round((matched - loaded) * 1000, 3),
            },
        }
        outcome = DraftOutcome(None, None, None, "no_entries", suggestions, why)
        if not candidates:
            return outcome
        best = candidates[0]
        entry = index.entries[best.key]
        outcome.confidence = best.confidence
        why["entry"] = {"slug": entry.slug, "version": entry.version}
        if best.confidence < request.threshold:
            outcome.reason = "below_threshold"
        elif entry.never_draft:
            outcome.reason = "never_draft"
        else:
            try:
                outcome.text = render_answer(
                    entry, language=request.language, context=request.context
                )
                outcome.entry = entry
                outcome.reason = "drafted"
            except MissingValue as missing:
                outcome.reason = f"missing_value:{missing.path}"
            except LookupError:
                outcome.reason = f"no_answer_in_language:{request.language}"
        why["reason"] = outcome.reason
        return outcome

"""What a drafting threshold would give on the desk's own history (its learned examples)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from frankly.drafting.matcher import CvRecord, EntryText, Matcher
from frankly.knowledge import service as knowledge_service
from frankly.knowledge.models import ExampleLabel

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


@dataclass(frozen=True, slots=True)
class ThresholdRow:
    threshold: float
    precision: float | None  # drafts right / drafts
    coverage: float  # in-FAQ messages drafted
    drafts: int


@dataclass(frozen=True, slots=True)
class ThresholdTable:
    examples: int
    rows: list[ThresholdRow]
    for_precision_95: float | None


def _table(records: list[CvRecord]) -> list[ThresholdRow]:
    in_scope = sum(1 for r in records if not r.out_of_scope) or 1
    rows = []
    for t in THRESHOLDS:
        drafted = [r for r in records if r.confidence >= t]
        right = sum(1 for r in drafted if r.correct)
        rows.append(
            ThresholdRow(
                threshold=t,
                precision=right / len(drafted) if drafted else None,
                coverage=sum(1 for r in drafted if r.correct and not r.out_of_scope) / in_scope,
                drafts=len(drafted),
            )
        )
    return rows


async def threshold_table(session: AsyncSession) -> ThresholdTable:
    """Cross-validated precision and coverage per threshold on confirmed examples."""
    entries = await knowledge_service.list_entries(session, enabled_only=True)
    slugs = {e.id: e.slug for e in entries}
    examples = [
        (ex.text, slugs[ex.entry_id])
        for ex in await knowledge_service.list_examples(session, label=ExampleLabel.CONFIRMED)
        if ex.entry_id in slugs
    ]
    if not entries or len(examples) < 10:
        return ThresholdTable(len(examples), [], None)
    texts = [
        EntryText(
            key=e.slug,
            question=e.question,
            paraphrases=tuple(e.paraphrases),
            answers=dict(e.answers),
        )
        for e in entries
    ]

    def build() -> tuple[list[CvRecord], float]:
        matcher = Matcher(texts, examples)
        return list(matcher.cv_records), matcher.threshold_for_precision(0.95)

    records, for_95 = await asyncio.to_thread(build)
    return ThresholdTable(len(examples), _table(records), for_95 if records else None)

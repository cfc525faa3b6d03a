"""The FAQ knowledge base: entries with immutable versions, import/export, learned examples."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Select, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from frankly.audit import service as audit_service
from frankly.auth.models import Agent
from frankly.db import utcnow
from frankly.errors import Conflict, NotFound
from frankly.knowledge.files import FaqFileEntry
from frankly.knowledge.models import ExampleLabel, FaqEntry, FaqVersion, LearnedExample
from frankly.knowledge.schemas import FaqEntryCreate, FaqEntryUpdate, ImportReport

CONTENT_FIELDS = ("question", "paraphrases", "answers", "tags", "never_draft", "enabled")


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def list_entries(
    session: AsyncSession,
    *,
    q: str | None = None,
    enabled_only: bool = False,
    enabled: bool | None = None,
) -> list[FaqEntry]:
    query: Select[FaqEntry] = select(FaqEntry).order_by(FaqEntry.slug)
    if enabled_only:
        enabled = True
    if enabled is not None:
        query = query.where(FaqEntry.enabled.is_(enabled))
    if q:
        pattern = _like(q.lower())
        query = query.where(
            or_(
                func.lower(FaqEntry.slug).like(pattern, escape="\\"),
                func.lower(FaqEntry.question).like(pattern, escape="\\"),
            )
        )
    return list((await session.scalars(query)).all())


async def get_entry(session: AsyncSession, *, entry_id: int) -> FaqEntry:
    entry = await session.get(FaqEntry, entry_id)
    if entry is None:
        raise NotFound(f"no FAQ entry with id {entry_id}")
    return entry


async def slugs_by_id(session: AsyncSession, *, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = await session.execute(select(FaqEntry.id, FaqEntry.slug).where(FaqEntry.id.in_(ids)))
    return {int(i): str(s) for i, s in rows.all()}


async def get_entry_by_slug(session: AsyncSession, *, slug: str) -> FaqEntry:
    entry = await session.scalar(select(FaqEntry).where(FaqEntry.slug == slug))
    if entry is None:
        raise NotFound(f"no FAQ entry with slug {slug!r}")
    return entry


async def find_entry(session: AsyncSession, *, ref: int | str) -> FaqEntry:
    """An entry by id (int or digits) or by slug."""
    if isinstance(ref, int) or ref.isdigit():
        return await get_entry(session, entry_id=int(ref))
    return await get_entry_by_slug(session, slug=ref)


def _snapshot(entry: FaqEntry, agent: Agent | None) -> FaqVersion:
    return FaqVersion(
        entry_id=entry.id,
        version=entry.version,
        question=entry.question,
        paraphrases=list(entry.paraphrases),
        answers=dict(entry.answers),
        tags=list(entry.tags),
        enabled=entry.enabled,
        never_draft=entry.never_draft,
        created_by_id=agent.id if agent else None,
    )


async def create_entry(
    session: AsyncSession, *, data: FaqEntryCreate, agent: Agent | None
) -> FaqEntry:
    if await session.scalar(select(FaqEntry.id).where(FaqEntry.slug == data.slug)):
        raise Conflict(f"an FAQ entry with slug {data.slug!r} already exists")
    entry = FaqEntry(**data.model_dump(), version=1)
    session.add(entry)
    await session.flush()
    session.add(_snapshot(entry, agent))
    await audit_service.record(
        session,
        agent=agent,
        action="faq.create",
        target_type="faq_entry",
        target_id=entry.id,
        detail={"slug": entry.slug, "version": 1},
    )
    await session.flush()
    return entry


async def update_entry(
    session: AsyncSession, *, entry: FaqEntry, data: FaqEntryUpdate, agent: Agent | None
) -> FaqEntry:
    """Apply the given fields; a real change bumps the version and snapshots it."""
    changes = {
        name: value
        for name, value in data.model_dump(exclude_unset=True).items()
        if value is not None and getattr(entry, name) != value
    }
    if not changes:
        return entry
    for name, value in changes.items():
        setattr(entry, name, value)
    entry.version += 1
    entry.updated_at = utcnow()
    session.add(_snapshot(entry, agent))
    await audit_service.record(
        session,
        agent=agent,
        action="faq.update",
        target_type="faq_entry",
        target_id=entry.id,
        detail={"slug": entry.slug, "version": entry.version, "fields": sorted(changes)},
    )
    await session.flush()
    return entry


async def delete_entry(session: AsyncSession, *, entry: FaqEntry, agent: Agent | None) -> None:
    """Delete an entry nobody has drafted from yet; used entries must be disabled instead."""
    from frankly.conversations.models import Draft

    used = await session.scalar(select(func.count(Draft.id)).where(Draft.faq_entry_id == entry.id))
    if used:
        raise Conflict(
            f"FAQ entry {entry.slug!r} was used by {used} draft(s); disable it instead of deleting"
        )
    await audit_service.record(
        session,
        agent=agent,
        action="faq.delete",
        target_type="faq_entry",
        target_id=entry.id,
        detail={"slug": entry.slug, "version": entry.version},
    )
    await session.delete(entry)
    await session.flush()


async def list_versions(session: AsyncSession, *, entry: FaqEntry) -> list[FaqVersion]:
    query = select(FaqVersion).where(FaqVersion.entry_id == entry.id).order_by(FaqVersion.version)
    return list((await session.scalars(query)).all())


async def get_version(session: AsyncSession, *, entry: FaqEntry, version: int) -> FaqVersion:
    found = await session.scalar(
        select(FaqVersion).where(FaqVersion.entry_id == entry.id, FaqVersion.version == version)
    )
    if found is None:
        raise NotFound(f"FAQ entry {entry.slug!r} has no version {version}")
    return found


def to_file_entry(entry: FaqEntry) -> FaqFileEntry:
    return FaqFileEntry(
        slug=entry.slug,
        question=entry.question,
        paraphrases=list(entry.paraphrases),
        answers=dict(entry.answers),
        tags=list(entry.tags),
        never_draft=entry.never_draft,
        enabled=entry.enabled,
    )


async def import_entries(
    session: AsyncSession,
    *,
    entries: Sequence[FaqFileEntry],
    agent: Agent | None,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Upsert by slug: new slugs are created, changed ones get a new version, the rest stay."""
    report = ImportReport()
    existing = {entry.slug: entry for entry in await list_entries(session)}
    for item in entries:
        current = existing.get(item.slug)
        if current is None:
            await create_entry(session, data=item.as_create(), agent=agent)
            report.created += 1
        else:
            before = current.version
            update = FaqEntryUpdate(**item.as_create().model_dump(exclude={"slug"}))
            await update_entry(session, entry=current, data=update, agent=agent)
            if current.version != before:
                report.updated += 1
            else:
                report.unchanged += 1
        if progress is not None:
            progress(1)
    await audit_service.record(
        session, agent=agent, action="faq.import", detail=report.model_dump()
    )
    return report


async def export_entries(session: AsyncSession) -> list[FaqFileEntry]:
    return [to_file_entry(entry) for entry in await list_entries(session)]


def text_hash(text: str) -> str:
    return hashlib.sha256(" ".join(text.casefold().split()).encode()).hexdigest()


async def add_example(
    session: AsyncSession,
    *,
    entry: FaqEntry,
    text: str,
    label: ExampleLabel = ExampleLabel.CONFIRMED,
    language: str | None = None,
    message_id: int | None = None,
    agent: Agent | None = None,
) -> LearnedExample:
    """Record that a human confirmed (or rejected) this customer text for the entry; idempotent."""
    digest = text_hash(text)
    found = await session.scalar(
        select(LearnedExample).where(
            LearnedExample.entry_id == entry.id,
            LearnedExample.label == label,
            LearnedExample.text_hash == digest,
        )
    )
    if found is not None:
        return found
    example = LearnedExample(
        entry_id=entry.id,
        label=label,
        text=text,
        text_hash=digest,
        language=language,
        message_id=message_id,
        created_by_id=agent.id if agent else None,
    )
    session.add(example)
    await session.flush()
    return example


async def list_examples(
    session: AsyncSession, *, entry: FaqEntry | None = None, label: ExampleLabel | None = None
) -> list[LearnedExample]:
    query = select(LearnedExample).order_by(LearnedExample.id)
    if entry is not None:
        query = query.where(LearnedExample.entry_id == entry.id)
    if label is not None:
        query = query.where(LearnedExample.label == label)
    return list((await session.scalars(query)).all())


async def remove_example(
    session: AsyncSession, *, entry: FaqEntry, example_id: int, agent: Agent | None
) -> None:
    result = await session.execute(
        delete(LearnedExample).where(
            LearnedExample.id == example_id, LearnedExample.entry_id == entry.id
        )
    )
    if not getattr(result, "rowcount", 0):
        raise NotFound(f"FAQ entry {entry.slug!r} has no learned example {example_id}")
    await audit_service.record(
        session,
        agent=agent,
        action="faq.example_remove",
        target_type="faq_entry",
        target_id=entry.id,
        detail={"example_id": example_id},
    )


@dataclass(frozen=True, slots=True)
class KnowledgeStamp:
    """Cheap fingerprint of everything the matcher is built from; a change means reload."""

    entries_version: tuple[int, int, str]
    examples: tuple[int, int]


async def knowledge_stamp(session: AsyncSession) -> KnowledgeStamp:
    """One round trip: entry count, version sum, last update; example count and last id."""
    row = (
        await session.execute(
            select(
                select(func.count(FaqEntry.id)).scalar_subquery(),
                select(func.coalesce(func.sum(FaqEntry.version), 0)).scalar_subquery(),
                select(func.max(FaqEntry.updated_at)).scalar_subquery(),
                select(func.count(LearnedExample.id)).scalar_subquery(),
                select(func.coalesce(func.max(LearnedExample.id), 0)).scalar_subquery(),
            )
        )
    ).one()
    return KnowledgeStamp(
        entries_version=(int(row[0]), int(row[1]), str(row[2])),
        examples=(int(row[3]), int(row[4])),
    )


async def examples_since(session: AsyncSession, *, after_id: int) -> list[LearnedExample]:
    query = select(LearnedExample).where(LearnedExample.id > after_id).order_by(LearnedExample.id)
    return list((await session.scalars(query)).all())

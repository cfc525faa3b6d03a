"""Queueing and claiming jobs in the database (FOR UPDATE SKIP LOCKED on PostgreSQL)."""

from __future__ import annotations

import secrets
from collections.abc import Collection, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from frankly.db import utcnow
from frankly.worker.models import Job, JobStatus

T = TypeVar("T")


async def enqueue(
    session: AsyncSession, *, name: str, payload: dict[str, Any], max_attempts: int = 5
) -> Job:
    """Add a job in the caller's transaction: it exists exactly when the work that needs it does."""
    job = Job(name=name, payload=payload, max_attempts=max_attempts)
    session.add(job)  # written with the transaction's next flush or its commit
    return job


async def claim_rows(
    session: AsyncSession,
    model: type[T],
    *,
    due: ColumnElement[bool],
    order_by: Sequence[Any],
    limit: int,
    owner: str,
    values: dict[str, Any],
    narrow: Sequence[ColumnElement[bool]] = (),
) -> list[T]:
    """The claim every queue table uses (jobs, the outbox): take up to `limit` rows that are
    `due` (and match `narrow`), set `values` on them, and return them; commit right after.

    Rows are picked with FOR UPDATE SKIP LOCKED on PostgreSQL; one conditional UPDATE writes a
    fresh per-claim token into `locked_by`, which is what makes the claim exclusive on SQLite
    (no row locks) and lets only this call read these rows back, however many loops share an
    owner name.
    """
    table: Any = model
    ids = list(
        (
            await session.scalars(
                select(table.id)
                .where(due, *narrow)
                .order_by(*order_by)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
    )
    if not ids:
        return []
    token = f"{owner}#{secrets.token_hex(4)}"
    await session.execute(
        update(table)
        .where(table.id.in_(ids), due)
        .values(locked_by=token, **values)
        .execution_options(synchronize_session=False)
    )
    rows = await session.scalars(
        select(table)
        .where(table.id.in_(ids), table.locked_by == token)
        .order_by(*order_by)
        .execution_options(populate_existing=True)
    )
    return list(rows.all())


async def claim(
    session: AsyncSession,
    *,
    worker_id: str,
    lease_seconds: int,
    limit: int = 1,
    names: Collection[str] | None = None,
    exclude: Collection[str] = (),
) -> list[Job]:
    """Take due jobs (or jobs whose lease expired) for this worker; commit right after."""
    now = utcnow()
    narrow = []
    if names is not None:
        narrow.append(Job.name.in_(list(names)))
    if exclude:
        narrow.append(Job.name.not_in(list(exclude)))
    return await claim_rows(
        session,
        Job,
        due=or_(
            (Job.status == JobStatus.QUEUED) & (Job.run_after <= now),
            # A job whose worker died is taken again, while it has attempts left.
            (Job.status == JobStatus.RUNNING)
            & (Job.locked_until < now)
            & (Job.attempts < Job.max_attempts),
        ),
        order_by=(Job.run_after, Job.id),
        limit=limit,
        owner=worker_id,
        values={
            "status": JobStatus.RUNNING,
            "locked_until": now + timedelta(seconds=lease_seconds),
            "attempts": Job.attempts + 1,
        },
        narrow=narrow,
    )


async def finish(session: AsyncSession, *, job: Job) -> None:
    """Mark a claimed job done (a no-op if its lease expired and someone else took it)."""
    await session.execute(
        update(Job)
        .where(Job.id == job.id, Job.locked_by == job.locked_by)
        .values(status=JobStatus.DONE, finished_at=utcnow(), locked_until=None, last_error=None)
    )


async def fail(session: AsyncSession, *, job: Job, error: str, base_delay: float = 2.0) -> bool:
    """Record a failure; retry later with exponential backoff unless attempts ran out."""
    final = job.attempts >= job.max_attempts
    delay = timedelta(seconds=base_delay * (2 ** max(job.attempts - 1, 0)))
    await session.execute(
        update(Job)
        .where(Job.id == job.id, Job.locked_by == job.locked_by)
        .values(
            status=JobStatus.FAILED if final else JobStatus.QUEUED,
            run_after=utcnow() + delay,
            locked_until=None,
            last_error=error[:4000],
            finished_at=utcnow() if final else None,
        )
    )
    return final


async def counts(session: AsyncSession) -> dict[str, int]:
    from sqlalchemy import func

    rows = await session.execute(select(Job.status, func.count(Job.id)).group_by(Job.status))
    return {
        str(status.value if hasattr(status, "value") else status): n for status, n in rows.all()
    }


async def fail_exhausted(session: AsyncSession) -> int:
    """Jobs whose worker died on their last attempt: failed, with a reason (housekeeping)."""
    now = utcnow()
    result = await session.execute(
        update(Job)
        .where(
            Job.status == JobStatus.RUNNING,
            Job.locked_until < now,
            Job.attempts >= Job.max_attempts,
        )
        .values(
            status=JobStatus.FAILED,
            finished_at=now,
            locked_until=None,
            last_error="the worker running its last attempt stopped (crash or kill)",
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)

"""The job table: exactly-once drafting with concurrent workers, retries, expired leases."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from frankly.conversations.models import Direction, Draft, DraftingState, Message
from frankly.db import Database, utcnow
from frankly.drafting.service import draft_for_message
from frankly.worker import service as worker_service
from frankly.worker.models import Job, JobStatus
from frankly.worker.runner import HANDLERS, Worker
from tests.factories import make_desk, post_inbound

QUESTIONS = [
    "which bank?",
    "how much should I send?",
    "can I pay from my wife's card?",
    "when are you online?",
    "на какой банк переводить?",
    "я оплатил, отпустите",
]


class TestConcurrentWorkers:
    async def test_two_workers_draft_each_message_exactly_once(
        self, client, db: Database, database_url: str
    ) -> None:
        desk = await make_desk(db)
        total = 24
        for n in range(total):
            await post_inbound(
                client,
                desk,
                QUESTIONS[n % len(QUESTIONS)],
                conversation_id=f"c{n % 8}",
                message_id=f"m{n}",
            )
        first, second = Database(database_url), Database(database_url)
        try:
            w1, w2 = Worker(first, name="w1"), Worker(second, name="w2")
            ran = await asyncio.gather(w1.drain(), w2.drain(), w1.drain(), w2.drain())
        finally:
            await first.dispose()
            await second.dispose()
        assert sum(ran) == total
        async with db.sessionmaker() as session:
            states = (await session.scalars(select(Message.drafting))).all()
            assert DraftingState.QUEUED not in states and len(states) == total
            per_message = (
                await session.execute(
                    select(Draft.message_id, func.count(Draft.id)).group_by(Draft.message_id)
                )
            ).all()
            assert all(count == 1 for _, count in per_message)
            drafted = sum(1 for s in states if s == DraftingState.DRAFTED)
            assert drafted == len(per_message)
            statuses = (await session.scalars(select(Job.status))).all()
            assert set(statuses) == {JobStatus.DONE}
            runners = set((await session.scalars(select(Job.locked_by))).all())
            assert len(runners) >= 1
            outbound = await session.scalar(
                select(func.count(Message.id)).where(Message.direction == Direction.OUT)
            )
            assert outbound == 0

    async def test_running_a_drafting_job_twice_drafts_once(self, client, db: Database) -> None:
        desk = await make_desk(db)
        accepted = await post_inbound(client, desk, "which bank?")
        for _ in range(2):
            async with db.sessionmaker() as session:
                await draft_for_message(session, message_id=accepted["message_id"])
                await session.commit()
        async with db.sessionmaker() as session:
            assert await session.scalar(select(func.count(Draft.id))) == 1


class TestRetries:
    async def test_failing_job_backs_off_then_fails(self, db: Database) -> None:
        calls: list[dict[str, Any]] = []

        async def explode(session: AsyncSession, payload: dict[str, Any]) -> None:
            calls.append(payload)
            raise RuntimeError("provider down")

        HANDLERS["test_explode"] = explode
        try:
            async with db.sessionmaker() as session:
                await worker_service.enqueue(
                    session, name="test_explode", payload={"n": 1}, max_attempts=2
                )
                await session.commit()
            worker = Worker(db)
            assert await worker.run_once() == 1
            async with db.sessionmaker() as session:
                job = await session.scalar(select(Job))
                assert job is not None
                assert job.status == JobStatus.QUEUED and job.attempts == 1
                assert "provider down" in (job.last_error or "")
                assert job.run_after > utcnow()
                # Not due yet: nothing runs.
                assert await worker.run_once() == 0
                await session.execute(update(Job).values(run_after=utcnow()))
                await session.commit()
            assert await worker.run_once() == 1
            async with db.sessionmaker() as session:
                job = await session.scalar(select(Job))
                assert job is not None and job.status == JobStatus.FAILED
                assert job.attempts == 2 and job.finished_at is not None
            assert len(calls) == 2
        finally:
            HANDLERS.pop("test_explode", None)

    async def test_expired_lease_is_reclaimed(self, db: Database) -> None:
        done: list[int] = []

        async def record(session: AsyncSession, payload: dict[str, Any]) -> None:
            done.append(payload["n"])

        HANDLERS["test_record"] = record
        try:
            async with db.sessionmaker() as session:
                await worker_service.enqueue(session, name="test_record", payload={"n": 7})
                await session.commit()
            async with db.sessionmaker() as session:
                claimed = await worker_service.claim(session, worker_id="crashed", lease_seconds=60)
                await session.commit()
            assert len(claimed) == 1
            worker = Worker(db)
            assert await worker.run_once() == 0  # still leased to the crashed worker
            async with db.sessionmaker() as session:
                await session.execute(
                    update(Job).values(locked_until=utcnow() - timedelta(seconds=1))
                )
                await session.commit()
            assert await worker.run_once() == 1
            assert done == [7]
        finally:
            HANDLERS.pop("test_record", None)

    async def test_unknown_job_name_fails_without_crashing_the_loop(self, db: Database) -> None:
        async with db.sessionmaker() as session:
            await worker_service.enqueue(session, name="no_such_job", payload={}, max_attempts=1)
            await session.commit()
        assert await Worker(db).run_once() == 1
        async with db.sessionmaker() as session:
            job = await session.scalar(select(Job))
            assert job is not None and job.status == JobStatus.FAILED
            assert "no handler" in (job.last_error or "")

"""The worker loop: claims jobs, runs their handler in its own session, retries failures."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from frankly import metrics
from frankly.config import get_settings
from frankly.db import Database, commit
from frankly.worker import service as worker_service

log = logging.getLogger("frankly.worker")

HOUSEKEEPING_SECONDS = 600.0
# Jobs that wait on an outside provider (an LLM): run by their own loops.
SLOW_JOBS = frozenset({"llm_draft", "llm_rewrite"})
# A draft "being written" for longer than this belongs to a run that died (housekeeping).
ABANDONED_STREAM_MINUTES = 30
Handler = Callable[[AsyncSession, dict[str, Any]], Awaitable[None]]
HANDLERS: dict[str, Handler] = {}


def job(name: str) -> Callable[[Handler], Handler]:
    """Register a job handler by name; handlers must be safe to run twice."""

    def register(func: Handler) -> Handler:
        HANDLERS[name] = func
        return func

    return register


def load_handlers() -> None:
    import frankly.drafting.jobs
    import frankly.drafting.llm_jobs  # noqa: F401


class Worker:
    """Runs jobs from the table until stopped; several may run on one database."""

    def __init__(
        self,
        database: Database,
        *,
        concurrency: int = 1,
        poll_seconds: float = 1.0,
        lease_seconds: int = 120,
        name: str | None = None,
        batch: int = 8,
        slow_concurrency: int = 2,
    ) -> None:
        load_handlers()
        self.database = database
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self.lease_seconds = lease_seconds
        self.batch = batch
        self.slow_concurrency = slow_concurrency
        # An LLM job may wait on its provider for the whole budget (every retry): its lease must
        # outlast that, or a second loop would take it over mid-stream.
        settings = get_settings()
        budget = settings.llm_timeout * (settings.llm_max_retries + 1) + 60
        self.slow_lease_seconds = max(lease_seconds, int(budget))
        self.id = name or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._wake = asyncio.Event()
        self._deliver = asyncio.Event()
        self._stop = asyncio.Event()
        self._pollers: Any = None
        self._unsubscribe: Callable[[], None] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def wake(self) -> None:
        """Tell the loop new work was committed (saves waiting for the next poll)."""
        self._wake.set()

    def start(self) -> None:
        from frankly.channels.runner import Pollers

        self._stop.clear()
        self._tasks = [
            asyncio.create_task(self._loop(n), name=f"frankly-worker-{n}")
            for n in range(self.concurrency)
        ]
        # LLM jobs wait on a provider for seconds: their own loops, so a slow provider never
        # holds up offline drafting or other conversations.
        self._tasks += [
            asyncio.create_task(self._loop(n, only=SLOW_JOBS), name=f"frankly-llm-{n}")
            for n in range(self.concurrency, self.concurrency + self.slow_concurrency)
        ]
        self._tasks.append(asyncio.create_task(self._delivery_loop(), name="frankly-delivery"))
        self._pollers = Pollers(self.database, owner=self.id, on_new=self.wake)
        self._pollers.start()
        from frankly.outbox.service import on_enqueue

        self._unsubscribe = on_enqueue(self.wake_delivery)

    async def _delivery_loop(self) -> None:
        """Deliver sent messages through their channels (the outbox), with retries."""
        from frankly.outbox.delivery import deliver_due

        while not self._stop.is_set():
            try:
                ran = await deliver_due(
                    self.database, worker_id=f"{self.id}/out", lease_seconds=self.lease_seconds
                )
            except Exception:
                log.exception("worker %s: delivery round failed", self.id)
                ran = 0
            if ran:
                continue
            self._deliver.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._deliver.wait(), timeout=self.poll_seconds)

    def wake_delivery(self) -> None:
        """Tell the delivery loop a reply was just committed."""
        self._deliver.set()

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._deliver.set()
        if self._pollers is not None:
            await self._pollers.stop()
        if self._unsubscribe is not None:
            self._unsubscribe()
        for task in self._tasks:
            try:
                await asyncio.wait_for(task, timeout=10)
            except TimeoutError:
                task.cancel()
        self._tasks = []

    async def run_forever(self) -> None:
        self.start()
        await asyncio.gather(*self._tasks)

    async def housekeeping(self) -> None:
        """Prune the live event log past its retention (any worker may; it is idempotent)."""
        from frankly.config import get_settings
        from frankly.conversations import service as conversation_service
        from frankly.live import service as live_service

        async with self.database.writing(), self.database.sessionmaker() as session:
            await live_service.prune(session, older_than_days=get_settings().event_retention_days)
            await conversation_service.drop_abandoned_streams(
                session, older_than_minutes=ABANDONED_STREAM_MINUTES
            )
            await worker_service.fail_exhausted(session)
            await session.commit()

    async def _loop(self, n: int, only: frozenset[str] | None = None) -> None:
        worker_id = f"{self.id}/{n}"
        next_housekeeping = 0.0
        while not self._stop.is_set():
            if n == 0 and time.monotonic() >= next_housekeeping:
                next_housekeeping = time.monotonic() + HOUSEKEEPING_SECONDS
                try:
                    await self.housekeeping()
                except Exception:
                    log.warning("worker %s: housekeeping failed", worker_id, exc_info=True)
            try:
                ran = await self.run_once(worker_id, only=only)
            except Exception:  # the loop must survive a database hiccup
                log.exception("worker %s: claim failed", worker_id)
                ran = 0
            if ran:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_seconds)

    async def run_once(
        self, worker_id: str | None = None, *, only: frozenset[str] | None = None
    ) -> int:
        """Claim up to `batch` due jobs and run them one by one; returns how many ran.

        `only` limits the claim to those job names; without it, slow (LLM) jobs are left to
        their own loops unless this worker has none (drain in tests and the CLI)."""
        worker_id = worker_id or self.id
        async with self.database.writing(), self.database.sessionmaker() as session:
            jobs = await worker_service.claim(
                session,
                worker_id=worker_id,
                lease_seconds=self.slow_lease_seconds if only else self.lease_seconds,
                limit=1 if only else self.batch,
                names=only,
                exclude=SLOW_JOBS if only is None and self._tasks else (),
            )
            await session.commit()
        for claimed in jobs:
            handler = HANDLERS.get(claimed.name)
            try:
                if handler is None:
                    raise LookupError(f"no handler for job {claimed.name!r}")
                # Not under the writer queue: a job reads (and matches) before its short write.
                async with self.database.sessionmaker() as session:
                    await handler(session, claimed.payload)
                    await worker_service.finish(session, job=claimed)
                    await commit(session)
                metrics.JOBS.labels(claimed.name, "done").inc()
            except Exception as exc:
                log.warning("job %s (%s) failed: %s", claimed.id, claimed.name, exc)
                async with self.database.writing(), self.database.sessionmaker() as session:
                    final = await worker_service.fail(
                        session,
                        job=claimed,
                        error="".join(traceback.format_exception_only(exc)).strip(),
                    )
                    await session.commit()
                metrics.JOBS.labels(claimed.name, "failed" if final else "retry").inc()
        return len(jobs)

    async def drain(self, max_jobs: int = 10_000) -> int:
        """Run jobs and due deliveries until none is left (tests and the CLI use this)."""
        from frankly.outbox.delivery import deliver_due

        total = 0
        while total < max_jobs:
            ran = await self.run_once()
            ran += await deliver_due(self.database, worker_id=f"{self.id}/out")
            if not ran:
                break
            total += ran
        return total

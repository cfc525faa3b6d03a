"""Pollers for channels that fetch their messages (Bybit order chats, IMAP mailboxes).

One poller per enabled account across all instances (a lease on the account row). A poll's
messages, context updates and the new cursor are written in one transaction, so a restart
resumes exactly where the last committed poll ended; ids dedupe anything polled twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from frankly import metrics
from frankly.channels import service as channel_service
from frankly.channels.base import PollingChannel, PollResult
from frankly.channels.models import ChannelAccount
from frankly.channels.registry import REGISTRY
from frankly.db import Database, commit, utcnow

log = logging.getLogger("frankly.channels")
RESCAN_SECONDS = 15.0
# A poll lease is renewed before every poll; a crashed poller's lease expires after this. Two
# pollers overlapping after a very slow poll would be harmless: ingest dedupes on provider ids.
LEASE_SECONDS = 20.0
LEASE_RETRY_SECONDS = 2.0


async def take_lease(
    database: Database, *, account_id: int, owner: str, seconds: float
) -> ChannelAccount | None:
    """The account, if this poller holds (or just took) its lease."""
    now = utcnow()
    async with database.writing(), database.sessionmaker() as session:
        result = await session.execute(
            update(ChannelAccount)
            .where(
                ChannelAccount.id == account_id,
                ChannelAccount.enabled.is_(True),
                or_(
                    ChannelAccount.poll_locked_until.is_(None),
                    ChannelAccount.poll_locked_until < now,
                    ChannelAccount.poll_locked_by == owner,
                ),
            )
            .values(poll_locked_by=owner, poll_locked_until=now + timedelta(seconds=seconds))
        )
        await session.commit()
        if not result.rowcount:  # type: ignore[attr-defined]
            return None
        return await session.get(ChannelAccount, account_id)


async def poll_once(database: Database, *, account: ChannelAccount, channel: PollingChannel) -> int:
    """Poll one account and store what it found; returns the number of new messages."""
    result = await channel.poll(dict(account.cursor))
    try:
        return await _store_poll(database, account_id=account.id, result=result, each=False)
    except Exception as exc:
        # One message the database refuses must not stall the mailbox or chat forever: store
        # them one by one, skip (and report) the ones that fail, then move the cursor on.
        log.warning(
            "storing a poll of %s failed (%s); retrying message by message", account.name, exc
        )
        return await _store_poll(database, account_id=account.id, result=result, each=True)


async def _store_poll(
    database: Database, *, account_id: int, result: PollResult, each: bool
) -> int:
    """All of a poll in one transaction with its cursor (each=False), or each message in its
    own transaction, skipping failures, and the cursor last (each=True)."""
    new = 0
    skipped: list[str] = []
    groups = [[m] for m in result.messages] if each else [result.messages]
    for group in groups:
        try:
            async with database.writing(), database.sessionmaker() as session:
                row = await session.get(ChannelAccount, account_id)
                if row is None:
                    return new
                for inbound in group:
                    ingested = await channel_service.ingest_inbound(
                        session, channel=row.kind.value, inbound=inbound, account_id=row.id
                    )
                    new += 0 if ingested.duplicate else 1
                if not each:
                    await _finish_poll(session, row, result, skipped)
                await commit(session)
        except Exception as exc:
            if not each:
                raise
            ids = ", ".join(m.message_external_id for m in group)
            log.error("skipped inbound message %s: %s", ids, exc)
            skipped.append(f"{ids}: {type(exc).__name__}")
    if each:
        async with database.writing(), database.sessionmaker() as session:
            row = await session.get(ChannelAccount, account_id)
            if row is not None:
                await _finish_poll(session, row, result, skipped)
                await commit(session)
    return new


async def _finish_poll(
    session: AsyncSession, row: ChannelAccount, result: PollResult, skipped: list[str]
) -> None:
    for update_ in result.contexts:
        await channel_service.apply_context(session, channel=row.kind.value, update=update_)
    row.cursor = result.cursor
    row.last_poll_at = utcnow()
    row.last_error = (
        f"skipped messages the database refused: {'; '.join(skipped)}"[:2000] if skipped else None
    )


async def record_error(database: Database, *, account_id: int, error: str) -> None:
    async with database.writing(), database.sessionmaker() as session:
        row = await session.get(ChannelAccount, account_id)
        if row is not None:
            row.last_error = error[:2000]
            row.last_poll_at = utcnow()
            await session.commit()


class Pollers:
    """Keeps one polling task per enabled polling account; picks up admin changes."""

    def __init__(self, database: Database, *, owner: str, on_new: Callable[[], None]) -> None:
        self.database = database
        self.owner = owner
        self.on_new = on_new
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._stop.clear()
        self._supervisor = asyncio.create_task(self._supervise(), name="frankly-pollers")

    async def stop(self) -> None:
        self._stop.set()
        tasks = [*self._tasks.values(), *([self._supervisor] if self._supervisor else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        # A clean stop hands the accounts over at once (a crash waits for LEASE_SECONDS).
        with contextlib.suppress(Exception):
            async with self.database.writing(), self.database.sessionmaker() as session:
                await session.execute(
                    update(ChannelAccount)
                    .where(ChannelAccount.poll_locked_by == self.owner)
                    .values(poll_locked_by=None, poll_locked_until=None)
                )
                await session.commit()

    async def _supervise(self) -> None:
        while not self._stop.is_set():
            try:
                async with self.database.sessionmaker() as session:
                    accounts = (
                        await session.scalars(
                            select(ChannelAccount).where(ChannelAccount.enabled.is_(True))
                        )
                    ).all()
                wanted = set()
                for account in accounts:
                    try:
                        channel = await REGISTRY.for_account(account)
                    except Exception as exc:  # one broken account must not stop the others
                        log.warning("channel %s cannot be built: %s", account.name, exc)
                        continue
                    if isinstance(channel, PollingChannel):
                        wanted.add(account.id)
                        if account.id not in self._tasks or self._tasks[account.id].done():
                            self._tasks[account.id] = asyncio.create_task(
                                self._poll_loop(account.id), name=f"frankly-poll-{account.id}"
                            )
                for account_id in set(self._tasks) - wanted:
                    self._tasks.pop(account_id).cancel()
            except Exception:
                log.exception("channel supervisor failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=RESCAN_SECONDS)

    async def _poll_loop(self, account_id: int) -> None:
        failures = 0
        while not self._stop.is_set():
            account = await take_lease(
                self.database, account_id=account_id, owner=self.owner, seconds=LEASE_SECONDS
            )
            if account is None:
                # Another instance polls it (or a crashed one held it: its lease runs out within
                # LEASE_SECONDS), or it was disabled: look again soon.
                await asyncio.sleep(LEASE_RETRY_SECONDS)
                continue
            channel = await REGISTRY.for_account(account)
            if not isinstance(channel, PollingChannel):
                return
            try:
                new = await poll_once(self.database, account=account, channel=channel)
                failures = 0
                metrics.POLLS.labels(account.kind.value, "ok").inc()
                if new:
                    self.on_new()
            except Exception as exc:
                failures += 1
                metrics.POLLS.labels(account.kind.value, "error").inc()
                log.warning("polling %s failed: %s", account.name, exc)
                await record_error(self.database, account_id=account_id, error=str(exc))
            delay = channel.poll_seconds * (2 ** min(failures, 6) if failures else 1)
            await channel.wait_for_activity(min(delay, 600.0))

"""The per-process event hub: one reader tails the event log and fans events out to subscribers.

The reader is woken by `wake()` after a local commit, by PostgreSQL NOTIFY from other instances,
and by a fallback poll. Events reach subscribers in id order; a gap in the ids (a lower id whose
transaction has not committed yet) is held back for a grace period, and an id skipped after that
is still delivered if it commits within `late_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TypedDict

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import func, select
from sqlalchemy.engine import Row

from frankly.db import Database
from frankly.live import service as live_service
from frankly.live.models import Event

log = logging.getLogger("frankly.live")

RESYNC = "resync"
_COLUMNS = (Event.id, Event.topic, Event.kind, Event.data, Event.created_at)
_MAX_TRACKED_GAP = 1000  # a wider jump in ids (e.g. after a crash) is skipped without tracking
_MAX_LATE = 10_000


class LiveEvent(TypedDict):
    """One event as subscribers see it; kind "resync" means "events were lost, reload"."""

    id: int
    topic: str
    kind: str
    data: dict[str, Any]
    created_at: str


def _event(row: Row[Any]) -> LiveEvent:
    created: datetime = row.created_at
    return LiveEvent(
        id=int(row.id),
        topic=str(row.topic),
        kind=str(row.kind),
        data=dict(row.data or {}),
        created_at=created.isoformat(),
    )


def resync_event(position: int) -> LiveEvent:
    """Tells a subscriber to reload its state; live events after `position` follow."""
    return LiveEvent(
        id=position, topic="", kind=RESYNC, data={}, created_at=datetime.now(UTC).isoformat()
    )


class Subscription:
    """One consumer's stream: replay after its last id, then live events, without duplicates.

    Live events are queued from the moment of subscribing, so the replay (bounded by the hub's
    position at that moment) and the live stream meet without a gap; ids seen in the replay are
    dropped from the live queue. A consumer that falls `queue_size` events behind is dropped:
    it gets a resync and the iteration ends (`dropped` is then True).
    """

    def __init__(
        self, hub: Hub, topics: Iterable[str], *, last_event_id: int | None, queue_size: int
    ) -> None:
        self._hub = hub
        self.topics: frozenset[str] = frozenset(topics)
        self._queue_size = queue_size
        self._queue: deque[LiveEvent] = deque()
        self._pending: deque[LiveEvent] = deque()
        self._replays: deque[tuple[frozenset[str], int, int]] = deque()
        self._replayed: set[int] = set()
        self._seen_upto: tuple[int, int] | None = None
        self._signal = asyncio.Event()
        self.dropped = False
        self.closed = False
        position = hub.position
        if last_event_id is not None:
            if last_event_id < position:
                self._replays.append((self.topics, last_event_id, position))
            elif last_event_id > position:
                # The client saw events (via another instance) this hub has not read yet.
                self._seen_upto = (position, last_event_id)

    def set_topics(self, topics: Iterable[str], *, last_event_id: int | None = None) -> None:
        """Change topics in place; added topics are replayed after `last_event_id` if given."""
        new = frozenset(topics)
        added = new - self.topics
        self.topics = new
        position = self._hub.position
        if added and last_event_id is not None and last_event_id < position:
            self._replays.append((added, last_event_id, position))
            self._signal.set()

    def close(self) -> None:
        """Stop receiving; a pending `__anext__` ends the iteration."""
        self.closed = True
        self._hub._remove(self)
        self._signal.set()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> LiveEvent:
        while True:
            if self.closed and not self.dropped:
                raise StopAsyncIteration
            if self._replays and not self.dropped:
                await self._replay(*self._replays.popleft())
                continue
            if self._pending:
                event = self._pending.popleft()
                if event["kind"] == RESYNC or event["topic"] in self.topics:
                    return event
                continue
            if self._queue:
                event = self._queue.popleft()
                if event["kind"] == RESYNC:
                    return event
                if event["topic"] not in self.topics or self._duplicate(event["id"]):
                    continue
                return event
            if self.dropped:
                self.closed = True
                raise StopAsyncIteration
            self._signal.clear()
            await self._signal.wait()

    def _duplicate(self, event_id: int) -> bool:
        if event_id in self._replayed:
            self._replayed.discard(event_id)
            return True
        seen = self._seen_upto
        return seen is not None and seen[0] < event_id <= seen[1]

    async def _replay(self, topics: frozenset[str], after: int, upto: int) -> None:
        limit = self._hub.replay_limit
        rows = await self._hub.read_range(topics, after=after, upto=upto, limit=limit + 1)
        if len(rows) > limit or after < await self._hub.oldest_retained() - 1:
            # Too much was missed, or part of it was pruned from the log: reload instead.
            self._pending.append(resync_event(upto))
            return
        if len(self._replayed) > 10 * limit:
            self._replayed.clear()
        for event in rows:
            self._replayed.add(event["id"])
            self._pending.append(event)

    def _offer(self, event: LiveEvent) -> None:
        if self.closed or self.dropped:
            return
        if len(self._queue) >= self._queue_size:
            self._queue.clear()
            self._pending.clear()
            self._replays.clear()
            self._queue.append(resync_event(self._hub.position))
            self.dropped = True
            self._hub._remove(self)
        else:
            self._queue.append(event)
        self._signal.set()


class Hub:
    """Reads the event log once per process and fans events out to in-process subscribers."""

    def __init__(
        self,
        database: Database,
        *,
        poll_seconds: float = 1.0,
        gap_grace_seconds: float = 2.0,
        late_seconds: float = 60.0,
        replay_limit: int = 1000,
        queue_size: int = 1000,
        batch: int = 500,
        keepalive_seconds: float = 30.0,
        coalesce_seconds: float = 0.01,
    ) -> None:
        self.database = database
        self.poll_seconds = poll_seconds
        self.gap_grace_seconds = gap_grace_seconds
        self.late_seconds = late_seconds
        self.replay_limit = replay_limit
        self.queue_size = queue_size
        self.batch = batch
        self.keepalive_seconds = keepalive_seconds
        self.coalesce_seconds = coalesce_seconds
        self.position = 0  # every id <= position was delivered or skipped
        self.listening = asyncio.Event()  # set while LISTEN is active (PostgreSQL)
        self._subscribers: set[Subscription] = set()
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._reader: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._held_at: int | None = None
        self._held_since = 0.0
        self._late: dict[int, float] = {}  # skipped id -> monotonic deadline to still deliver it
        self._needs_seek = False

    async def start(self) -> None:
        """Begin at the current end of the log; later commits are delivered.

        An unreachable database must not stop the app from starting (health checks report it):
        the reader then starts from the log's end once the database answers.
        """
        try:
            await self._seek_end()
        except Exception:
            log.warning("live hub: database not reachable at start; will retry")
            self._needs_seek = True
        self._stopping = False
        self._held_at = None
        self._late.clear()
        self._wakeup.clear()
        self._reader = asyncio.create_task(self._read_loop(), name="frankly-live-reader")
        if self.database.dialect == "postgresql":
            self._listener = asyncio.create_task(self._listen_loop(), name="frankly-live-listen")
        live_service.set_waker(self.wake)

    async def _seek_end(self) -> None:
        async with self.database.engine.connect() as connection:
            self.position = int(await connection.scalar(select(func.max(Event.id))) or 0)
        self._needs_seek = False

    async def stop(self) -> None:
        """Stop reading and end every subscription."""
        live_service.set_waker(None)
        self._stopping = True
        self._wakeup.set()
        for task in (self._listener, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._listener = self._reader = None
        for subscription in list(self._subscribers):
            subscription.close()

    def wake(self) -> None:
        """New events were committed: read the log now rather than at the next poll."""
        self._wakeup.set()

    def subscribe(self, topics: Iterable[str], *, last_event_id: int | None) -> Subscription:
        """Events on `topics`; with `last_event_id`, the ones missed since are replayed first."""
        subscription = Subscription(
            self, topics, last_event_id=last_event_id, queue_size=self.queue_size
        )
        self._subscribers.add(subscription)
        return subscription

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def _remove(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    async def oldest_retained(self) -> int:
        """The smallest id still in the log (events older than the retention are pruned)."""
        async with self.database.engine.connect() as connection:
            return int(await connection.scalar(select(func.min(Event.id))) or 0)

    async def read_range(
        self, topics: Iterable[str], *, after: int, upto: int, limit: int
    ) -> list[LiveEvent]:
        """Events on `topics` with after < id <= upto, oldest first (the replay of a subscriber)."""
        query = (
            select(*_COLUMNS)
            .where(Event.topic.in_(sorted(topics)), Event.id > after, Event.id <= upto)
            .order_by(Event.id)
            .limit(limit)
        )
        async with self.database.engine.connect() as connection:
            return [_event(row) for row in (await connection.execute(query)).all()]

    # The reader ----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        failures = 0
        while not self._stopping:
            timeout = self.poll_seconds
            if self._held_at is not None:
                due = self._held_since + self.gap_grace_seconds - time.monotonic()
                timeout = min(timeout, max(due, 0.0) + 0.01)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            if self._wakeup.is_set() and self.coalesce_seconds:
                # Under load many commits wake the reader at once: one read serves them all.
                await asyncio.sleep(self.coalesce_seconds)
            self._wakeup.clear()
            if self._stopping:
                return
            try:
                if self._needs_seek:
                    await self._seek_end()
                while await self._read_once():
                    pass
                failures = 0
            except Exception:
                failures += 1
                log.warning(
                    "live hub: reading the event log failed (%d in a row)",
                    failures,
                    exc_info=failures == 1,
                )
                await asyncio.sleep(min(0.5 * 2**failures, 10.0))

    async def _read_once(self) -> bool:
        """Deliver what is new; True when a full batch was read (read again at once)."""
        now = time.monotonic()
        self._late = {i: due for i, due in self._late.items() if due > now}
        async with self.database.engine.connect() as connection:
            query = (
                select(*_COLUMNS)
                .where(Event.id > self.position)
                .order_by(Event.id)
                .limit(self.batch)
            )
            rows = (await connection.execute(query)).all()
            late_rows: list[Row[Any]] = []
            if self._late:
                wanted = sorted(self._late)[:_MAX_TRACKED_GAP]
                late_query = select(*_COLUMNS).where(Event.id.in_(wanted)).order_by(Event.id)
                late_rows = list((await connection.execute(late_query)).all())
        for row in late_rows:
            self._late.pop(int(row.id), None)
            log.info("live hub: event %s committed after its gap was skipped", row.id)
            self._fan_out(_event(row))
        for row in rows:
            event_id = int(row.id)
            if event_id != self.position + 1:
                if not self._gap_expired(now):
                    return False  # hold back: the lower id may still commit
                self._track_late(self.position + 1, event_id, now)
            self._held_at = None
            self.position = event_id
            self._fan_out(_event(row))
        return len(rows) == self.batch

    def _gap_expired(self, now: float) -> bool:
        if self._held_at != self.position:
            self._held_at = self.position
            self._held_since = now
        return now - self._held_since >= self.gap_grace_seconds

    def _track_late(self, first: int, end: int, now: float) -> None:
        if end - first > _MAX_TRACKED_GAP or len(self._late) >= _MAX_LATE:
            log.warning("live hub: skipping ids %d..%d untracked", first, end - 1)
            return
        for missing in range(first, end):
            self._late[missing] = now + self.late_seconds

    def _fan_out(self, event: LiveEvent) -> None:
        for subscription in list(self._subscribers):
            if event["topic"] in subscription.topics:
                subscription._offer(event)

    # PostgreSQL LISTEN -----------------------------------------------------------------------

    def _dsn(self) -> str:
        url = self.database.engine.url.set(drivername="postgresql")
        return url.render_as_string(hide_password=False)

    def _on_notify(self, *_args: object) -> None:
        self.wake()

    async def _listen_loop(self) -> None:
        """Keep one LISTEN connection open; reconnect with backoff when it drops."""
        backoff = 0.5
        while not self._stopping:
            connection: Any = None
            try:
                connection = await asyncpg.connect(self._dsn(), timeout=10)
                lost = asyncio.Event()
                connection.add_termination_listener(lambda _connection, lost=lost: lost.set())
                await connection.add_listener(live_service.NOTIFY_CHANNEL, self._on_notify)
                self.listening.set()
                backoff = 0.5
                self.wake()  # catch up on anything committed while not listening
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), self.keepalive_seconds)
                    except TimeoutError:
                        # Traffic on an idle link is how a silently dead connection shows up.
                        await connection.fetchval("SELECT 1", timeout=10)
                log.warning("live hub: LISTEN connection lost; reconnecting")
            except Exception as exc:
                log.warning("live hub: LISTEN connection failed (%s); retrying", exc)
            finally:
                self.listening.clear()
                if connection is not None:
                    connection.terminate()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

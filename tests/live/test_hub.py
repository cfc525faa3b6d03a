"""The hub: fan-out by topic, replay after a last id without gaps or duplicates, slow subscribers,
and PostgreSQL id gaps (a lower id committing after a higher one)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from frankly.db import Database, commit
from frankly.live import service as live_service
from frankly.live.hub import RESYNC, Hub
from tests.live.conftest import next_event, publish, wait_until


@pytest.fixture
async def hub(db: Database) -> AsyncIterator[Hub]:
    running = Hub(db, poll_seconds=0.2)
    await running.start()
    yield running
    await running.stop()


async def no_event(subscription: object, seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(subscription.__anext__(), seconds)  # type: ignore[attr-defined]


class TestFanOut:
    async def test_events_reach_every_subscriber_of_their_topic_only(self, hub: Hub) -> None:
        inbox_a = hub.subscribe({"inbox"}, last_event_id=None)
        inbox_b = hub.subscribe({"inbox", "conversation:7"}, last_event_id=None)
        conversation = hub.subscribe({"conversation:7"}, last_event_id=None)
        first = await publish(hub.database, "inbox", "message.new", n=1)
        second = await publish(hub.database, "conversation:7", "draft.new", n=2)

        assert [(await next_event(inbox_a))["id"]] == [first]
        assert [(await next_event(inbox_b))["id"] for _ in range(2)] == [first, second]
        event = await next_event(conversation)
        assert event["id"] == second
        assert event["topic"] == "conversation:7"
        assert event["kind"] == "draft.new"
        assert event["data"] == {"n": 2}
        assert event["created_at"]
        await no_event(inbox_a, 0.1)

    async def test_starts_at_the_end_of_the_log(self, db: Database) -> None:
        old = await publish(db)
        running = Hub(db, poll_seconds=0.2)
        await running.start()
        try:
            assert running.position == old
            subscription = running.subscribe({"inbox"}, last_event_id=None)
            new = await publish(db)
            assert (await next_event(subscription))["id"] == new
        finally:
            await running.stop()

    async def test_a_commit_without_wake_is_found_by_the_poll(self, hub: Hub) -> None:
        subscription = hub.subscribe({"inbox"}, last_event_id=None)
        event_id = await publish(hub.database, wake=False)
        assert (await next_event(subscription))["id"] == event_id

    async def test_stop_ends_subscriptions(self, db: Database) -> None:
        running = Hub(db)
        await running.start()
        subscription = running.subscribe({"inbox"}, last_event_id=None)
        waiting = asyncio.create_task(next_event(subscription))
        await asyncio.sleep(0)
        await running.stop()
        with pytest.raises(StopAsyncIteration):
            await waiting
        assert live_service._waker is None


class TestReplay:
    async def test_replay_meets_live_events_without_gap_or_duplicate(self, hub: Hub) -> None:
        ids = [await publish(hub.database, n=n) for n in range(5)]
        await wait_until(lambda: hub.position == ids[-1])
        # Committed but not yet read by the hub: they must arrive live, not twice.
        lagging = [await publish(hub.database, wake=False, n=n) for n in (5, 6)]
        subscription = hub.subscribe({"inbox"}, last_event_id=ids[1])
        after = await publish(hub.database, n=7)

        got = [(await next_event(subscription))["id"] for _ in range(6)]
        assert got == [*ids[2:], *lagging, after]
        await no_event(subscription, 0.3)

    async def test_replay_is_per_topic(self, hub: Hub) -> None:
        start = await publish(hub.database, "inbox")
        mine = await publish(hub.database, "conversation:1")
        await publish(hub.database, "conversation:2")
        await wait_until(lambda: hub.position >= mine + 1)
        subscription = hub.subscribe({"conversation:1"}, last_event_id=start)
        assert (await next_event(subscription))["id"] == mine
        await no_event(subscription, 0.1)

    async def test_too_much_missed_is_a_resync(self, db: Database) -> None:
        running = Hub(db, replay_limit=3)
        await running.start()
        try:
            ids = [await publish(db) for _ in range(5)]
            await wait_until(lambda: running.position == ids[-1])
            subscription = running.subscribe({"inbox"}, last_event_id=0)
            event = await next_event(subscription)
            assert event["kind"] == RESYNC
            assert event["id"] == ids[-1]
            live = await publish(db)
            assert (await next_event(subscription))["id"] == live
        finally:
            await running.stop()

    async def test_added_topic_replays_after_the_given_id(self, hub: Hub) -> None:
        subscription = hub.subscribe({"inbox"}, last_event_id=None)
        seen = await publish(hub.database, "inbox")
        assert (await next_event(subscription))["id"] == seen
        missed = await publish(hub.database, "conversation:3")
        await wait_until(lambda: hub.position == missed)
        subscription.set_topics({"inbox", "conversation:3"}, last_event_id=seen)
        later = await publish(hub.database, "conversation:3")
        got = [(await next_event(subscription))["id"] for _ in range(2)]
        assert got == [missed, later]
        await no_event(subscription, 0.1)


class TestSlowSubscribers:
    async def test_a_full_queue_drops_only_that_subscriber_with_a_resync(
        self, db: Database
    ) -> None:
        running = Hub(db, queue_size=3)
        await running.start()
        try:
            slow = running.subscribe({"inbox"}, last_event_id=None)
            fast = running.subscribe({"inbox"}, last_event_id=None)
            ids = []
            for n in range(6):
                ids.append(await publish(db, n=n))
                assert (await next_event(fast))["id"] == ids[-1]
            resync = await next_event(slow)
            assert resync["kind"] == RESYNC
            assert resync["id"] >= ids[3]
            with pytest.raises(StopAsyncIteration):
                await next_event(slow)
            assert slow.dropped
            assert running.subscriber_count == 1
        finally:
            await running.stop()


# Commit order differing from id order needs concurrent writers: PostgreSQL only.
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
class TestPostgresIdGaps:
    async def test_a_lower_id_committing_later_is_delivered_in_order(self, db: Database) -> None:
        running = Hub(db, poll_seconds=0.2, gap_grace_seconds=5.0)
        await running.start()
        try:
            subscription = running.subscribe({"inbox"}, last_event_id=None)
            async with db.sessionmaker() as slow, db.sessionmaker() as quick:
                low = await live_service.publish(slow, topic="inbox", kind="t", data={})
                high = await live_service.publish(quick, topic="inbox", kind="t", data={})
                assert low.id < high.id
                await commit(quick)
                await no_event(subscription, 0.5)  # held back at the gap
                await commit(slow)
            got = [(await next_event(subscription))["id"] for _ in range(2)]
            assert got == [low.id, high.id]
        finally:
            await running.stop()

    async def test_a_lower_id_committing_after_the_grace_is_still_delivered(
        self, db: Database
    ) -> None:
        running = Hub(db, poll_seconds=0.2, gap_grace_seconds=0.2)
        await running.start()
        try:
            subscription = running.subscribe({"inbox"}, last_event_id=None)
            async with db.sessionmaker() as slow, db.sessionmaker() as quick:
                low = await live_service.publish(slow, topic="inbox", kind="t", data={})
                high = await live_service.publish(quick, topic="inbox", kind="t", data={})
                await commit(quick)
                assert (await next_event(subscription))["id"] == high.id  # gap skipped
                await commit(slow)
            assert (await next_event(subscription))["id"] == low.id  # delivered late
            await no_event(subscription, 0.3)
        finally:
            await running.stop()

    async def test_a_late_event_is_not_doubled_for_a_replaying_subscriber(
        self, db: Database
    ) -> None:
        running = Hub(db, poll_seconds=0.2, gap_grace_seconds=0.2)
        await running.start()
        try:
            watcher = running.subscribe({"inbox"}, last_event_id=None)
            async with db.sessionmaker() as slow, db.sessionmaker() as quick:
                low = await live_service.publish(slow, topic="inbox", kind="t", data={})
                high = await live_service.publish(quick, topic="inbox", kind="t", data={})
                await commit(quick)
                assert (await next_event(watcher))["id"] == high.id
                replaying = running.subscribe({"inbox"}, last_event_id=low.id - 1)
                await commit(slow)
            assert (await next_event(watcher))["id"] == low.id  # queued live for both
            got = [(await next_event(replaying))["id"] for _ in range(2)]
            assert got == [low.id, high.id]
            await no_event(replaying, 0.3)
        finally:
            await running.stop()

    async def test_a_rolled_back_id_is_skipped_after_the_grace(self, db: Database) -> None:
        running = Hub(db, poll_seconds=0.2, gap_grace_seconds=0.3)
        await running.start()
        try:
            subscription = running.subscribe({"inbox"}, last_event_id=None)
            async with db.sessionmaker() as doomed:
                await live_service.publish(doomed, topic="inbox", kind="t", data={})
                await doomed.rollback()
            after = await publish(db)
            assert (await next_event(subscription, within=3))["id"] == after
        finally:
            await running.stop()

    async def test_notify_wakes_the_hub_and_listen_reconnects(self, db: Database) -> None:
        running = Hub(db, poll_seconds=60)  # only NOTIFY can wake it in time
        await running.start()
        try:
            await asyncio.wait_for(running.listening.wait(), 5)
            subscription = running.subscribe({"inbox"}, last_event_id=None)
            first = await publish(db, wake=False)
            assert (await next_event(subscription))["id"] == first

            url = db.engine.url
            admin = await asyncpg.connect(
                host=url.host, port=url.port, user=url.username, database=url.database
            )
            try:
                killed = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND query ILIKE 'LISTEN%'"
                )
            finally:
                await admin.close()
            assert killed == 1
            await wait_until(lambda: not running.listening.is_set())
            await asyncio.wait_for(running.listening.wait(), 5)
            second = await publish(db, wake=False)
            assert (await next_event(subscription))["id"] == second
        finally:
            await running.stop()

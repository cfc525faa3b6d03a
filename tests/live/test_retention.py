"""The event log is pruned past its retention; a tab behind the pruned part gets a resync."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from frankly.db import Database, utcnow
from frankly.live import service as live_service
from frankly.live.hub import RESYNC, Hub
from frankly.live.models import Event
from frankly.worker.runner import Worker
from tests.live.conftest import next_event, publish, wait_until


@pytest.fixture
async def hub(db: Database) -> AsyncIterator[Hub]:
    running = Hub(db, poll_seconds=0.2)
    await running.start()
    yield running
    await running.stop()


class TestRetention:
    async def test_prune_deletes_only_old_events(self, db: Database) -> None:
        ids = [await publish(db, n=n) for n in range(3)]
        async with db.sessionmaker() as session:
            await session.execute(
                update(Event)
                .where(Event.id < ids[2])
                .values(created_at=utcnow() - timedelta(days=8))
            )
            await session.commit()
        await Worker(db).housekeeping()
        async with db.sessionmaker() as session:
            left = (await session.scalars(select(Event.id))).all()
        assert left == [ids[2]]

    async def test_a_tab_behind_the_pruned_log_gets_a_resync(self, db: Database, hub: Hub) -> None:
        ids = [await publish(db, n=n) for n in range(4)]
        await wait_until(lambda: hub.position == ids[-1])
        async with db.sessionmaker() as session:
            await session.execute(
                update(Event)
                .where(Event.id <= ids[1])
                .values(created_at=utcnow() - timedelta(days=30))
            )
            assert await live_service.prune(session, older_than_days=7) == 2
            await session.commit()
            assert await session.scalar(select(func.min(Event.id))) == ids[2]
        behind = hub.subscribe({"inbox"}, last_event_id=ids[0])
        assert (await next_event(behind))["kind"] == RESYNC
        current = hub.subscribe({"inbox"}, last_event_id=ids[1])
        assert [(await next_event(current))["id"] for _ in range(2)] == ids[2:]

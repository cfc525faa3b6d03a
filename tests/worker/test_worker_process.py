"""`frankly worker` as its own process (scale-out): drafts queued messages, sends nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select

from frankly.conversations.models import Direction, DraftingState, Message
from frankly.db import Database
from tests.factories import make_desk, post_inbound

FRANKLY = Path(sys.executable).parent / "frankly"


class TestWorkerProcess:
    async def test_a_separate_worker_drafts_the_queue(
        self, client, db: Database, database_url: str, tmp_path: Path
    ) -> None:
        desk = await make_desk(db)
        for n, text in enumerate(["which bank?", "i paid release pls", "when are you online"]):
            await post_inbound(client, desk, text, conversation_id=f"w{n}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRANKLY_")}
        env.update(FRANKLY_DATABASE_URL=database_url, FRANKLY_WORKER_POLL_SECONDS="0.2")
        log = (tmp_path / "worker.log").open("wb")
        process = subprocess.Popen(  # noqa: ASYNC220 - a real worker process is the point
            [str(FRANKLY), "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:

            async def queued() -> int:
                async with db.sessionmaker() as session:
                    return int(
                        await session.scalar(
                            select(func.count(Message.id)).where(
                                Message.drafting == DraftingState.QUEUED
                            )
                        )
                        or 0
                    )

            for _ in range(300):
                if await queued() == 0:
                    break
                await asyncio.sleep(0.1)
            assert await queued() == 0, (tmp_path / "worker.log").read_text()
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(20)
            log.close()
        assert process.returncode == 0, (tmp_path / "worker.log").read_text()
        async with db.sessionmaker() as session:
            states = (await session.scalars(select(Message.drafting))).all()
            outbound = await session.scalar(
                select(func.count(Message.id)).where(Message.direction == Direction.OUT)
            )
        assert sorted(s.value for s in states if s) == ["abstained", "drafted", "drafted"]
        assert outbound == 0

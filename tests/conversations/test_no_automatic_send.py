"""Nothing but a person's action creates an outbound message."""

from __future__ import annotations

import ast
from pathlib import Path

from sqlalchemy import func, select

from frankly.conversations.models import Direction, Message
from frankly.worker.runner import Worker
from tests.factories import make_desk, post_inbound

SRC = Path(__file__).resolve().parents[2] / "src" / "frankly"


class TestNoAutomaticSend:
    async def test_ingest_drafting_and_workers_leave_no_outbound_message(self, client, db) -> None:
        desk = await make_desk(db)
        for n, text in enumerate(
            [
                "which bank?",
                "i paid release pls",
                "how much?",
                "can I pay from my wife's card?",
                "what is the meaning of life",
                "на какой банк переводить?",
            ]
        ):
            await post_inbound(
                client,
                desk,
                text,
                conversation_id=f"c{n}",
                context={"order": {"amount": "100", "currency": "RUB"}},
            )
        worker = Worker(db)
        worker.start()
        try:
            ran = await worker.drain()
        finally:
            await worker.stop()
        assert ran >= 0
        async with db.sessionmaker() as session:
            drafts = await session.scalar(
                select(func.count()).select_from(Message).where(Message.drafting.is_not(None))
            )
            assert drafts == 6
            outbound = await session.scalar(
                select(func.count(Message.id)).where(Message.direction == Direction.OUT)
            )
        assert outbound == 0


def _outbound_constructions() -> list[str]:
    """Every place in src/ that builds a Message with direction OUT (or any direction at all)."""
    found = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(node):
                    if (
                        isinstance(inner, ast.Call)
                        and isinstance(inner.func, ast.Name)
                        and inner.func.id == "Message"
                    ):
                        found.append(f"{path.relative_to(SRC)}:{node.name}")
    return found


class TestSingleGate:
    def test_only_send_reply_constructs_message_objects(self) -> None:
        # Inbound messages are inserted by ingest() through INSERT … ON CONFLICT, never Message().
        assert _outbound_constructions() == ["conversations/service.py:send_reply"]

    def test_no_raw_insert_of_outbound_direction(self) -> None:
        offenders = []
        for path in SRC.rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if "Direction.OUT.value" in text or '"direction": "out"' in text:
                offenders.append(str(path.relative_to(SRC)))
        assert offenders == []

"""The poller's storage: a poll's messages and cursor in one transaction; a message the database
refuses is skipped and reported instead of stalling the account forever; one poller per
account across instances (a lease)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from frankly.channels import runner
from frankly.channels import service as channel_service
from frankly.channels.base import ContextField, InboundMessage, OutboundMessage, PollResult
from frankly.channels.models import ChannelAccount, ChannelKind
from frankly.conversations.models import Message
from frankly.db import commit


class ListChannel:
    """A polling channel serving a fixed list after the cursor (a stand-in provider)."""

    kind = "widget"
    poll_seconds = 1.0

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def new_channel_key(self, *, message_id: int) -> str:
        return f"k{message_id}"

    async def deliver(self, message: OutboundMessage) -> None:
        return None

    def describe_context(self, context: dict[str, Any]) -> list[ContextField]:
        return []

    async def aclose(self) -> None:
        return None

    async def poll(self, cursor: dict[str, Any]) -> PollResult:
        start = int(cursor.get("next", 0))
        messages = [
            InboundMessage(
                conversation_external_id="c1",
                message_external_id=f"m{n}",
                text=text,
                contact_external_id="v1",
            )
            for n, text in enumerate(self.texts[start:], start=start)
        ]
        return PollResult(messages=messages, cursor={"next": len(self.texts)})

    async def wait_for_activity(self, timeout: float) -> None:
        return None


async def _account(db: Any) -> ChannelAccount:
    async with db.sessionmaker() as session:
        account = ChannelAccount(kind=ChannelKind.WIDGET, name="list", settings={}, cursor={})
        session.add(account)
        await commit(session)
        return account


async def _stored(db: Any) -> list[str]:
    async with db.sessionmaker() as session:
        return list((await session.scalars(select(Message.text).order_by(Message.id))).all())


class TestPollStorage:
    async def test_messages_and_cursor_are_stored_together_and_polls_repeat_safely(
        self, db: Any
    ) -> None:
        account = await _account(db)
        channel = ListChannel(["one", "two"])
        assert await runner.poll_once(db, account=account, channel=channel) == 2
        async with db.sessionmaker() as session:
            row = await session.get(ChannelAccount, account.id)
            assert row is not None and row.cursor == {"next": 2} and row.last_error is None
        # A restart that lost the cursor polls everything again: nothing is stored twice.
        account.cursor = {}
        assert await runner.poll_once(db, account=account, channel=channel) == 0
        assert await _stored(db) == ["one", "two"]

    async def test_a_refused_message_is_skipped_and_reported_not_a_stalled_account(
        self, db: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        account = await _account(db)
        real = channel_service.ingest_inbound

        async def refusing(session: Any, **kwargs: Any) -> Any:
            if kwargs["inbound"].text == "poison":
                raise ValueError("value too long for type character varying(255)")
            return await real(session, **kwargs)

        monkeypatch.setattr(channel_service, "ingest_inbound", refusing)
        channel = ListChannel(["before", "poison", "after"])
        assert await runner.poll_once(db, account=account, channel=channel) == 2
        assert await _stored(db) == ["before", "after"]
        async with db.sessionmaker() as session:
            row = await session.get(ChannelAccount, account.id)
            assert row is not None and row.cursor == {"next": 3}
            assert row.last_error and "m1" in row.last_error
            count = await session.scalar(select(func.count(Message.id)))
            assert count == 2


class TestLease:
    async def test_one_poller_per_account_until_its_lease_runs_out(self, db: Any) -> None:
        account = await _account(db)
        first = await runner.take_lease(db, account_id=account.id, owner="a", seconds=20)
        assert first is not None
        assert await runner.take_lease(db, account_id=account.id, owner="b", seconds=20) is None
        assert await runner.take_lease(db, account_id=account.id, owner="a", seconds=20)
        # A crashed owner's lease expires; then anyone may take it.
        assert await runner.take_lease(db, account_id=account.id, owner="a", seconds=-1)
        assert await runner.take_lease(db, account_id=account.id, owner="b", seconds=20)

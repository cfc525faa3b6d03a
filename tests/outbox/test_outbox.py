"""The outbox inside the app: a send queues exactly one delivery in its own transaction with the
channel key fixed up front; deliveries retry with growing backoff, survive a crashed worker's
lease with the same key, and two delivery loops never deliver one reply twice — on both
databases, against the fake Bybit server where a real channel is needed."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from frankly.auth.models import Agent
from frankly.channels import service as channel_service
from frankly.channels.accounts import save_account
from frankly.channels.base import InboundMessage
from frankly.channels.bybit.client import PATH_SEND_MESSAGE, BybitClient
from frankly.channels.models import ChannelKind
from frankly.conversations import service as conversation_service
from frankly.conversations.models import Conversation, Direction, Draft, Message
from frankly.db import Database, commit, utcnow
from frankly.outbox import service as outbox_service
from frankly.outbox.delivery import deliver_due
from frankly.outbox.models import OutboxItem
from frankly.worker.runner import Worker
from tests.factories import Desk, inbound_with_draft, key, make_desk, post_inbound
from tests.fakes.bybit_server import FakeBybit


@pytest.fixture
def fake() -> Iterator[FakeBybit]:
    server = FakeBybit(reads_per_second=1000, writes_per_second=1000)
    server.start()
    yield server
    server.stop()


async def bybit_account(db: Database, desk: Desk, fake: FakeBybit) -> int:
    async with db.sessionmaker() as session:
        account = await save_account(
            session,
            agent=desk.admin,
            kind=ChannelKind.BYBIT,
            name="p2p",
            settings={"base_url": fake.url},
            secrets={"api_key": "test-key", "api_secret": "test-secret"},
        )
        await commit(session)
        return account.id


async def channel_conversation(
    db: Database,
    *,
    channel: str,
    external_id: str,
    account_id: int | None,
    contact: str | None = None,
) -> int:
    """A conversation as a poller stores it (one customer message)."""
    async with db.writing(), db.sessionmaker() as session:
        result = await channel_service.ingest_inbound(
            session,
            channel=channel,
            inbound=InboundMessage(external_id, key(), "hello?", contact_external_id=contact),
            account_id=account_id,
        )
        await commit(session)
        return result.conversation.id


async def reply(
    client: httpx.AsyncClient, desk: Desk, conversation_id: int, text: str = "On it."
) -> int:
    response = await client.post(
        f"/api/v1/conversations/{conversation_id}/replies",
        json={"text": text, "idempotency_key": key()},
        headers=desk.as_agent(),
    )
    assert response.status_code == 200, response.text
    message_id: int = response.json()["message"]["id"]
    return message_id


async def state(db: Database, message_id: int) -> tuple[Message, OutboxItem]:
    async with db.sessionmaker() as session:
        message = await session.get(Message, message_id)
        item = await session.scalar(select(OutboxItem).where(OutboxItem.message_id == message_id))
    assert message is not None and item is not None
    return message, item


async def make_due(db: Database, message_id: int) -> None:
    """Fast-forward the backoff (and any lease) instead of sleeping through it."""
    past = utcnow() - timedelta(seconds=1)
    async with db.sessionmaker() as session:
        await session.execute(
            update(OutboxItem)
            .where(OutboxItem.message_id == message_id)
            .values(next_attempt_at=past, locked_until=past)
        )
        await session.commit()


def closed_port() -> int:
    """A loopback port nobody listens on (an SMTP server that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class TestQueueing:
    async def test_a_send_queues_one_item_with_the_key_fixed_before_any_attempt(
        self, client: httpx.AsyncClient, db: Database, fake: FakeBybit
    ) -> None:
        desk = await make_desk(db)
        account_id = await bybit_account(db, desk, fake)
        order = fake.add_order()
        conversation_id = await channel_conversation(
            db, channel="bybit", external_id=order, account_id=account_id
        )
        message_id = await reply(client, desk, conversation_id)
        async with db.sessionmaker() as session:
            items = (await session.scalars(select(OutboxItem))).all()
        [item] = items
        message, _ = await state(db, message_id)
        assert item.message_id == message_id and item.conversation_id == conversation_id
        assert item.channel == "bybit" and item.account_id == account_id
        assert item.status == "queued" and item.attempts == 0 and item.last_attempt_at is None
        assert item.channel_key and item.channel_key == message.channel_message_id
        assert message.delivery_status == "queued"
        assert fake.requests_to(PATH_SEND_MESSAGE) == []

        assert await deliver_due(db, worker_id="w1") == 1
        [request] = fake.requests_to(PATH_SEND_MESSAGE)
        assert request.json()["msgUuid"] == item.channel_key
        message, item = await state(db, message_id)
        assert message.delivery_status == "delivered" and item.attempts == 1

    async def test_a_failing_commit_leaves_neither_message_nor_outbox_item(
        self, client: httpx.AsyncClient, db: Database
    ) -> None:
        desk = await make_desk(db)
        detail, draft = await inbound_with_draft(client, desk)
        async with db.writing(), db.sessionmaker() as session:
            agent = await session.get(Agent, desk.agent.id)
            found = await session.get(Conversation, detail["id"])
            pending = await session.get(Draft, draft["id"])
            assert agent is not None and found is not None and pending is not None
            result = await conversation_service.send_reply(
                session,
                agent=agent,
                conversation=found,
                text=None,
                idempotency_key=key(),
                draft=pending,
            )
            assert await session.scalar(select(func.count(OutboxItem.id))) == 1
            # Something else in the same transaction breaks at commit (a unique key clash).
            session.add(
                Message(
                    conversation_id=found.id,
                    channel=found.channel,
                    direction=Direction.IN,
                    text="clash",
                    channel_message_id=result.message.channel_message_id,
                )
            )
            with pytest.raises(IntegrityError):
                await session.commit()
            await session.rollback()
        async with db.sessionmaker() as session:
            assert await session.scalar(select(func.count(OutboxItem.id))) == 0
            outbound = select(func.count(Message.id)).where(Message.direction == Direction.OUT)
            assert await session.scalar(outbound) == 0
            still = await session.get(Draft, draft["id"])
            assert still is not None and still.status == "pending"

    async def test_api_channel_replies_are_delivered_as_soon_as_they_are_sent(
        self, client: httpx.AsyncClient, db: Database
    ) -> None:
        desk = await make_desk(db)
        accepted = await post_inbound(client, desk, "hello?")
        # A running worker that would otherwise look only every 30 s: the send wakes it.
        worker = Worker(db, poll_seconds=30.0)
        worker.start()
        try:
            message_id = await reply(client, desk, accepted["conversation_id"])
            for _ in range(100):
                message, item = await state(db, message_id)
                if message.delivery_status == "delivered":
                    break
                await asyncio.sleep(0.05)
        finally:
            await worker.stop()
        assert message.delivery_status == "delivered" and message.delivered_at is not None
        assert item.status == "delivered" and item.attempts == 1 and item.channel == "api"
        assert item.channel_key == message.channel_message_id

    async def test_a_channel_without_an_account_fails_for_good_saying_why(
        self, client: httpx.AsyncClient, db: Database
    ) -> None:
        desk = await make_desk(db)
        conversation_id = await channel_conversation(
            db, channel="bybit", external_id="order-without-account", account_id=None
        )
        message_id = await reply(client, desk, conversation_id)
        assert await deliver_due(db, worker_id="w1") == 1
        message, item = await state(db, message_id)
        assert message.delivery_status == "failed" and item.status == "failed"
        assert item.attempts == 1 and item.account_id is None
        assert message.delivery_error is not None
        assert "no bybit account is configured" in message.delivery_error
        assert item.last_error == message.delivery_error
        await make_due(db, message_id)
        assert await deliver_due(db, worker_id="w1") == 0  # failed for good: not retried


class TestRetries:
    async def test_backoff_grows_until_the_delivery_gives_up(
        self, client: httpx.AsyncClient, db: Database
    ) -> None:
        desk = await make_desk(db)
        async with db.sessionmaker() as session:
            account = await save_account(
                session,
                agent=desk.admin,
                kind=ChannelKind.EMAIL,
                name="mailbox",
                settings={
                    "from_address": "support@example.com",
                    "imap_host": "127.0.0.1",
                    "imap_port": closed_port(),
                    "imap_tls": "none",
                    "smtp_host": "127.0.0.1",
                    "smtp_port": closed_port(),  # the SMTP server is down
                    "smtp_tls": "none",
                    "smtp_user": "",
                    "timeout_seconds": 2,
                    "sent_mailbox": "",  # only SMTP's errors here (Sent folder: its own tests)
                },
                secrets={"imap_password": "secret"},
            )
            await commit(session)
        conversation_id = await channel_conversation(
            db,
            channel="email",
            external_id="<q1@example.org>",
            account_id=account.id,
            contact="bob@example.org",
        )
        message_id = await reply(client, desk, conversation_id)
        delays = []
        for attempt in range(1, outbox_service.MAX_ATTEMPTS + 1):
            assert await deliver_due(db, worker_id="w1") == 1
            message, item = await state(db, message_id)
            assert item.attempts == attempt
            assert message.delivery_error and "could not reach" in message.delivery_error
            if attempt < outbox_service.MAX_ATTEMPTS:
                assert message.delivery_status == "queued" and item.status == "queued"
                assert item.last_attempt_at is not None
                delays.append((item.next_attempt_at - item.last_attempt_at).total_seconds())
                assert await deliver_due(db, worker_id="w1") == 0  # not due yet
                await make_due(db, message_id)
        assert message.delivery_status == "failed" and item.status == "failed"
        base = outbox_service.BASE_DELAY_SECONDS
        assert delays == pytest.approx([base * 2**n for n in range(len(delays))], abs=1.0)
        assert all(later > earlier for earlier, later in itertools.pairwise(delays))


class TestCrashedWorker:
    async def test_an_expired_lease_is_redelivered_with_the_same_key(
        self, client: httpx.AsyncClient, db: Database, fake: FakeBybit
    ) -> None:
        desk = await make_desk(db)
        account_id = await bybit_account(db, desk, fake)
        order = fake.add_order()
        conversation_id = await channel_conversation(
            db, channel="bybit", external_id=order, account_id=account_id
        )
        message_id = await reply(client, desk, conversation_id, "Your order is on its way.")
        message, _ = await state(db, message_id)

        # Worker A claims the item, gets the reply to Bybit, and dies before recording it.
        async with db.writing(), db.sessionmaker() as session:
            [claimed] = await outbox_service.claim(session, worker_id="A", lease_seconds=60)
            await session.commit()
        bybit = BybitClient(fake.url, "test-key", "test-secret")
        try:
            await bybit.send_chat_message(order, message.text, claimed.channel_key)
        finally:
            await bybit.aclose()

        # While A's lease runs, nobody else touches the item.
        assert await deliver_due(db, worker_id="B") == 0
        async with db.sessionmaker() as session:
            await session.execute(
                update(OutboxItem)
                .where(OutboxItem.id == claimed.id)
                .values(locked_until=utcnow() - timedelta(seconds=1))
            )
            await session.commit()
        assert await deliver_due(db, worker_id="B") == 1
        message, item = await state(db, message_id)
        assert message.delivery_status == "delivered" and item.attempts == 2
        uuids = [r.json()["msgUuid"] for r in fake.requests_to(PATH_SEND_MESSAGE)]
        assert uuids == [claimed.channel_key] * 2
        assert fake.uuid_counts == {claimed.channel_key: 2}
        assert fake.sent_texts(order) == ["Your order is on its way."]  # Bybit deduped it

        # A comes back late: its lease is gone, so it cannot overwrite B's result.
        async with db.writing(), db.sessionmaker() as session:
            assert await outbox_service.mark_delivered(session, item=claimed) is False
            await outbox_service.mark_failed(session, item=claimed, error="late", permanent=True)
            await session.commit()
        message, item = await state(db, message_id)
        assert message.delivery_status == "delivered" and item.status == "delivered"
        assert item.last_error is None


class TestConcurrentDelivery:
    async def test_two_delivery_loops_never_deliver_one_reply_twice(
        self, client: httpx.AsyncClient, db: Database, fake: FakeBybit
    ) -> None:
        desk = await make_desk(db)
        account_id = await bybit_account(db, desk, fake)
        keys: list[str] = []
        for _ in range(4):
            order = fake.add_order()
            conversation_id = await channel_conversation(
                db, channel="bybit", external_id=order, account_id=account_id
            )
            for n in range(2):
                message_id = await reply(client, desk, conversation_id, f"Reply {n} to {order}")
                message, _ = await state(db, message_id)
                assert message.channel_message_id is not None
                keys.append(message.channel_message_id)

        claimed_by: dict[str, list[int]] = {"A": [], "B": []}

        async def loop(name: str) -> None:
            while True:
                ran = await deliver_due(db, worker_id=name, limit=2)
                claimed_by[name].append(ran)
                if not ran:
                    return

        await asyncio.gather(loop("A"), loop("B"))
        assert all(sum(runs) > 0 for runs in claimed_by.values()), claimed_by  # both took part
        async with db.sessionmaker() as session:
            items = (await session.scalars(select(OutboxItem))).all()
        assert len(items) == 8
        assert all(i.status == "delivered" and i.attempts == 1 for i in items)
        assert sum(sum(runs) for runs in claimed_by.values()) == 8
        assert sorted(fake.uuid_counts) == sorted(keys)
        assert set(fake.uuid_counts.values()) == {1}
        assert len(fake.requests_to(PATH_SEND_MESSAGE)) == 8

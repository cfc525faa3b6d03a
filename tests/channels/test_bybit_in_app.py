"""The Bybit channel inside the app: an account pointing at the fake Bybit server, the poller
storing order chats as conversations, drafting from the order's facts, and the outbox delivering
a person's reply with msgUuid = the message's channel key — on both databases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from frankly.channels.accounts import save_account
from frankly.channels.bybit.channel import BybitChannel
from frankly.channels.bybit.client import (
    PATH_ACCOUNT_INFO,
    PATH_CHAT_MESSAGES,
    PATH_ORDER_INFO,
    PATH_PENDING_ORDERS,
    PATH_SEND_MESSAGE,
)
from frankly.channels.models import ChannelAccount, ChannelKind
from frankly.channels.runner import poll_once
from frankly.conversations.models import Conversation, Message
from frankly.db import Database, commit, utcnow
from frankly.drafting import disclosure
from frankly.outbox.models import OutboxItem
from tests.factories import Desk, conversation, key, make_desk, run_jobs
from tests.fakes.bybit_server import FILE_PREFIX, FakeBybit

PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 40
SECRETS = {"api_key": "test-key", "api_secret": "test-secret"}
# Everything the app may ask Bybit: reading orders and chats, and sending a chat message.
READ_AND_SEND = {
    PATH_ACCOUNT_INFO,
    PATH_PENDING_ORDERS,
    PATH_ORDER_INFO,
    PATH_CHAT_MESSAGES,
    PATH_SEND_MESSAGE,
}
INTRO_EN = disclosure.disclosure_for(disclosure.DisclosureKind.INTRO, "en").text


@pytest.fixture
async def channel(fake: FakeBybit) -> AsyncIterator[BybitChannel]:
    ch = poller(fake)
    yield ch
    await ch.aclose()


def poller(fake: FakeBybit) -> BybitChannel:
    """The polling side, with quick retries; delivery goes through the registry's own client."""
    return BybitChannel.from_config(
        {"base_url": fake.url, "poll_seconds": 1},
        SECRETS,
        reads_per_second=1000,
        retry_backoff=0.01,
    )


async def make_account(db: Database, fake: FakeBybit, desk: Desk) -> int:
    async with db.sessionmaker() as session:
        account = await save_account(
            session,
            agent=desk.admin,
            kind=ChannelKind.BYBIT,
            name="p2p",
            settings={"base_url": fake.url, "poll_seconds": 1},
            secrets=SECRETS,
        )
        await commit(session)
        return account.id


async def poll(db: Database, account_id: int, channel: BybitChannel) -> int:
    """One poll with the account as stored now (its committed cursor)."""
    async with db.sessionmaker() as session:
        account = await session.get(ChannelAccount, account_id)
    assert account is not None
    return await poll_once(db, account=account, channel=channel)


async def detail_of(client: httpx.AsyncClient, desk: Desk, order_id: str) -> dict[str, Any]:
    async with desk.db.sessionmaker() as session:
        conversation_id = await session.scalar(
            select(Conversation.id).where(
                Conversation.channel == "bybit", Conversation.external_id == order_id
            )
        )
    assert conversation_id is not None, f"no conversation for order {order_id}"
    found: dict[str, Any] = await conversation(client, desk, conversation_id)
    return found


async def message_count(db: Database) -> int:
    async with db.sessionmaker() as session:
        return int(await session.scalar(select(func.count(Message.id))) or 0)


def pending(detail: dict[str, Any]) -> dict[str, Any]:
    [draft] = [d for d in detail["drafts"] if d["status"] == "pending"]
    found: dict[str, Any] = draft
    return found


def assert_only_read_and_send(fake: FakeBybit) -> None:
    """Nothing in the app can mark an order paid or release assets: no other path was asked."""
    paths = {r.path for r in fake.requests}
    other = {p for p in paths if p not in READ_AND_SEND and not p.startswith(FILE_PREFIX)}
    assert not other, f"the app called Bybit endpoints beyond read/send: {sorted(other)}"


async def send_draft(client: httpx.AsyncClient, desk: Desk, draft: dict[str, Any]) -> Any:
    response = await client.post(
        f"/api/v1/drafts/{draft['id']}/send",
        json={"idempotency_key": key()},
        headers=desk.as_agent(),
    )
    assert response.status_code == 200, response.text
    return response.json()["message"]


async def a_drafted_order(
    client: httpx.AsyncClient, db: Database, fake: FakeBybit, channel: BybitChannel
) -> tuple[Desk, str, dict[str, Any]]:
    """A desk, an account, an order whose buyer asked how much to send, and its pending draft."""
    desk = await make_desk(db)
    account_id = await make_account(db, fake, desk)
    order = fake.add_order(amount="15000", currency="RUB")
    fake.add_message(order, "how much should I send?")
    assert await poll(db, account_id, channel) == 1
    await run_jobs(db)
    return desk, order, pending(await detail_of(client, desk, order))


async def delivery_of(db: Database, message_id: int) -> tuple[Message, OutboxItem]:
    async with db.sessionmaker() as session:
        message = await session.get(Message, message_id)
        item = await session.scalar(select(OutboxItem).where(OutboxItem.message_id == message_id))
    assert message is not None and item is not None
    return message, item


async def make_due(db: Database, message_id: int) -> None:
    """Fast-forward the backoff instead of sleeping through it."""
    async with db.sessionmaker() as session:
        await session.execute(
            update(OutboxItem)
            .where(OutboxItem.message_id == message_id)
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()


class TestInbound:
    async def test_order_chats_become_conversations_with_the_order_facts(
        self, client: httpx.AsyncClient, db: Database, fake: FakeBybit, channel: BybitChannel
    ) -> None:
        desk = await make_desk(db)
        account_id = await make_account(db, fake, desk)
        first = fake.add_order(amount="15000", currency="RUB", bank_name="Tinkoff")
        second = fake.add_order(amount="2500", currency="RUB", bank_name="Sber", status=20)
        fake.add_message(first, "how much should I send?")
        fake.add_message(first, "our own earlier message", user_id="1001")
        fake.add_system_message(first, "The buyer has marked the order as paid.")
        fake.add_message(second, kind="pic", data=PNG, file_name="receipt.png")
        fake.add_message(second, "how much should I send?")

        assert await poll(db, account_id, channel) == 4
        await run_jobs(db)

        one = await detail_of(client, desk, first)
        assert one["external_id"] == first
        order = one["context"]["order"]
        assert order["amount"] == "15000" and order["currency"] == "RUB"
        assert order["status"] == "waiting for buyer payment" and order["status_code"] == 10
        assert order["payment_method"] == "Tinkoff"
        assert "40817810099910004312" not in str(one["context"])  # no account numbers
        assert one["contact"]["display_name"] == "buyer42"
        texts = [(m["direction"], m["text"]) for m in one["messages"]]
        assert texts == [
            ("in", "how much should I send?"),
            ("system", "The buyer has marked the order as paid."),
        ]
        assert one["messages"][1]["drafting"] is None  # a system notice is never drafted for
        draft = pending(one)
        assert draft["text"] == "Please send exactly 15000 RUB."
        assert draft["faq_entry"] == "payment-amount"
        assert draft["message_id"] == one["messages"][0]["id"]

        two = await detail_of(client, desk, second)
        assert two["context"]["order"]["status"] == "waiting for seller release"
        assert two["context"]["order"]["payment_method"] == "Sber"
        assert pending(two)["text"] == "Please send exactly 2500 RUB."
        image = two["messages"][0]
        [attachment] = image["attachments"]
        assert attachment["content_type"] == "image/png" and attachment["size"] == len(PNG)

        url = f"/api/v1/attachments/{attachment['id']}"
        downloaded = await client.get(url, headers=desk.as_agent())
        assert downloaded.status_code == 200
        assert downloaded.content == PNG
        assert downloaded.headers["content-type"] == "image/png"
        assert (await client.get(url)).status_code == 401
        assert_only_read_and_send(fake)

    async def test_polling_again_or_after_a_restart_stores_nothing_twice(
        self, client: httpx.AsyncClient, db: Database, fake: FakeBybit, channel: BybitChannel
    ) -> None:
        desk = await make_desk(db)
        account_id = await make_account(db, fake, desk)
        order = fake.add_order()
        fake.add_message(order, "which bank do you accept?")
        fake.add_message(order, "hello?")
        assert await poll(db, account_id, channel) == 2
        assert await poll(db, account_id, channel) == 0
        assert await message_count(db) == 2

        # A restarted poller: a new channel object that only has the stored cursor.
        async with db.sessionmaker() as session:
            stored = await session.get(ChannelAccount, account_id)
        assert stored is not None and stored.cursor["orders"][order]["seen"]
        restarted = poller(fake)
        try:
            assert (await restarted.poll(dict(stored.cursor))).messages == []
            assert await poll(db, account_id, restarted) == 0
            fake.add_message(order, "still there?")
            assert await poll(db, account_id, restarted) == 1
        finally:
            await restarted.aclose()
        assert await message_count(db) == 3
        detail = await detail_of(client, desk, order)
        assert [m["text"] for m in detail["messages"]] == [
            "which bank do you accept?",
            "hello?",
            "still there?",
        ]

    async def test_a_status_change_updates_the_conversation_context(
        self, client: httpx.AsyncClient, db: Database, fake: FakeBybit, channel: BybitChannel
    ) -> None:
        desk = await make_desk(db)
        account_id = await make_account(db, fake, desk)
        order = fake.add_order()
        fake.add_message(order, "hi")
        await poll(db, account_id, channel)
        before = await detail_of(client, desk, order)
        assert before["context"]["order"]["status_code"] == 10

        fake.set_status(order, 20)
        assert await poll(db, account_id, channel) == 0
        after = await detail_of(client, desk, order)
        assert after["context"]["order"]["status"] == "waiting for seller release"
        assert after["context"]["order"]["status_code"] == 20
        assert after["context"]["order"]["amount"] == "15000"

        fake.set_status(order, 50)  # finished: it leaves the pending list with a final status
        await poll(db, account_id, channel)
        final = await detail_of(client, desk, order)
        assert final["context"]["order"]["status"] == "finished"
        async with db.sessionmaker() as session:
            stored = await session.get(ChannelAccount, account_id)
        assert stored is not None and order not in stored.cursor["orders"]

    async def test_blank_or_overlong_chat_messages_do_not_stall_the_poller(
        self, client: httpx.AsyncClient, db: Database, fake: FakeBybit, channel: BybitChannel
    ) -> None:
        desk = await make_desk(db)
        account_id = await make_account(db, fake, desk)
        order = fake.add_order()
        fake.add_message(order, "   ")
        fake.add_message(order, "x" * 20_000)
        fake.add_message(order, "how much should I send?")
        assert await poll(db, account_id, channel) == 3
        detail = await detail_of(client, desk, order)
        blank, long, question = (m["text"] for m in detail["messages"])
        assert blank == "(empty message)"
        assert long.startswith("xxxx") and "shortened" in long
        assert len(long.encode()) <= 16 * 1024
        assert question == "how much should I send?"
        assert await poll(db, account_id, channel) == 0


class TestOutbound:
    async def test_an_accepted_draft_is_sent_with_the_channel_key_as_msg_uuid(
        self, client: httpx.AsyncClient, db: Database, fake: FakeBybit, channel: BybitChannel
    ) -> None:
        desk, order, draft = await a_drafted_order(client, db, fake, channel)
        sent = await send_draft(client, desk, draft)
        assert sent["delivery_status"] == "queued" and sent["channel_message_id"]
        assert fake.requests_to(PATH_SEND_MESSAGE) == []  # nothing leaves before the outbox runs

        await run_jobs(db)
        message, item = await delivery_of(db, sent["id"])
        assert message.delivery_status == "delivered" and message.delivery_error is None
        assert item.status == "delivered" and item.attempts == 1
        [request] = fake.requests_to(PATH_SEND_MESSAGE)
        body = request.json()
        assert body["msgUuid"] == sent["channel_message_id"] == item.channel_key
        assert body["orderId"] == order and body["contentType"] == "str"
        assert body["message"] == sent["text"]
        assert INTRO_EN in body["message"] and "Please send exactly 15000 RUB." in body["message"]
        assert fake.sent_texts(order) == [sent["text"]]

        # Our reply comes back in the chat listing: it is not a customer message.
        async with db.sessionmaker() as session:
            account_id = await session.scalar(select(ChannelAccount.id))
        assert account_id is not None
        assert await poll(db, account_id, channel) == 0
        detail = await detail_of(client, desk, order)
        assert [m["direction"] for m in detail["messages"]] == ["in", "out"]
        assert_only_read_and_send(fake)

    async def test_an_outage_keeps_it_queued_and_the_retry_reuses_the_msg_uuid(
        self, client: httpx.AsyncClient, db: Database, fake: FakeBybit, channel: BybitChannel
    ) -> None:
        desk, order, draft = await a_drafted_order(client, db, fake, channel)
        # The client tries four times (its own bounded retries) before the outbox hears of it.
        fake.fail_next(PATH_SEND_MESSAGE, "502", count=4)
        sent = await send_draft(client, desk, draft)
        await run_jobs(db)
        message, item = await delivery_of(db, sent["id"])
        assert message.delivery_status == "queued"
        assert message.delivery_error is not None and "502" in message.delivery_error
        assert item.status == "queued" and item.next_attempt_at > utcnow()
        assert fake.sent_texts(order) == []

        await run_jobs(db)  # not due yet: nothing happens
        assert len(fake.requests_to(PATH_SEND_MESSAGE)) == 4

        await make_due(db, sent["id"])
        await run_jobs(db)
        message, item = await delivery_of(db, sent["id"])
        assert message.delivery_status == "delivered" and message.delivery_error is None
        assert item.attempts == 2
        uuids = {r.json()["msgUuid"] for r in fake.requests_to(PATH_SEND_MESSAGE)}
        assert uuids == {sent["channel_message_id"]}
        assert fake.uuid_counts == {sent["channel_message_id"]: 1}
        assert fake.sent_texts(order) == [sent["text"]]
        assert_only_read_and_send(fake)

    async def test_a_closed_order_fails_for_good_until_a_person_retries(
        self, client: httpx.AsyncClient, db: Database, fake: FakeBybit, channel: BybitChannel
    ) -> None:
        desk, order, draft = await a_drafted_order(client, db, fake, channel)
        fake.set_status(order, 40)  # cancelled: the chat no longer takes messages
        sent = await send_draft(client, desk, draft)
        await run_jobs(db)
        message, item = await delivery_of(db, sent["id"])
        assert message.delivery_status == "failed" and item.status == "failed"
        assert message.delivery_error is not None and "closed" in message.delivery_error
        assert item.attempts == 1

        await make_due(db, sent["id"])
        await run_jobs(db)  # a permanent failure is not retried by itself
        assert len(fake.requests_to(PATH_SEND_MESSAGE)) == 1

        fake.set_status(order, 10)
        retried = await client.post(f"/api/v1/messages/{sent['id']}/retry", headers=desk.as_agent())
        assert retried.status_code == 200, retried.text
        assert retried.json()["delivery_status"] == "queued"
        assert retried.json()["delivery_error"] is None
        again = await client.post(f"/api/v1/messages/{sent['id']}/retry", headers=desk.as_agent())
        assert again.status_code == 409  # only a failed delivery can be retried

        await run_jobs(db)
        message, _ = await delivery_of(db, sent["id"])
        assert message.delivery_status == "delivered"
        uuids = [r.json()["msgUuid"] for r in fake.requests_to(PATH_SEND_MESSAGE)]
        assert uuids == [sent["channel_message_id"]] * 2
        assert fake.sent_texts(order) == [sent["text"]]
        assert_only_read_and_send(fake)

    async def test_a_rejected_key_fails_until_the_admin_fixes_the_secret(
        self, client: httpx.AsyncClient, db: Database, fake: FakeBybit, channel: BybitChannel
    ) -> None:
        desk, order, draft = await a_drafted_order(client, db, fake, channel)
        async with db.sessionmaker() as session:
            account = await session.scalar(select(ChannelAccount))
            assert account is not None
            await save_account(
                session,
                agent=desk.admin,
                kind=ChannelKind.BYBIT,
                name="p2p",
                settings=dict(account.settings),
                secrets={"api_secret": "not-the-secret"},
                account=account,
            )
            await commit(session)
        sent = await send_draft(client, desk, draft)
        await run_jobs(db)
        message, _ = await delivery_of(db, sent["id"])
        assert message.delivery_status == "failed"
        assert message.delivery_error is not None and "10004" in message.delivery_error

        async with db.sessionmaker() as session:
            account = await session.scalar(select(ChannelAccount))
            assert account is not None
            await save_account(
                session,
                agent=desk.admin,
                kind=ChannelKind.BYBIT,
                name="p2p",
                settings=dict(account.settings),
                secrets={"api_secret": SECRETS["api_secret"]},
                account=account,
            )
            await commit(session)
        retried = await client.post(f"/api/v1/messages/{sent['id']}/retry", headers=desk.as_agent())
        assert retried.status_code == 200, retried.text
        await run_jobs(db)
        message, _ = await delivery_of(db, sent["id"])
        assert message.delivery_status == "delivered"
        assert fake.uuid_counts == {sent["channel_message_id"]: 1}
        assert fake.sent_texts(order) == [sent["text"]]
        assert_only_read_and_send(fake)

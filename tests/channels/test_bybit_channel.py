"""The Bybit order-chat channel against the fake Bybit server: polling, cursor, context and
delivery."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from frankly.channels.base import DeliveryError, OutboundMessage, PollingChannel, PollResult
from frankly.channels.bybit.channel import BybitChannel
from frankly.drafting.placeholders import fill
from tests.fakes.bybit_server import FakeBybit

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 40
PDF = b"%PDF-1.4\n%fake receipt\n"
ACCOUNT_NO = "40817810099910004312"
FAST = {"retry_backoff": 0.01, "ip_ban_backoff": 0.01, "ip_ban_backoff_cap": 0.05}


def make_channel(url: str, **options: Any) -> BybitChannel:
    client_options: dict[str, Any] = {**FAST, "reads_per_second": 1000, "writes_per_second": 1000}
    client_options.update(options)
    return BybitChannel.from_config(
        {"base_url": url, "poll_seconds": 1, "recv_window": 5000},
        {"api_key": client_options.pop("api_key", "test-key"), "api_secret": "test-secret"},
        **client_options,
    )


@pytest.fixture
async def channel(fake: FakeBybit) -> AsyncIterator[BybitChannel]:
    ch = make_channel(fake.url)
    yield ch
    await ch.aclose()


def outbound(order_id: str, key: str, text: str = "Hello from the desk") -> OutboundMessage:
    return OutboundMessage(
        message_id=1,
        conversation_external_id=order_id,
        channel_key=key,
        text=text,
        body_text=text,
        origin="human_written",
        disclosure=None,
        language="en",
        context={},
    )


def texts(result: PollResult) -> list[str]:
    return [m.text for m in result.messages]


class TestConfig:
    def test_is_a_polling_channel(self, channel: BybitChannel) -> None:
        assert isinstance(channel, PollingChannel)
        assert channel.kind == "bybit" and channel.poll_seconds == 1.0

    @pytest.mark.parametrize(
        ("settings", "secrets", "error"),
        [
            ({}, {"api_key": "k"}, "api_secret"),
            ({"base_url": "ftp://x"}, {"api_key": "k", "api_secret": "s"}, "base_url"),
            ({"poll_seconds": 0}, {"api_key": "k", "api_secret": "s"}, "poll_seconds"),
        ],
    )
    def test_bad_config_names_the_field(
        self, settings: dict[str, Any], secrets: dict[str, Any], error: str
    ) -> None:
        with pytest.raises(ValueError, match=error):
            BybitChannel.from_config(settings, secrets)

    def test_channel_keys_are_fresh_uuids(self, channel: BybitChannel) -> None:
        keys = {channel.new_channel_key(message_id=1) for _ in range(3)}
        assert len(keys) == 3 and all(len(k) == 32 for k in keys)


class TestPolling:
    async def test_a_buyer_message_arrives_with_the_order_context(
        self, fake: FakeBybit, channel: BybitChannel
    ) -> None:
        order = fake.add_order("1900000000000000001")
        mid = fake.add_message(order, "Hi, I paid", created_ms=1_741_831_397_000)
        result = await channel.poll({})
        [message] = result.messages
        assert message.conversation_external_id == order
        assert message.message_external_id == mid and message.text == "Hi, I paid"
        assert message.created_at is not None and message.created_at.year == 2025
        assert message.contact_external_id == "2002" and message.contact_name == "buyer42"
        assert not message.system
        assert message.context is not None
        assert message.context["order"] == {
            "id": order,
            "amount": "15000",
            "currency": "RUB",
            "token": "USDT",
            "price": "92.5",
            "quantity": "162.1621",
            "side": "sell",
            "status": "waiting for buyer payment",
            "status_code": 10,
            "payment_method": "Tinkoff",
            "counterparty": "buyer42",
            "counterparty_id": "2002",
            "created_at": message.context["order"]["created_at"],
        }
        assert [c.conversation_external_id for c in result.contexts] == [order]
        answer = "Send {{order.amount}} {{order.currency}} via {{order.payment_method}}."
        assert fill(answer, message.context) == "Send 15000 RUB via Tinkoff."

    async def test_no_account_number_or_real_name_leaves_the_channel(
        self, fake: FakeBybit, channel: BybitChannel
    ) -> None:
        order = fake.add_order()
        fake.add_message(order, "hello")
        result = await channel.poll({})
        fake.set_status(order, 50)
        later = await channel.poll(result.cursor)
        everything = json.dumps(
            [
                [m.context for m in result.messages],
                [c.context for c in result.contexts + later.contexts],
                result.cursor,
                later.cursor,
            ]
        )
        assert ACCOUNT_NO not in everything
        assert "Ivan Buyer" not in everything

    async def test_orders_and_chats_are_paged(self, fake: FakeBybit, channel: BybitChannel) -> None:
        orders = [fake.add_order() for _ in range(33)]
        for n in range(65):
            fake.add_message(orders[0], f"line {n}", created_ms=1_700_000_000_000 + n)
        result = await channel.poll({})
        assert {c.conversation_external_id for c in result.contexts} == set(orders)
        assert texts(result) == [f"line {n}" for n in range(65)]  # oldest first
        pages = [r.json() for r in fake.requests_to("/v5/p2p/order/pending/simplifyList")]
        assert pages == [{"page": 1, "size": 30}, {"page": 2, "size": 30}]
        chat_pages = [
            r.json()["currentPage"]
            for r in fake.requests_to("/v5/p2p/order/message/listpage")
            if r.json()["orderId"] == orders[0]
        ]
        assert chat_pages == ["1", "2", "3"]

    async def test_a_repeated_poll_yields_nothing_twice(
        self, fake: FakeBybit, channel: BybitChannel
    ) -> None:
        order = fake.add_order()
        fake.add_message(order, "first")
        first = await channel.poll({})
        again = await channel.poll(first.cursor)
        assert texts(first) == ["first"] and again.messages == [] and again.contexts == []
        fake.add_message(order, "second")
        third = await channel.poll(again.cursor)
        assert texts(third) == ["second"]
        # Repeating a poll from an older cursor repeats its messages, nothing else (ids dedupe).
        replay = await channel.poll(first.cursor)
        assert [m.message_external_id for m in replay.messages] == [
            m.message_external_id for m in third.messages
        ]

    async def test_a_restart_resumes_from_the_stored_cursor(self, fake: FakeBybit) -> None:
        order = fake.add_order()
        fake.add_message(order, "before restart")
        before = make_channel(fake.url)
        stored = json.loads(json.dumps((await before.poll({})).cursor))  # as the database keeps it
        await before.aclose()
        fake.add_message(order, "after restart")
        after = make_channel(fake.url)
        result = await after.poll(stored)
        await after.aclose()
        assert texts(result) == ["after restart"]

    async def test_own_messages_are_skipped(self, fake: FakeBybit, channel: BybitChannel) -> None:
        order = fake.add_order()
        fake.add_message(order, "our reply", user_id="1001")
        fake.add_message(order, "buyer text")
        assert texts(await channel.poll({})) == ["buyer text"]

    async def test_own_user_id_is_fetched_once(
        self, fake: FakeBybit, channel: BybitChannel
    ) -> None:
        cursor: dict[str, Any] = {}
        for _ in range(3):
            cursor = (await channel.poll(cursor)).cursor
        assert len(fake.requests_to("/v5/p2p/user/personal/info")) == 1

    async def test_system_and_support_messages_are_flagged(
        self, fake: FakeBybit, channel: BybitChannel
    ) -> None:
        order = fake.add_order()
        fake.add_system_message(order, "The buyer has marked the order as paid.")
        fake.add_message(order, "We are looking into it", user_id="9", msg_type=5)
        first, second = (await channel.poll({})).messages
        assert first.system and first.text.startswith("The buyer has marked")
        assert not second.system and second.skip_drafting
        assert second.text == "Bybit support: We are looking into it"

    async def test_images_and_pdfs_are_downloaded(
        self, fake: FakeBybit, channel: BybitChannel
    ) -> None:
        order = fake.add_order()
        fake.add_message(order, kind="pic", data=PNG, file_name="receipt.png")
        fake.add_message(order, kind="pdf", data=PDF, file_name="statement.pdf")
        fake.add_message(order, kind="video", data=b"\x00\x00", file_name="proof.mp4")
        pic, pdf, video = (await channel.poll({})).messages
        [image] = pic.attachments
        assert (image.filename, image.content_type, image.data) == ("receipt.png", "image/png", PNG)
        [document] = pdf.attachments
        assert (document.filename, document.content_type) == ("statement.pdf", "application/pdf")
        assert document.data == PDF
        assert video.attachments == [] and "proof.mp4" in video.text

    async def test_a_missing_file_is_named_in_the_text(
        self, fake: FakeBybit, channel: BybitChannel
    ) -> None:
        order = fake.add_order()
        mid = fake.add_message(order, kind="pic", data=PNG, file_name="gone.png")
        with fake.lock:
            fake.files.clear()
        [message] = (await channel.poll({})).messages
        assert message.message_external_id == mid
        assert message.attachments == [] and "gone.png could not be downloaded" in message.text


class TestHostileFiles:
    """A counterparty writes the file message: its URL and bytes are untrusted."""

    async def test_a_file_on_another_host_is_named_not_fetched(
        self, fake: FakeBybit, channel: BybitChannel
    ) -> None:
        elsewhere = FakeBybit(public_files=True)
        elsewhere.start()
        try:
            order = fake.add_order()
            url = f"{elsewhere.url}{elsewhere.add_file('cat.png', PNG)}"
            fake.add_message(order, kind="pic", file_name="cat.png", url=url)
            fake.add_message(order, kind="pic", url="http://169.254.169.254/latest/meta-data/")
            fake.add_message(order, kind="pdf", url="http://[x/broken.pdf")
            first, metadata, broken = (await channel.poll({})).messages
        finally:
            elsewhere.stop()
        assert elsewhere.requests == []
        assert first.attachments == metadata.attachments == broken.attachments == []
        assert first.text.startswith("[image cat.png could not be downloaded: download refused")
        assert "refused: http://169.254.169.254:80 is not the Bybit API" in metadata.text
        assert "refused" in broken.text

    async def test_the_bytes_decide_the_type(self, fake: FakeBybit, channel: BybitChannel) -> None:
        order = fake.add_order()
        jpeg = b"\xff\xd8\xff\xe0" + b"\x00" * 32
        fake.add_message(order, kind="pic", data=jpeg, file_name="photo.png")  # served as png
        fake.add_message(order, kind="pdf", data=PNG, file_name="scan.pdf")
        fake.add_message(order, kind="pic", data=b"<svg onload=alert(1)>", file_name="x.png")
        fake.add_message(order, kind="pdf", data=b"MZ\x90\x00", file_name="invoice.pdf")
        photo, scan, svg, exe = (await channel.poll({})).messages
        assert [(a.filename, a.content_type) for a in photo.attachments] == [
            ("photo.png", "image/jpeg")
        ]
        assert [(a.filename, a.content_type) for a in scan.attachments] == [
            ("scan.pdf", "image/png")
        ]
        assert svg.attachments == exe.attachments == []
        assert "x.png was not kept" in svg.text and "invoice.pdf was not kept" in exe.text


class TestStatus:
    async def test_status_changes_update_the_context(
        self, fake: FakeBybit, channel: BybitChannel
    ) -> None:
        order = fake.add_order()
        first = await channel.poll({})
        quiet = await channel.poll(first.cursor)
        assert quiet.contexts == []
        assert len(fake.requests_to("/v5/p2p/order/info")) == 1  # unchanged: not fetched again
        fake.set_status(order, 20)
        changed = await channel.poll(quiet.cursor)
        [update] = changed.contexts
        assert update.context["order"]["status"] == "waiting for seller release"
        assert update.context["order"]["status_code"] == 20

    async def test_a_closed_order_gets_its_final_status_then_leaves_the_cursor(
        self, fake: FakeBybit, channel: BybitChannel
    ) -> None:
        order = fake.add_order()
        first = await channel.poll({})
        fake.add_system_message(order, "The order has been completed.")
        fake.set_status(order, 50)
        closed = await channel.poll(first.cursor)
        [update] = closed.contexts
        assert update.context["order"]["status"] == "finished"
        assert texts(closed) == ["The order has been completed."]
        assert order not in closed.cursor["orders"]
        assert (await channel.poll(closed.cursor)).contexts == []

    async def test_an_outage_mid_poll_keeps_what_was_done(
        self, fake: FakeBybit, channel: BybitChannel
    ) -> None:
        a = fake.add_order()
        fake.add_message(a, "from a")
        b = fake.add_order()
        fake.add_message(b, "from b")
        first = await channel.poll({})
        assert sorted(texts(first)) == ["from a", "from b"]
        fake.add_message(a, "a again")
        fake.add_message(b, "b again")
        # One chat read works, then the server goes down: the first order's news is kept.
        fake.fail_next("/v5/p2p/order/message/listpage", "503", count=100, after=1)
        partial = await channel.poll(first.cursor)
        assert texts(partial) in (["a again"], ["b again"])
        fake.clear_failures()  # the outage is over
        rest = await channel.poll(partial.cursor)
        assert sorted(texts(partial) + texts(rest)) == ["a again", "b again"]


class TestRateLimits:
    async def test_a_poll_over_many_orders_stays_within_ten_reads_per_second(self) -> None:
        fake = FakeBybit()  # the real limits: 10 reads/s per account
        fake.start()
        channel = make_channel(fake.url, reads_per_second=10)
        try:
            for _ in range(8):
                fake.add_message(fake.add_order(), "hi")
            started = time.monotonic()
            result = await channel.poll({})
            assert len(result.messages) == 8
            assert fake.rate_limited == 0
            assert len(fake.requests) == 18  # 1 account + 1 list + 8 × (detail + chat)
            assert time.monotonic() - started >= 0.75
        finally:
            await channel.aclose()
            fake.stop()


class TestDelivery:
    async def test_the_same_channel_key_reaches_the_chat_once(
        self, fake: FakeBybit, channel: BybitChannel
    ) -> None:
        order = fake.add_order()
        message = outbound(order, "a" * 32, "Thanks! (sent with help from an assistant)")
        await channel.deliver(message)
        await channel.deliver(message)  # a retry after a crash reuses the key
        assert fake.uuid_counts["a" * 32] == 2
        assert fake.sent_texts(order) == ["Thanks! (sent with help from an assistant)"]
        body = fake.requests_to("/v5/p2p/order/message/send")[0].json()
        assert body == {
            "message": "Thanks! (sent with help from an assistant)",
            "contentType": "str",
            "orderId": order,
            "msgUuid": "a" * 32,
        }

    async def test_a_closed_order_is_a_permanent_failure(
        self, fake: FakeBybit, channel: BybitChannel
    ) -> None:
        order = fake.add_order(status=50)
        with pytest.raises(DeliveryError) as caught:
            await channel.deliver(outbound(order, "k1"))
        assert caught.value.permanent and "closed" in str(caught.value)

    async def test_an_unknown_order_is_a_permanent_failure(self, channel: BybitChannel) -> None:
        with pytest.raises(DeliveryError) as caught:
            await channel.deliver(outbound("123", "k1"))
        assert caught.value.permanent

    @pytest.mark.parametrize("kind", ["503", "rate_limit", "403"])
    async def test_outages_and_rate_limits_are_retried_later(
        self, fake: FakeBybit, kind: str
    ) -> None:
        channel = make_channel(fake.url, max_retries=1)
        order = fake.add_order()
        fake.fail_next("/v5/p2p/order/message/send", kind, count=10, wait_ms=10)
        with pytest.raises(DeliveryError) as caught:
            await channel.deliver(outbound(order, "k2"))
        await channel.aclose()
        assert not caught.value.permanent
        assert fake.sent_texts(order) == []

    async def test_a_wrong_secret_is_a_permanent_failure(self, fake: FakeBybit) -> None:
        channel = BybitChannel.from_config(
            {"base_url": fake.url}, {"api_key": "test-key", "api_secret": "wrong"}
        )
        order = fake.add_order()
        with pytest.raises(DeliveryError) as caught:
            await channel.deliver(outbound(order, "k3"))
        await channel.aclose()
        assert caught.value.permanent and "10004" in str(caught.value)


class TestDescribeContext:
    def test_order_fields_for_the_side_panel(self, channel: BybitChannel) -> None:
        context = {
            "order": {
                "id": "1900",
                "amount": "15000",
                "currency": "RUB",
                "token": "USDT",
                "price": "92.5",
                "quantity": "162.1621",
                "status": "waiting for buyer payment",
                "status_code": 10,
                "payment_method": "Tinkoff",
                "counterparty": "buyer42",
            }
        }
        fields = {f.label: f.value for f in channel.describe_context(context)}
        assert fields == {
            "Order": "1900",
            "Amount": "15,000 RUB",
            "Token": "162.1621 USDT at 92.5 RUB",
            "Status": "waiting for buyer payment (10)",
            "Payment method": "Tinkoff",
            "Counterparty": "buyer42",
        }

    def test_other_context_falls_back_to_generic_fields(self, channel: BybitChannel) -> None:
        [field] = channel.describe_context({"subject": "hello"})
        assert (field.label, field.value) == ("Subject", "hello")


class TestSeparateProcess:
    async def test_the_fake_runs_as_a_process_with_a_state_file(self, tmp_path: Path) -> None:
        state = tmp_path / "bybit.json"
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "tests.fakes.bybit_server"),
            *("--port", "0", "--state-file", str(state)),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
            assert line.startswith("READY "), line
            url = line.removeprefix("READY ")
            async with httpx.AsyncClient(base_url=url) as admin:
                order = (await admin.post("/_fake/add_order", json={})).json()["result"]
                await admin.post("/_fake/add_message", json={"order_id": order, "text": "hey"})
            channel = make_channel(url)
            result = await channel.poll({})
            await channel.deliver(outbound(order, "u" * 32))
            await channel.deliver(outbound(order, "u" * 32))
            await channel.aclose()
            assert texts(result) == ["hey"]
            saved = json.loads(state.read_text())
            assert saved["uuid_counts"] == {"u" * 32: 2}
            assert [m["message"] for m in saved["messages"][order]] == [
                "hey",
                "Hello from the desk",
            ]
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)

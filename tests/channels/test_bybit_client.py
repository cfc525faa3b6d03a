"""The Bybit client against the fake Bybit server on loopback: signing, envelopes, errors,
rate limits."""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import frankly.channels.bybit as bybit_package
from frankly.channels.bybit.client import (
    BYBIT_FILE_HOSTS,
    BybitAuthError,
    BybitClient,
    BybitError,
    BybitRateLimited,
    BybitUnavailable,
    sign,
)
from tests.fakes.bybit_server import Account, FakeBybit, localhost_tls

PENDING = "/v5/p2p/order/pending/simplifyList"
INFO = "/v5/p2p/user/personal/info"
SEND = "/v5/p2p/order/message/send"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture
def fake() -> Iterator[FakeBybit]:
    server = FakeBybit()
    server.start()
    yield server
    server.stop()


def make_client(url: str, **overrides: Any) -> BybitClient:
    options: dict[str, Any] = {
        "retry_backoff": 0.01,
        "ip_ban_backoff": 0.01,
        "ip_ban_backoff_cap": 0.05,
        "timeout": 2.0,
    }
    options.update(overrides)
    secret = options.pop("api_secret", "test-secret")
    key = options.pop("api_key", "test-key")
    return BybitClient(url, key, secret, **options)


@pytest.fixture
async def client(fake: FakeBybit) -> AsyncIterator[BybitClient]:
    c = make_client(fake.url)
    yield c
    await c.aclose()


class TestSigning:
    def test_post_body_vector(self) -> None:
        body = '{"orderId": "1898976123321221120", "size": "30"}'
        assert (
            sign(
                "test-secret",
                timestamp=1700000000000,
                api_key="test-key",
                recv_window=5000,
                payload=body,
            )
            == "fc9c397fa839809af3310934a20e819ebbfb422ea774824614321e1f6257cbf8"
        )

    def test_get_query_vector(self) -> None:
        assert (
            sign(
                "test-secret",
                timestamp=1700000000000,
                api_key="test-key",
                recv_window=5000,
                payload="accountType=FUND&coin=USDT",
            )
            == "935a51929d0f67dcb2ef75e4dffbbf10356535da5fba25d962b4bdab608356de"
        )

    async def test_headers_sign_the_exact_body_sent(
        self, fake: FakeBybit, client: BybitClient
    ) -> None:
        await client.pending_orders(1, 30)
        request = fake.requests_to(PENDING)[0]
        ts = int(request.headers["x-bapi-timestamp"])
        assert request.headers["x-bapi-sign"] == sign(
            "test-secret",
            timestamp=ts,
            api_key="test-key",
            recv_window=5000,
            payload=request.body.decode(),
        )
        assert request.headers["content-type"] == "application/json"
        assert request.json() == {"page": 1, "size": 30}


class TestEnvelopes:
    @pytest.mark.parametrize("style", ["snake", "camel"])
    async def test_both_shapes_are_accepted(
        self, fake: FakeBybit, client: BybitClient, style: str
    ) -> None:
        fake.envelope = style
        assert (await client.account_info())["userId"] == "1001"
        fake.add_order("42")
        page = await client.pending_orders(1, 30)
        assert page["count"] == 1 and page["items"][0]["id"] == "42"
        assert fake.requests[-1].code == 0

    @pytest.mark.parametrize("style", ["snake", "camel"])
    async def test_error_code_in_either_shape_raises(
        self, fake: FakeBybit, client: BybitClient, style: str
    ) -> None:
        fake.envelope = style
        with pytest.raises(BybitError) as caught:
            await client.order_info("missing")
        assert caught.value.code == 912100001
        assert "does not exist" in caught.value.message


class TestAuthErrors:
    async def test_wrong_secret_is_rejected_by_the_server(self, fake: FakeBybit) -> None:
        client = make_client(fake.url, api_secret="not-the-secret")
        with pytest.raises(BybitAuthError) as caught:
            await client.account_info()
        await client.aclose()
        assert caught.value.code == 10004
        assert len(fake.requests) == 1  # never retried: it cannot get better

    async def test_unknown_key(self, fake: FakeBybit) -> None:
        client = make_client(fake.url, api_key="someone-else")
        with pytest.raises(BybitAuthError) as caught:
            await client.account_info()
        await client.aclose()
        assert caught.value.code == 10003

    async def test_small_clock_skew_is_retried_with_a_wider_window(self) -> None:
        fake = FakeBybit(clock_offset_ms=6000)  # server 6 s ahead: outside a 5 s window
        fake.start()
        client = make_client(fake.url)
        try:
            assert (await client.account_info())["userId"] == "1001"
            codes = [r.code for r in fake.requests]
            assert codes == [10002, 0]
            assert fake.requests[1].headers["x-bapi-recv-window"] == "7500"
        finally:
            await client.aclose()
            fake.stop()

    async def test_large_clock_skew_is_an_auth_error(self) -> None:
        fake = FakeBybit(clock_offset_ms=60_000)
        fake.start()
        client = make_client(fake.url)
        try:
            with pytest.raises(BybitAuthError, match="clock") as caught:
                await client.account_info()
            assert caught.value.code == 10002
        finally:
            await client.aclose()
            fake.stop()


class TestTransientErrors:
    async def test_403_backs_off_then_succeeds(self, fake: FakeBybit, client: BybitClient) -> None:
        fake.fail_next(INFO, "403", count=2)
        assert (await client.account_info())["userId"] == "1001"
        assert [r.status for r in fake.requests_to(INFO)] == [403, 403, 200]

    async def test_403_gives_up_after_a_few_tries(self, fake: FakeBybit) -> None:
        client = make_client(fake.url, max_retries=2)
        fake.fail_next(INFO, "403", count=100)
        started = time.monotonic()
        with pytest.raises(BybitRateLimited) as caught:
            await client.account_info()
        await client.aclose()
        assert caught.value.code == 403
        assert len(fake.requests_to(INFO)) == 3
        assert time.monotonic() - started < 1.0  # backoff is configurable and capped

    async def test_10006_waits_until_the_reset_header(
        self, fake: FakeBybit, client: BybitClient
    ) -> None:
        fake.fail_next(INFO, "rate_limit", wait_ms=400)
        started = time.monotonic()
        assert (await client.account_info())["userId"] == "1001"
        assert time.monotonic() - started >= 0.35
        assert [r.code for r in fake.requests_to(INFO)] == [10006, 0]

    async def test_10006_that_never_ends_raises(self, fake: FakeBybit) -> None:
        client = make_client(fake.url, max_retries=1)
        fake.fail_next(INFO, "rate_limit", count=10, wait_ms=10)
        with pytest.raises(BybitRateLimited) as caught:
            await client.account_info()
        await client.aclose()
        assert caught.value.code == 10006

    @pytest.mark.parametrize("kind", ["500", "502", "503"])
    async def test_5xx_is_retried_then_succeeds(
        self, fake: FakeBybit, client: BybitClient, kind: str
    ) -> None:
        fake.fail_next(INFO, kind, count=2)
        assert (await client.account_info())["userId"] == "1001"
        assert len(fake.requests_to(INFO)) == 3

    async def test_5xx_that_persists_is_unavailable(
        self, fake: FakeBybit, client: BybitClient
    ) -> None:
        fake.fail_next(INFO, "502", count=100)
        with pytest.raises(BybitUnavailable) as caught:
            await client.account_info()
        assert caught.value.code == 502
        assert len(fake.requests_to(INFO)) == 4  # one try plus max_retries=3

    @pytest.mark.parametrize("kind", ["malformed", "no_code"])
    async def test_malformed_envelope_is_unavailable(
        self, fake: FakeBybit, client: BybitClient, kind: str
    ) -> None:
        fake.fail_next(INFO, kind, count=100)
        with pytest.raises(BybitUnavailable, match=r"JSON|retCode"):
            await client.account_info()

    async def test_timeout_is_retried(self, fake: FakeBybit) -> None:
        client = make_client(fake.url, timeout=0.2)
        fake.fail_next(INFO, "slow", wait_ms=600)
        assert (await client.account_info())["userId"] == "1001"
        await client.aclose()
        assert len(fake.requests_to(INFO)) == 2

    async def test_nothing_listening_is_unavailable(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        client = make_client(f"http://127.0.0.1:{port}", max_retries=1)
        with pytest.raises(BybitUnavailable, match="network"):
            await client.account_info()
        await client.aclose()


class TestRateLimits:
    async def test_reads_never_exceed_ten_per_second(
        self, fake: FakeBybit, client: BybitClient
    ) -> None:
        started = time.monotonic()
        await asyncio.gather(*(client.account_info() for _ in range(25)))
        assert fake.rate_limited == 0  # the fake would have answered 10006
        assert len(fake.requests_to(INFO)) == 25
        assert time.monotonic() - started >= 1.4  # 25 reads need at least two full windows

    async def test_writes_never_exceed_five_per_second(
        self, fake: FakeBybit, client: BybitClient
    ) -> None:
        order = fake.add_order()
        started = time.monotonic()
        for n in range(8):
            await client.send_chat_message(order, f"hello {n}", f"uuid-{n}")
        assert fake.rate_limited == 0
        assert time.monotonic() - started >= 0.9
        assert len(fake.sent_texts(order)) == 8

    async def test_a_too_generous_client_limit_is_caught_by_10006(self, fake: FakeBybit) -> None:
        client = make_client(fake.url, reads_per_second=40)
        await asyncio.gather(*(client.account_info() for _ in range(15)))
        await client.aclose()
        assert fake.rate_limited > 0  # the server pushed back, the client waited and finished
        assert sum(1 for r in fake.requests_to(INFO) if r.code == 0) == 15


class TestEndpoints:
    async def test_chat_messages_come_from_the_nested_list(
        self, fake: FakeBybit, client: BybitClient
    ) -> None:
        order = fake.add_order()
        for n in range(3):
            fake.add_message(order, f"m{n}", created_ms=1_700_000_000_000 + n)
        page = await client.chat_messages(order, 1, 2)
        assert [m["message"] for m in page] == ["m2", "m1"]
        assert fake.requests_to("/v5/p2p/order/message/listpage")[0].json() == {
            "orderId": order,
            "size": "2",
            "currentPage": "1",
        }

    async def test_send_carries_the_msg_uuid(self, fake: FakeBybit, client: BybitClient) -> None:
        order = fake.add_order()
        await client.send_chat_message(order, "hi", "abc123")
        assert fake.requests_to(SEND)[0].json() == {
            "message": "hi",
            "contentType": "str",
            "orderId": order,
            "msgUuid": "abc123",
        }

    async def test_download_of_a_relative_file_path_is_signed(
        self, fake: FakeBybit, client: BybitClient
    ) -> None:
        order = fake.add_order()
        fake.add_message(order, kind="pic", data=PNG, file_name="receipt.png")
        url = fake.chat(order)[0]["message"]
        assert url.startswith("/fiat/p2p/oss/")
        file = await client.download(url)
        assert file.data == PNG and file.content_type == "image/png"
        assert fake.requests[-1].code is None and fake.requests[-1].status == 200

    async def test_missing_file_is_a_plain_error(
        self, fake: FakeBybit, client: BybitClient
    ) -> None:
        with pytest.raises(BybitError) as caught:
            await client.download("/fiat/p2p/oss/showObj/nope.png")
        assert caught.value.code == 404

    async def test_accounts_are_separate_on_the_fake(self) -> None:
        fake = FakeBybit(accounts=[Account(), Account("k2", "s2", "3003", "Other")])
        fake.start()
        client = make_client(fake.url, api_key="k2", api_secret="s2")
        try:
            fake.add_order("1")
            assert (await client.pending_orders(1, 30))["count"] == 0
            with pytest.raises(BybitError):
                await client.send_chat_message("1", "hi", "u1")
            assert fake.sent_texts("1") == []
        finally:
            await client.aclose()
            fake.stop()


@pytest.fixture
def other() -> Iterator[FakeBybit]:
    """A second server on another port: an attacker's host, or a file host."""
    server = FakeBybit(public_files=True)
    server.start()
    yield server
    server.stop()


class TestDownloadTargets:
    """A file URL comes from the counterparty's message: only the API origin gets the key."""

    async def test_an_absolute_url_on_the_api_origin_is_signed(
        self, fake: FakeBybit, client: BybitClient
    ) -> None:
        path = fake.add_file("a.png", PNG)
        file = await client.download(f"{fake.url}{path}?x=1")
        assert file.data == PNG
        assert fake.requests[-1].headers["x-bapi-api-key"] == "test-key"
        assert fake.requests[-1].status == 200

    @pytest.mark.parametrize(
        "template",
        [
            "{other}{path}",  # another host (and port)
            "//127.0.0.1:{other_port}{path}",  # scheme-relative
            "http://localhost:{port}{path}",  # same port, different host name
            "https://127.0.0.1:{port}{path}",  # same host and port, different scheme
            "http://test-key@127.0.0.1:{other_port}{path}",
            "http://169.254.169.254/latest/meta-data/",
            "http://[x/a.png",
            "file:///etc/passwd",
            "http://127.0.0.1:{port}\\@evil.example/a.png",
            "",
        ],
    )
    async def test_other_urls_are_refused_unfetched(
        self, fake: FakeBybit, other: FakeBybit, client: BybitClient, template: str
    ) -> None:
        path = other.add_file("a.png", PNG)
        url = template.format(other=other.url, other_port=other.port, port=fake.port, path=path)
        with pytest.raises(BybitError) as caught:
            await client.download(url)
        assert caught.value.code == -1 and "download refused" in caught.value.message
        assert other.requests == [] and fake.requests == []

    async def test_plain_http_to_an_allowed_file_host_is_refused(
        self, fake: FakeBybit, other: FakeBybit
    ) -> None:
        client = make_client(fake.url, file_hosts=frozenset({f"127.0.0.1:{other.port}"}))
        try:
            with pytest.raises(BybitError, match="download refused"):
                await client.download(f"{other.url}{other.add_file('a.png', PNG)}")
        finally:
            await client.aclose()
        assert other.requests == []

    async def test_an_allowed_https_file_host_is_fetched_without_the_key(
        self, fake: FakeBybit, tmp_path: Path
    ) -> None:
        server_tls, client_tls = localhost_tls(tmp_path)
        host = FakeBybit(public_files=True, ssl_context=server_tls)
        host.start()
        transport = httpx.AsyncHTTPTransport(verify=client_tls)
        allowed = make_client(
            fake.url, transport=transport, file_hosts=frozenset({f"localhost:{host.port}"})
        )
        other_port = make_client(fake.url, transport=transport, file_hosts=frozenset({"localhost"}))
        try:
            url = f"{host.url}{host.add_file('receipt.png', PNG)}"
            assert url.startswith("https://localhost:")
            file = await allowed.download(url)
            assert file.data == PNG
            (request,) = host.requests
            assert not [h for h in request.headers if h.startswith("x-bapi-")]
            with pytest.raises(BybitError, match="download refused"):
                await other_port.download(url)  # "localhost" alone means port 443
            assert len(host.requests) == 1 and fake.requests == []
        finally:
            await allowed.aclose()
            await other_port.aclose()
            host.stop()

    def test_the_spec_names_no_file_host(self) -> None:
        assert frozenset() == BYBIT_FILE_HOSTS


class TestNoMoneyMoves:
    """Frankly must never be able to mark an order paid or release assets."""

    FORBIDDEN = ("/order/pay", "/order/finish", "/order/cancel", "/appeal", "/item/", "/upload")

    def test_client_has_no_order_changing_method(self) -> None:
        names = {name.lower() for name, _ in inspect.getmembers(BybitClient)}
        for word in ("pay", "release", "finish", "cancel", "appeal", "transfer", "withdraw"):
            assert not [n for n in names if word in n], word
        public = {n for n in names if not n.startswith("_")}
        assert public == {
            "account_info",
            "pending_orders",
            "order_info",
            "chat_messages",
            "send_chat_message",
            "download",
            "aclose",
        }

    def test_no_source_file_names_an_order_changing_path(self) -> None:
        for path in Path(bybit_package.__file__).parent.glob("*.py"):
            source = path.read_text()
            for fragment in self.FORBIDDEN:
                assert fragment not in source, f"{path.name} mentions {fragment!r}"

"""The web chat widget over HTTP (and its live feed over a real uvicorn), on SQLite and PostgreSQL:
the page, sending with dedupe, limits, attachments, visitor isolation, rate limits, and a
customer view that never shows drafts or provenance."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from frankly.channels.base import Channel, ContextField, OutboundMessage
from frankly.channels.models import ChannelAccount, ChannelKind
from frankly.channels.service import MAX_ATTACHMENT_BYTES
from frankly.channels.widget.channel import WidgetChannel
from frankly.channels.widget.visitor import COOKIE, Limits, SlidingWindow, sign, verify
from frankly.config import get_settings
from frankly.conversations.models import Conversation, Message
from frankly.db import Database, commit
from frankly.drafting.disclosure import DisclosureKind, disclosure_for
from frankly.live import service as live_service
from tests.factories import Desk, key, make_desk, post_inbound, run_jobs
from tests.live.conftest import Server, wait_until

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
HEADERS = {"X-Frankly-Widget": "1"}
CUSTOMER_FIELDS = {"id", "author", "text", "created_at", "attachments"}


async def add_widget(db: Database, name: str = "shop", **settings: Any) -> int:
    async with db.sessionmaker() as session:
        account = ChannelAccount(kind=ChannelKind.WIDGET, name=name, settings=settings)
        session.add(account)
        await session.flush()
        account_id = account.id
        await commit(session)
    return account_id


@pytest.fixture
async def desk(db: Database) -> Desk:
    return await make_desk(db)


@pytest.fixture
async def widget(db: Database) -> int:
    return await add_widget(db, "shop", title="Shop help", greeting="Hello from the shop desk")


async def visitor_client(app: FastAPI, ip: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
async def visitor(app: FastAPI, widget: int) -> AsyncIterator[httpx.AsyncClient]:
    """A browser that opened the chat page (so it holds a visitor cookie)."""
    async with await visitor_client(app) as http:
        assert (await http.get("/chat/shop")).status_code == 200
        yield http


async def say(http: httpx.AsyncClient, text: str, *, id: str | None = None, **extra: Any) -> Any:
    return await http.post(
        "/chat/shop/messages", json={"id": id or key(), "text": text, **extra}, headers=HEADERS
    )


async def upload(
    http: httpx.AsyncClient, data: bytes, *, name: str = "shot.png", declared: str = "image/png"
) -> Any:
    return await http.post(
        "/chat/shop/attachments",
        data={"id": key(), "text": ""},
        files={"file": (name, data, declared)},
        headers=HEADERS,
    )


async def messages(http: httpx.AsyncClient, after: int = 0) -> list[dict[str, Any]]:
    response = await http.get(f"/chat/shop/messages?after={after}")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["messages"]
    return items


async def count_messages(db: Database) -> int:
    async with db.sessionmaker() as session:
        return int(await session.scalar(select(func.count(Message.id))) or 0)


class TestPage:
    async def test_unknown_or_disabled_desk_is_404_as_json_and_as_a_page(
        self, client: httpx.AsyncClient, db: Database
    ) -> None:
        await add_widget(db, "closed")
        async with db.sessionmaker() as session:
            account = await session.scalar(
                select(ChannelAccount).where(ChannelAccount.name == "closed")
            )
            assert account is not None
            account.enabled = False
            session.add(ChannelAccount(kind=ChannelKind.EMAIL, name="mailbox"))
            await commit(session)
        for name in ("nope", "closed", "mailbox"):
            response = await client.get(f"/chat/{name}", headers={"accept": "application/json"})
            assert response.status_code == 404, name
            assert response.json()["error"] == "not_found"
        page = await client.get("/chat/nope", headers={"accept": "text/html"})
        assert page.status_code == 404
        assert page.headers["content-type"].startswith("text/html")
        assert (await client.get("/widget/nope.js")).status_code == 404

    async def test_page_has_the_notice_a_visitor_cookie_and_a_frameable_csp(
        self, client: httpx.AsyncClient, widget: int
    ) -> None:
        response = await client.get("/chat/shop")
        assert response.status_code == 200
        html = response.text
        assert "An assistant drafts replies; a person reviews and sends each one." in html
        assert "Shop help" in html and "Hello from the shop desk" in html
        assert "<script>" not in html and " style=" not in html  # CSP: no inline code
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors *" in csp and "script-src 'self'" in csp
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        assert "HttpOnly" in cookie and "Path=/chat" in cookie and "SameSite=lax" in cookie
        # The inbox stays unframeable.
        login = await client.get("/login")
        assert "frame-ancestors 'none'" in login.headers["content-security-policy"]

    async def test_russian_browser_gets_the_russian_notice(
        self, client: httpx.AsyncClient, widget: int
    ) -> None:
        response = await client.get(
            "/chat/shop", headers={"accept-language": "ru-RU,ru;q=0.9,en;q=0.5"}
        )
        assert '<html lang="ru">' in response.text
        assert "Ответы готовит ассистент; человек проверяет и отправляет каждый из них." in (
            response.text
        )
        english = await client.get("/chat/shop", headers={"accept-language": "en;q=1,ru;q=0.4"})
        assert '<html lang="en">' in english.text

    async def test_allowed_origins_limit_who_may_frame_the_chat(
        self, client: httpx.AsyncClient, db: Database
    ) -> None:
        await add_widget(
            db,
            "strict",
            allowed_origins=["https://shop.example", "javascript:alert(1)", "https://a.example; x"],
        )
        csp = (await client.get("/chat/strict")).headers["content-security-policy"]
        assert csp.endswith("; frame-ancestors 'self' https://shop.example")
        assert "javascript" not in csp and "a.example" not in csp

    async def test_desk_settings_are_escaped(self, client: httpx.AsyncClient, db: Database) -> None:
        await add_widget(db, "xss", title="<script>alert(1)</script>", greeting='"><img src=x>')
        html = (await client.get("/chat/xss")).text
        assert "<script>alert(1)</script>" not in html and "<img src=x>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html

    async def test_embed_script_is_served_as_javascript(
        self, client: httpx.AsyncClient, widget: int
    ) -> None:
        response = await client.get("/widget/shop.js")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/javascript")
        assert "?embed=1&page=" in response.text
        embedded = await client.get("/chat/shop?embed=1&page=https://shop.example/cart?token=1")
        assert 'data-page-url="https://shop.example/cart"' in embedded.text  # no query string
        assert 'id="chat-close"' in embedded.text


class TestSend:
    async def test_a_message_is_stored_once_per_client_id(
        self, visitor: httpx.AsyncClient, db: Database, widget: int
    ) -> None:
        client_id = key()
        first = await say(visitor, "which bank?", id=client_id, page_url="https://shop.example/x?a")
        assert first.status_code == 201, first.text
        again = await say(visitor, "which bank?", id=client_id)
        assert again.status_code == 200 and again.json()["duplicate"] is True
        assert again.json()["message"]["id"] == first.json()["message"]["id"]
        assert set(first.json()["message"]) == CUSTOMER_FIELDS
        assert await count_messages(db) == 1
        async with db.sessionmaker() as session:
            conversation = await session.scalar(select(Conversation))
            message = await session.scalar(select(Message))
        assert conversation is not None and message is not None
        visitor_id = verify(visitor.cookies[COOKIE], secret=get_settings().effective_secret())
        assert conversation.channel == "widget"
        assert conversation.external_id == f"shop:{visitor_id}"
        assert conversation.channel_account_id == widget
        assert conversation.context["page_url"] == "https://shop.example/x"
        assert "python-httpx" in conversation.context["user_agent"]
        assert message.drafting is not None and message.drafting.value == "queued"

    async def test_one_conversation_per_visitor_per_desk(
        self, visitor: httpx.AsyncClient, db: Database
    ) -> None:
        for text in ("hello", "are you there?"):
            assert (await say(visitor, text)).status_code == 201
        await add_widget(db, "other")
        await visitor.get("/chat/other")
        response = await visitor.post(
            "/chat/other/messages", json={"id": key(), "text": "hi"}, headers=HEADERS
        )
        assert response.status_code == 201
        async with db.sessionmaker() as session:
            ids = (await session.scalars(select(Conversation.external_id))).all()
        assert len(ids) == 2 and {i.split(":")[0] for i in ids} == {"shop", "other"}

    async def test_size_and_shape_limits(self, visitor: httpx.AsyncClient, db: Database) -> None:
        limit = get_settings().max_message_bytes
        too_big = await say(visitor, "я" * (limit // 2 + 1))
        assert too_big.status_code == 413
        assert too_big.json()["error"] == "too_large"
        assert str(limit) in too_big.json()["detail"]
        assert (await say(visitor, "x" * limit)).status_code == 201
        empty = await say(visitor, "   ")
        assert empty.status_code == 422 and "empty" in empty.json()["detail"]
        bad_id = await say(visitor, "hi", id="no spaces allowed")
        assert bad_id.status_code == 422 and bad_id.json()["detail"].startswith("id:")
        assert await count_messages(db) == 1

    async def test_writes_need_the_page_header_the_cookie_and_a_known_origin(
        self, app: FastAPI, visitor: httpx.AsyncClient, db: Database
    ) -> None:
        no_header = await visitor.post("/chat/shop/messages", json={"id": key(), "text": "hi"})
        assert no_header.status_code == 403 and "X-Frankly-Widget" in no_header.json()["detail"]
        foreign = await say(visitor, "hi", id=key())
        assert foreign.status_code == 201  # no Origin header: not a browser cross-site request
        cross = await visitor.post(
            "/chat/shop/messages",
            json={"id": key(), "text": "hi"},
            headers={**HEADERS, "origin": "https://evil.example"},
        )
        assert cross.status_code == 403
        same = await visitor.post(
            "/chat/shop/messages",
            json={"id": key(), "text": "hi"},
            headers={**HEADERS, "origin": "http://testserver"},
        )
        assert same.status_code == 201
        async with await visitor_client(app) as stranger:
            no_cookie = await say(stranger, "hi")
        assert no_cookie.status_code == 403 and "cookie" in no_cookie.json()["detail"]
        assert await count_messages(db) == 2


class TestAttachments:
    async def test_images_and_pdfs_are_kept_and_readable_by_their_sender(
        self, visitor: httpx.AsyncClient
    ) -> None:
        response = await upload(visitor, PNG, name="../../etc/shot.png")
        assert response.status_code == 201, response.text
        message = response.json()["message"]
        assert message["text"] == ""
        (file,) = message["attachments"]
        assert file["filename"] == "shot.png" and file["content_type"] == "image/png"
        fetched = await visitor.get(file["url"])
        assert fetched.status_code == 200 and fetched.content == PNG
        assert fetched.headers["content-type"] == "image/png"
        policy = [d.strip() for d in fetched.headers["content-security-policy"].split(";")]
        assert {"default-src 'none'", "sandbox", "frame-ancestors 'none'"} <= set(policy)
        pdf = await upload(visitor, PDF, name="invoice.pdf", declared="application/octet-stream")
        assert pdf.status_code == 201
        assert pdf.json()["message"]["attachments"][0]["content_type"] == "application/pdf"

    async def test_wrong_type_is_422_and_too_big_is_413(
        self, visitor: httpx.AsyncClient, db: Database
    ) -> None:
        html = await upload(visitor, b"<html><script>x</script></html>", name="a.png")
        assert html.status_code == 422 and "PDF" in html.json()["detail"]
        zip_file = await upload(visitor, b"PK\x03\x04" + b"\x00" * 10, name="a.zip")
        assert zip_file.status_code == 422
        big = await upload(visitor, PNG + b"\x00" * MAX_ATTACHMENT_BYTES, name="big.png")
        assert big.status_code == 413 and big.json()["error"] == "too_large"
        assert await count_messages(db) == 0


class TestIsolation:
    async def test_a_visitor_sees_only_their_own_conversation(
        self, app: FastAPI, visitor: httpx.AsyncClient
    ) -> None:
        shared_id = key()
        assert (await say(visitor, "secret of A", id=shared_id)).status_code == 201
        file = (await upload(visitor, PNG)).json()["message"]["attachments"][0]
        async with await visitor_client(app) as other:
            await other.get("/chat/shop")
            assert await messages(other) == []
            assert (await other.get(file["url"])).status_code == 404
            # The same client id from another visitor is another message, not A's.
            mine = await say(other, "hello from B", id=shared_id)
            assert mine.status_code == 201 and mine.json()["duplicate"] is False
            assert [m["text"] for m in await messages(other)] == ["hello from B"]
        assert [m["text"] for m in await messages(visitor)] == ["secret of A", ""]

    async def test_a_bad_cookie_gets_a_new_identity_on_the_page_and_a_403_on_writes(
        self, app: FastAPI, visitor: httpx.AsyncClient, db: Database
    ) -> None:
        await say(visitor, "secret of A")
        value = visitor.cookies[COOKIE]
        visitor_id, mac = value.split(".")
        forged = f"{visitor_id}.{mac[:-2]}AA"
        other_secret = sign(visitor_id, secret="another-secret-of-32-characters!")
        for cookie in (forged, other_secret, "garbage", f"{'0' * 32}.x"):
            async with await visitor_client(app) as mallory:
                mallory.cookies.set(COOKIE, cookie)
                read = await mallory.get("/chat/shop/messages")
                assert read.json() == {"messages": [], "more": False, "started": False}
                assert "set-cookie" not in read.headers  # reads mint no identity
                sent = await say(mallory, "hi")
                assert sent.status_code == 403, sent.text
                assert sent.json()["error"] == "reload_needed"
                assert "reload the chat" in sent.json()["detail"]
                assert "set-cookie" not in sent.headers
                assert (await upload(mallory, PNG)).status_code == 403
                mallory.cookies.clear()  # only the page load mints a visitor
                page = await mallory.get("/chat/shop", headers={"cookie": f"{COOKIE}={cookie}"})
                assert page.status_code == 200
                new = page.cookies[COOKIE]
                assert verify(new, secret=get_settings().effective_secret()) not in {
                    None,
                    visitor_id,
                }
                assert await messages(mallory) == []
                assert (await say(mallory, "hello")).status_code == 201
        assert [m["text"] for m in await messages(visitor)] == ["secret of A"]
        assert await count_messages(db) == 5


class TestBadInput:
    """Out-of-range ids and broken URLs are 422s or ignored, never 500s (on both databases)."""

    @pytest.mark.parametrize("after", [2**31, 2**63, 2**64, 10**30, -1])
    async def test_after_beyond_the_id_range_is_422(
        self, visitor: httpx.AsyncClient, after: int
    ) -> None:
        await say(visitor, "hi")
        response = await visitor.get(f"/chat/shop/messages?after={after}")
        assert response.status_code == 422 and "after" in response.json()["detail"]
        edge = await visitor.get(f"/chat/shop/messages?after={2**31 - 1}")
        assert edge.status_code == 200 and edge.json()["messages"] == []

    @pytest.mark.parametrize("file_id", [2**31, 2**63, 2**64, 10**30])
    async def test_file_ids_beyond_the_id_range_are_422(
        self, visitor: httpx.AsyncClient, file_id: int
    ) -> None:
        await upload(visitor, PNG)
        assert (await visitor.get(f"/chat/shop/files/{file_id}")).status_code == 422
        assert (await visitor.get(f"/chat/shop/files/{2**31 - 1}")).status_code == 404

    @pytest.mark.parametrize("url", ["http://[x", "https://[::1/a", "http://[", "//[/"])
    async def test_a_malformed_page_url_is_ignored(
        self, visitor: httpx.AsyncClient, db: Database, url: str
    ) -> None:
        page = await visitor.get("/chat/shop", params={"embed": "1", "page": url})
        assert page.status_code == 200 and 'data-page-url=""' in page.text
        sent = await say(visitor, "hi", page_url=url)
        assert sent.status_code == 201, sent.text
        files = await visitor.post(
            "/chat/shop/attachments",
            data={"id": key(), "text": "", "page_url": url},
            files={"file": ("a.png", PNG, "image/png")},
            headers=HEADERS,
        )
        assert files.status_code == 201, files.text
        async with db.sessionmaker() as session:
            conversation = await session.scalar(select(Conversation))
        assert conversation is not None and "page_url" not in conversation.context


class TestRateLimits:
    async def test_too_many_messages_from_one_visitor_is_429_with_retry_after(
        self, visitor: httpx.AsyncClient, db: Database
    ) -> None:
        for n in range(20):
            assert (await say(visitor, f"message {n}")).status_code == 201
        limited = await say(visitor, "one too many")
        assert limited.status_code == 429
        assert limited.json()["error"] == "rate_limited"
        assert "20 per minute" in limited.json()["detail"]
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert await count_messages(db) == 20

    async def test_uploads_are_limited_more_strictly(self, visitor: httpx.AsyncClient) -> None:
        statuses = [(await upload(visitor, PNG)).status_code for _ in range(6)]
        assert statuses == [201] * 5 + [429]

    async def test_new_conversations_per_address_are_capped(
        self, app: FastAPI, widget: int, db: Database
    ) -> None:
        # IPv6 is counted per /64: rotating addresses within one network does not help.
        clients = [await visitor_client(app, f"2001:db8::{n + 1:x}") for n in range(11)]
        try:
            for http in clients:
                await http.get("/chat/shop")
            statuses = [(await say(http, "hi")).status_code for http in clients[:10]]
            assert statuses == [201] * 10
            refused = await say(clients[10], "hi")
            assert refused.status_code == 429, refused.text
            assert "new chats from this address: at most 10 per hour" in refused.json()["detail"]
            assert 3000 < int(refused.headers["retry-after"]) <= 3600
            assert (await upload(clients[10], PNG)).status_code == 429
            # Visitors who already have a conversation carry on.
            assert (await say(clients[0], "still me")).status_code == 201
        finally:
            for http in clients:
                await http.aclose()
        async with await visitor_client(app, "2001:db8:0:1::1") as elsewhere:
            await elsewhere.get("/chat/shop")
            assert (await say(elsewhere, "hi")).status_code == 201
        async with db.sessionmaker() as session:
            assert await session.scalar(select(func.count(Conversation.id))) == 11

    def test_the_address_is_checked_first_and_its_refusals_cost_the_visitor_nothing(
        self,
    ) -> None:
        limits = Limits(
            messages_per_ip=SlidingWindow(limit=2, window=60),
            messages_per_visitor=SlidingWindow(limit=5, window=60),
        )
        assert limits.check(upload=False, visitor="a", ip="1.2.3.4") is None
        assert limits.check(upload=False, visitor="a", ip="1.2.3.4") is None
        refused = limits.check(upload=False, visitor="b", ip="1.2.3.4")
        assert refused is not None and "from this address" in refused[1]
        assert len(limits.messages_per_visitor) == 1  # "b" was never counted
        for ip in ("5.6.7.8", "5.6.7.9", "5.6.7.10"):
            assert limits.check(upload=False, visitor="a", ip=ip) is None
        over = limits.check(upload=False, visitor="a", ip="9.9.9.9")
        assert over is not None and "from this visitor" in over[1]

    def test_a_full_window_forgets_the_oldest_key_not_everything(self) -> None:
        window = SlidingWindow(limit=1, window=60, max_keys=3)
        for t, name in enumerate("abc"):
            assert window.hit(name, now=t) is None
        assert window.hit("a", now=3) is not None  # a refused hit does not refresh "a"
        assert window.hit("d", now=4) is None  # full: "a", the least recently hit, goes
        assert len(window) == 3
        assert window.hit("b", now=5) is not None and window.hit("c", now=5) is not None
        assert window.hit("a", now=5) is None  # forgotten, so allowed again
        assert window.hit("e", now=100) is None  # all idle: they go first
        assert len(window) == 1

    def test_sliding_window_per_key(self) -> None:
        window = SlidingWindow(limit=3, window=60)
        assert [window.hit("ip", now=t) for t in (0, 1, 2)] == [None, None, None]
        assert window.hit("ip", now=30) == pytest.approx(30)
        assert window.hit("other", now=30) is None
        assert window.hit("ip", now=60.5) is None  # the first hit left the window


class TestCustomerView:
    async def test_only_sent_replies_appear_never_drafts_or_provenance(
        self, client: httpx.AsyncClient, visitor: httpx.AsyncClient, desk: Desk, db: Database
    ) -> None:
        sent = await say(visitor, "which bank?")
        assert sent.status_code == 201
        await post_inbound(client, desk, "which bank?", conversation_id="api-conv")
        await run_jobs(db)
        async with db.sessionmaker() as session:
            conversation = await session.scalar(
                select(Conversation).where(Conversation.channel == "widget")
            )
        assert conversation is not None
        detail = (
            await client.get(f"/api/v1/conversations/{conversation.id}", headers=desk.as_agent())
        ).json()
        draft = next(d for d in detail["drafts"] if d["status"] == "pending")
        assert "T-Bank" in draft["text"]
        before = await messages(visitor)
        assert [m["author"] for m in before] == ["visitor"]
        assert "T-Bank" not in json.dumps(before)

        response = await client.post(
            f"/api/v1/drafts/{draft['id']}/send",
            json={"idempotency_key": key()},
            headers=desk.as_agent(),
        )
        assert response.status_code == 200, response.text
        after = await messages(visitor)
        assert [m["author"] for m in after] == ["visitor", "desk"]
        reply = after[-1]
        assert set(reply) == CUSTOMER_FIELDS
        assert reply["text"].startswith(disclosure_for(DisclosureKind.INTRO, "en").text)
        assert "T-Bank" in reply["text"]
        raw = json.dumps(after)
        for internal in ('"origin', '"draft', "sent_by", "faq", "similarity", "Anna", "api-conv"):
            assert internal not in raw, internal
        assert await messages(visitor, after=reply["id"]) == []

    async def test_customer_text_comes_back_verbatim_as_json_text(
        self, visitor: httpx.AsyncClient
    ) -> None:
        script = "<script>alert(1)</script> & <img src=x onerror=alert(1)>"
        assert (await say(visitor, script)).status_code == 201
        response = await visitor.get("/chat/shop/messages")
        assert response.headers["content-type"] == "application/json"
        assert response.json()["messages"][0]["text"] == script


class TestLiveFeed:
    async def test_the_socket_nudges_on_replies_and_refuses_strangers(
        self, app: FastAPI, desk: Desk, db: Database, widget: int
    ) -> None:
        server = Server(app)
        await server.start()
        try:
            async with httpx.AsyncClient(base_url=server.base, timeout=10) as http:
                await http.get("/chat/shop")
                cookie = f"{COOKIE}={http.cookies[COOKIE]}"
                url = server.base.replace("http://", "ws://") + "/chat/shop/ws"
                # No conversation yet: nothing to watch.
                async with connect(url, additional_headers={"Cookie": cookie}) as early:
                    with pytest.raises(ConnectionClosed) as closed:
                        await asyncio.wait_for(early.recv(), 5)
                    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404
                assert (await say(http, "which bank?")).status_code == 201
                async with db.sessionmaker() as session:
                    newest = await live_service.current_position(session)
                await wait_until(lambda: server.hub.position >= newest)
                with pytest.raises(InvalidStatus):
                    async with connect(
                        url, additional_headers={"Cookie": cookie}, origin="https://evil.example"
                    ):
                        pass
                async with connect(url, additional_headers={"Cookie": cookie}) as ws:
                    assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "ready"}
                    await run_jobs(db)  # a draft is made: not the customer's business
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(ws.recv(), 0.5)
                    conversation_id = (
                        await http.get("/api/v1/conversations", headers=desk.as_agent())
                    ).json()["items"][0]["id"]
                    detail = (
                        await http.get(
                            f"/api/v1/conversations/{conversation_id}", headers=desk.as_agent()
                        )
                    ).json()
                    draft = next(d for d in detail["drafts"] if d["status"] == "pending")
                    sent = await http.post(
                        f"/api/v1/drafts/{draft['id']}/send",
                        json={"idempotency_key": key()},
                        headers=desk.as_agent(),
                    )
                    assert sent.status_code == 200
                    nudge = await asyncio.wait_for(ws.recv(), 5)
                    assert json.loads(nudge) == {"type": "changed"}  # nothing but a nudge
                    replies = await messages(http)
                    assert replies[-1]["author"] == "desk"
        finally:
            await server.stop()


async def closed_with(ws: Any) -> tuple[int, str]:
    """The close code and reason a server-closed socket got (skipping "ready" and pings)."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


class TestSocketLimits:
    async def test_a_visitor_may_hold_three_sockets_and_idle_ones_are_closed(
        self, app: FastAPI, widget: int
    ) -> None:
        server = Server(app)
        await server.start()
        try:
            async with httpx.AsyncClient(base_url=server.base, timeout=10) as http:
                await http.get("/chat/shop")
                assert (await say(http, "hello")).status_code == 201
                cookie = {"Cookie": f"{COOKIE}={http.cookies[COOKIE]}"}
                visitor = verify(http.cookies[COOKIE], secret=get_settings().effective_secret())
                url = server.base.replace("http://", "ws://") + "/chat/shop/ws"
                async with contextlib.AsyncExitStack() as stack:
                    sockets = [
                        await stack.enter_async_context(connect(url, additional_headers=cookie))
                        for _ in range(3)
                    ]
                    for ws in sockets:
                        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "ready"}
                    async with connect(url, additional_headers=cookie) as fourth:
                        code, reason = await closed_with(fourth)
                    assert code == 4429 and "at most 3" in reason
                    await sockets[0].close()
                    await wait_until(lambda: app.state.widget_sockets.open_for(visitor) == 2)
                    async with connect(url, additional_headers=cookie) as again:
                        assert json.loads(await asyncio.wait_for(again.recv(), 5))["type"] == (
                            "ready"
                        )
                await wait_until(lambda: app.state.widget_sockets.open_for(visitor) == 0)

                app.state.widget_idle_seconds = 0.3
                async with connect(url, additional_headers=cookie) as idle:
                    assert json.loads(await asyncio.wait_for(idle.recv(), 5))["type"] == "ready"
                    assert await closed_with(idle) == (4408, "idle")
        finally:
            await server.stop()


class TestChannel:
    async def test_widget_channel_delivers_by_storing_and_describes_the_browser(self) -> None:
        channel = WidgetChannel.from_config({}, {})
        assert isinstance(channel, Channel)
        assert channel.new_channel_key(message_id=42) == "w-42"
        reply = OutboundMessage(
            message_id=42,
            conversation_external_id="shop:v",
            channel_key="w-42",
            text="Hi",
            body_text="Hi",
            origin="human_written",
            disclosure=None,
            language="en",
            context={},
        )
        await channel.deliver(reply)  # succeeds: the stored message is what the page reads
        fields = channel.describe_context(
            {"page_url": "https://shop.example/", "user_agent": "Firefox", "other": 1}
        )
        assert fields == [
            ContextField("Page", "https://shop.example/"),
            ContextField("Browser", "Firefox"),
        ]

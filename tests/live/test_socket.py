"""The /ws endpoint over a real server: sign-in and Origin checks, topic rules, catch-up after a
reconnect, topic changes, and the socket ending when the session does."""

from __future__ import annotations

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from frankly.db import Database
from frankly.live import router as live_router
from frankly.live.router import allowed_topics, same_origin
from tests.factories import PASSWORD, Desk, make_desk, post_inbound
from tests.live.conftest import LiveClient, Server, live_connect, login, publish, wait_until


@pytest.fixture
async def desk(db: Database) -> Desk:
    return await make_desk(db, faq=[])


async def closed_code(client: LiveClient) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        await client.next("never", within=5)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


class TestHandshake:
    async def test_without_a_session_cookie_the_socket_closes_4401(self, server: Server) -> None:
        async with live_connect(server, None) as ws:
            assert await closed_code(LiveClient(ws)) == 4401

    async def test_a_wrong_session_cookie_closes_4401(self, server: Server) -> None:
        async with live_connect(server, "not-a-session") as ws:
            assert await closed_code(LiveClient(ws)) == 4401

    async def test_another_sites_origin_is_refused(self, server: Server, desk: Desk) -> None:
        cookie = await login(server.base, desk.agent.email)
        with pytest.raises(InvalidStatus) as refused:
            async with live_connect(server, cookie, origin="https://evil.example"):
                pass
        assert refused.value.response.status_code == 403

    def test_origin_must_name_the_host(self) -> None:
        assert same_origin("http://inbox.example:8000", "inbox.example:8000")
        assert same_origin("https://Inbox.example", "inbox.example:443")
        assert same_origin(None, "inbox.example")  # not a browser, so not a hijacked page
        assert not same_origin("http://inbox.example.evil:8000", "inbox.example:8000")
        assert not same_origin("http://inbox.example:8001", "inbox.example:8000")
        assert not same_origin("null", "inbox.example")


class TestTopics:
    def test_topic_formats(self) -> None:
        assert allowed_topics(["inbox", "conversation:12"], is_admin=False) == {
            "inbox",
            "conversation:12",
        }
        for bad in (["conversation:x"], ["conversation:0"], ["inbox;drop"], [1], "inbox"):
            with pytest.raises(ValueError):
                allowed_topics(bad, is_admin=True)

    async def test_an_agent_may_not_subscribe_admin(self, server: Server, desk: Desk) -> None:
        cookie = await login(server.base, desk.agent.email)
        async with live_connect(server, cookie) as ws:
            client = LiveClient(ws)
            await client.send(type="subscribe", topics=["inbox", "admin"], last_event_id=None)
            assert "admins only" in (await client.next("error"))["message"]
            await client.subscribe("inbox")
            await publish(desk.db, "admin", "secret")
            visible = await publish(desk.db, "inbox")
            assert (await client.next("event"))["id"] == visible

    async def test_an_admin_may(self, server: Server, desk: Desk) -> None:
        cookie = await login(server.base, desk.admin.email)
        async with live_connect(server, cookie) as ws:
            client = LiveClient(ws)
            await client.subscribe("admin")
            event_id = await publish(desk.db, "admin", "agent.created", agent_id=1)
            event = await client.next("event")
            assert (event["id"], event["topic"], event["kind"]) == (
                event_id,
                "admin",
                "agent.created",
            )
            assert event["data"] == {"agent_id": 1}

    async def test_bad_messages_get_an_error_not_a_closed_socket(
        self, server: Server, desk: Desk
    ) -> None:
        cookie = await login(server.base, desk.agent.email)
        async with live_connect(server, cookie) as ws:
            client = LiveClient(ws)
            await ws.send("{not json")
            assert (await client.next("error"))["message"] == "not JSON"
            await client.send(type="subscribe", topics=["tickets:1"], last_event_id=None)
            assert "unknown topic" in (await client.next("error"))["message"]
            await client.send(type="subscribe", topics=["inbox"], last_event_id="7")
            assert "last_event_id" in (await client.next("error"))["message"]
            await client.send(type="dance")
            assert "unknown message type" in (await client.next("error"))["message"]
            await client.send(type="ping")
            assert await client.next("pong")


class TestCatchUp:
    async def test_reconnect_with_last_event_id_gets_exactly_what_was_missed(
        self, server: Server, desk: Desk
    ) -> None:
        cookie = await login(server.base, desk.agent.email)
        async with live_connect(server, cookie) as ws:
            client = LiveClient(ws)
            await client.subscribe("inbox")
            first = await publish(desk.db, n=1)
            assert (await client.next("event"))["id"] == first

        missed = [await publish(desk.db, n=2), await publish(desk.db, n=3)]

        async with live_connect(server, cookie) as ws:
            client = LiveClient(ws)
            await client.subscribe("inbox", last_event_id=first)
            assert [e["id"] for e in await client.events(2)] == missed
            marker = await publish(desk.db, n=4)
            assert (await client.next("event"))["id"] == marker  # nothing doubled in between

    async def test_inbound_message_reaches_the_inbox_and_conversation_topics(
        self, server: Server, desk: Desk
    ) -> None:
        cookie = await login(server.base, desk.agent.email)
        async with live_connect(server, cookie) as ws:
            client = LiveClient(ws)
            await client.subscribe("inbox")
            async with httpx.AsyncClient(base_url=server.base) as http:
                accepted = await post_inbound(http, desk, "hello there")
            event = await client.next("event")
            assert event["kind"] == "message.new"
            assert event["data"]["conversation_id"] == accepted["conversation_id"]

            topic = f"conversation:{accepted['conversation_id']}"
            await client.subscribe("inbox", topic, last_event_id=event["id"] - 1)
            replayed = await client.next("event")
            assert (replayed["topic"], replayed["id"]) == (topic, event["id"] + 1)

    async def test_changing_topics_switches_the_stream(self, server: Server, desk: Desk) -> None:
        cookie = await login(server.base, desk.agent.email)
        async with live_connect(server, cookie) as ws:
            client = LiveClient(ws)
            await client.subscribe("conversation:1")
            await client.subscribe("conversation:2")
            await publish(desk.db, "conversation:1")
            wanted = await publish(desk.db, "conversation:2")
            assert (await client.next("event"))["id"] == wanted


class TestSessionEnd:
    async def test_signing_out_closes_the_socket_at_the_next_check(
        self, server: Server, desk: Desk, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(live_router, "SESSION_CHECK_SECONDS", 0.2)
        monkeypatch.setattr(live_router, "PING_SECONDS", 0.1)
        async with httpx.AsyncClient(base_url=server.base) as http:
            response = await http.post(
                "/api/v1/auth/login", json={"email": desk.agent.email, "password": PASSWORD}
            )
            csrf = response.json()["csrf_token"]
            async with live_connect(server, http.cookies["frankly_session"]) as ws:
                client = LiveClient(ws)
                await client.subscribe("inbox")
                assert await client.next("ping")
                response = await http.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf})
                assert response.status_code == 204, response.text
                assert await closed_code(client) == 4401
        await wait_until(lambda: server.hub.subscriber_count == 0)

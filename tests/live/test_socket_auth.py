"""The /ws endpoint over a real server: sign-in and Origin checks, and which topics who may see."""

from __future__ import annotations

import pytest
from websockets.exceptions import InvalidStatus

from frankly.live.router import allowed_topics, same_origin
from tests.factories import Desk
from tests.live.conftest import LiveClient, Server, closed_code, live_connect, login, publish


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

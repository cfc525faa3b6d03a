"""The /ws stream over a real server: catch-up after a reconnect, topic changes, and the socket
ending (or narrowing) when the session or the admin role does."""

from __future__ import annotations

import httpx
import pytest

from frankly.auth.models import Agent, Role
from frankly.live import router as live_router
from tests.factories import PASSWORD, Desk, post_inbound
from tests.live.conftest import (
    LiveClient,
    Server,
    closed_code,
    live_connect,
    login,
    publish,
    wait_until,
)


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

    async def test_an_admin_who_loses_the_role_stops_getting_admin_events(
        self, server: Server, desk: Desk, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(live_router, "SESSION_CHECK_SECONDS", 0.2)
        cookie = await login(server.base, desk.admin.email)
        async with live_connect(server, cookie) as ws:
            client = LiveClient(ws)
            await client.subscribe("admin", "inbox")
            async with desk.db.sessionmaker() as session:
                admin = await session.get(Agent, desk.admin.id)
                assert admin is not None
                admin.role = Role.AGENT
                await session.commit()
            assert "admins only" in (await client.next("error"))["message"]
            await publish(desk.db, "admin")
            visible = await publish(desk.db, "inbox")
            assert (await client.next("event"))["id"] == visible

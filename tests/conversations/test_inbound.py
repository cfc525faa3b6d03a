"""POST /api/v1/inbound: storing customer messages once, with clear errors for bad input."""

from __future__ import annotations

import httpx
from sqlalchemy import func, select

from frankly.conversations.models import Direction, Message
from frankly.worker.models import Job
from tests.factories import make_desk, post_inbound


async def _count(db, model, *where) -> int:  # type: ignore[no-untyped-def]
    async with db.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)))


class TestAccept:
    async def test_stores_message_and_queues_drafting(self, client: httpx.AsyncClient, db) -> None:
        desk = await make_desk(db)
        body = await post_inbound(
            client,
            desk,
            "which bank?",
            conversation_id="order-1",
            message_id="m-1",
            contact={"name": "Dmitry", "language": "ru"},
            context={"order": {"amount": "15000", "currency": "RUB"}},
        )
        assert body["duplicate"] is False and body["drafting"] == "queued"
        assert await _count(db, Message) == 1
        assert await _count(db, Job) == 1
        detail = (
            await client.get(
                f"/api/v1/conversations/{body['conversation_id']}", headers=desk.as_agent()
            )
        ).json()
        assert detail["context"]["order"]["amount"] == "15000"
        assert detail["contact"]["display_name"] == "Dmitry"
        assert detail["language"] == "ru"
        assert detail["needs_reply"] is True
        assert [m["direction"] for m in detail["messages"]] == ["in"]

    async def test_same_conversation_collects_messages(self, client, db) -> None:
        desk = await make_desk(db)
        first = await post_inbound(client, desk, "hello", conversation_id="c")
        second = await post_inbound(client, desk, "which bank?", conversation_id="c")
        assert first["conversation_id"] == second["conversation_id"]
        assert first["message_id"] != second["message_id"]

    async def test_context_updates_merge(self, client, db) -> None:
        desk = await make_desk(db)
        await post_inbound(client, desk, "a", conversation_id="c", context={"order": {"id": "1"}})
        body = await post_inbound(client, desk, "b", conversation_id="c", context={"x": 1})
        detail = (
            await client.get(
                f"/api/v1/conversations/{body['conversation_id']}", headers=desk.as_agent()
            )
        ).json()
        assert detail["context"] == {"order": {"id": "1"}, "x": 1}


class TestDedupe:
    async def test_same_message_id_is_stored_once(self, client, db) -> None:
        desk = await make_desk(db)
        first = await post_inbound(client, desk, "which bank?", message_id="dup-1")
        again = await post_inbound(client, desk, "which bank?", message_id="dup-1")
        assert again["duplicate"] is True
        assert again["message_id"] == first["message_id"]
        assert await _count(db, Message) == 1
        assert await _count(db, Job) == 1

    async def test_concurrent_duplicates_store_one(self, client, db) -> None:
        import asyncio

        desk = await make_desk(db)
        payload = {"conversation_id": "c", "message_id": "race", "text": "hi there"}
        responses = await asyncio.gather(
            *[
                client.post("/api/v1/inbound", json=payload, headers=desk.as_channel())
                for _ in range(5)
            ]
        )
        assert {r.status_code for r in responses} == {202}, [r.text for r in responses]
        assert len({r.json()["message_id"] for r in responses}) == 1
        assert await _count(db, Message) == 1
        assert await _count(db, Job) == 1

    async def test_same_id_on_another_channel_is_another_message(self, client, db) -> None:
        from frankly.auth import service as auth_service

        desk = await make_desk(db)
        async with db.sessionmaker() as session:
            other = await auth_service.create_token(session, name="w", channel="widget")
            await session.commit()
        await post_inbound(client, desk, "hi", message_id="same")
        response = await client.post(
            "/api/v1/inbound",
            json={"conversation_id": "conv-1", "message_id": "same", "text": "hi"},
            headers={"Authorization": f"Bearer {other.token}"},
        )
        assert response.json()["duplicate"] is False
        assert await _count(db, Message, Message.direction == Direction.IN) == 2


class TestBadInput:
    async def test_missing_field_names_it(self, client, db) -> None:
        desk = await make_desk(db)
        response = await client.post(
            "/api/v1/inbound",
            json={"conversation_id": "c", "text": "x"},
            headers=desk.as_channel(),
        )
        assert response.status_code == 422
        assert response.json()["error"] == "invalid"
        assert "message_id" in response.json()["detail"]

    async def test_malformed_json_is_422(self, client, db) -> None:
        desk = await make_desk(db)
        response = await client.post(
            "/api/v1/inbound",
            content=b"{not json",
            headers={**desk.as_channel(), "content-type": "application/json"},
        )
        assert response.status_code == 422

    async def test_unknown_field_is_422(self, client, db) -> None:
        desk = await make_desk(db)
        response = await client.post(
            "/api/v1/inbound",
            json={"conversation_id": "c", "message_id": "m", "text": "x", "txet": "y"},
            headers=desk.as_channel(),
        )
        assert response.status_code == 422 and "txet" in response.json()["detail"]

    async def test_text_over_limit_is_413_and_writes_nothing(self, client, db) -> None:
        desk = await make_desk(db)
        response = await client.post(
            "/api/v1/inbound",
            json={"conversation_id": "c", "message_id": "m", "text": "я" * 9000},
            headers=desk.as_channel(),
        )
        assert response.status_code == 413
        assert "16384" in response.json()["detail"]
        assert await _count(db, Message) == 0

    async def test_control_characters_are_stripped(self, client, db) -> None:
        desk = await make_desk(db)
        body = await post_inbound(client, desk, "hel\x00lo\x07 wor\u200bld\r\nline")
        async with db.sessionmaker() as session:
            message = await session.get(Message, body["message_id"])
            assert message is not None
            assert message.text == "hello world\nline"

    async def test_only_control_characters_is_422(self, client, db) -> None:
        desk = await make_desk(db)
        response = await client.post(
            "/api/v1/inbound",
            json={"conversation_id": "c", "message_id": "m", "text": "\x00\x01 "},
            headers=desk.as_channel(),
        )
        assert response.status_code == 422 and "empty" in response.json()["detail"]

    async def test_invalid_token_is_401(self, client, db) -> None:
        await make_desk(db)
        response = await client.post(
            "/api/v1/inbound",
            json={"conversation_id": "c", "message_id": "m", "text": "x"},
            headers={"Authorization": "Bearer frk_nope"},
        )
        assert response.status_code == 401
        assert response.json() == {"error": "unauthorized", "detail": "invalid or revoked token"}

    async def test_agent_token_cannot_post_inbound(self, client, db) -> None:
        desk = await make_desk(db)
        response = await client.post(
            "/api/v1/inbound",
            json={"conversation_id": "c", "message_id": "m", "text": "x"},
            headers=desk.as_agent(),
        )
        assert response.status_code == 403

    async def test_channel_token_cannot_read_conversations(self, client, db) -> None:
        desk = await make_desk(db)
        response = await client.get("/api/v1/conversations", headers=desk.as_channel())
        assert response.status_code == 403

"""Claiming, taking over, assignment and status changes."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from frankly.audit.models import AuditEvent
from frankly.auth import service as auth_service
from frankly.db import utcnow
from frankly.live.models import Event
from tests.factories import PASSWORD, inbound_with_draft, key, make_desk, post_inbound


async def _second_agent(db):  # type: ignore[no-untyped-def]
    async with db.sessionmaker() as session:
        boris = await auth_service.create_agent(
            session, email=f"boris{key()[:6]}@example.com", password=PASSWORD, name="Boris"
        )
        token = await auth_service.create_token(session, name="boris", agent=boris)
        await session.commit()
    return boris, {"Authorization": f"Bearer {token.token}"}


class TestClaims:
    async def test_a_claim_blocks_other_agents_until_they_take_over(self, client, db) -> None:
        desk = await make_desk(db)
        boris, as_boris = await _second_agent(db)
        detail, draft = await inbound_with_draft(client, desk)
        url = f"/api/v1/conversations/{detail['id']}"
        claimed = await client.post(f"{url}/claim", json={}, headers=desk.as_agent())
        assert claimed.status_code == 200
        assert claimed.json()["claimed_by_id"] == desk.agent.id

        blocked = await client.post(f"{url}/claim", json={}, headers=as_boris)
        assert blocked.status_code == 409
        assert "Anna is replying" in blocked.json()["detail"]
        send = await client.post(
            f"/api/v1/drafts/{draft['id']}/send", json={"idempotency_key": key()}, headers=as_boris
        )
        assert send.status_code == 409 and send.json()["error"] == "claimed"
        reply = await client.post(
            f"{url}/replies", json={"text": "hi", "idempotency_key": key()}, headers=as_boris
        )
        assert reply.status_code == 409

        taken = await client.post(f"{url}/claim", json={"take_over": True}, headers=as_boris)
        assert taken.status_code == 200 and taken.json()["claimed_by_id"] == boris.id
        sent = await client.post(
            f"/api/v1/drafts/{draft['id']}/send", json={"idempotency_key": key()}, headers=as_boris
        )
        assert sent.status_code == 200
        after = (await client.get(url, headers=as_boris)).json()
        assert after["claimed_by_id"] is None  # sending releases the claim
        async with db.sessionmaker() as session:
            actions = (await session.scalars(select(AuditEvent.action))).all()
        assert "conversation.claim" in actions and "conversation.take_over" in actions

    async def test_a_stale_claim_does_not_block(self, client, db) -> None:
        from frankly.conversations.models import Conversation

        desk = await make_desk(db)
        _, as_boris = await _second_agent(db)
        accepted = await post_inbound(client, desk, "hi")
        url = f"/api/v1/conversations/{accepted['conversation_id']}"
        await client.post(f"{url}/claim", json={}, headers=desk.as_agent())
        async with db.sessionmaker() as session:
            conversation = await session.get(Conversation, accepted["conversation_id"])
            assert conversation is not None
            conversation.claimed_at = utcnow() - timedelta(hours=1)
            await session.commit()
        assert (await client.post(f"{url}/claim", json={}, headers=as_boris)).status_code == 200

    async def test_claims_publish_live_events(self, client, db) -> None:
        desk = await make_desk(db)
        accepted = await post_inbound(client, desk, "hi")
        await client.post(
            f"/api/v1/conversations/{accepted['conversation_id']}/claim",
            json={},
            headers=desk.as_agent(),
        )
        async with db.sessionmaker() as session:
            kinds = [
                (e.topic, e.kind)
                for e in (await session.scalars(select(Event).order_by(Event.id))).all()
            ]
        topic = f"conversation:{accepted['conversation_id']}"
        assert ("inbox", "message.new") in kinds and (topic, "message.new") in kinds
        assert ("inbox", "conversation.claimed") in kinds


class TestAssignAndStatus:
    async def test_assign_unassign_resolve_reopen_snooze(self, client, db) -> None:
        desk = await make_desk(db)
        accepted = await post_inbound(client, desk, "hi")
        url = f"/api/v1/conversations/{accepted['conversation_id']}"
        assigned = await client.post(
            f"{url}/assign", json={"agent_id": desk.agent.id}, headers=desk.as_agent()
        )
        assert assigned.json()["assigned_agent_id"] == desk.agent.id
        mine = await client.get(
            "/api/v1/conversations", params={"assigned": "me"}, headers=desk.as_agent()
        )
        assert [c["id"] for c in mine.json()["items"]] == [accepted["conversation_id"]]
        unassigned = await client.post(
            f"{url}/assign", json={"agent_id": None}, headers=desk.as_agent()
        )
        assert unassigned.json()["assigned_agent_id"] is None
        bad = await client.post(f"{url}/assign", json={"agent_id": 999}, headers=desk.as_agent())
        assert bad.status_code == 422

        resolved = await client.post(
            f"{url}/status", json={"status": "resolved"}, headers=desk.as_agent()
        )
        assert resolved.json()["status"] == "resolved"
        past = await client.post(
            f"{url}/status",
            json={"status": "snoozed", "snoozed_until": "2020-01-01T00:00:00Z"},
            headers=desk.as_agent(),
        )
        assert past.status_code == 422
        until = (utcnow() + timedelta(hours=2)).isoformat()
        snoozed = await client.post(
            f"{url}/status",
            json={"status": "snoozed", "snoozed_until": until},
            headers=desk.as_agent(),
        )
        assert snoozed.json()["status"] == "snoozed"
        # A new customer message reopens it.
        await post_inbound(client, desk, "are you there?")
        detail = (await client.get(url, headers=desk.as_agent())).json()
        assert detail["status"] == "open" and detail["snoozed_until"] is None


class TestSnoozeRunsOut:
    async def test_an_expired_snooze_is_open_again_in_the_list(self, client, db) -> None:
        from frankly.conversations.models import Conversation

        desk = await make_desk(db)
        accepted = await post_inbound(client, desk, "hi")
        url = f"/api/v1/conversations/{accepted['conversation_id']}"
        until = (utcnow() + timedelta(hours=1)).isoformat()
        await client.post(
            f"{url}/status",
            json={"status": "snoozed", "snoozed_until": until},
            headers=desk.as_agent(),
        )

        async def listed(status: str) -> list[int]:
            response = await client.get(
                "/api/v1/conversations", params={"status": status}, headers=desk.as_agent()
            )
            return [c["id"] for c in response.json()["items"]]

        assert await listed("open") == [] and await listed("snoozed") == [
            accepted["conversation_id"]
        ]
        async with db.sessionmaker() as session:
            conversation = await session.get(Conversation, accepted["conversation_id"])
            assert conversation is not None
            conversation.snoozed_until = utcnow() - timedelta(minutes=1)
            await session.commit()
        assert await listed("open") == [accepted["conversation_id"]]
        assert await listed("snoozed") == []

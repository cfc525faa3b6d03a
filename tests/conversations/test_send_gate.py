"""The human send gate: every draft action, its provenance, disclosure, 409s and idempotency."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from frankly.conversations.models import Direction, Message
from frankly.drafting.disclosure import DisclosureKind, disclosure_for
from frankly.knowledge.models import ExampleLabel, LearnedExample
from tests.factories import conversation, inbound_with_draft, key, make_desk, post_inbound, run_jobs

INTRO_EN = disclosure_for(DisclosureKind.INTRO, "en")
MARKER_EN = disclosure_for(DisclosureKind.MARKER, "en")
INTRO_RU = disclosure_for(DisclosureKind.INTRO, "ru")


async def _outbound(db) -> list[Message]:  # type: ignore[no-untyped-def]
    async with db.sessionmaker() as session:
        rows = await session.scalars(
            select(Message).where(Message.direction == Direction.OUT).order_by(Message.id)
        )
        return list(rows.all())


async def _examples(db, label: ExampleLabel) -> list[LearnedExample]:  # type: ignore[no-untyped-def]
    async with db.sessionmaker() as session:
        rows = await session.scalars(select(LearnedExample).where(LearnedExample.label == label))
        return list(rows.all())


class TestAccept:
    async def test_send_as_is_records_provenance_and_intro(self, client, db) -> None:
        desk = await make_desk(db)
        detail, draft = await inbound_with_draft(client, desk, "which bank do you accept?")
        assert draft["faq_entry"] == "payment-banks"
        response = await client.post(
            f"/api/v1/drafts/{draft['id']}/send",
            json={"idempotency_key": key()},
            headers=desk.as_agent(),
        )
        assert response.status_code == 200, response.text
        message = response.json()["message"]
        assert message["origin"] == "draft_as_is"
        assert message["similarity"] == 1.0
        assert message["draft_id"] == draft["id"]
        assert message["faq_entry_id"] == draft["faq_entry_id"]
        assert message["sent_by"] == desk.agent.id
        assert message["delivery_status"] == "queued"
        assert message["disclosure_id"] == "disclosure/intro.en"
        assert message["disclosure_version"] == INTRO_EN.version
        assert message["text"] == f"{INTRO_EN.text}\n\n{draft['text']}"
        assert response.json()["draft"]["status"] == "sent"
        after = await conversation(client, desk, detail["id"])
        assert after["needs_reply"] is False and after["has_draft"] is False

    async def test_same_text_counts_as_as_is(self, client, db) -> None:
        desk = await make_desk(db)
        _, draft = await inbound_with_draft(client, desk)
        response = await client.post(
            f"/api/v1/drafts/{draft['id']}/send",
            json={"text": "  " + draft["text"] + "\n", "idempotency_key": key()},
            headers=desk.as_agent(),
        )
        assert response.json()["message"]["origin"] == "draft_as_is"

    async def test_accepting_teaches_the_entry(self, client, db) -> None:
        desk = await make_desk(db)
        _, draft = await inbound_with_draft(client, desk, "which bank do you accept?")
        await client.post(
            f"/api/v1/drafts/{draft['id']}/send",
            json={"idempotency_key": key()},
            headers=desk.as_agent(),
        )
        examples = await _examples(db, ExampleLabel.CONFIRMED)
        assert [(e.text, e.entry_id) for e in examples] == [
            ("which bank do you accept?", draft["faq_entry_id"])
        ]


class TestEdit:
    async def test_edited_draft_gets_similarity_and_disclosure(self, client, db) -> None:
        desk = await make_desk(db)
        _, draft = await inbound_with_draft(client, desk)
        edited = draft["text"] + " Thank you!"
        response = await client.post(
            f"/api/v1/drafts/{draft['id']}/send",
            json={"text": edited, "idempotency_key": key()},
            headers=desk.as_agent(),
        )
        message = response.json()["message"]
        assert message["origin"] == "draft_edited"
        assert 0.5 <= message["similarity"] < 1.0
        assert message["text"] == f"{INTRO_EN.text}\n\n{edited}"

    async def test_later_ai_replies_get_the_marker(self, client, db) -> None:
        desk = await make_desk(db)
        _, first = await inbound_with_draft(client, desk, "which bank?")
        await client.post(
            f"/api/v1/drafts/{first['id']}/send",
            json={"idempotency_key": key()},
            headers=desk.as_agent(),
        )
        _, second = await inbound_with_draft(client, desk, "what are your working hours?")
        response = await client.post(
            f"/api/v1/drafts/{second['id']}/send",
            json={"idempotency_key": key()},
            headers=desk.as_agent(),
        )
        message = response.json()["message"]
        assert message["disclosure_id"] == "disclosure/marker.en"
        assert message["text"] == f"{second['text']}\n\n{MARKER_EN.text}"
        assert INTRO_EN.text not in message["text"]

    async def test_deleted_or_pasted_disclosure_is_put_back_once(self, client, db) -> None:
        desk = await make_desk(db)
        _, draft = await inbound_with_draft(client, desk)
        pasted = f"{INTRO_EN.text}\n\n{draft['text']} Thanks!\n\n{MARKER_EN.text}"
        response = await client.post(
            f"/api/v1/drafts/{draft['id']}/send",
            json={"text": pasted, "idempotency_key": key()},
            headers=desk.as_agent(),
        )
        text = response.json()["message"]["text"]
        assert text.count(INTRO_EN.text) == 1
        assert MARKER_EN.text not in text
        assert text.startswith(INTRO_EN.text)

    async def test_disclosure_in_the_customers_language(self, client, db) -> None:
        desk = await make_desk(db)
        _, draft = await inbound_with_draft(client, desk, "на какой банк переводить?")
        assert draft["language"] == "ru"
        response = await client.post(
            f"/api/v1/drafts/{draft['id']}/send",
            json={"idempotency_key": key()},
            headers=desk.as_agent(),
        )
        message = response.json()["message"]
        assert message["disclosure_id"] == "disclosure/intro.ru"
        assert message["text"].startswith(INTRO_RU.text)

    async def test_rewritten_draft_is_human_written_without_disclosure(self, client, db) -> None:
        desk = await make_desk(db)
        _, draft = await inbound_with_draft(client, desk)
        own = "Let me check with my colleague and come back to you in five minutes."
        response = await client.post(
            f"/api/v1/drafts/{draft['id']}/send",
            json={"text": own, "idempotency_key": key()},
            headers=desk.as_agent(),
        )
        body = response.json()
        assert body["message"]["origin"] == "human_written"
        assert body["message"]["text"] == own
        assert body["message"]["disclosure_id"] is None
        assert body["message"]["similarity"] < 0.5
        assert body["draft"]["status"] == "superseded"
        assert await _examples(db, ExampleLabel.CONFIRMED) == []


class TestHumanReply:
    async def test_written_reply_has_no_disclosure_and_supersedes_draft(self, client, db) -> None:
        desk = await make_desk(db)
        detail, draft = await inbound_with_draft(client, desk)
        response = await client.post(
            f"/api/v1/conversations/{detail['id']}/replies",
            json={"text": "Hello, one moment please.", "idempotency_key": key()},
            headers=desk.as_agent(),
        )
        assert response.status_code == 200
        message = response.json()["message"]
        assert message["origin"] == "human_written"
        assert message["text"] == "Hello, one moment please."
        assert message["draft_id"] is None and message["disclosure_id"] is None
        after = await conversation(client, desk, detail["id"])
        assert [d["status"] for d in after["drafts"]] == ["superseded"]
        late = await client.post(
            f"/api/v1/drafts/{draft['id']}/send",
            json={"idempotency_key": key()},
            headers=desk.as_agent(),
        )
        assert late.status_code == 409

    async def test_reply_text_limits(self, client, db) -> None:
        desk = await make_desk(db)
        accepted = await post_inbound(client, desk, "hi")
        url = f"/api/v1/conversations/{accepted['conversation_id']}/replies"
        too_big = await client.post(
            url, json={"text": "x" * 20000, "idempotency_key": key()}, headers=desk.as_agent()
        )
        assert too_big.status_code == 413
        missing = await client.post(url, json={"text": "hi"}, headers=desk.as_agent())
        assert missing.status_code == 422 and "idempotency_key" in missing.json()["detail"]
        assert await _outbound(db) == []


class TestConflictsAndIdempotency:
    async def test_second_send_of_a_sent_draft_is_409(self, client, db) -> None:
        desk = await make_desk(db)
        _, draft = await inbound_with_draft(client, desk)
        url = f"/api/v1/drafts/{draft['id']}/send"
        first = await client.post(url, json={"idempotency_key": key()}, headers=desk.as_agent())
        second = await client.post(url, json={"idempotency_key": key()}, headers=desk.as_agent())
        assert first.status_code == 200
        assert second.status_code == 409
        assert second.json()["error"] == "conflict"
        assert len(await _outbound(db)) == 1

    async def test_repeated_key_returns_first_result(self, client, db) -> None:
        desk = await make_desk(db)
        _, draft = await inbound_with_draft(client, desk)
        url = f"/api/v1/drafts/{draft['id']}/send"
        same = key()
        first = await client.post(url, json={"idempotency_key": same}, headers=desk.as_agent())
        again = await client.post(url, json={"idempotency_key": same}, headers=desk.as_agent())
        assert first.status_code == again.status_code == 200
        assert first.json()["created"] is True and again.json()["created"] is False
        assert again.json()["message"]["id"] == first.json()["message"]["id"]
        assert len(await _outbound(db)) == 1

    async def test_repeated_key_on_a_human_reply(self, client, db) -> None:
        desk = await make_desk(db)
        accepted = await post_inbound(client, desk, "hi")
        url = f"/api/v1/conversations/{accepted['conversation_id']}/replies"
        body = {"text": "Hello!", "idempotency_key": "k-1"}
        first = await client.post(url, json=body, headers=desk.as_agent())
        again = await client.post(url, json=body, headers=desk.as_agent())
        assert again.json()["message"]["id"] == first.json()["message"]["id"]
        assert len(await _outbound(db)) == 1

    async def test_key_reused_for_another_reply_is_409(self, client, db) -> None:
        desk = await make_desk(db)
        first_conv = await post_inbound(client, desk, "hi", conversation_id="a")
        second_conv = await post_inbound(client, desk, "hi", conversation_id="b")
        body = {"text": "Hello!", "idempotency_key": "k-2"}
        ok = await client.post(
            f"/api/v1/conversations/{first_conv['conversation_id']}/replies",
            json=body,
            headers=desk.as_agent(),
        )
        clash = await client.post(
            f"/api/v1/conversations/{second_conv['conversation_id']}/replies",
            json=body,
            headers=desk.as_agent(),
        )
        assert ok.status_code == 200 and clash.status_code == 409
        assert len(await _outbound(db)) == 1

    async def test_concurrent_sends_with_one_key_make_one_message(self, client, db) -> None:
        desk = await make_desk(db)
        _, draft = await inbound_with_draft(client, desk)
        same = key()
        responses = await asyncio.gather(
            *[
                client.post(
                    f"/api/v1/drafts/{draft['id']}/send",
                    json={"idempotency_key": same},
                    headers=desk.as_agent(),
                )
                for _ in range(4)
            ]
        )
        assert {r.status_code for r in responses} == {200}, [r.text for r in responses]
        assert len({r.json()["message"]["id"] for r in responses}) == 1
        assert len(await _outbound(db)) == 1

    async def test_concurrent_sends_with_different_keys_make_one_message(self, client, db) -> None:
        desk = await make_desk(db)
        _, draft = await inbound_with_draft(client, desk)
        responses = await asyncio.gather(
            *[
                client.post(
                    f"/api/v1/drafts/{draft['id']}/send",
                    json={"idempotency_key": key()},
                    headers=desk.as_agent(),
                )
                for _ in range(4)
            ]
        )
        codes = sorted(r.status_code for r in responses)
        assert codes == [200, 409, 409, 409], [r.text for r in responses]
        assert len(await _outbound(db)) == 1

    async def test_discard_then_send_is_409(self, client, db) -> None:
        desk = await make_desk(db)
        _, draft = await inbound_with_draft(client, desk)
        discard = await client.post(
            f"/api/v1/drafts/{draft['id']}/discard", headers=desk.as_agent()
        )
        assert discard.status_code == 200 and discard.json()["status"] == "discarded"
        send = await client.post(
            f"/api/v1/drafts/{draft['id']}/send",
            json={"idempotency_key": key()},
            headers=desk.as_agent(),
        )
        assert send.status_code == 409
        again = await client.post(f"/api/v1/drafts/{draft['id']}/discard", headers=desk.as_agent())
        assert again.status_code == 409
        assert await _outbound(db) == []

    async def test_unknown_ids_are_404(self, client, db) -> None:
        desk = await make_desk(db)
        for method, url in [
            ("post", "/api/v1/drafts/999/send"),
            ("post", "/api/v1/drafts/999/discard"),
            ("post", "/api/v1/drafts/999/regenerate"),
            ("get", "/api/v1/conversations/999"),
            ("post", "/api/v1/conversations/999/replies"),
            ("post", "/api/v1/conversations/999/drafts"),
        ]:
            body = {"idempotency_key": "k", "text": "t", "faq_entry": "payment-banks"}
            if url.endswith(("discard", "regenerate")) or method == "get":
                response = await client.request(method, url, headers=desk.as_agent())
            elif url.endswith("/drafts"):
                response = await client.post(
                    url, json={"faq_entry": "payment-banks"}, headers=desk.as_agent()
                )
            elif url.endswith("replies"):
                response = await client.post(
                    url, json={"text": "t", "idempotency_key": "k"}, headers=desk.as_agent()
                )
            else:
                response = await client.post(
                    url, json={"idempotency_key": "k"}, headers=desk.as_agent()
                )
            assert response.status_code == 404, (url, response.text, body)
            assert response.json()["error"] == "not_found"


class TestDiscardRegenerateUseFaq:
    async def test_discard_counts_against_the_entry(self, client, db) -> None:
        desk = await make_desk(db)
        _, draft = await inbound_with_draft(client, desk, "which bank do you accept?")
        await client.post(f"/api/v1/drafts/{draft['id']}/discard", headers=desk.as_agent())
        rejected = await _examples(db, ExampleLabel.REJECTED)
        assert [(e.text, e.entry_id) for e in rejected] == [
            ("which bank do you accept?", draft["faq_entry_id"])
        ]

    async def test_regenerate_supersedes_and_never_repeats_the_entry(self, client, db) -> None:
        desk = await make_desk(db)
        detail, draft = await inbound_with_draft(client, desk, "which bank do you accept?")
        response = await client.post(
            f"/api/v1/drafts/{draft['id']}/regenerate", headers=desk.as_agent()
        )
        assert response.status_code == 200
        new = response.json()["draft"]
        assert new is None or new["faq_entry"] != draft["faq_entry"]
        after = await conversation(client, desk, detail["id"])
        assert after["drafts"][0]["status"] == "superseded"
        if new is None:
            assert after["needs_human"] is True

    async def test_use_faq_entry_makes_a_draft_and_an_example(self, client, db) -> None:
        desk = await make_desk(db)
        accepted = await post_inbound(
            client,
            desk,
            "hmm, is my wife allowed to send it?",
            context={"order": {"amount": "15000", "currency": "RUB"}},
        )
        await run_jobs(db)
        response = await client.post(
            f"/api/v1/conversations/{accepted['conversation_id']}/drafts",
            json={"faq_entry": "third-party"},
            headers=desk.as_agent(),
        )
        assert response.status_code == 201, response.text
        draft = response.json()
        assert draft["faq_entry"] == "third-party" and draft["engine"] == "agent_pick"
        confirmed = await _examples(db, ExampleLabel.CONFIRMED)
        assert [e.text for e in confirmed] == ["hmm, is my wife allowed to send it?"]
        sent = await client.post(
            f"/api/v1/drafts/{draft['id']}/send",
            json={"idempotency_key": key()},
            headers=desk.as_agent(),
        )
        assert sent.json()["message"]["origin"] == "draft_as_is"

    async def test_use_faq_fills_placeholders_or_refuses(self, client, db) -> None:
        desk = await make_desk(db)
        with_order = await post_inbound(
            client,
            desk,
            "how much?",
            conversation_id="o1",
            context={"order": {"amount": "15000", "currency": "RUB"}},
        )
        without = await post_inbound(client, desk, "how much?", conversation_id="o2")
        ok = await client.post(
            f"/api/v1/conversations/{with_order['conversation_id']}/drafts",
            json={"faq_entry": "payment-amount"},
            headers=desk.as_agent(),
        )
        assert ok.json()["text"] == "Please send exactly 15000 RUB."
        hole = await client.post(
            f"/api/v1/conversations/{without['conversation_id']}/drafts",
            json={"faq_entry": "payment-amount"},
            headers=desk.as_agent(),
        )
        assert hole.status_code == 422
        assert "order.amount" in hole.json()["detail"]

    async def test_use_unknown_faq_entry_is_404(self, client, db) -> None:
        desk = await make_desk(db)
        accepted = await post_inbound(client, desk, "hi")
        response = await client.post(
            f"/api/v1/conversations/{accepted['conversation_id']}/drafts",
            json={"faq_entry": "nope"},
            headers=desk.as_agent(),
        )
        assert response.status_code == 404


class TestPreview:
    async def test_preview_shows_provenance_and_writes_nothing(self, client, db) -> None:
        desk = await make_desk(db)
        _, draft = await inbound_with_draft(client, desk)
        response = await client.post(
            f"/api/v1/drafts/{draft['id']}/preview",
            json={"text": draft["text"] + " Thanks"},
            headers=desk.as_agent(),
        )
        body = response.json()
        assert body["origin"] == "draft_edited"
        assert body["disclosure_text"] == INTRO_EN.text
        assert body["text"].startswith(INTRO_EN.text)
        assert await _outbound(db) == []
        async with db.sessionmaker() as session:
            assert await session.scalar(select(func.count(Message.id))) == 1

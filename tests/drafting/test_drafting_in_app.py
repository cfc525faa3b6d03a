"""The offline engine inside the running app: drafts, abstains, suggests, learns, fills holes."""

from __future__ import annotations

import time

from sqlalchemy import select

from frankly.conversations.models import Draft, Message
from frankly.drafting.engine import INDEX_CACHE
from tests.factories import conversation, key, make_desk, post_inbound, run_jobs

ORDER = {"order": {"amount": "15000", "currency": "RUB"}}


async def _detail(client, desk, text: str, **extra):  # type: ignore[no-untyped-def]
    accepted = await post_inbound(client, desk, text, **extra)
    await run_jobs(desk.db)
    return await conversation(client, desk, accepted["conversation_id"])


class TestDraftOrAbstain:
    async def test_placeholders_are_filled_from_the_order(self, client, db) -> None:
        desk = await make_desk(db)
        detail = await _detail(client, desk, "how much should I send?", context=ORDER)
        [draft] = detail["drafts"]
        assert draft["text"] == "Please send exactly 15000 RUB."
        assert draft["why"]["entry"]["slug"] == "payment-amount"

    async def test_a_missing_value_abstains_instead_of_sending_a_hole(self, client, db) -> None:
        desk = await make_desk(db)
        detail = await _detail(client, desk, "how much should I send?")
        assert detail["drafts"] == []
        assert detail["needs_human"] is True
        assert detail["suggestions"][0]["slug"] == "payment-amount"
        async with db.sessionmaker() as session:
            message = await session.scalar(select(Message))
            assert message is not None and message.drafting == "abstained"

    async def test_never_draft_entries_are_suggested_not_drafted(self, client, db) -> None:
        desk = await make_desk(db)
        for text in ("i paid release pls", "я оплатил, отпустите"):
            detail = await _detail(client, desk, text, conversation_id=key())
            assert detail["drafts"] == []
            assert detail["suggestions"][0]["slug"] == "paid-release"

    async def test_answers_in_the_customers_language(self, client, db) -> None:
        desk = await make_desk(db)
        detail = await _detail(client, desk, "можно оплатить с карты жены?")
        [draft] = detail["drafts"]
        assert draft["language"] == "ru"
        assert draft["text"] == "Нет: оплата должна идти со счёта на ваше имя."

    async def test_every_draft_records_why(self, client, db) -> None:
        desk = await make_desk(db)
        detail = await _detail(client, desk, "which bank do you accept?")
        why = detail["drafts"][0]["why"]
        assert why["entry"] == {"slug": "payment-banks", "version": 1}
        assert why["engine"] == "offline" and 0 < detail["drafts"][0]["confidence"] <= 1
        assert why["runner_up"]["slug"] != "payment-banks"
        assert {"index", "match", "total"} <= set(why["timings_ms"])
        assert why["language_source"] == "detected"


class TestOnlineLearning:
    async def test_a_human_pick_changes_the_next_match(self, client, db) -> None:
        desk = await make_desk(db)
        odd = "is it ok if my husband sends the money instead of me"
        first = await _detail(client, desk, odd, conversation_id="c1")
        first_slug = first["drafts"][0]["faq_entry"] if first["drafts"] else None
        assert first_slug != "third-party" or first["drafts"][0]["confidence"] < 0.9
        picked = await client.post(
            f"/api/v1/conversations/{first['id']}/drafts",
            json={"faq_entry": "third-party"},
            headers=desk.as_agent(),
        )
        assert picked.status_code == 201
        started = time.perf_counter()
        second = await _detail(client, desk, odd, conversation_id="c2")
        elapsed = time.perf_counter() - started
        [draft] = second["drafts"]
        assert draft["faq_entry"] == "third-party"
        assert draft["confidence"] >= 0.5
        assert elapsed < 5  # no rebuild-from-scratch pause in the request path

    async def test_learning_survives_a_restart(self, client, db) -> None:
        desk = await make_desk(db)
        odd = "is it ok if my husband sends the money instead of me"
        first = await _detail(client, desk, odd, conversation_id="c1")
        await client.post(
            f"/api/v1/conversations/{first['id']}/drafts",
            json={"faq_entry": "third-party"},
            headers=desk.as_agent(),
        )
        INDEX_CACHE.invalidate()  # a fresh process starts with no in-memory index
        second = await _detail(client, desk, odd, conversation_id="c2")
        assert second["drafts"][0]["faq_entry"] == "third-party"

    async def test_a_discard_is_never_proposed_again_for_that_message(self, client, db) -> None:
        desk = await make_desk(db)
        detail = await _detail(client, desk, "which bank do you accept?")
        draft = detail["drafts"][0]
        await client.post(f"/api/v1/drafts/{draft['id']}/discard", headers=desk.as_agent())
        again = await client.post(
            f"/api/v1/drafts/{draft['id']}/regenerate", headers=desk.as_agent()
        )
        assert again.status_code == 409  # discarded: nothing to regenerate
        async with db.sessionmaker() as session:
            drafts = (await session.scalars(select(Draft))).all()
        assert [d.faq_entry_id for d in drafts] == [draft["faq_entry_id"]]

"""GET /api/v1/conversations: filters, newest activity first, cursor pagination."""

from __future__ import annotations

from tests.factories import key, make_desk, post_inbound, run_jobs


async def _ids(client, desk, **params) -> list[int]:  # type: ignore[no-untyped-def]
    response = await client.get("/api/v1/conversations", params=params, headers=desk.as_agent())
    assert response.status_code == 200, response.text
    return [c["id"] for c in response.json()["items"]]


class TestFilters:
    async def test_filters_select_the_right_conversations(self, client, db) -> None:
        desk = await make_desk(db)
        drafted = await post_inbound(
            client,
            desk,
            "which bank do you accept?",
            conversation_id="a",
            contact={"language": "en"},
        )
        abstained = await post_inbound(
            client, desk, "what's the weather on Mars tomorrow?", conversation_id="b"
        )
        never = await post_inbound(client, desk, "я оплатил, отпустите", conversation_id="c")
        answered = await post_inbound(client, desk, "hello", conversation_id="d")
        await run_jobs(db)
        reply = await client.post(
            f"/api/v1/conversations/{answered['conversation_id']}/replies",
            json={"text": "Hi!", "idempotency_key": key()},
            headers=desk.as_agent(),
        )
        assert reply.status_code == 200

        a, b, c, d = (x["conversation_id"] for x in (drafted, abstained, never, answered))
        assert await _ids(client, desk) == [d, c, b, a]
        assert set(await _ids(client, desk, has_draft=True)) == {a}
        assert set(await _ids(client, desk, has_draft=False)) == {b, c, d}
        assert set(await _ids(client, desk, abstained=True)) == {b, c}
        assert set(await _ids(client, desk, needs_reply=True)) == {a, b, c}
        assert set(await _ids(client, desk, needs_reply=False)) == {d}
        assert set(await _ids(client, desk, language="ru")) == {c}
        assert set(await _ids(client, desk, channel="api")) == {a, b, c, d}
        assert await _ids(client, desk, channel="email") == []
        assert set(await _ids(client, desk, q="MARS")) == {b}
        assert set(await _ids(client, desk, q="отпустите")) == {c}
        assert set(await _ids(client, desk, status="open")) == {a, b, c, d}
        assert await _ids(client, desk, assigned="me") == []
        assert set(await _ids(client, desk, assigned="none")) == {a, b, c, d}

    async def test_abstained_conversation_offers_suggestions(self, client, db) -> None:
        desk = await make_desk(db)
        never = await post_inbound(client, desk, "i paid release pls")
        await run_jobs(db)
        detail = (
            await client.get(
                f"/api/v1/conversations/{never['conversation_id']}", headers=desk.as_agent()
            )
        ).json()
        assert detail["needs_human"] is True and detail["drafts"] == []
        assert 1 <= len(detail["suggestions"]) <= 3
        assert detail["suggestions"][0]["slug"] == "paid-release"

    async def test_bad_filter_values_are_422(self, client, db) -> None:
        desk = await make_desk(db)
        for params in (
            {"status": "lost"},
            {"has_draft": "maybe"},
            {"limit": 0},
            {"limit": 1000},
            {"assigned": "someone"},
            {"cursor": "%%%"},
        ):
            response = await client.get(
                "/api/v1/conversations", params=params, headers=desk.as_agent()
            )
            assert response.status_code == 422, (params, response.text)


class TestPagination:
    async def test_cursor_walks_every_conversation_once(self, client, db) -> None:
        desk = await make_desk(db)
        for n in range(7):
            await post_inbound(client, desk, f"hello {n}", conversation_id=f"c{n}")
        seen: list[int] = []
        cursor = None
        pages = 0
        while True:
            params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            body = (
                await client.get("/api/v1/conversations", params=params, headers=desk.as_agent())
            ).json()
            seen += [c["id"] for c in body["items"]]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert pages == 3
        assert len(seen) == len(set(seen)) == 7
        assert seen == sorted(seen, reverse=True)

"""The FAQ over HTTP: CRUD with versions, roles, import/export, learned examples, audit."""

from __future__ import annotations

from typing import Any

import httpx
import yaml
from sqlalchemy import func, select

from frankly.audit.models import AuditEvent
from frankly.db import Database
from frankly.knowledge.models import FaqEntry, FaqVersion
from tests.factories import FAQ, Desk, inbound_with_draft, key, make_desk

NEW = {
    "slug": "refunds",
    "question": "How do refunds work?",
    "paraphrases": ["can I get my money back", "как вернуть деньги"],
    "answers": {"en": "Refunds take 3 days.", "ru": "Возврат занимает 3 дня."},
    "tags": ["money"],
}


async def _counts(db: Database) -> tuple[int, int]:
    async with db.sessionmaker() as session:
        entries = await session.scalar(select(func.count(FaqEntry.id)))
        versions = await session.scalar(select(func.count(FaqVersion.id)))
    return int(entries or 0), int(versions or 0)


async def _audit(db: Database, action: str) -> list[AuditEvent]:
    async with db.sessionmaker() as session:
        rows = await session.scalars(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
        )
        return list(rows.all())


async def _create(client: httpx.AsyncClient, desk: Desk, **overrides: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/faq", json={**NEW, **overrides}, headers=desk.as_admin())
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _import(
    client: httpx.AsyncClient, desk: Desk, data: bytes, name: str = "faq.yaml"
) -> httpx.Response:
    media = "text/csv" if name.endswith(".csv") else "application/yaml"
    return await client.post(
        "/api/v1/faq/import", files={"file": (name, data, media)}, headers=desk.as_admin()
    )


def _yaml(entries: list[dict[str, Any]]) -> bytes:
    return yaml.safe_dump(entries, allow_unicode=True, sort_keys=False).encode()


class TestCreateAndRead:
    async def test_create_then_get_by_id_and_slug(self, client, db) -> None:
        desk = await make_desk(db)
        created = await _create(client, desk)
        assert created["version"] == 1 and created["enabled"] is True
        assert created["answers"] == NEW["answers"] and created["tags"] == ["money"]
        by_id = await client.get(f"/api/v1/faq/{created['id']}", headers=desk.as_agent())
        by_slug = await client.get("/api/v1/faq/refunds", headers=desk.as_agent())
        assert by_id.status_code == by_slug.status_code == 200
        assert by_id.json() == by_slug.json() == created

    async def test_list_and_search(self, client, db) -> None:
        desk = await make_desk(db)
        listed = await client.get("/api/v1/faq", headers=desk.as_agent())
        assert [e["slug"] for e in listed.json()] == sorted(item["slug"] for item in FAQ)
        for q, expected in [
            ("bank", ["payment-banks"]),
            ("WORKING HOURS", ["working-hours"]),
            ("pay", ["payment-amount", "payment-banks", "third-party"]),
            ("%", []),
            ("_", []),
            ("nothing like this", []),
        ]:
            found = await client.get("/api/v1/faq", params={"q": q}, headers=desk.as_agent())
            assert [e["slug"] for e in found.json()] == expected, q

    async def test_search_is_case_insensitive_in_russian(self, client, db) -> None:
        desk = await make_desk(db)
        await _create(client, desk, slug="ru-banks", question="Какие банки принимаете?")
        found = await client.get("/api/v1/faq", params={"q": "какие"}, headers=desk.as_agent())
        assert [e["slug"] for e in found.json()] == ["ru-banks"]

    async def test_unknown_entry_is_404(self, client, db) -> None:
        desk = await make_desk(db)
        for method, url in [
            ("GET", "/api/v1/faq/nope"),
            ("GET", "/api/v1/faq/999999"),
            ("PATCH", "/api/v1/faq/nope"),
            ("DELETE", "/api/v1/faq/nope"),
            ("GET", "/api/v1/faq/nope/versions"),
            ("GET", "/api/v1/faq/payment-banks/versions/7"),
            ("GET", "/api/v1/faq/nope/examples"),
            ("DELETE", "/api/v1/faq/payment-banks/examples/999"),
        ]:
            body = {"question": "x"} if method == "PATCH" else None
            response = await client.request(method, url, json=body, headers=desk.as_admin())
            assert response.status_code == 404, (method, url, response.text)
            assert response.json()["error"] == "not_found"

    async def test_duplicate_slug_is_409(self, client, db) -> None:
        desk = await make_desk(db)
        before = await _counts(db)
        response = await client.post(
            "/api/v1/faq", json={**NEW, "slug": "payment-banks"}, headers=desk.as_admin()
        )
        assert response.status_code == 409
        assert response.json()["error"] == "conflict"
        assert "payment-banks" in response.json()["detail"]
        assert await _counts(db) == before

    async def test_malformed_bodies_are_422_naming_the_field(self, client, db) -> None:
        desk = await make_desk(db)
        before = await _counts(db)
        for body, field in [
            ({**NEW, "slug": "Not A Slug"}, "slug"),
            ({k: v for k, v in NEW.items() if k != "question"}, "question"),
            ({**NEW, "answers": {}}, "answers"),
            ({**NEW, "answers": {"en": "  "}}, "answers"),
            ({**NEW, "paraphrases": "one string"}, "paraphrases"),
            ({**NEW, "colour": "red"}, "colour"),
        ]:
            response = await client.post("/api/v1/faq", json=body, headers=desk.as_admin())
            assert response.status_code == 422, (body, response.text)
            assert response.json()["error"] == "invalid"
            assert response.json()["detail"].startswith(field), response.json()
        bad_patch = await client.patch(
            "/api/v1/faq/payment-banks", json={"slug": "renamed"}, headers=desk.as_admin()
        )
        assert bad_patch.status_code == 422 and "slug" in bad_patch.json()["detail"]
        assert await _counts(db) == before

    async def test_numeric_slug_is_refused_or_reachable_by_slug(self, client, db) -> None:
        """A slug of digits must not be shadowed by the entry with that id."""
        desk = await make_desk(db)
        response = await client.post(
            "/api/v1/faq", json={**NEW, "slug": "1"}, headers=desk.as_admin()
        )
        if response.status_code == 422:
            return
        assert response.status_code == 201
        fetched = await client.get("/api/v1/faq/1", headers=desk.as_agent())
        assert fetched.json()["slug"] == "1"


class TestUpdateAndVersions:
    async def test_patch_bumps_version_and_keeps_the_old_text(self, client, db) -> None:
        desk = await make_desk(db)
        old = (await client.get("/api/v1/faq/payment-banks", headers=desk.as_agent())).json()
        response = await client.patch(
            "/api/v1/faq/payment-banks",
            json={"answers": {"en": "Only T-Bank now."}, "tags": ["payments"]},
            headers=desk.as_admin(),
        )
        assert response.status_code == 200, response.text
        new = response.json()
        assert new["version"] == 2
        assert new["answers"] == {"en": "Only T-Bank now."} and new["tags"] == ["payments"]
        assert new["question"] == old["question"] and new["paraphrases"] == old["paraphrases"]
        assert new["updated_at"] >= old["updated_at"]

        versions = await client.get("/api/v1/faq/payment-banks/versions", headers=desk.as_agent())
        assert versions.status_code == 200
        assert [v["version"] for v in versions.json()] == [1, 2]
        assert [v["created_by_id"] for v in versions.json()] == [desk.admin.id, desk.admin.id]
        first = await client.get("/api/v1/faq/payment-banks/versions/1", headers=desk.as_agent())
        assert first.status_code == 200
        assert first.json()["answers"] == old["answers"]
        assert first.json()["tags"] == []
        second = await client.get(f"/api/v1/faq/{old['id']}/versions/2", headers=desk.as_agent())
        assert second.json()["answers"] == {"en": "Only T-Bank now."}

    async def test_patch_without_a_real_change_keeps_the_version(self, client, db) -> None:
        desk = await make_desk(db)
        current = (await client.get("/api/v1/faq/working-hours", headers=desk.as_agent())).json()
        before = await _counts(db)
        for body in [
            {},
            {"question": current["question"]},
            {"question": "  " + current["question"] + " ", "answers": current["answers"]},
            {"paraphrases": [*current["paraphrases"], current["paraphrases"][0]]},
            {"enabled": True, "never_draft": False},
        ]:
            response = await client.patch(
                "/api/v1/faq/working-hours", json=body, headers=desk.as_admin()
            )
            assert response.status_code == 200, response.text
            assert response.json()["version"] == 1, body
        assert await _counts(db) == before
        assert await _audit(db, "faq.update") == []

    async def test_successive_patches_keep_counting(self, client, db) -> None:
        desk = await make_desk(db)
        for n, enabled in enumerate([False, True, False], start=2):
            response = await client.patch(
                "/api/v1/faq/third-party", json={"enabled": enabled}, headers=desk.as_admin()
            )
            assert response.json()["version"] == n
        versions = await client.get("/api/v1/faq/third-party/versions", headers=desk.as_agent())
        assert [(v["version"], v["enabled"]) for v in versions.json()] == [
            (1, True),
            (2, False),
            (3, True),
            (4, False),
        ]


class TestRoles:
    async def test_agent_cannot_write(self, client, db) -> None:
        desk = await make_desk(db)
        before = await _counts(db)
        attempts = [
            client.post("/api/v1/faq", json=NEW, headers=desk.as_agent()),
            client.patch(
                "/api/v1/faq/payment-banks", json={"question": "Hacked?"}, headers=desk.as_agent()
            ),
            client.delete("/api/v1/faq/working-hours", headers=desk.as_agent()),
            client.post(
                "/api/v1/faq/import",
                files={"file": ("faq.yaml", _yaml([NEW]), "application/yaml")},
                headers=desk.as_agent(),
            ),
        ]
        for attempt in attempts:
            response = await attempt
            assert response.status_code == 403, response.text
            assert response.json()["error"] == "forbidden"
        assert await _counts(db) == before
        entry = (await client.get("/api/v1/faq/payment-banks", headers=desk.as_agent())).json()
        assert entry["question"] == FAQ[0]["question"] and entry["version"] == 1

    async def test_agent_can_read(self, client, db) -> None:
        desk = await make_desk(db)
        for url in [
            "/api/v1/faq",
            "/api/v1/faq?q=bank",
            "/api/v1/faq/payment-banks",
            "/api/v1/faq/payment-banks/versions",
            "/api/v1/faq/payment-banks/versions/1",
            "/api/v1/faq/payment-banks/examples",
            "/api/v1/faq/export",
            "/api/v1/faq/export?format=csv",
        ]:
            response = await client.get(url, headers=desk.as_agent())
            assert response.status_code == 200, (url, response.text)

    async def test_channel_token_and_anonymous_cannot_read(self, client, db) -> None:
        desk = await make_desk(db)
        anonymous = await client.get("/api/v1/faq")
        channel = await client.get("/api/v1/faq", headers=desk.as_channel())
        assert anonymous.status_code == 401 and channel.status_code == 403


class TestDelete:
    async def test_delete_unused_entry(self, client, db) -> None:
        desk = await make_desk(db)
        entries, versions = await _counts(db)
        response = await client.delete("/api/v1/faq/working-hours", headers=desk.as_admin())
        assert response.status_code == 204 and response.content == b""
        assert (
            await client.get("/api/v1/faq/working-hours", headers=desk.as_agent())
        ).status_code == 404
        assert await _counts(db) == (entries - 1, versions - 1)
        [event] = await _audit(db, "faq.delete")
        assert event.agent_id == desk.admin.id and event.detail["slug"] == "working-hours"

    async def test_delete_of_an_entry_used_by_a_draft_is_409(self, client, db) -> None:
        desk = await make_desk(db)
        _, draft = await inbound_with_draft(client, desk, "which bank do you accept?")
        slug = draft["faq_entry"]
        before = await _counts(db)
        response = await client.delete(f"/api/v1/faq/{slug}", headers=desk.as_admin())
        assert response.status_code == 409
        assert response.json()["error"] == "conflict" and "disable" in response.json()["detail"]
        assert await _counts(db) == before
        assert (await client.get(f"/api/v1/faq/{slug}", headers=desk.as_agent())).status_code == 200
        assert await _audit(db, "faq.delete") == []


class TestImport:
    async def test_counts_on_first_and_second_import(self, client, db) -> None:
        desk = await make_desk(db)
        batch = [
            NEW,
            {"slug": "delivery", "question": "When do I get coins?", "answers": {"en": "Soon."}},
            {k: v for k, v in FAQ[4].items()},
        ]
        first = await _import(client, desk, _yaml(batch))
        assert first.status_code == 200, first.text
        assert first.json() == {"created": 2, "updated": 0, "unchanged": 1}

        batch[1] = {**batch[1], "answers": {"en": "Within ten minutes."}}
        second = await _import(client, desk, _yaml(batch))
        assert second.json() == {"created": 0, "updated": 1, "unchanged": 2}
        delivery = (await client.get("/api/v1/faq/delivery", headers=desk.as_agent())).json()
        assert delivery["version"] == 2 and delivery["answers"] == {"en": "Within ten minutes."}
        refunds = (await client.get("/api/v1/faq/refunds", headers=desk.as_agent())).json()
        assert refunds["version"] == 1
        [imported, again] = await _audit(db, "faq.import")
        assert imported.detail == first.json() and again.detail == second.json()

    async def test_csv_upload(self, client, db) -> None:
        desk = await make_desk(db)
        data = (
            "slug,question,answer_en,answer_ru,paraphrases\n"
            'refunds,How do refunds work?,"Refunds, in 3 days.",'
            "Возврат за 3 дня.,money back|возврат\n"
        ).encode()
        response = await _import(client, desk, data, "faq.csv")
        assert response.json() == {"created": 1, "updated": 0, "unchanged": 0}
        entry = (await client.get("/api/v1/faq/refunds", headers=desk.as_agent())).json()
        assert entry["paraphrases"] == ["money back", "возврат"]
        assert entry["answers"] == {"en": "Refunds, in 3 days.", "ru": "Возврат за 3 дня."}

    async def test_bad_file_changes_nothing(self, client, db) -> None:
        desk = await make_desk(db)
        before = await _counts(db)
        data = _yaml(
            [
                NEW,
                {**FAQ[0], "question": "Changed question?"},
                {"slug": "broken", "question": "No answers here"},
            ]
        )
        broken_line = data.decode().splitlines().index("- slug: broken") + 1
        response = await _import(client, desk, data)
        assert response.status_code == 422
        detail = response.json()["detail"]
        assert detail.startswith(f"faq.yaml line {broken_line}: field 'answers'"), detail
        assert await _counts(db) == before
        banks = (await client.get("/api/v1/faq/payment-banks", headers=desk.as_agent())).json()
        assert banks["question"] == FAQ[0]["question"] and banks["version"] == 1
        assert (await client.get("/api/v1/faq/refunds", headers=desk.as_agent())).status_code == 404
        assert await _audit(db, "faq.import") == []

    async def test_unknown_type_and_empty_file_are_422(self, client, db) -> None:
        desk = await make_desk(db)
        before = await _counts(db)
        wrong = await _import(client, desk, _yaml([NEW]), "faq.txt")
        empty = await _import(client, desk, b"", "faq.yaml")
        assert wrong.status_code == empty.status_code == 422
        assert "faq.txt" in wrong.json()["detail"] and "faq.yaml" in empty.json()["detail"]
        assert await _counts(db) == before


class TestExport:
    async def test_yaml_and_csv_export_reimport_unchanged(self, client, db) -> None:
        desk = await make_desk(db)
        await _create(client, desk, answers={"en": 'Say "hi", then\nwait.', "ru": "Да, «так»."})
        await client.patch(
            "/api/v1/faq/working-hours", json={"enabled": False}, headers=desk.as_admin()
        )
        entries, _ = await _counts(db)
        for fmt, media in [("yaml", "application/yaml"), ("csv", "text/csv")]:
            exported = await client.get(
                "/api/v1/faq/export", params={"format": fmt}, headers=desk.as_agent()
            )
            assert exported.status_code == 200
            assert exported.headers["content-type"].startswith(media)
            assert f'filename="faq.{fmt}"' in exported.headers["content-disposition"]
            before = await _counts(db)
            response = await _import(client, desk, exported.content, f"faq.{fmt}")
            assert response.json() == {"created": 0, "updated": 0, "unchanged": entries}, fmt
            assert await _counts(db) == before

    async def test_unknown_export_format_is_422(self, client, db) -> None:
        desk = await make_desk(db)
        response = await client.get(
            "/api/v1/faq/export", params={"format": "xml"}, headers=desk.as_agent()
        )
        assert response.status_code == 422 and "format" in response.json()["detail"]


class TestLearnedExamples:
    async def test_sent_draft_teaches_and_admin_can_remove(self, client, db) -> None:
        desk = await make_desk(db)
        _, draft = await inbound_with_draft(client, desk, "which bank do you accept?")
        sent = await client.post(
            f"/api/v1/drafts/{draft['id']}/send",
            json={"idempotency_key": key()},
            headers=desk.as_agent(),
        )
        assert sent.status_code == 200, sent.text
        slug = draft["faq_entry"]
        listed = await client.get(f"/api/v1/faq/{slug}/examples", headers=desk.as_agent())
        assert listed.status_code == 200
        [example] = listed.json()
        assert example["text"] == "which bank do you accept?"
        assert example["label"] == "confirmed" and example["entry_id"] == draft["faq_entry_id"]
        other = await client.get("/api/v1/faq/working-hours/examples", headers=desk.as_agent())
        assert other.json() == []

        url = f"/api/v1/faq/{slug}/examples/{example['id']}"
        wrong_entry = await client.delete(
            f"/api/v1/faq/working-hours/examples/{example['id']}", headers=desk.as_admin()
        )
        assert wrong_entry.status_code == 404
        forbidden = await client.delete(url, headers=desk.as_agent())
        assert forbidden.status_code == 403
        assert (
            len((await client.get(f"/api/v1/faq/{slug}/examples", headers=desk.as_agent())).json())
            == 1
        )
        removed = await client.delete(url, headers=desk.as_admin())
        assert removed.status_code == 204
        after = await client.get(f"/api/v1/faq/{slug}/examples", headers=desk.as_agent())
        assert after.json() == []
        assert (await client.delete(url, headers=desk.as_admin())).status_code == 404
        [event] = await _audit(db, "faq.example_remove")
        assert event.detail == {"example_id": example["id"]} and event.agent_id == desk.admin.id


class TestAudit:
    async def test_create_and_update_are_audited(self, client, db) -> None:
        desk = await make_desk(db)
        seeded = len(await _audit(db, "faq.create"))
        created = await _create(client, desk)
        await client.patch(
            "/api/v1/faq/refunds",
            json={"question": "How do refunds work now?", "tags": ["money"]},
            headers=desk.as_admin(),
        )
        creates = await _audit(db, "faq.create")
        assert len(creates) == seeded + 1
        event = creates[-1]
        assert (event.agent_id, event.target_type, event.target_id) == (
            desk.admin.id,
            "faq_entry",
            created["id"],
        )
        assert event.detail == {"slug": "refunds", "version": 1}
        [update] = await _audit(db, "faq.update")
        assert (update.agent_id, update.target_id) == (desk.admin.id, created["id"])
        assert update.detail == {"slug": "refunds", "version": 2, "fields": ["question"]}

    async def test_failed_writes_leave_no_audit(self, client, db) -> None:
        desk = await make_desk(db)
        seeded = len(await _audit(db, "faq.create"))
        await client.post(
            "/api/v1/faq", json={**NEW, "slug": "payment-banks"}, headers=desk.as_admin()
        )
        await client.post("/api/v1/faq", json=NEW, headers=desk.as_agent())
        assert len(await _audit(db, "faq.create")) == seeded

"""Operations endpoints: /healthz, /metrics, JSON errors for unknown routes, the API docs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from frankly import __version__
from frankly.config import get_settings
from frankly.db import Database
from frankly.main import create_app
from tests.factories import inbound_with_draft, key, make_desk


@asynccontextmanager
async def _started(database: Database) -> AsyncIterator[httpx.AsyncClient]:
    """An app on `database`, started through its real lifespan."""
    settings = get_settings().model_copy(update={"run_workers": False})
    app = create_app(settings, database=database)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client
    await database.dispose()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def _metrics(
    client: httpx.AsyncClient,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return _samples(response.text)


class TestHealthz:
    async def test_ok_names_the_dialect(self, client, db, backend) -> None:
        response = await client.get("/healthz")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ok" and body["version"] == __version__
        assert body["database"] == {"sqlite": "sqlite", "postgres": "postgresql"}[backend]

    async def test_ok_through_the_real_lifespan(self, database_url) -> None:
        async with _started(Database(database_url)) as client:
            response = await client.get("/healthz")
        assert response.status_code == 200 and response.json()["status"] == "ok"

    @pytest.mark.parametrize("where", ["postgres-port-1", "sqlite-missing-dir"])
    async def test_unreachable_database_is_503(self, where: str, tmp_path: Path) -> None:
        url = (
            "postgresql+asyncpg://postgres@127.0.0.1:1/none"
            if where.startswith("postgres")
            else f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'f.db'}"
        )
        async with _started(Database(url)) as client:
            response = await client.get("/healthz")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unavailable"
        assert body["database"].startswith("unreachable")


class TestMetrics:
    async def test_counters_move_after_inbound_draft_and_send(self, client, db) -> None:
        desk = await make_desk(db)
        before = await _metrics(client)
        _, draft = await inbound_with_draft(client, desk, "which bank do you accept?")
        sent = await client.post(
            f"/api/v1/drafts/{draft['id']}/send",
            json={"idempotency_key": key()},
            headers=desk.as_agent(),
        )
        assert sent.status_code == 200, sent.text
        after = await _metrics(client)

        def moved(name: str, **labels: str) -> float:
            sample = (name, tuple(sorted(labels.items())))
            assert sample in after, f"{name}{labels} not exported"
            return after[sample] - before.get(sample, 0.0)

        assert moved("frankly_inbound_messages_total", channel="api") == 1
        assert moved("frankly_drafts_total", outcome="drafted") == 1
        assert moved("frankly_sends_total", origin="draft_as_is") == 1
        assert moved("frankly_draft_latency_seconds_count") == 1
        assert moved("frankly_draft_latency_seconds_sum") >= 0
        assert moved("frankly_draft_latency_seconds_bucket", le="+Inf") == 1

    async def test_metric_families_are_declared(self, client) -> None:
        text = (await client.get("/metrics")).text
        for name, kind in [
            ("frankly_inbound_messages_total", "counter"),
            ("frankly_sends_total", "counter"),
            ("frankly_drafts_total", "counter"),
            ("frankly_draft_latency_seconds", "histogram"),
        ]:
            declared = {f"# TYPE {name} {kind}", f"# TYPE {name.removesuffix('_total')} {kind}"}
            assert any(line in text.splitlines() for line in declared), name


class TestErrorsAndDocs:
    async def test_unknown_route_is_a_json_404(self, client) -> None:
        for url in ["/nope", "/api/v1/nope", "/api/v2/conversations"]:
            response = await client.get(url)
            assert response.status_code == 404, url
            assert response.headers["content-type"].startswith("application/json")
            body = response.json()
            assert body["error"] == "not_found" and isinstance(body["detail"], str)

    async def test_wrong_method_is_a_json_405(self, client) -> None:
        response = await client.delete("/healthz")
        assert response.status_code == 405
        assert response.json()["error"] == "method_not_allowed"

    async def test_docs_and_openapi_are_served(self, client) -> None:
        docs = await client.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        schema = await client.get("/openapi.json")
        assert schema.status_code == 200
        body = schema.json()
        assert body["info"]["title"] == "Frankly" and body["info"]["version"] == __version__
        assert "/api/v1/inbound" in body["paths"] and "/healthz" in body["paths"]

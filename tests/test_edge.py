"""The edge middleware: body limits hold for chunked bodies too, security headers everywhere."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from frankly.main import PUBLIC_BODY_BYTES
from tests.factories import make_desk


async def _chunks(total: int, size: int = 1024 * 1024) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        sent += piece
        yield b"x" * piece


class TestBodyLimits:
    async def test_a_chunked_body_over_the_public_limit_is_a_413(
        self, client: Any, db: Any
    ) -> None:
        await make_desk(db)
        response = await client.post(
            "/chat/anything/messages",
            content=_chunks(PUBLIC_BODY_BYTES + 1024 * 1024),
            headers={"content-type": "application/json", "X-Frankly-Widget": "1"},
        )
        assert response.status_code == 413
        assert response.json()["error"] == "too_large"

    async def test_a_declared_length_over_the_limit_is_refused_before_reading(
        self, client: Any, db: Any
    ) -> None:
        response = await client.post(
            "/chat/anything/messages",
            content=b"{}",
            headers={"content-length": str(PUBLIC_BODY_BYTES + 1)},
        )
        assert response.status_code == 413

    async def test_a_chunked_api_body_under_the_limit_still_works(
        self, client: Any, db: Any
    ) -> None:
        desk = await make_desk(db)
        body = b'{"conversation_id": "c1", "message_id": "m1", "text": "which bank?"}'

        async def one() -> AsyncIterator[bytes]:
            yield body

        response = await client.post(
            "/api/v1/inbound",
            content=one(),
            headers={"content-type": "application/json", **desk.as_channel()},
        )
        assert response.status_code == 202, response.text

    async def test_agent_pages_can_never_be_framed(self, client: Any) -> None:
        response = await client.get("/login")
        assert response.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


class TestIdsOutOfRange:
    async def test_huge_ids_are_a_clear_422_not_a_500(self, client: Any, db: Any) -> None:
        desk = await make_desk(db)
        for url in (
            "/api/v1/conversations/2147483648",
            "/api/v1/conversations/99999999999999999999999",
            "/api/v1/attachments/2147483648",
        ):
            response = await client.get(url, headers=desk.as_agent())
            assert response.status_code == 422, (url, response.text)
            assert "less than or equal" in response.text
        posted = await client.post("/api/v1/drafts/2147483648/discard", headers=desk.as_agent())
        assert posted.status_code == 422
        missing = await client.get("/api/v1/conversations/2147483647", headers=desk.as_agent())
        assert missing.status_code == 404

"""Every HTML page route × role (anonymous, agent, admin) × expected status, table-driven."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from fastapi import FastAPI

from tests.auth.test_auth import _walk
from tests.factories import PASSWORD, Desk, key, make_desk, post_inbound

Prepare = Callable[[httpx.AsyncClient, Desk], Awaitable[tuple[str, dict[str, Any]]]]
ANON, AGENT, ADMIN = "anonymous", "agent", "admin"


def fixed(url: str, **kwargs: Any) -> Prepare:
    async def prepare(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
        return url, kwargs

    return prepare


def on_draft(suffix: str, **form: str) -> Prepare:
    async def prepare(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
        # A fresh conversation per call with a draft picked through the API (deterministic:
        # the engine learns from the discards this very table makes).
        accepted = await post_inbound(client, desk, "hello?", conversation_id=f"pr-{key()[:8]}")
        response = await client.post(
            f"/api/v1/conversations/{accepted['conversation_id']}/drafts",
            json={"faq_entry": "working-hours"},
            headers=desk.as_admin(),
        )
        assert response.status_code == 201, response.text
        return f"/inbox/d/{response.json()['id']}{suffix}", {"data": dict(form)}

    return prepare


def on_conversation(suffix: str, **form: str) -> Prepare:
    async def prepare(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
        accepted = await post_inbound(client, desk, "hello?", conversation_id=f"pc-{key()[:8]}")
        data = {k: (key() if v == "<key>" else v) for k, v in form.items()}
        return f"/inbox/c/{accepted['conversation_id']}{suffix}", {"data": data}

    return prepare


async def _example(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
    from frankly.db import commit
    from frankly.knowledge import service as knowledge_service

    async with desk.db.sessionmaker() as session:
        entry = await knowledge_service.get_entry_by_slug(session, slug="working-hours")
        example = await knowledge_service.add_example(session, entry=entry, text=f"x {key()}")
        await commit(session)
    return f"/faq/working-hours/examples/{example.id}/remove", {}


async def _token(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
    response = await client.post(
        "/api/v1/tokens", json={"name": "t", "channel": "t"}, headers=desk.as_admin()
    )
    return f"/admin/tokens/{response.json()['id']}/revoke", {}


def _new_entry() -> Prepare:
    async def prepare(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
        return "/faq/new", {
            "data": {"slug": f"p-{key()[:8]}", "question": "Q?", "answer_en": "A", "enabled": "on"}
        }

    return prepare


async def _streaming(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
    from frankly.conversations import service as conversation_service
    from frankly.db import commit

    accepted = await post_inbound(client, desk, "hello?", conversation_id=f"ps-{key()[:8]}")
    async with desk.db.sessionmaker() as session:
        message = await conversation_service.get_message(session, message_id=accepted["message_id"])
        draft = await conversation_service.start_streaming_draft(
            session, message=message, language="en", entry=None, confidence=None, why={}
        )
        await commit(session)
    return f"/inbox/d/{draft.id}/stop", {}


async def _failed_reply(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
    from sqlalchemy import update

    from frankly.db import commit
    from frankly.outbox.models import OutboxItem

    accepted = await post_inbound(client, desk, "hello?", conversation_id=f"pf-{key()[:8]}")
    sent = await client.post(
        f"/api/v1/conversations/{accepted['conversation_id']}/replies",
        json={"text": "Hi", "idempotency_key": key()},
        headers=desk.as_admin(),
    )
    message_id = sent.json()["message"]["id"]
    async with desk.db.sessionmaker() as session:
        await session.execute(
            update(OutboxItem).where(OutboxItem.message_id == message_id).values(status="failed")
        )
        await commit(session)
    return f"/inbox/m/{message_id}/retry", {}


def _new_widget() -> Prepare:
    async def prepare(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
        return "/settings/channels", {
            "data": {"kind": "widget", "name": f"w-{key()[:8]}", "title": "Help", "enabled": "on"}
        }

    return prepare


# (method, path template) -> (prepare, {role: expected status}); 303 = redirect.
REDIRECT = 303
PAGES: dict[tuple[str, str], tuple[Prepare, dict[str, int]]] = {
    ("GET", "/"): (fixed("/"), {ANON: REDIRECT, AGENT: REDIRECT, ADMIN: REDIRECT}),
    ("GET", "/login"): (fixed("/login"), {ANON: 200, AGENT: 200, ADMIN: 200}),
    ("POST", "/login"): (
        fixed("/login", data={"email": "x@y.z", "password": "p"}),
        {ANON: 403, AGENT: 403, ADMIN: 403},
    ),
    ("POST", "/logout"): (fixed("/logout"), {ANON: REDIRECT, AGENT: REDIRECT, ADMIN: REDIRECT}),
    ("GET", "/inbox"): (fixed("/inbox"), {ANON: REDIRECT, AGENT: 200, ADMIN: 200}),
    ("GET", "/inbox/c/{conversation_id}"): (
        on_conversation(""),
        {ANON: REDIRECT, AGENT: 200, ADMIN: 200},
    ),
    ("POST", "/inbox/c/{conversation_id}/claim"): (
        on_conversation("/claim"),
        {ANON: REDIRECT, AGENT: 200, ADMIN: 200},
    ),
    ("POST", "/inbox/c/{conversation_id}/reply"): (
        on_conversation("/reply", text="Hello", idempotency_key="<key>"),
        {ANON: REDIRECT, AGENT: 200, ADMIN: 200},
    ),
    ("POST", "/inbox/c/{conversation_id}/use-faq"): (
        on_conversation("/use-faq", faq_entry="working-hours"),
        {ANON: REDIRECT, AGENT: 200, ADMIN: 200},
    ),
    ("POST", "/inbox/c/{conversation_id}/assign"): (
        on_conversation("/assign", agent_id=""),
        {ANON: REDIRECT, AGENT: 200, ADMIN: 200},
    ),
    ("POST", "/inbox/c/{conversation_id}/status"): (
        on_conversation("/status", status="resolved"),
        {ANON: REDIRECT, AGENT: 200, ADMIN: 200},
    ),
    ("POST", "/inbox/d/{draft_id}/preview"): (
        on_draft("/preview", text="Hi"),
        {ANON: REDIRECT, AGENT: 200, ADMIN: 200},
    ),
    ("POST", "/inbox/d/{draft_id}/send"): (
        on_draft("/send", text="Hi there", idempotency_key="k"),
        {ANON: REDIRECT, AGENT: 200, ADMIN: 200},
    ),
    ("POST", "/inbox/d/{draft_id}/discard"): (
        on_draft("/discard"),
        {ANON: REDIRECT, AGENT: 200, ADMIN: 200},
    ),
    ("POST", "/inbox/d/{draft_id}/regenerate"): (
        on_draft("/regenerate"),
        {ANON: REDIRECT, AGENT: 200, ADMIN: 200},
    ),
    ("POST", "/inbox/d/{draft_id}/stop"): (_streaming, {ANON: REDIRECT, AGENT: 200, ADMIN: 200}),
    # No LLM provider in this table: a rewrite is refused with a clear 422.
    ("POST", "/inbox/d/{draft_id}/rewrite"): (
        on_draft("/rewrite", kind="shorter"),
        {ANON: REDIRECT, AGENT: 422, ADMIN: 422},
    ),
    ("POST", "/inbox/m/{message_id}/retry"): (
        _failed_reply,
        {ANON: REDIRECT, AGENT: 200, ADMIN: 200},
    ),
    ("GET", "/faq"): (fixed("/faq"), {ANON: REDIRECT, AGENT: 200, ADMIN: 200}),
    ("GET", "/faq/{slug}"): (fixed("/faq/working-hours"), {ANON: REDIRECT, AGENT: 200, ADMIN: 200}),
    ("GET", "/faq/new"): (fixed("/faq/new"), {ANON: REDIRECT, AGENT: 403, ADMIN: 200}),
    ("POST", "/faq/new"): (_new_entry(), {ANON: REDIRECT, AGENT: 403, ADMIN: REDIRECT}),
    ("GET", "/faq/{slug}/edit"): (
        fixed("/faq/working-hours/edit"),
        {ANON: REDIRECT, AGENT: 403, ADMIN: 200},
    ),
    ("POST", "/faq/{slug}/edit"): (
        fixed(
            "/faq/working-hours/edit",
            data={"question": "Hours?", "answer_en": "9-23", "enabled": "on"},
        ),
        {ANON: REDIRECT, AGENT: 403, ADMIN: REDIRECT},
    ),
    ("POST", "/faq/{slug}/examples/{example_id}/remove"): (
        _example,
        {ANON: REDIRECT, AGENT: 403, ADMIN: REDIRECT},
    ),
    ("GET", "/settings"): (fixed("/settings"), {ANON: REDIRECT, AGENT: 403, ADMIN: 200}),
    ("POST", "/settings"): (
        fixed("/settings", data={"draft_threshold": "0.7", "default_language": "en"}),
        {ANON: REDIRECT, AGENT: 403, ADMIN: REDIRECT},
    ),
    ("POST", "/settings/llm"): (
        fixed("/settings/llm", data={"model": "", "base_url": "", "tone_notes": "Be brief."}),
        {ANON: REDIRECT, AGENT: 403, ADMIN: REDIRECT},
    ),
    ("GET", "/settings/channels"): (
        fixed("/settings/channels"),
        {ANON: REDIRECT, AGENT: 403, ADMIN: 200},
    ),
    ("POST", "/settings/channels"): (_new_widget(), {ANON: REDIRECT, AGENT: 403, ADMIN: REDIRECT}),
    ("GET", "/admin"): (fixed("/admin"), {ANON: REDIRECT, AGENT: 403, ADMIN: 200}),
    ("POST", "/admin/agents"): (
        fixed("/admin/agents", data={"email": "", "password": "long-enough"}),
        {ANON: REDIRECT, AGENT: 403, ADMIN: 422},
    ),
    ("POST", "/admin/tokens"): (
        fixed("/admin/tokens", data={"name": "x", "channel": "y"}),
        {ANON: REDIRECT, AGENT: 403, ADMIN: 200},
    ),
    ("POST", "/admin/tokens/{token_id}/revoke"): (
        _token,
        {ANON: REDIRECT, AGENT: 403, ADMIN: REDIRECT},
    ),
}


def page_routes(app: FastAPI) -> set[tuple[str, str]]:
    return {
        (method, path)
        for method, path in _walk(list(app.routes))
        # The customer chat (/chat, /widget) is public by design: tests/channels/test_widget.py.
        if not path.startswith(("/api/", "/static", "/chat/", "/widget/"))
        and path not in {"/healthz", "/metrics"}
        and method != "HEAD"
    }


async def _session_client(app: FastAPI, email: str) -> tuple[httpx.AsyncClient, str]:
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    page = await client.get("/login")
    token = re.search(r'name="login_csrf" value="([^"]+)"', page.text)
    assert token
    await client.post(
        "/login", data={"email": email, "password": PASSWORD, "login_csrf": token.group(1)}
    )
    csrf = re.search(r'"X-CSRF-Token": "([^"]+)"', (await client.get("/inbox")).text)
    assert csrf
    return client, csrf.group(1)


class TestPageRoles:
    def test_every_page_route_has_a_row(self, app: FastAPI) -> None:
        assert page_routes(app) == set(PAGES), "add the new page route to PAGES"

    async def test_route_role_status_table(self, app: FastAPI, client, db) -> None:
        desk = await make_desk(db)
        agent_client, agent_csrf = await _session_client(app, desk.agent.email)
        admin_client, admin_csrf = await _session_client(app, desk.admin.email)
        anonymous = client
        failures = []
        try:
            for (method, template), (prepare, expected) in PAGES.items():
                for role, http, csrf in (
                    (ANON, anonymous, ""),
                    (AGENT, agent_client, agent_csrf),
                    (ADMIN, admin_client, admin_csrf),
                ):
                    if template == "/logout" and role != ANON:
                        continue  # would end the session the rest of the table uses
                    url, kwargs = await prepare(client, desk)
                    headers = (
                        {"accept": "text/html", "X-CSRF-Token": csrf}
                        if csrf
                        else {"accept": "text/html"}
                    )
                    if "/inbox/" in template and method == "POST":
                        headers["HX-Request"] = "true"
                    response = await http.request(method, url, headers=headers, **kwargs)
                    got = response.status_code
                    want = expected[role]
                    if role == ANON and want == REDIRECT and headers.get("HX-Request"):
                        want = 401  # htmx requests get a 401 the page turns into a sign-in
                    if got != want:
                        failures.append(f"{method} {template} as {role}: {got}, expected {want}")
        finally:
            await agent_client.aclose()
            await admin_client.aclose()
        assert failures == []

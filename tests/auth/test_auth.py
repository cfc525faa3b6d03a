"""Sign-in, the session cookie with CSRF, tokens, agents, and who may call every API route."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import select, update

from frankly.auth.models import ApiToken
from frankly.channels import service as channel_service
from frankly.channels.base import InboundAttachment
from frankly.config import get_settings
from frankly.conversations import service as conversation_service
from frankly.db import commit
from frankly.knowledge import service as knowledge_service
from frankly.main import create_app
from frankly.outbox.models import OutboxItem
from tests.factories import PASSWORD, Desk, key, make_desk, post_inbound

COOKIE = "frankly_session"
_n = itertools.count(1)


async def _login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/api/v1/auth/login", json={"email": email, "password": password})


def _set_cookie(response: httpx.Response) -> str:
    [header] = [v for v in response.headers.get_list("set-cookie") if v.startswith(f"{COOKIE}=")]
    return header


class TestLogin:
    async def test_login_sets_a_strict_cookie_and_returns_csrf(self, client, db) -> None:
        desk = await make_desk(db)
        response = await _login(client, desk.agent.email)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["agent"]["id"] == desk.agent.id and body["agent"]["role"] == "agent"
        assert len(body["csrf_token"]) >= 16
        header = _set_cookie(response)
        attributes = [part.strip().lower() for part in header.split(";")]
        assert "httponly" in attributes
        assert "samesite=lax" in attributes
        assert "path=/" in attributes
        assert "secure" not in attributes
        value = header.split(";")[0].removeprefix(f"{COOKIE}=")
        assert len(value) >= 32 and value != body["csrf_token"]

    async def test_cookie_is_secure_over_https(self, app, db) -> None:
        desk = await make_desk(db)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as https:
            response = await _login(https, desk.agent.email)
        assert "secure" in [p.strip().lower() for p in _set_cookie(response).split(";")]

    async def test_email_is_case_insensitive(self, client, db) -> None:
        desk = await make_desk(db)
        response = await _login(client, "  " + desk.admin.email.upper())
        assert response.status_code == 200 and response.json()["agent"]["role"] == "admin"

    async def test_wrong_password_and_unknown_email_look_the_same(self, client, db) -> None:
        desk = await make_desk(db)
        wrong = await _login(client, desk.agent.email, "not-the-password")
        unknown = await _login(client, "nobody@example.com")
        assert wrong.status_code == unknown.status_code == 401
        assert wrong.json() == unknown.json()
        assert wrong.json()["error"] == "unauthorized"
        assert COOKIE not in wrong.headers.get("set-cookie", "")
        assert COOKIE not in client.cookies

    async def test_malformed_login_is_422(self, client, db) -> None:
        response = await client.post("/api/v1/auth/login", json={"email": "a@b.c"})
        assert response.status_code == 422 and "password" in response.json()["detail"]


class TestCookieSession:
    async def test_cookie_reads_and_csrf_guards_writes(self, client, db) -> None:
        desk = await make_desk(db)
        accepted = await post_inbound(client, desk, "hi there")
        login = await _login(client, desk.agent.email)
        csrf = login.json()["csrf_token"]
        assert COOKIE in client.cookies

        listed = await client.get("/api/v1/conversations")
        assert listed.status_code == 200
        assert [c["id"] for c in listed.json()["items"]] == [accepted["conversation_id"]]
        me = await client.get("/api/v1/auth/me")
        assert me.json()["id"] == desk.agent.id

        url = f"/api/v1/conversations/{accepted['conversation_id']}/replies"
        reply = {"text": "Hello!", "idempotency_key": key()}
        missing = await client.post(url, json=reply)
        wrong = await client.post(url, json=reply, headers={"X-CSRF-Token": csrf + "x"})
        assert missing.status_code == wrong.status_code == 403
        assert missing.json()["error"] == "forbidden" and "CSRF" in missing.json()["detail"]
        ok = await client.post(url, json=reply, headers={"X-CSRF-Token": csrf})
        assert ok.status_code == 200, ok.text
        assert ok.json()["message"]["sent_by"] == desk.agent.id

    async def test_csrf_belongs_to_its_own_session(self, client, db) -> None:
        desk = await make_desk(db)
        first = (await _login(client, desk.admin.email)).json()["csrf_token"]
        await _login(client, desk.admin.email)
        response = await client.patch(
            "/api/v1/settings", json={"draft_threshold": 0.7}, headers={"X-CSRF-Token": first}
        )
        assert response.status_code == 403

    async def test_logout_ends_the_session(self, client, db) -> None:
        desk = await make_desk(db)
        login = await _login(client, desk.agent.email)
        cookie = client.cookies[COOKIE]
        csrf = login.json()["csrf_token"]
        without = await client.post("/api/v1/auth/logout")
        assert without.status_code == 403
        response = await client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf})
        assert response.status_code == 204
        assert COOKIE not in client.cookies
        client.cookies.set(COOKIE, cookie)
        after = await client.get("/api/v1/conversations")
        assert after.status_code == 401

    async def test_garbage_cookie_is_401(self, client, db) -> None:
        client.cookies.set(COOKIE, "not-a-session")
        assert (await client.get("/api/v1/auth/me")).status_code == 401


class TestTokens:
    async def test_revoked_token_is_401(self, client, db) -> None:
        desk = await make_desk(db)
        assert (await client.get("/api/v1/auth/me", headers=desk.as_agent())).status_code == 200
        async with db.sessionmaker() as session:
            token_id = await session.scalar(
                select(ApiToken.id).where(ApiToken.agent_id == desk.agent.id)
            )
        revoke = await client.delete(f"/api/v1/tokens/{token_id}", headers=desk.as_admin())
        assert revoke.status_code == 204
        after = await client.get("/api/v1/auth/me", headers=desk.as_agent())
        assert after.status_code == 401 and after.json()["error"] == "unauthorized"
        listed = await client.get("/api/v1/tokens", headers=desk.as_admin())
        revoked = {t["id"]: t["revoked_at"] for t in listed.json()}
        assert revoked[token_id] is not None
        assert sum(1 for v in revoked.values() if v is None) == 2
        missing = await client.delete("/api/v1/tokens/99999", headers=desk.as_admin())
        assert missing.status_code == 404

    async def test_revoked_channel_token_stops_working_at_once(self, client, db) -> None:
        desk = await make_desk(db)
        body = {"conversation_id": "c", "message_id": key(), "text": "hi"}
        first = await client.post("/api/v1/inbound", json=body, headers=desk.as_channel())
        assert first.status_code == 202
        async with db.sessionmaker() as session:
            token_id = await session.scalar(select(ApiToken.id).where(ApiToken.channel == "api"))
        revoke = await client.delete(f"/api/v1/tokens/{token_id}", headers=desk.as_admin())
        assert revoke.status_code == 204
        body = {**body, "message_id": key()}
        after = await client.post("/api/v1/inbound", json=body, headers=desk.as_channel())
        assert after.status_code == 401

    async def test_created_tokens_work_and_secrets_are_not_listed(self, client, db) -> None:
        desk = await make_desk(db)
        channel = await client.post(
            "/api/v1/tokens", json={"name": "tg", "channel": "telegram"}, headers=desk.as_admin()
        )
        agent = await client.post(
            "/api/v1/tokens",
            json={"name": "bot", "agent_email": desk.agent.email},
            headers=desk.as_admin(),
        )
        assert channel.status_code == agent.status_code == 201
        secret = channel.json()["token"]
        inbound = await client.post(
            "/api/v1/inbound",
            json={"conversation_id": "c", "message_id": "m", "text": "hi"},
            headers={"Authorization": f"Bearer {secret}"},
        )
        assert inbound.status_code == 202
        me = await client.get(
            "/api/v1/auth/me", headers={"Authorization": f"Bearer {agent.json()['token']}"}
        )
        assert me.json()["id"] == desk.agent.id
        listed = await client.get("/api/v1/tokens", headers=desk.as_admin())
        assert all("token" not in t for t in listed.json())
        assert secret not in listed.text

    async def test_bad_token_requests(self, client, db) -> None:
        desk = await make_desk(db)
        both = await client.post(
            "/api/v1/tokens",
            json={"name": "x", "channel": "api", "agent_email": desk.agent.email},
            headers=desk.as_admin(),
        )
        nobody = await client.post(
            "/api/v1/tokens",
            json={"name": "x", "agent_email": "ghost@example.com"},
            headers=desk.as_admin(),
        )
        assert both.status_code == nobody.status_code == 422


class TestAgents:
    async def test_admin_creates_an_agent_who_can_sign_in(self, client, db) -> None:
        desk = await make_desk(db)
        response = await client.post(
            "/api/v1/agents",
            json={"email": "Boris@Example.com", "password": "long-enough-pw", "name": "Boris"},
            headers=desk.as_admin(),
        )
        assert response.status_code == 201, response.text
        created = response.json()
        assert created["email"] == "boris@example.com" and created["role"] == "agent"
        assert created["is_active"] is True and "password" not in str(created)
        login = await _login(client, "boris@example.com", "long-enough-pw")
        assert login.status_code == 200 and login.json()["agent"]["id"] == created["id"]
        listed = await client.get("/api/v1/agents", headers=desk.as_admin())
        assert created["id"] in [a["id"] for a in listed.json()]

    async def test_agent_cannot_create_agents(self, client, db) -> None:
        desk = await make_desk(db)
        response = await client.post(
            "/api/v1/agents",
            json={"email": "eve@example.com", "password": "long-enough-pw", "admin": True},
            headers=desk.as_agent(),
        )
        assert response.status_code == 403
        assert (await _login(client, "eve@example.com", "long-enough-pw")).status_code == 401

    async def test_duplicate_and_invalid_agents(self, client, db) -> None:
        desk = await make_desk(db)
        duplicate = await client.post(
            "/api/v1/agents",
            json={"email": desk.agent.email.upper(), "password": "long-enough-pw"},
            headers=desk.as_admin(),
        )
        assert duplicate.status_code == 409
        short = await client.post(
            "/api/v1/agents",
            json={"email": "x@example.com", "password": "short"},
            headers=desk.as_admin(),
        )
        assert short.status_code == 422 and "password" in short.json()["detail"]
        not_email = await client.post(
            "/api/v1/agents",
            json={"email": "not-an-email", "password": "long-enough-pw"},
            headers=desk.as_admin(),
        )
        assert not_email.status_code == 422


# --- who may call what -------------------------------------------------------------------------

ROLES = ("anonymous", "channel", "agent", "admin")
Prepare = Callable[[httpx.AsyncClient, Desk], Awaitable[tuple[str, dict[str, Any]]]]


@dataclass(frozen=True)
class Case:
    """How to call one route (prepare makes fresh objects) and the status for each role."""

    prepare: Prepare
    expected: tuple[int, int, int, int] = field(default=(401, 403, 200, 200))


def fixed(url: str, **kwargs: Any) -> Prepare:
    async def prepare(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
        return url, kwargs

    return prepare


async def _conversation(client: httpx.AsyncClient, desk: Desk) -> int:
    accepted = await post_inbound(client, desk, "hello", conversation_id=f"role-{next(_n)}")
    return int(accepted["conversation_id"])


async def _draft(client: httpx.AsyncClient, desk: Desk) -> int:
    conversation_id = await _conversation(client, desk)
    response = await client.post(
        f"/api/v1/conversations/{conversation_id}/drafts",
        json={"faq_entry": "working-hours"},
        headers=desk.as_admin(),
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def on_conversation(suffix: str, *, reply: bool = False, **kwargs: Any) -> Prepare:
    async def prepare(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
        extra = {"json": {"text": "Hello!", "idempotency_key": key()}} if reply else {}
        url = f"/api/v1/conversations/{await _conversation(client, desk)}{suffix}"
        return url, {**kwargs, **extra}

    return prepare


def on_draft(suffix: str, *, fresh_key: bool = False, **kwargs: Any) -> Prepare:
    async def prepare(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
        extra = {"json": {"idempotency_key": key()}} if fresh_key else {}
        return f"/api/v1/drafts/{await _draft(client, desk)}{suffix}", {**kwargs, **extra}

    return prepare


async def _fresh_token(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
    response = await client.post(
        "/api/v1/tokens", json={"name": "tmp", "channel": "tmp"}, headers=desk.as_admin()
    )
    return f"/api/v1/tokens/{response.json()['id']}", {}


async def _fresh_entry(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
    slug = f"tmp-{next(_n)}"
    response = await client.post(
        "/api/v1/faq",
        json={"slug": slug, "question": "Temporary?", "answers": {"en": "Yes."}},
        headers=desk.as_admin(),
    )
    assert response.status_code == 201, response.text
    return f"/api/v1/faq/{slug}", {}


async def _fresh_example(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
    async with desk.db.sessionmaker() as session:
        entry = await knowledge_service.get_entry_by_slug(session, slug="payment-banks")
        example = await knowledge_service.add_example(session, entry=entry, text=f"bank {key()}")
        await commit(session)
    return f"/api/v1/faq/payment-banks/examples/{example.id}", {}


async def _login_body(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
    return "/api/v1/auth/login", {"json": {"email": desk.agent.email, "password": PASSWORD}}


def _new_agent() -> Prepare:
    async def prepare(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
        body = {"email": f"new{next(_n)}@example.com", "password": "long-enough-pw"}
        return "/api/v1/agents", {"json": body}

    return prepare


def _inbound() -> Prepare:
    async def prepare(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
        body = {"conversation_id": f"in-{next(_n)}", "message_id": key(), "text": "hi"}
        return "/api/v1/inbound", {"json": body}

    return prepare


def _import() -> Prepare:
    async def prepare(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
        data = f"- slug: imp-{next(_n)}\n  question: Q?\n  answers: {{en: A}}\n".encode()
        return "/api/v1/faq/import", {"files": {"file": ("faq.yaml", data, "application/yaml")}}

    return prepare


def _new_faq() -> Prepare:
    async def prepare(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
        body = {"slug": f"new-{next(_n)}", "question": "Q?", "answers": {"en": "A"}}
        return "/api/v1/faq", {"json": body}

    return prepare


AGENTS = (401, 403, 200, 200)
ADMINS = (401, 403, 403, 200)


async def _streaming_draft(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
    conversation_id = await _conversation(client, desk)
    async with desk.db.sessionmaker() as session:
        conversation = await conversation_service.get_conversation(
            session, conversation_id=conversation_id
        )
        message = await conversation_service.latest_inbound(session, conversation=conversation)
        assert message is not None
        draft = await conversation_service.start_streaming_draft(
            session, message=message, language="en", entry=None, confidence=None, why={}
        )
        await commit(session)
    return f"/api/v1/drafts/{draft.id}/stop", {}


async def _attachment(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
    conversation_id = await _conversation(client, desk)
    async with desk.db.sessionmaker() as session:
        conversation = await conversation_service.get_conversation(
            session, conversation_id=conversation_id
        )
        message = await conversation_service.latest_inbound(session, conversation=conversation)
        assert message is not None
        rows = await channel_service.add_attachments(
            session,
            message=message,
            files=[InboundAttachment("receipt.pdf", "application/pdf", b"%PDF-1.4 test")],
        )
        await commit(session)
    return f"/api/v1/attachments/{rows[0].id}", {}


async def _failed_delivery(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
    conversation_id = await _conversation(client, desk)
    sent = await client.post(
        f"/api/v1/conversations/{conversation_id}/replies",
        json={"text": "Hello!", "idempotency_key": key()},
        headers=desk.as_admin(),
    )
    assert sent.status_code == 200, sent.text
    message_id = sent.json()["message"]["id"]
    async with desk.db.sessionmaker() as session:
        await session.execute(
            update(OutboxItem).where(OutboxItem.message_id == message_id).values(status="failed")
        )
        await commit(session)
    return f"/api/v1/messages/{message_id}/retry", {}


def _new_channel() -> Prepare:
    async def prepare(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
        body = {"kind": "widget", "name": f"w{next(_n)}", "settings": {"title": "Help"}}
        return "/api/v1/channels", {"json": body}

    return prepare


async def _channel(client: httpx.AsyncClient, desk: Desk) -> tuple[str, dict[str, Any]]:
    name = f"w{next(_n)}"
    response = await client.post(
        "/api/v1/channels", json={"kind": "widget", "name": name}, headers=desk.as_admin()
    )
    assert response.status_code == 201, response.text
    body = {"kind": "widget", "name": name, "settings": {"title": "Changed"}}
    return f"/api/v1/channels/{response.json()['id']}", {"json": body}


ROUTE_ROLES: dict[tuple[str, str], Case] = {
    ("POST", "/api/v1/auth/login"): Case(_login_body, (200, 200, 200, 200)),
    ("POST", "/api/v1/auth/logout"): Case(fixed("/api/v1/auth/logout"), (401, 403, 204, 204)),
    ("GET", "/api/v1/auth/me"): Case(fixed("/api/v1/auth/me"), AGENTS),
    ("GET", "/api/v1/agents"): Case(fixed("/api/v1/agents"), ADMINS),
    ("POST", "/api/v1/agents"): Case(_new_agent(), (401, 403, 403, 201)),
    ("GET", "/api/v1/tokens"): Case(fixed("/api/v1/tokens"), ADMINS),
    ("POST", "/api/v1/tokens"): Case(
        fixed("/api/v1/tokens", json={"name": "x", "channel": "web"}), (401, 403, 403, 201)
    ),
    ("DELETE", "/api/v1/tokens/{token_id}"): Case(_fresh_token, (401, 403, 403, 204)),
    ("POST", "/api/v1/inbound"): Case(_inbound(), (401, 202, 403, 403)),
    ("GET", "/api/v1/conversations"): Case(fixed("/api/v1/conversations"), AGENTS),
    ("GET", "/api/v1/conversations/{conversation_id}"): Case(on_conversation(""), AGENTS),
    ("POST", "/api/v1/conversations/{conversation_id}/replies"): Case(
        on_conversation("/replies", reply=True), AGENTS
    ),
    ("POST", "/api/v1/conversations/{conversation_id}/drafts"): Case(
        on_conversation("/drafts", json={"faq_entry": "working-hours"}), (401, 403, 201, 201)
    ),
    ("POST", "/api/v1/conversations/{conversation_id}/claim"): Case(
        on_conversation("/claim", json={}), AGENTS
    ),
    ("POST", "/api/v1/conversations/{conversation_id}/release"): Case(
        on_conversation("/release"), AGENTS
    ),
    ("POST", "/api/v1/conversations/{conversation_id}/assign"): Case(
        on_conversation("/assign", json={"agent_id": None}), AGENTS
    ),
    ("POST", "/api/v1/conversations/{conversation_id}/status"): Case(
        on_conversation("/status", json={"status": "resolved"}), AGENTS
    ),
    ("POST", "/api/v1/drafts/{draft_id}/send"): Case(on_draft("/send", fresh_key=True), AGENTS),
    ("POST", "/api/v1/drafts/{draft_id}/preview"): Case(on_draft("/preview", json={}), AGENTS),
    ("POST", "/api/v1/drafts/{draft_id}/discard"): Case(on_draft("/discard"), AGENTS),
    ("POST", "/api/v1/drafts/{draft_id}/regenerate"): Case(on_draft("/regenerate"), AGENTS),
    ("POST", "/api/v1/drafts/{draft_id}/stop"): Case(_streaming_draft, AGENTS),
    # Without an LLM provider a rewrite is a clear 422 for everyone allowed to ask.
    ("POST", "/api/v1/drafts/{draft_id}/rewrite"): Case(
        on_draft("/rewrite", json={"kind": "shorter"}), (401, 403, 422, 422)
    ),
    ("GET", "/api/v1/attachments/{attachment_id}"): Case(_attachment, AGENTS),
    ("POST", "/api/v1/messages/{message_id}/retry"): Case(_failed_delivery, AGENTS),
    ("GET", "/api/v1/channels"): Case(fixed("/api/v1/channels"), ADMINS),
    ("POST", "/api/v1/channels"): Case(_new_channel(), (401, 403, 403, 201)),
    ("PUT", "/api/v1/channels/{account_id}"): Case(_channel, ADMINS),
    ("GET", "/api/v1/faq"): Case(fixed("/api/v1/faq"), AGENTS),
    ("POST", "/api/v1/faq"): Case(_new_faq(), (401, 403, 403, 201)),
    ("GET", "/api/v1/faq/export"): Case(fixed("/api/v1/faq/export"), AGENTS),
    ("POST", "/api/v1/faq/import"): Case(_import(), ADMINS),
    ("GET", "/api/v1/faq/{ref}"): Case(fixed("/api/v1/faq/payment-banks"), AGENTS),
    ("PATCH", "/api/v1/faq/{ref}"): Case(
        fixed("/api/v1/faq/payment-banks", json={"tags": ["role-test"]}), ADMINS
    ),
    ("DELETE", "/api/v1/faq/{ref}"): Case(_fresh_entry, (401, 403, 403, 204)),
    ("GET", "/api/v1/faq/{ref}/versions"): Case(
        fixed("/api/v1/faq/payment-banks/versions"), AGENTS
    ),
    ("GET", "/api/v1/faq/{ref}/versions/{version}"): Case(
        fixed("/api/v1/faq/payment-banks/versions/1"), AGENTS
    ),
    ("GET", "/api/v1/faq/{ref}/examples"): Case(
        fixed("/api/v1/faq/payment-banks/examples"), AGENTS
    ),
    ("DELETE", "/api/v1/faq/{ref}/examples/{example_id}"): Case(
        _fresh_example, (401, 403, 403, 204)
    ),
    ("GET", "/api/v1/settings"): Case(fixed("/api/v1/settings"), AGENTS),
    ("GET", "/api/v1/settings/llm"): Case(fixed("/api/v1/settings/llm"), ADMINS),
    ("PATCH", "/api/v1/settings/llm"): Case(
        fixed("/api/v1/settings/llm", json={"tone_notes": "Short and polite."}), ADMINS
    ),
    ("PATCH", "/api/v1/settings"): Case(
        fixed("/api/v1/settings", json={"draft_threshold": 0.6}), ADMINS
    ),
}


def _walk(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:  # FastAPI wraps include_router() targets
            context = getattr(route, "include_context", None)
            yield from _walk(included.routes, prefix + getattr(context, "prefix", ""))
        elif isinstance(route, APIRoute):
            for method in route.methods:
                yield method, prefix + route.path
        elif hasattr(route, "routes"):  # a Mount
            yield from _walk(route.routes, prefix + getattr(route, "path", ""))


def api_routes(app: FastAPI) -> set[tuple[str, str]]:
    return {(m, p) for m, p in _walk(list(app.routes)) if p.startswith("/api/")}


class TestRouteRoles:
    def test_enumeration_agrees_with_the_openapi_schema(self) -> None:
        app = create_app(get_settings())
        schema = app.openapi()["paths"]
        documented = {
            (method.upper(), path)
            for path, operations in schema.items()
            if path.startswith("/api/")
            for method in operations
        }
        assert api_routes(app) == documented
        assert len(documented) >= 25

    def test_table_covers_every_api_route(self) -> None:
        routes = api_routes(create_app(get_settings()))
        missing = sorted(routes - ROUTE_ROLES.keys())
        stale = sorted(ROUTE_ROLES.keys() - routes)
        assert not missing, f"API routes without a role test: {missing}"
        assert not stale, f"role table names routes that do not exist: {stale}"

    async def test_every_route_for_every_role(self, client, db) -> None:
        desk = await make_desk(db)
        headers = {
            "anonymous": {},
            "channel": desk.as_channel(),
            "agent": desk.as_agent(),
            "admin": desk.as_admin(),
        }
        wrong = []
        for (method, template), case in ROUTE_ROLES.items():
            for role, expected in zip(ROLES, case.expected, strict=True):
                url, kwargs = await case.prepare(client, desk)
                client.cookies.clear()
                response = await client.request(method, url, headers=headers[role], **kwargs)
                if response.status_code != expected:
                    wrong.append(
                        f"{method} {template} as {role}: {response.status_code} != {expected} "
                        f"({response.text[:120]})"
                    )
        assert not wrong, "\n".join(wrong)

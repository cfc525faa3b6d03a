"""The inbox pages over HTTP: sign-in, CSRF, throttling, roles, escaping, security headers."""

from __future__ import annotations

import re

import httpx
from markupsafe import escape

from frankly.drafting.disclosure import DisclosureKind, disclosure_for
from tests.factories import PASSWORD, inbound_with_draft, key, make_desk, post_inbound

HTML = {"accept": "text/html"}


async def _sign_in(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> str:
    page = await client.get("/login")
    token = re.search(r'name="login_csrf" value="([^"]+)"', page.text)
    assert token, page.text
    response = await client.post(
        "/login",
        data={"email": email, "password": password, "login_csrf": token.group(1), "next": "/inbox"},
    )
    assert response.status_code == 303, response.text
    inbox = await client.get("/inbox")
    csrf = re.search(r'"X-CSRF-Token": "([^"]+)"', inbox.text)
    assert csrf
    return csrf.group(1)


class TestSignIn:
    async def test_logged_out_pages_redirect_to_sign_in(self, client, db) -> None:
        await make_desk(db)
        for path in ("/inbox", "/inbox/c/1", "/faq", "/settings", "/admin"):
            response = await client.get(path, headers=HTML)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/login?next=")

    async def test_sign_in_form_needs_its_csrf_token(self, client, db) -> None:
        desk = await make_desk(db)
        await client.get("/login")
        response = await client.post(
            "/login", data={"email": desk.agent.email, "password": PASSWORD, "login_csrf": "x"}
        )
        assert response.status_code == 403
        assert "frankly_session" not in response.headers.get("set-cookie", "")

    async def test_sign_in_and_out(self, client, db) -> None:
        desk = await make_desk(db)
        csrf = await _sign_in(client, desk.agent.email)
        assert (await client.get("/inbox")).status_code == 200
        out = await client.post("/logout", data={"csrf_token": csrf})
        assert out.status_code == 303
        assert (await client.get("/inbox", headers=HTML)).status_code == 303

    async def test_next_never_leaves_the_site(self, client, db) -> None:
        desk = await make_desk(db)
        page = await client.get("/login?next=//evil.example/x")
        token = re.search(r'name="login_csrf" value="([^"]+)"', page.text)
        assert token and "evil" not in page.text
        response = await client.post(
            "/login",
            data={
                "email": desk.agent.email,
                "password": PASSWORD,
                "login_csrf": token.group(1),
                "next": "https://evil.example/",
            },
        )
        assert response.headers["location"] == "/inbox"

    async def test_repeated_failures_are_throttled(self, client, db) -> None:
        desk = await make_desk(db)
        for _ in range(5):
            bad = await client.post(
                "/api/v1/auth/login", json={"email": desk.agent.email, "password": "wrong"}
            )
            assert bad.status_code == 401
        blocked = await client.post(
            "/api/v1/auth/login", json={"email": desk.agent.email, "password": PASSWORD}
        )
        assert blocked.status_code == 429
        assert "too many" in blocked.json()["detail"]
        other = await client.post(
            "/api/v1/auth/login", json={"email": desk.admin.email, "password": PASSWORD}
        )
        assert other.status_code == 200


class TestRoles:
    async def test_agents_cannot_open_admin_pages(self, client, db) -> None:
        desk = await make_desk(db)
        await _sign_in(client, desk.agent.email)
        for path in ("/settings", "/admin", "/faq/new", "/faq/payment-banks/edit"):
            response = await client.get(path, headers=HTML)
            assert response.status_code == 403, path
            assert "text/html" in response.headers["content-type"]
        for path in ("/inbox", "/faq", "/faq/payment-banks"):
            assert (await client.get(path)).status_code == 200, path

    async def test_admin_pages_work_for_admins(self, client, db) -> None:
        desk = await make_desk(db)
        csrf = await _sign_in(client, desk.admin.email)
        for path in ("/settings", "/admin", "/faq/new", "/faq/payment-banks/edit"):
            assert (await client.get(path)).status_code == 200, path
        saved = await client.post(
            "/settings",
            data={"csrf_token": csrf, "draft_threshold": "0.7", "default_language": "ru"},
        )
        assert saved.status_code == 303
        settings = await client.get("/api/v1/settings", headers=desk.as_admin())
        assert settings.json() == {"draft_threshold": 0.7, "default_language": "ru"}
        token_page = await client.post(
            "/admin/tokens", data={"csrf_token": csrf, "name": "site", "channel": "web"}
        )
        token = re.search(r'id="new-token">(frk_[^<]+)<', token_page.text)
        assert token
        shown_again = await client.get("/admin")
        assert token.group(1) not in shown_again.text
        from sqlalchemy import select

        from frankly.audit.models import AuditEvent

        async with db.sessionmaker() as session:
            rows = (await session.execute(select(AuditEvent.action, AuditEvent.agent_id))).all()
        assert ("token.create", desk.admin.id) in rows
        assert ("settings.change", desk.admin.id) in rows


class TestConversationActions:
    async def test_send_from_the_page_uses_the_gate(self, client, db) -> None:
        desk = await make_desk(db)
        detail, draft = await inbound_with_draft(client, desk)
        csrf = await _sign_in(client, desk.agent.email)
        page = await client.get(f"/inbox/c/{detail['id']}")
        assert draft["text"] in page.text
        edited = draft["text"] + " Thanks!"
        preview = await client.post(
            f"/inbox/d/{draft['id']}/preview",
            data={"text": edited},
            headers={"X-CSRF-Token": csrf, "HX-Request": "true"},
        )
        assert "draft edited" in preview.text
        sent = await client.post(
            f"/inbox/d/{draft['id']}/send",
            data={"text": edited, "idempotency_key": key()},
            headers={"X-CSRF-Token": csrf, "HX-Request": "true"},
        )
        assert sent.status_code == 200
        intro = str(escape(disclosure_for(DisclosureKind.INTRO, "en").text))
        assert "draft edited" in sent.text and intro in sent.text

    async def test_actions_without_csrf_are_refused(self, client, db) -> None:
        desk = await make_desk(db)
        _, draft = await inbound_with_draft(client, desk)
        await _sign_in(client, desk.agent.email)
        response = await client.post(
            f"/inbox/d/{draft['id']}/send", data={"text": "x", "idempotency_key": key()}
        )
        assert response.status_code == 403
        thread = await client.get("/api/v1/conversations", headers=desk.as_agent())
        assert thread.json()["items"][0]["needs_reply"] is True


class TestEscaping:
    async def test_customer_html_is_escaped_and_csp_is_strict(self, client, db) -> None:
        desk = await make_desk(db)
        payload = '<script>alert(1)</script><img src=x onerror="alert(2)">'
        accepted = await post_inbound(client, desk, payload, contact={"name": "<b>x</b>"})
        await _sign_in(client, desk.agent.email)
        for path in ("/inbox?view=all", f"/inbox/c/{accepted['conversation_id']}"):
            page = await client.get(path)
            assert "<script>alert(1)" not in page.text and "<img src=x" not in page.text
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
            assert "<b>x</b>" not in page.text
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert page.headers["x-frame-options"] == "DENY"

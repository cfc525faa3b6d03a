"""Shared pieces of the HTML pages: templates, the signed-in agent, CSRF, rendering."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape

from frankly import __version__
from frankly.auth import service as auth_service
from frankly.auth.deps import SESSION_COOKIE
from frankly.auth.models import Agent, AuthSession
from frankly.db import SessionDep
from frankly.errors import FranklyError
from frankly.live import service as live_service

PACKAGE = Path(__file__).resolve().parents[1]
_env = Environment(
    loader=ChoiceLoader(
        [
            FileSystemLoader(str(PACKAGE / "inbox" / "templates" / "inbox")),
            FileSystemLoader(str(PACKAGE / "templates")),
        ]
    ),
    autoescape=select_autoescape(["html"], default_for_string=True, default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
templates = Jinja2Templates(env=_env)
_env.globals["static"] = lambda path: f"/static/{path}?v={__version__}"


class LoginRequired(Exception):
    """Raised by page dependencies; the app turns it into a redirect to /login."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class CsrfFailed(FranklyError):
    status_code = 403
    error = "csrf"


@dataclass(frozen=True, slots=True)
class PageUser:
    agent: Agent
    auth_session: AuthSession

    @property
    def csrf_token(self) -> str:
        return self.auth_session.csrf_token


async def page_user(request: Request, session: SessionDep) -> PageUser:
    cookie = request.cookies.get(SESSION_COOKIE)
    found = await auth_service.resolve_session(session, token=cookie) if cookie else None
    if found is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target)
    auth_session, agent = found
    if request.method in {"GET", "HEAD"}:
        # The log position before this page's own reads: live.js replays anything after it, so
        # an event between rendering and the socket's subscribe is not lost.
        request.state.live_position = await live_service.current_position(session)
    else:
        sent = request.headers.get("x-csrf-token")
        if sent is None:
            form = await request.form()
            value = form.get("csrf_token")
            sent = value if isinstance(value, str) else ""
        if not hmac.compare_digest(sent, auth_session.csrf_token):
            raise CsrfFailed("the form expired or came from another site; reload the page")
    return PageUser(agent, auth_session)


async def page_admin(user: Annotated[PageUser, Depends(page_user)]) -> PageUser:
    if not user.agent.is_admin:
        raise FranklyError("this page is for admins", 403)
    return user


User = Annotated[PageUser, Depends(page_user)]
Admin = Annotated[PageUser, Depends(page_admin)]


def render(
    request: Request,
    name: str,
    user: PageUser | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    base: dict[str, Any] = {"request": request}
    if user is not None:
        base.update(
            agent=user.agent,
            csrf_token=user.csrf_token,
            live_last_event_id=getattr(request.state, "live_position", None),
        )
    return templates.TemplateResponse(request, name, {**base, **context}, status_code=status_code)


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def login_redirect_target(next_path: str) -> str:
    return "/login?next=" + quote(next_path, safe="/")


def safe_next(value: str | None) -> str:
    """Only same-site relative paths: never redirect to another host after sign-in."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/inbox"
    return value

"""Request authentication: session cookie (with CSRF on writes) or bearer token."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from frankly.auth import service as auth_service
from frankly.auth.models import Agent, TokenKind
from frankly.db import SessionDep
from frankly.errors import Forbidden, Unauthorized

SESSION_COOKIE = "frankly_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


async def current_agent(request: Request, session: SessionDep) -> Agent:
    """The agent behind an agent token or a session cookie; channel tokens are refused here."""
    token = _bearer(request)
    if token is not None:
        resolved = await auth_service.resolve_token(session, token=token)
        if resolved is None:
            raise Unauthorized("invalid or revoked token")
        record, agent = resolved
        if record.kind != TokenKind.AGENT or agent is None:
            raise Forbidden("a channel token may only post inbound messages")
        return agent
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        found = await auth_service.resolve_session(session, token=cookie)
        if found is not None:
            browser_session, session_agent = found
            if request.method not in SAFE_METHODS:
                sent = request.headers.get(CSRF_HEADER, "")
                if not hmac.compare_digest(sent, browser_session.csrf_token):
                    raise Forbidden("missing or wrong CSRF token")
            request.state.auth_session = browser_session
            return session_agent
    raise Unauthorized("sign in or send an agent token")


async def admin_only(agent: Annotated[Agent, Depends(current_agent)]) -> Agent:
    if not agent.is_admin:
        raise Forbidden("admins only")
    return agent


@dataclass(frozen=True, slots=True)
class ChannelIdentity:
    channel: str
    token_id: int


async def channel_token(request: Request, session: SessionDep) -> ChannelIdentity:
    """The channel behind a channel token (cached briefly: this is the inbound hot path)."""
    token = _bearer(request)
    if token is None:
        raise Unauthorized("send a channel token as 'Authorization: Bearer …'")
    cached = auth_service.CHANNEL_TOKENS.get(token)
    if cached is not None:
        return ChannelIdentity(channel=cached.channel, token_id=cached.token_id)
    resolved = await auth_service.resolve_token(session, token=token)
    if resolved is None:
        raise Unauthorized("invalid or revoked token")
    record, _agent = resolved
    if record.kind != TokenKind.CHANNEL or record.channel is None:
        raise Forbidden("inbound messages need a channel token")
    auth_service.CHANNEL_TOKENS.put(token, channel=record.channel, token_id=record.id)
    return ChannelIdentity(channel=record.channel, token_id=record.id)


CurrentAgent = Annotated[Agent, Depends(current_agent)]
AdminOnly = Annotated[Agent, Depends(admin_only)]
ChannelDep = Annotated[ChannelIdentity, Depends(channel_token)]

"""Passwords (argon2), browser sessions and API tokens; secrets are stored only as hashes."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from frankly.audit import service as audit_service
from frankly.auth.models import Agent, ApiToken, AuthSession, LoginAttempt, Role, TokenKind
from frankly.db import Database, utcnow
from frankly.errors import Conflict, FranklyError, Invalid, NotFound, Unauthorized

_hasher = PasswordHasher()


class TooManyAttempts(FranklyError):
    status_code = 429
    error = "too_many_attempts"


TOKEN_PREFIX = "frk_"  # noqa: S105 - a public prefix, not a secret
MIN_PASSWORD_LENGTH = 8


def hash_secret(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    if "@" not in email or email.startswith("@") or email.endswith("@") or len(email) > 320:
        raise Invalid(f"not an email address: {email!r}")
    return email


async def create_agent(
    session: AsyncSession,
    *,
    email: str,
    password: str,
    name: str | None = None,
    admin: bool = False,
    actor: Agent | None = None,
) -> Agent:
    """Add an agent; `actor` is the admin doing it (None from the CLI), for the audit log."""
    email = normalize_email(email)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise Invalid(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if await session.scalar(select(Agent.id).where(Agent.email == email)):
        raise Conflict(f"an agent with email {email} already exists")
    agent = Agent(
        email=email,
        name=name or email.split("@")[0].replace(".", " ").title(),
        password_hash=hash_password(password),
        role=Role.ADMIN if admin else Role.AGENT,
    )
    session.add(agent)
    await session.flush()
    await audit_service.record(
        session,
        agent=actor,
        action="agent.create",
        target_type="agent",
        target_id=agent.id,
        detail={"email": agent.email, "role": agent.role.value},
    )
    return agent


async def list_agents(session: AsyncSession) -> list[Agent]:
    return list((await session.scalars(select(Agent).order_by(Agent.id))).all())


async def list_tokens(session: AsyncSession) -> list[ApiToken]:
    return list((await session.scalars(select(ApiToken).order_by(ApiToken.id.desc()))).all())


async def get_agent_by_email(session: AsyncSession, *, email: str) -> Agent | None:
    return await session.scalar(select(Agent).where(Agent.email == email.strip().lower()))


async def count_agents(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count(Agent.id))) or 0)


async def authenticate(session: AsyncSession, *, email: str, password: str) -> Agent:
    agent = await get_agent_by_email(session, email=email)
    # Verify against a dummy hash when the agent is unknown so timing does not reveal emails.
    candidate = agent.password_hash if agent else _DUMMY_HASH
    if not verify_password(candidate, password) or agent is None or not agent.is_active:
        raise Unauthorized("wrong email or password")
    return agent


_DUMMY_HASH = _hasher.hash("frankly-dummy-password")


@dataclass(frozen=True, slots=True)
class NewSession:
    token: str
    csrf_token: str
    record: AuthSession


async def start_session(session: AsyncSession, *, agent: Agent, days: int) -> NewSession:
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(24)
    record = AuthSession(
        token_hash=hash_secret(token),
        agent_id=agent.id,
        csrf_token=csrf,
        expires_at=utcnow() + timedelta(days=days),
    )
    session.add(record)
    await session.flush()
    return NewSession(token=token, csrf_token=csrf, record=record)


async def resolve_session(session: AsyncSession, *, token: str) -> tuple[AuthSession, Agent] | None:
    row = (
        await session.execute(
            select(AuthSession, Agent)
            .join(Agent, Agent.id == AuthSession.agent_id)
            .where(AuthSession.token_hash == hash_secret(token))
        )
    ).first()
    if row is None:
        return None
    record, agent = row[0], row[1]
    if record.expires_at <= utcnow() or not agent.is_active:
        return None
    return record, agent


async def end_session(session: AsyncSession, *, token: str) -> None:
    await session.execute(delete(AuthSession).where(AuthSession.token_hash == hash_secret(token)))


@dataclass(frozen=True, slots=True)
class CachedChannel:
    channel: str
    token_id: int
    expires: float


class ChannelTokenCache:
    """Resolved channel tokens for a few seconds, keyed by hash: saves a query per inbound message.

    Revoking clears the entry in this process at once; other app instances stop accepting a
    revoked channel token within TTL_SECONDS (documented in the README).
    """

    TTL_SECONDS = 30.0

    def __init__(self) -> None:
        self._entries: dict[str, CachedChannel] = {}

    def get(self, token: str) -> CachedChannel | None:
        entry = self._entries.get(hash_secret(token))
        if entry is None or entry.expires < time.monotonic():
            return None
        return entry

    def put(self, token: str, *, channel: str, token_id: int) -> None:
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[hash_secret(token)] = CachedChannel(
            channel, token_id, time.monotonic() + self.TTL_SECONDS
        )

    def forget(self, token_id: int) -> None:
        for key in [k for k, v in self._entries.items() if v.token_id == token_id]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()


CHANNEL_TOKENS = ChannelTokenCache()


@dataclass(frozen=True, slots=True)
class NewToken:
    token: str
    record: ApiToken


async def create_token(
    session: AsyncSession,
    *,
    name: str,
    channel: str | None = None,
    agent: Agent | None = None,
    actor: Agent | None = None,
) -> NewToken:
    """A channel token (may only post inbound messages) or an agent token (acts as that agent)."""
    if (channel is None) == (agent is None):
        raise Invalid("a token is either for a channel or for an agent")
    if channel is not None and not channel.replace("-", "").replace("_", "").isalnum():
        raise Invalid(f"channel names are letters, digits, - and _: {channel!r}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    record = ApiToken(
        name=name,
        kind=TokenKind.CHANNEL if channel else TokenKind.AGENT,
        channel=channel,
        agent_id=agent.id if agent else None,
        token_hash=hash_secret(token),
        prefix=token[: len(TOKEN_PREFIX) + 6],
    )
    session.add(record)
    await session.flush()
    await audit_service.record(
        session,
        agent=actor,
        action="token.create",
        target_type="api_token",
        target_id=record.id,
        detail={"name": name, "kind": record.kind.value},
    )
    return NewToken(token=token, record=record)


async def resolve_token(
    session: AsyncSession, *, token: str
) -> tuple[ApiToken, Agent | None] | None:
    record = await session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_secret(token)))
    if record is None or record.revoked_at is not None:
        return None
    agent = None
    if record.agent_id is not None:
        agent = await session.get(Agent, record.agent_id)
        if agent is None or not agent.is_active:
            return None
    return record, agent


async def revoke_token(
    session: AsyncSession, *, token_id: int, actor: Agent | None = None
) -> ApiToken:
    record = await session.get(ApiToken, token_id)
    if record is None:
        raise NotFound(f"no token with id {token_id}")
    record.revoked_at = record.revoked_at or utcnow()
    CHANNEL_TOKENS.forget(record.id)
    await audit_service.record(
        session, agent=actor, action="token.revoke", target_type="api_token", target_id=token_id
    )
    return record


THROTTLE_WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_EMAIL = 5
MAX_FAILURES_PER_IP = 30


async def check_throttle(session: AsyncSession, *, email: str, ip: str) -> None:
    """Refuse sign-in after repeated recent failures for this email or from this address."""
    since = utcnow() - THROTTLE_WINDOW
    failed = LoginAttempt.succeeded.is_(False) & (LoginAttempt.at >= since)
    by_email = await session.scalar(
        select(func.count(LoginAttempt.id)).where(failed, LoginAttempt.email == email.lower())
    )
    by_ip = await session.scalar(
        select(func.count(LoginAttempt.id)).where(failed, LoginAttempt.ip == ip)
    )
    if (by_email or 0) >= MAX_FAILURES_PER_EMAIL or (by_ip or 0) >= MAX_FAILURES_PER_IP:
        minutes = int(THROTTLE_WINDOW.total_seconds() // 60)
        raise TooManyAttempts(f"too many failed sign-ins; try again in {minutes} minutes")


async def record_attempt(session: AsyncSession, *, email: str, ip: str, succeeded: bool) -> None:
    session.add(LoginAttempt(email=email.strip().lower()[:320], ip=ip[:64], succeeded=succeeded))
    await session.flush()


async def sign_in(
    database: Database, session: AsyncSession, *, email: str, password: str, ip: str
) -> Agent:
    """Throttled password check; a failure is recorded in its own committed transaction."""
    await check_throttle(session, email=email, ip=ip)
    try:
        agent = await authenticate(session, email=email, password=password)
    except Unauthorized:
        async with database.sessionmaker() as own:
            await record_attempt(own, email=email, ip=ip, succeeded=False)
            await own.commit()
        raise
    await record_attempt(session, email=email, ip=ip, succeeded=True)
    return agent

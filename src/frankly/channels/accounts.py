"""Channel accounts: admins create and change them; FRANKLY_BYBIT_* / FRANKLY_IMAP_* /
FRANKLY_SMTP_* define one each for headless setups. Secrets are encrypted at rest."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from frankly.audit import service as audit_service
from frankly.auth.models import Agent
from frankly.channels.models import ChannelAccount, ChannelKind
from frankly.config import Settings
from frankly.crypto import box
from frankly.db import utcnow
from frankly.desk import service as desk_service
from frankly.errors import Conflict, Invalid, NotFound

# Which settings are secret, per kind (never shown, never logged, encrypted at rest).
SECRET_FIELDS: dict[ChannelKind, set[str]] = {
    ChannelKind.BYBIT: {"api_key", "api_secret"},
    ChannelKind.EMAIL: {"imap_password", "smtp_password"},
    ChannelKind.WIDGET: set(),
    ChannelKind.API: set(),
}
ENV_NAMES = {ChannelKind.BYBIT: "bybit-env", ChannelKind.EMAIL: "email-env"}
# Settings that say where the secrets are sent: changing one drops the stored secrets.
ENDPOINT_FIELDS: dict[ChannelKind, tuple[str, ...]] = {
    ChannelKind.BYBIT: ("base_url",),
    ChannelKind.EMAIL: (
        "imap_host",
        "imap_port",
        "imap_user",
        "smtp_host",
        "smtp_port",
        "smtp_user",
    ),
    ChannelKind.WIDGET: (),
    ChannelKind.API: (),
}


def secrets_of(account: ChannelAccount) -> dict[str, Any]:
    if not account.secrets:
        return {}
    return box().decrypt_json(account.secrets, purpose=f"channel:{account.id}")


async def list_accounts(session: AsyncSession) -> list[ChannelAccount]:
    return list((await session.scalars(select(ChannelAccount).order_by(ChannelAccount.id))).all())


async def get_account(session: AsyncSession, *, account_id: int) -> ChannelAccount:
    account = await session.get(ChannelAccount, account_id)
    if account is None:
        raise NotFound(f"channel account {account_id} not found")
    return account


async def find_account(session: AsyncSession, *, name: str) -> ChannelAccount | None:
    return await session.scalar(select(ChannelAccount).where(ChannelAccount.name == name))


def _validate_name(name: str) -> str:
    name = name.strip().lower()
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_" for c in name):
        raise Invalid("name must be 1–64 letters, digits, '-' or '_'")
    return name


async def save_account(
    session: AsyncSession,
    *,
    agent: Agent | None,
    kind: ChannelKind,
    name: str,
    settings: dict[str, Any],
    secrets: dict[str, Any],
    enabled: bool = True,
    account: ChannelAccount | None = None,
) -> ChannelAccount:
    """Create or update an account; a secret left empty keeps its stored value."""
    name = _validate_name(name)
    secret_names = SECRET_FIELDS[kind]
    stray = set(settings) & secret_names
    if stray:
        raise Invalid(f"{', '.join(sorted(stray))} must be given as secrets")
    other = await find_account(session, name=name)
    if other is not None and (account is None or other.id != account.id):
        raise Conflict(f"a channel account named {name!r} already exists")
    if account is None:
        account = ChannelAccount(kind=kind, name=name, settings={}, cursor={})
        session.add(account)
        await session.flush()
        action = "channel.create"
    else:
        action = "channel.update"
    merged = secrets_of(account)
    moved = {
        name
        for name in ENDPOINT_FIELDS[kind]
        if action == "channel.update" and account.settings.get(name) != settings.get(name)
    }
    if moved and merged:
        # Stored secrets never follow the account to another server: whoever changes where it
        # connects must type them again (else a hijacked admin session could collect them).
        if not all(secrets.get(name) for name in merged):
            raise Invalid(
                f"changing {', '.join(sorted(moved))} sends the secrets somewhere else: "
                f"enter {', '.join(sorted(merged))} again"
            )
        merged = {}
    for key, value in secrets.items():
        if key not in secret_names:
            raise Invalid(f"unknown secret {key!r} for a {kind.value} channel")
        if value:
            merged[key] = str(value)
    if merged:
        await desk_service.ensure_secret_check(session)
        account.secrets = box().encrypt_json(merged, purpose=f"channel:{account.id}")
    else:
        account.secrets = None
    account.settings = dict(settings)
    account.enabled = enabled
    account.name = name
    account.updated_at = utcnow()
    # Validate by building the channel once: a bad setting is a 422 now, not a poller error.
    from frankly.channels.registry import REGISTRY

    try:
        probe = REGISTRY.build(account)
    except (KeyError, ValueError, TypeError) as exc:
        raise Invalid(f"{kind.value} channel {name!r}: {exc}") from exc
    await probe.aclose()
    await audit_service.record(
        session,
        agent=agent,
        action=action,
        target_type="channel_account",
        target_id=account.id,
        detail={
            "name": name,
            "kind": kind.value,
            "enabled": enabled,
            "secrets_changed": sorted(k for k, v in secrets.items() if v),
        },
    )
    await session.flush()
    return account


def env_accounts(settings: Settings) -> list[tuple[ChannelKind, dict[str, Any], dict[str, Any]]]:
    """Accounts described by FRANKLY_* variables (headless setups)."""
    found: list[tuple[ChannelKind, dict[str, Any], dict[str, Any]]] = []
    if settings.bybit_base_url and settings.bybit_api_key:
        found.append(
            (
                ChannelKind.BYBIT,
                {"base_url": settings.bybit_base_url, "poll_seconds": settings.bybit_poll_seconds},
                {"api_key": settings.bybit_api_key, "api_secret": settings.bybit_api_secret},
            )
        )
    if settings.imap_host and settings.smtp_host:
        found.append(
            (
                ChannelKind.EMAIL,
                {
                    "imap_host": settings.imap_host,
                    "imap_port": settings.imap_port,
                    "imap_user": settings.imap_user,
                    "imap_tls": settings.imap_tls,
                    "mailbox": settings.imap_mailbox,
                    "poll_seconds": settings.imap_poll_seconds,
                    "smtp_host": settings.smtp_host,
                    "smtp_port": settings.smtp_port,
                    "smtp_user": settings.smtp_user,
                    "smtp_tls": settings.smtp_tls,
                    "from_address": settings.smtp_from or settings.imap_user,
                },
                {"imap_password": settings.imap_password, "smtp_password": settings.smtp_password},
            )
        )
    return found


async def sync_env_accounts(session: AsyncSession, *, settings: Settings) -> list[ChannelAccount]:
    """Create or update the accounts FRANKLY_* variables describe (idempotent at every start)."""
    saved = []
    for kind, values, secrets in env_accounts(settings):
        name = ENV_NAMES[kind]
        account = await find_account(session, name=name)
        if (
            account is not None
            and account.settings == values
            and secrets_of(account) == {k: v for k, v in secrets.items() if v}
        ):
            saved.append(account)
            continue
        saved.append(
            await save_account(
                session,
                agent=None,
                kind=kind,
                name=name,
                settings=values,
                secrets=secrets,
                account=account,
            )
        )
    return saved


# The admin form for each kind: (name, label, input type, default). Secrets are separate.
FORM_FIELDS: dict[ChannelKind, list[tuple[str, str, str, Any]]] = {
    ChannelKind.BYBIT: [
        ("base_url", "API base URL", "url", "https://api.bybit.com"),
        ("poll_seconds", "Poll every (s)", "number", 10),
        ("recv_window", "Receive window (ms)", "number", 5000),
    ],
    ChannelKind.EMAIL: [
        ("from_address", "From address", "email", ""),
        ("display_name", "Display name", "text", ""),
        ("imap_host", "IMAP host", "text", ""),
        ("imap_port", "IMAP port", "number", 993),
        ("imap_user", "IMAP user", "text", ""),
        ("imap_tls", "IMAP TLS (ssl, starttls, none)", "text", "ssl"),
        ("mailbox", "Mailbox", "text", "INBOX"),
        (
            "sent_mailbox",
            "Sent folder (copies; a retry checks it first; empty: off)",
            "text",
            "Sent",
        ),
        ("smtp_host", "SMTP host", "text", ""),
        ("smtp_port", "SMTP port", "number", 587),
        ("smtp_user", "SMTP user", "text", ""),
        ("smtp_tls", "SMTP TLS (ssl, starttls, none)", "text", "starttls"),
        ("poll_seconds", "Poll every (s) when IDLE is unavailable", "number", 60),
    ],
    ChannelKind.WIDGET: [
        ("title", "Title", "text", "Support"),
        ("greeting", "Greeting", "text", ""),
        ("allowed_origins", "Allowed sites (space-separated origins; empty: any)", "text", ""),
    ],
    ChannelKind.API: [],
}


def coerce_form(kind: ChannelKind, raw: dict[str, str]) -> dict[str, Any]:
    """Typed settings from form strings (numbers as numbers, origins as a list)."""
    out: dict[str, Any] = {}
    for name, label, kind_of_input, _default in FORM_FIELDS[kind]:
        value = (raw.get(name) or "").strip()
        if value == "":
            continue
        if kind_of_input == "number":
            try:
                out[name] = float(value) if "." in value else int(value)
            except ValueError:
                raise Invalid(f"{label} must be a number") from None
        elif name == "allowed_origins":
            out[name] = value.split()
        else:
            out[name] = value
    return out

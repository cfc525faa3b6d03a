"""Channel accounts over HTTP (admins). Secrets go in, never come out."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from frankly.auth.deps import AdminOnly
from frankly.channels import accounts
from frankly.channels.models import ChannelAccount, ChannelKind
from frankly.db import DbId, SessionDep

router = APIRouter(prefix="/api/v1/channels", tags=["channels"])


class ChannelAccountWrite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: ChannelKind
    name: str = Field(min_length=1, max_length=64)
    enabled: bool = True
    settings: dict[str, Any] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict)


class ChannelAccountRead(BaseModel):
    id: int
    kind: ChannelKind
    name: str
    enabled: bool
    settings: dict[str, Any]
    secrets_set: list[str]
    last_poll_at: datetime | None
    last_error: str | None


def _read(account: ChannelAccount) -> ChannelAccountRead:
    return ChannelAccountRead(
        id=account.id,
        kind=account.kind,
        name=account.name,
        enabled=account.enabled,
        settings=dict(account.settings),
        secrets_set=sorted(accounts.secrets_of(account)),
        last_poll_at=account.last_poll_at,
        last_error=account.last_error,
    )


@router.get("", response_model=list[ChannelAccountRead])
async def list_channel_accounts(session: SessionDep, admin: AdminOnly) -> list[ChannelAccountRead]:
    return [_read(a) for a in await accounts.list_accounts(session)]


@router.post("", response_model=ChannelAccountRead, status_code=201)
async def create_channel_account(
    body: ChannelAccountWrite, session: SessionDep, admin: AdminOnly
) -> ChannelAccountRead:
    account = await accounts.save_account(
        session,
        agent=admin,
        kind=body.kind,
        name=body.name,
        settings=body.settings,
        secrets=body.secrets,
        enabled=body.enabled,
    )
    return _read(account)


@router.put("/{account_id}", response_model=ChannelAccountRead)
async def update_channel_account(
    account_id: DbId, body: ChannelAccountWrite, session: SessionDep, admin: AdminOnly
) -> ChannelAccountRead:
    account = await accounts.get_account(session, account_id=account_id)
    if body.kind != account.kind:
        from frankly.errors import Invalid

        raise Invalid("an account's kind cannot change; create a new account")
    account = await accounts.save_account(
        session,
        agent=admin,
        kind=body.kind,
        name=body.name,
        settings=body.settings,
        secrets=body.secrets,
        enabled=body.enabled,
        account=account,
    )
    return _read(account)

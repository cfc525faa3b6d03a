"""Desk settings over HTTP (admins change them; every agent can read them)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from frankly.auth.deps import AdminOnly, CurrentAgent
from frankly.db import SessionDep
from frankly.desk import service

router = APIRouter(prefix="/api/v1/settings", tags=["settings"])


class DeskSettings(BaseModel):
    draft_threshold: float
    default_language: str


class DeskSettingsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    draft_threshold: float | None = Field(default=None, ge=0, le=1)
    default_language: str | None = None


async def _read(session: SessionDep) -> DeskSettings:
    return DeskSettings(
        draft_threshold=await service.draft_threshold(session),
        default_language=await service.default_language(session),
    )


@router.get("", response_model=DeskSettings)
async def get_desk_settings(session: SessionDep, agent: CurrentAgent) -> DeskSettings:
    return await _read(session)


@router.patch("", response_model=DeskSettings)
async def update_desk_settings(
    body: DeskSettingsUpdate, session: SessionDep, admin: AdminOnly
) -> DeskSettings:
    for key, value in body.model_dump(exclude_none=True).items():
        await service.set_value(session, key=key, value=value, agent=admin)
    return await _read(session)

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


class LlmSettingsRead(BaseModel):
    """The provider the desk drafts with; the key is never returned, only whether it is set."""

    configured: bool
    base_url: str | None
    model: str | None
    key_set: bool
    timeout: float | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    requests_per_minute: int | None = None
    tone_notes: str


class LlmSettingsUpdate(BaseModel):
    """Empty string: back to the FRANKLY_LLM_* value; absent: unchanged."""

    model_config = ConfigDict(extra="forbid")

    base_url: str | None = Field(default=None, max_length=500)
    model: str | None = Field(default=None, max_length=200)
    api_key: str | None = Field(default=None, max_length=500)
    timeout: float | None = Field(default=None, gt=0, le=300)
    max_tokens: int | None = Field(default=None, ge=16, le=8192)
    temperature: float | None = Field(default=None, ge=0, le=2)
    requests_per_minute: int | None = Field(default=None, ge=1, le=100_000)
    tone_notes: str | None = Field(default=None, max_length=2000)


async def _read_llm(session: SessionDep) -> LlmSettingsRead:
    values = await service.llm_config_values(session)
    return LlmSettingsRead(
        configured=values is not None,
        base_url=values["base_url"] if values else None,
        model=values["model"] if values else None,
        key_set=bool(values and values.get("api_key")),
        timeout=values["timeout"] if values else None,
        max_tokens=values["max_tokens"] if values else None,
        temperature=values["temperature"] if values else None,
        requests_per_minute=values["requests_per_minute"] if values else None,
        tone_notes=await service.tone_notes(session),
    )


@router.get("/llm", response_model=LlmSettingsRead)
async def get_llm_settings(session: SessionDep, admin: AdminOnly) -> LlmSettingsRead:
    return await _read_llm(session)


@router.patch("/llm", response_model=LlmSettingsRead)
async def update_llm_settings(
    body: LlmSettingsUpdate, session: SessionDep, admin: AdminOnly
) -> LlmSettingsRead:
    values = body.model_dump(exclude_none=True)
    tone = values.pop("tone_notes", None)
    if values:
        await service.set_llm(session, values=values, agent=admin)
    if tone is not None:
        await service.set_value(session, key=service.TONE_NOTES, value=tone, agent=admin)
    return await _read_llm(session)

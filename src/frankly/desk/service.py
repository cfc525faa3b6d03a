"""Desk settings stored in the database (fall back to FRANKLY_* defaults)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from frankly.audit import service as audit_service
from frankly.auth.models import Agent
from frankly.config import get_settings
from frankly.db import utcnow
from frankly.desk.models import DeskSetting
from frankly.errors import Invalid

THRESHOLD = "draft_threshold"
DEFAULT_LANGUAGE = "default_language"


CACHE_SECONDS = 2.0
_cache: dict[str, tuple[float, Any]] = {}


async def _get(session: AsyncSession, key: str) -> Any:
    """A desk setting, cached for a moment (drafting reads it per message; other instances
    see a change within CACHE_SECONDS)."""
    cached = _cache.get(key)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    row = await session.get(DeskSetting, key)
    value = None if row is None else row.value.get("value")
    _cache[key] = (time.monotonic() + CACHE_SECONDS, value)
    return value


def clear_cache() -> None:
    _cache.clear()


async def draft_threshold(session: AsyncSession) -> float:
    value = await _get(session, THRESHOLD)
    return float(value) if value is not None else get_settings().draft_threshold


async def default_language(session: AsyncSession) -> str:
    value = await _get(session, DEFAULT_LANGUAGE)
    return str(value) if value else get_settings().default_language


async def set_value(session: AsyncSession, *, key: str, value: Any, agent: Agent | None) -> None:
    if key == THRESHOLD:
        if not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
            raise Invalid("draft_threshold must be a number between 0 and 1")
        value = float(value)
    elif key == DEFAULT_LANGUAGE:
        if value not in get_settings().languages:
            raise Invalid(f"default_language must be one of {get_settings().languages}")
    else:
        raise Invalid(f"unknown desk setting {key!r}")
    _cache.pop(key, None)
    row = await session.get(DeskSetting, key)
    before = None if row is None else row.value.get("value")
    if row is None:
        session.add(DeskSetting(key=key, value={"value": value}, updated_by_id=agent and agent.id))
    else:
        row.value = {"value": value}
        row.updated_at = utcnow()
        row.updated_by_id = agent.id if agent else None
    _cache.pop(key, None)
    await audit_service.record(
        session,
        agent=agent,
        action="settings.change",
        target_type="desk_setting",
        detail={"key": key, "before": before, "after": value},
    )
    await session.flush()

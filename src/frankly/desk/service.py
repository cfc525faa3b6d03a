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
TONE_NOTES = "tone_notes"
LLM = "llm"
SECRET_CHECK = "secret_check"  # noqa: S105  (a setting name, not a secret)
LLM_FIELDS = {
    "base_url",
    "model",
    "api_key",
    "timeout",
    "max_tokens",
    "temperature",
    "requests_per_minute",
}


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


async def _put(session: AsyncSession, *, key: str, value: Any, agent: Agent | None) -> Any:
    """Store one setting (insert or update) and forget its cached value; returns the old value."""
    _cache.pop(key, None)
    row = await session.get(DeskSetting, key)
    before = None if row is None else row.value.get("value")
    if row is None:
        session.add(DeskSetting(key=key, value={"value": value}, updated_by_id=agent and agent.id))
    else:
        row.value = {"value": value}
        row.updated_at = utcnow()
        row.updated_by_id = agent.id if agent else None
    return before


async def set_value(session: AsyncSession, *, key: str, value: Any, agent: Agent | None) -> None:
    if key == THRESHOLD:
        if not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
            raise Invalid("draft_threshold must be a number between 0 and 1")
        value = float(value)
    elif key == DEFAULT_LANGUAGE:
        if value not in get_settings().languages:
            raise Invalid(f"default_language must be one of {get_settings().languages}")
    elif key == TONE_NOTES:
        if not isinstance(value, str) or len(value) > 2000:
            raise Invalid("tone_notes must be text of at most 2000 characters")
        value = value.strip()
    else:
        raise Invalid(f"unknown desk setting {key!r}")
    before = await _put(session, key=key, value=value, agent=agent)
    await audit_service.record(
        session,
        agent=agent,
        action="settings.change",
        target_type="desk_setting",
        detail={"key": key, "before": before, "after": value},
    )
    await session.flush()


async def tone_notes(session: AsyncSession) -> str:
    return str(await _get(session, TONE_NOTES) or "")


async def ensure_secret_check(session: AsyncSession) -> None:
    """Store the key-check value the first time a secret is saved."""
    from frankly.crypto import box

    if await session.get(DeskSetting, SECRET_CHECK) is None:
        session.add(DeskSetting(key=SECRET_CHECK, value={"value": box().canary()}))
        await session.flush()


async def verify_secret_key(session: AsyncSession) -> None:
    """Raise WrongSecretKey at start-up when stored secrets were written with another key."""
    from frankly.crypto import box

    row = await session.get(DeskSetting, SECRET_CHECK)
    if row is not None:
        box().check_canary(str(row.value.get("value", "")))


async def llm_overrides(session: AsyncSession) -> dict[str, Any]:
    """What an admin set for the LLM provider (the key stays encrypted here)."""
    value = await _get(session, LLM)
    return dict(value) if isinstance(value, dict) else {}


async def set_llm(
    session: AsyncSession, *, values: dict[str, Any], agent: Agent | None
) -> dict[str, Any]:
    """Change the LLM provider settings; an empty string clears a field (back to FRANKLY_LLM_*).

    The API key is encrypted at rest and never returned; the audit log records only that it
    changed.
    """
    from frankly.crypto import box

    unknown = set(values) - LLM_FIELDS
    if unknown:
        raise Invalid(f"unknown LLM setting(s): {', '.join(sorted(unknown))}")
    # Read the row itself (not the short cache): two admins saving at once must not bring back
    # a key the other just removed.
    stored = await session.get(DeskSetting, LLM, with_for_update=True)
    value = None if stored is None else stored.value.get("value")
    current = dict(value) if isinstance(value, dict) else {}
    changed = []
    new_url = values.get("base_url")
    if (
        new_url is not None
        and str(new_url).rstrip("/")
        != str(current.get("base_url") or get_settings().llm_base_url).rstrip("/")
        and not values.get("api_key")
        and current.pop("api_key", None) is not None
    ):
        # The stored key never follows the provider to another URL: it must be typed again.
        changed.append("api_key")
    for name, raw in values.items():
        if raw is None:
            continue
        if raw == "":
            if current.pop(name, None) is not None:
                changed.append(name)
            continue
        if name == "base_url":
            if not isinstance(raw, str) or not raw.startswith(("http://", "https://")):
                raise Invalid("base_url must be an http:// or https:// URL")
            raw = raw.rstrip("/")
        elif name == "api_key":
            await ensure_secret_check(session)
            raw = box().encrypt(str(raw), purpose="llm")
        elif name in {"timeout", "temperature"}:
            raw = float(raw)
        elif name in {"max_tokens", "requests_per_minute"}:
            raw = int(raw)
        current[name] = raw
        changed.append(name)
    await _put(session, key=LLM, value=current, agent=agent)
    await audit_service.record(
        session,
        agent=agent,
        action="settings.llm",
        target_type="desk_setting",
        detail={"changed": sorted(changed)},
    )
    await session.flush()
    return current


async def llm_enabled(session: AsyncSession) -> bool:
    """Whether a provider is configured (URL and model), without decrypting its key."""
    settings = get_settings()
    over = await llm_overrides(session)
    return bool(
        (over.get("base_url") or settings.llm_base_url)
        and (over.get("model") or settings.llm_model)
    )


async def llm_config_values(session: AsyncSession) -> dict[str, Any] | None:
    """The effective provider settings (admin overrides over FRANKLY_LLM_*), or None when no
    provider is configured. Includes the decrypted key: for the writer only, never a response."""
    from frankly.crypto import box

    settings = get_settings()
    over = await llm_overrides(session)
    values: dict[str, Any] = {
        "base_url": settings.llm_base_url,
        "model": settings.llm_model,
        "api_key": settings.llm_api_key,
        "timeout": settings.llm_timeout,
        "max_tokens": settings.llm_max_tokens,
        "temperature": settings.llm_temperature,
        "requests_per_minute": settings.llm_requests_per_minute,
        "max_retries": settings.llm_max_retries,
    }
    for name, value in over.items():
        values[name] = box().decrypt(value, purpose="llm") if name == "api_key" else value
    if not values["base_url"] or not values["model"]:
        return None
    return values

"""Recording human actions; rows are only ever inserted."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from frankly.audit.models import AuditEvent
from frankly.auth.models import Agent


async def record(
    session: AsyncSession,
    *,
    agent: Agent | None,
    action: str,
    target_type: str | None = None,
    target_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    event = AuditEvent(
        agent_id=agent.id if agent else None,
        action=action,
        target_type=target_type,
        target_id=target_id,
        detail=detail or {},
    )
    session.add(event)
    await session.flush()
    return event


async def list_events(
    session: AsyncSession, *, action: str | None = None, limit: int = 100
) -> list[AuditEvent]:
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if action:
        query = query.where(AuditEvent.action == action)
    return list((await session.scalars(query)).all())

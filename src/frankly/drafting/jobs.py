"""Background jobs of the drafting domain."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from frankly.drafting.service import DRAFT_JOB, draft_for_message
from frankly.worker.runner import job


@job(DRAFT_JOB)
async def draft_message(session: AsyncSession, payload: dict[str, Any]) -> None:
    await draft_for_message(session, message_id=int(payload["message_id"]))

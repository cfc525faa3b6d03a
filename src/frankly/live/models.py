"""The event log behind live updates: every event has an id a reconnecting tab catches up from."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from frankly.db import Base, utcnow


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_topic_id", "topic", "id"),)

    # INTEGER on SQLite (so it is the rowid and autoincrements), BIGINT elsewhere.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True
    )
    topic: Mapped[str] = mapped_column(String(100))  # "inbox", "conversation:12", "admin"
    kind: Mapped[str] = mapped_column(String(50))  # message.new, draft.new, message.sent, ...
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

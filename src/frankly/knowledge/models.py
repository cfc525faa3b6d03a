"""FAQ entries, their immutable versions, and the customer messages humans labelled for them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from frankly.db import Base, str_enum, utcnow


class FaqEntry(Base):
    """The current state of an entry; every change also writes a FaqVersion row."""

    __tablename__ = "faq_entries"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(100), unique=True)
    question: Mapped[str] = mapped_column(Text)
    paraphrases: Mapped[list[str]]
    answers: Mapped[dict[str, Any]]
    tags: Mapped[list[str]]
    enabled: Mapped[bool] = mapped_column(default=True)
    never_draft: Mapped[bool] = mapped_column(default=False)
    version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class FaqVersion(Base):
    """A snapshot of an entry as it was at one version; never updated."""

    __tablename__ = "faq_versions"
    __table_args__ = (UniqueConstraint("entry_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("faq_entries.id", ondelete="CASCADE"))
    version: Mapped[int]
    question: Mapped[str] = mapped_column(Text)
    paraphrases: Mapped[list[str]]
    answers: Mapped[dict[str, Any]]
    tags: Mapped[list[str]]
    enabled: Mapped[bool]
    never_draft: Mapped[bool]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))


class ExampleLabel(StrEnum):
    CONFIRMED = "confirmed"  # a human sent this entry's answer (or used it) for this message
    REJECTED = "rejected"  # a human discarded a draft from this entry for this message


class LearnedExample(Base):
    __tablename__ = "learned_examples"
    __table_args__ = (UniqueConstraint("entry_id", "label", "text_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    entry_id: Mapped[int] = mapped_column(
        ForeignKey("faq_entries.id", ondelete="CASCADE"), index=True
    )
    label: Mapped[ExampleLabel] = mapped_column(
        str_enum(ExampleLabel), default=ExampleLabel.CONFIRMED
    )
    text: Mapped[str] = mapped_column(Text)
    text_hash: Mapped[str] = mapped_column(String(64))
    language: Mapped[str | None] = mapped_column(String(8))
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

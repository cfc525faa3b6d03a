"""Configured channel accounts (a mailbox, a Bybit API key, the widget) with encrypted secrets."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from frankly.db import Base, str_enum, utcnow


class ChannelKind(StrEnum):
    API = "api"
    WIDGET = "widget"
    EMAIL = "email"
    BYBIT = "bybit"


class ChannelAccount(Base):
    __tablename__ = "channel_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[ChannelKind] = mapped_column(str_enum(ChannelKind, 16))
    name: Mapped[str] = mapped_column(String(64), unique=True)
    enabled: Mapped[bool] = mapped_column(default=True)
    # Non-secret settings (host, port, TLS mode, poll interval…), shown to admins.
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Secrets as one AES-GCM token (frankly.crypto); never sent to the browser.
    secrets: Mapped[str | None] = mapped_column(Text)
    # The poller's position (IMAP UIDVALIDITY/UID, Bybit seen message ids); written with the
    # messages it covers, in one transaction.
    cursor: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # One poller at a time across instances: a lease taken with a conditional UPDATE.
    poll_locked_by: Mapped[str | None] = mapped_column(String(128))
    poll_locked_until: Mapped[datetime | None]
    last_poll_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

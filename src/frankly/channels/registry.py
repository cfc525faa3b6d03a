"""Channel objects for configured accounts, built from their settings and decrypted secrets."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from frankly.channels.accounts import secrets_of
from frankly.channels.base import (
    Channel,
    ContextField,
    DeliveryError,
    OutboundMessage,
)
from frankly.channels.models import ChannelAccount, ChannelKind

log = logging.getLogger("frankly.channels")

Factory = Callable[[dict[str, Any], dict[str, Any]], Channel]


def _factories() -> dict[str, Factory]:
    """Imported lazily: a desk without email never loads the IMAP client, and so on."""
    from frankly.channels.bybit.channel import BybitChannel
    from frankly.channels.email.channel import EmailChannel
    from frankly.channels.widget.channel import WidgetChannel

    return {
        ChannelKind.BYBIT.value: BybitChannel.from_config,
        ChannelKind.EMAIL.value: EmailChannel.from_config,
        ChannelKind.WIDGET.value: WidgetChannel.from_config,
    }


class ApiChannel:
    """Conversations that came through the HTTP API: the integration reads replies back with
    `GET /api/v1/conversations/{id}`, so a reply is delivered once it is stored."""

    kind = ChannelKind.API.value

    def new_channel_key(self, *, message_id: int) -> str:
        return f"api-{message_id}-{uuid.uuid4().hex[:8]}"

    async def deliver(self, message: OutboundMessage) -> None:
        return None

    def describe_context(self, context: dict[str, Any]) -> list[ContextField]:
        # Whatever the integration sent, nested objects included (the inbox flattens it).
        return []

    async def aclose(self) -> None:
        return None


class UnconfiguredChannel(ApiChannel):
    """A conversation whose channel has no configured account (e.g. demo data): delivery
    fails with a clear reason rather than pretending the customer got the reply."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def new_channel_key(self, *, message_id: int) -> str:
        return f"{self.kind}-{message_id}-{uuid.uuid4().hex[:8]}"

    @staticmethod
    def is_placeholder(key: str, *, kind: str, message_id: int) -> bool:
        """Whether `key` is one this class made: a key no provider ever saw."""
        return key.startswith(f"{kind}-{message_id}-")

    async def deliver(self, message: OutboundMessage) -> None:
        raise DeliveryError(
            f"no {self.kind} account is configured for this conversation; add one under "
            "Settings → Channels, then retry",
            permanent=True,
        )


class DisabledChannel(UnconfiguredChannel):
    """An account an admin disabled: nothing goes out through it until it is enabled again
    (keys are still the account's own, so a retry after enabling it is a normal delivery)."""

    def __init__(self, inner: Channel, name: str) -> None:
        super().__init__(inner.kind)
        self.inner = inner
        self.name = name

    def new_channel_key(self, *, message_id: int) -> str:
        return self.inner.new_channel_key(message_id=message_id)

    async def deliver(self, message: OutboundMessage) -> None:
        raise DeliveryError(
            f"the {self.kind} account {self.name!r} is disabled; enable it in Settings → "
            "Channels, then retry",
            permanent=True,
        )


class ChannelRegistry:
    """One channel object per account, rebuilt when an admin changes the account."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[datetime, Channel]] = {}
        self._lock = asyncio.Lock()

    def build(self, account: ChannelAccount) -> Channel:
        secrets = secrets_of(account)
        factory = _factories().get(account.kind.value)
        if factory is None:
            return ApiChannel()
        return factory(dict(account.settings), secrets)

    async def for_account(self, account: ChannelAccount) -> Channel:
        async with self._lock:
            cached = self._cache.get(account.id)
            if cached is not None and cached[0] == account.updated_at:
                return cached[1]
            if cached is not None:
                await _close_quietly(cached[1])
            channel = self.build(account)
            self._cache[account.id] = (account.updated_at, channel)
            return channel

    async def for_conversation(
        self, session: AsyncSession, *, channel: str, account_id: int | None
    ) -> tuple[Channel, ChannelAccount | None]:
        """The channel that delivers this conversation's replies."""
        account = None
        if account_id is not None:
            account = await session.get(ChannelAccount, account_id)
        if account is None and channel in {k.value for k in ChannelKind} - {"api"}:
            # A conversation from before accounts existed: the only enabled account of its kind.
            rows = (
                await session.scalars(
                    select(ChannelAccount).where(
                        ChannelAccount.kind == ChannelKind(channel),
                        ChannelAccount.enabled.is_(True),
                    )
                )
            ).all()
            account = rows[0] if len(rows) == 1 else None
        if account is not None and not account.enabled:
            return DisabledChannel(await self.for_account(account), account.name), account
        if account is not None:
            return await self.for_account(account), account
        if channel == ChannelKind.WIDGET.value:
            from frankly.channels.widget.channel import WidgetChannel

            return WidgetChannel.from_config({}, {}), None
        if channel in {ChannelKind.EMAIL.value, ChannelKind.BYBIT.value}:
            return UnconfiguredChannel(channel), None
        return ApiChannel(), None

    async def aclose(self) -> None:
        for _, channel in self._cache.values():
            await _close_quietly(channel)
        self._cache.clear()


async def _close_quietly(channel: Channel) -> None:
    try:
        await channel.aclose()
    except Exception:  # closing a stale client must not break delivery
        log.debug("closing channel failed", exc_info=True)


REGISTRY = ChannelRegistry()

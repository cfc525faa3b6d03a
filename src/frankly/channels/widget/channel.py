"""The widget as a `Channel`: a reply is delivered once it is stored, because the visitor's
chat page reads it from the database (and is nudged to do so by the live feed)."""

from __future__ import annotations

from typing import Any

from frankly.channels.base import ContextField, OutboundMessage
from frankly.channels.models import ChannelKind

_LABELS = {
    "page_url": "Page",
    "user_agent": "Browser",
    "browser_language": "Browser language",
    "desk": "Chat",
}


class WidgetChannel:
    """Delivery is a no-op that succeeds: the stored message is what the visitor fetches."""

    kind = ChannelKind.WIDGET.value

    @classmethod
    def from_config(cls, settings: dict[str, Any], secrets: dict[str, Any]) -> WidgetChannel:
        return cls()

    def new_channel_key(self, *, message_id: int) -> str:
        return f"w-{message_id}"

    async def deliver(self, message: OutboundMessage) -> None:
        return None

    def describe_context(self, context: dict[str, Any]) -> list[ContextField]:
        """Where the visitor opened the chat: page, browser and language, as recorded at their
        first message."""
        return [
            ContextField(label, str(context[key])[:300])
            for key, label in _LABELS.items()
            if isinstance(context.get(key), str) and context[key]
        ]

    async def aclose(self) -> None:
        return None

"""Bybit P2P order chats as a polling channel: one conversation per pending order.

Each poll lists the pending orders, refreshes an order's facts when it is new or its status
changed, and reads the chats that may hold news (new order, status change, unread messages, or
not looked at for `rescan_seconds`). The cursor remembers, per open order, its status, its facts
and the ids of messages already seen, so repeating a poll (or restarting) yields nothing twice.
Buyers' account numbers never leave this module.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import posixpath
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

from frankly.channels.base import (
    ContextField,
    ContextUpdate,
    DeliveryError,
    InboundAttachment,
    InboundMessage,
    OutboundMessage,
    PollResult,
    generic_context,
)
from frankly.channels.bybit.client import (
    RECV_WINDOW_ERROR,
    BybitAuthError,
    BybitClient,
    BybitError,
    BybitRateLimited,
    BybitUnavailable,
)
from frankly.channels.service import sniff_content_type

log = logging.getLogger("frankly.channels.bybit")

DEFAULT_BASE_URL = "https://api.bybit.com"
PAGE_SIZE = 30
MAX_PAGES = 20  # 600 orders or messages per listing: far beyond a desk's open orders
MAX_SEEN = 500  # message ids remembered per open order
# Chat files Frankly keeps, by their sniffed type (the upload endpoint takes jpg, png, pdf, mp4).
KEPT_FILE_TYPES = frozenset(
    {"image/jpeg", "image/png", "image/gif", "image/webp", "application/pdf"}
)
CURSOR_VERSION = 1

STATUS_NAMES = {
    5: "waiting for chain",
    10: "waiting for buyer payment",
    20: "waiting for seller release",
    30: "appealing",
    40: "cancelled",
    50: "finished",
    60: "paying",
    70: "pay failed",
    80: "exception cancelled",
    90: "waiting for buyer token choice",
    100: "objectioning",
    110: "waiting for the user to raise an objection",
}
SIDES = {0: "buy", 1: "sell"}
TRANSIENT = (BybitRateLimited, BybitUnavailable)


class BybitChannel:
    """Reads order chats and sends replies; it cannot mark orders paid or release assets."""

    kind = "bybit"

    def __init__(
        self, client: BybitClient, *, poll_seconds: float = 10.0, rescan_seconds: float = 60.0
    ) -> None:
        self.client = client
        self.poll_seconds = poll_seconds
        self.rescan_seconds = rescan_seconds
        self._user_id: str | None = None

    @classmethod
    def from_config(
        cls, settings: dict[str, Any], secrets: dict[str, Any], **client_options: Any
    ) -> BybitChannel:
        """Build from a channel account's settings (base_url, poll_seconds, recv_window,
        rescan_seconds) and secrets (api_key, api_secret); `client_options` go to BybitClient."""
        base_url = str(settings.get("base_url") or DEFAULT_BASE_URL)
        if urlsplit(base_url).scheme not in ("http", "https") or not urlsplit(base_url).netloc:
            raise ValueError(f"bybit base_url {base_url!r} is not an http(s) URL")
        for name in ("api_key", "api_secret"):
            if not isinstance(secrets.get(name), str) or not secrets[name]:
                raise ValueError(f"bybit secret {name!r} is missing")
        poll_seconds = _positive(settings, "poll_seconds", 10.0)
        rescan_seconds = _positive(settings, "rescan_seconds", 60.0)
        recv_window = int(_positive(settings, "recv_window", 5000))
        client = BybitClient(
            base_url, secrets["api_key"], secrets["api_secret"], recv_window, **client_options
        )
        return cls(client, poll_seconds=poll_seconds, rescan_seconds=rescan_seconds)

    # -- Channel ---------------------------------------------------------------------------------

    def new_channel_key(self, *, message_id: int) -> str:
        return uuid.uuid4().hex

    async def deliver(self, message: OutboundMessage) -> None:
        """Send the reply into the order chat with msgUuid = channel_key (Bybit dedupes on it)."""
        if message.attachments:
            raise DeliveryError(
                "the Bybit channel cannot send attachments (file upload is not implemented)",
                permanent=True,
            )
        if not message.text.strip():
            raise DeliveryError("an empty message cannot be sent to a Bybit chat", permanent=True)
        try:
            await self.client.send_chat_message(
                message.conversation_external_id, message.text, message.channel_key
            )
        except TRANSIENT as exc:
            raise DeliveryError(str(exc), permanent=False) from exc
        except BybitAuthError as exc:
            raise DeliveryError(str(exc), permanent=exc.code != RECV_WINDOW_ERROR) from exc
        except BybitError as exc:  # order closed, invalid parameters…
            raise DeliveryError(str(exc), permanent=True) from exc

    def describe_context(self, context: dict[str, Any]) -> list[ContextField]:
        order = context.get("order")
        if not isinstance(order, dict):
            return generic_context(context)
        fields: list[ContextField] = []

        def add(label: str, value: Any) -> None:
            if value not in (None, ""):
                fields.append(ContextField(label, str(value)))

        currency = order.get("currency") or ""
        add("Order", order.get("id"))
        if order.get("amount"):
            add("Amount", f"{_grouped(order['amount'])} {currency}".strip())
        if order.get("token"):
            quantity = f"{_grouped(order['quantity'])} " if order.get("quantity") else ""
            price = f" at {order['price']} {currency}".rstrip() if order.get("price") else ""
            add("Token", f"{quantity}{order['token']}{price}")
        if order.get("status"):
            code = order.get("status_code")
            add("Status", f"{order['status']} ({code})" if code is not None else order["status"])
        add("Side", order.get("side"))
        add("Payment method", order.get("payment_method"))
        add("Counterparty", order.get("counterparty"))
        return fields

    async def aclose(self) -> None:
        await self.client.aclose()

    # -- PollingChannel --------------------------------------------------------------------------

    async def wait_for_activity(self, timeout: float) -> None:
        await asyncio.sleep(timeout)

    async def poll(self, cursor: dict[str, Any]) -> PollResult:
        """New chat messages and order facts since `cursor`. After a rate limit or outage
        mid-way, the orders done so far are returned (the rest keep their old cursor)."""
        orders: dict[str, dict[str, Any]] = copy.deepcopy(dict(cursor.get("orders") or {}))
        result = PollResult()
        me = await self._own_user_id()
        listing = await self._pending_orders()
        try:
            for item in listing:
                order_id = str(item.get("id"))
                entry = await self._refresh(order_id, item, orders.get(order_id), me, result)
                if entry is not None:
                    orders[order_id] = entry
            listed = {str(item.get("id")) for item in listing}
            for order_id in [o for o in orders if o not in listed]:
                if await self._finish(order_id, orders[order_id], me, result):
                    del orders[order_id]
        except TRANSIENT as exc:
            if not result.messages and not result.contexts:
                raise
            log.warning("bybit poll stopped early, resuming next time: %s", exc)
        result.cursor = {"v": CURSOR_VERSION, "orders": orders}
        return result

    async def _own_user_id(self) -> str:
        if self._user_id is None:
            info = await self.client.account_info()
            user_id = info.get("userId")
            if user_id in (None, ""):
                raise BybitError(-1, "account info has no userId (is this a P2P advertiser?)")
            self._user_id = str(user_id)
        return self._user_id

    async def _pending_orders(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for page in range(1, MAX_PAGES + 1):
            result = await self.client.pending_orders(page, PAGE_SIZE)
            batch = [i for i in result.get("items") or [] if isinstance(i, dict) and i.get("id")]
            items.extend(batch)
            count = result.get("count")
            if len(batch) < PAGE_SIZE or (isinstance(count, int) and len(items) >= count):
                break
        return items

    async def _refresh(
        self,
        order_id: str,
        item: dict[str, Any],
        previous: dict[str, Any] | None,
        me: str,
        result: PollResult,
    ) -> dict[str, Any] | None:
        """One listed order: its facts when new or changed, then its chat when it may have news.
        Returns the order's new cursor entry, or None to leave it as it was."""
        entry: dict[str, Any] = (
            copy.deepcopy(previous) if previous else {"seen": [], "checked": 0.0}
        )
        status = _int(item.get("status"))
        unread = f"{item.get('selfUnreadMsgCount', '')}/{item.get('unreadMsgCount', '')}"
        changed = previous is None or previous.get("status") != status
        contexts: list[ContextUpdate] = []
        try:
            if changed:
                entry["ctx"] = await self._order_context(order_id, item)
                entry["status"] = status
                contexts.append(ContextUpdate(order_id, entry["ctx"]))
            has_unread = any(_int(item.get(k)) for k in ("selfUnreadMsgCount", "unreadMsgCount"))
            stale = time.time() - float(entry.get("checked") or 0) >= self.rescan_seconds
            messages: list[InboundMessage] = []
            if changed or stale or has_unread or unread != entry.get("unread"):
                messages = await self._read_chat(order_id, entry, me)
                entry["checked"] = time.time()
            entry["unread"] = unread
        except (*TRANSIENT, BybitAuthError):
            raise
        except BybitError as exc:
            log.warning("bybit order %s skipped this poll: %s", order_id, exc)
            return None
        result.contexts.extend(contexts)
        result.messages.extend(messages)
        return entry

    async def _finish(
        self, order_id: str, entry: dict[str, Any], me: str, result: PollResult
    ) -> bool:
        """An order left the pending list: record its final status and last messages.
        True when it can be dropped from the cursor."""
        try:
            info = await self.client.order_info(order_id)
            ctx = order_context(info)
            entry = copy.deepcopy(entry)
            entry["ctx"] = ctx
            messages = await self._read_chat(order_id, entry, me)
        except (*TRANSIENT, BybitAuthError):
            raise
        except BybitError as exc:
            log.warning("bybit order %s closed; its final state is unknown: %s", order_id, exc)
            return True
        result.contexts.append(ContextUpdate(order_id, ctx))
        result.messages.extend(messages)
        return True

    async def _order_context(self, order_id: str, item: dict[str, Any]) -> dict[str, Any]:
        try:
            info = await self.client.order_info(order_id)
        except (*TRANSIENT, BybitAuthError):
            raise
        except BybitError as exc:  # the list item has most facts; better those than none
            log.warning("bybit order %s: detail unavailable, using the list: %s", order_id, exc)
            info = {}
        return order_context({**item, **info})

    async def _read_chat(
        self, order_id: str, entry: dict[str, Any], me: str
    ) -> list[InboundMessage]:
        """Page the chat until a short page (or, when the list is newest-first, a page with
        nothing new); turn unseen messages into InboundMessages, oldest first."""
        seen: list[str] = list(entry.get("seen") or [])
        known = set(seen)
        fresh: dict[str, dict[str, Any]] = {}
        for page in range(1, MAX_PAGES + 1):
            batch = [m for m in await self.client.chat_messages(order_id, page, PAGE_SIZE)]
            batch = [m for m in batch if isinstance(m, dict) and m.get("id") is not None]
            new = [m for m in batch if str(m["id"]) not in known and str(m["id"]) not in fresh]
            fresh.update((str(m["id"]), m) for m in new)
            if len(batch) < PAGE_SIZE or (not new and _newest_first(batch)):
                break
        ordered = sorted(fresh.values(), key=lambda m: (_int(m.get("createDate")), str(m["id"])))
        out: list[InboundMessage] = []
        for message in ordered:
            inbound = await self._inbound(order_id, message, entry.get("ctx") or {}, me)
            if inbound is not None:
                out.append(inbound)
            seen.append(str(message["id"]))
        entry["seen"] = seen[-MAX_SEEN:]
        return out

    async def _inbound(
        self, order_id: str, message: dict[str, Any], ctx: dict[str, Any], me: str
    ) -> InboundMessage | None:
        if str(message.get("userId", "")) == me:
            return None  # our own replies come back through the chat list
        msg_type = _int(message.get("msgType"), 1)
        content = str(message.get("contentType") or "str").lower()
        system = msg_type == 0 or message.get("roleType") == "sys"
        support = msg_type in (5, 6)
        body = str(message.get("message") or "")
        name = str(message.get("fileName") or "") or _file_name(body)
        attachments: list[InboundAttachment] = []
        text = body
        if not system and (msg_type in (2, 6, 7) or content in ("pic", "pdf")):
            kind = "pdf" if msg_type == 7 or content == "pdf" else "image"
            try:
                file = await self.client.download(body)
            except (*TRANSIENT, BybitAuthError):
                raise
            except BybitError as exc:
                text = f"[{kind} {name} could not be downloaded: {exc.message}]"
            else:
                # The bytes decide the type (a header or the message's contentType can lie).
                real = sniff_content_type(file.data, "")
                if real in KEPT_FILE_TYPES:
                    attachments.append(InboundAttachment(name or f"{kind}", real, file.data))
                    text = ""
                else:
                    text = f"[{kind} {name} was not kept: not a JPEG, PNG, GIF, WebP or PDF file]"
        elif msg_type == 8 or content == "video":
            text = f"[video: {name or 'video'}]"
        if support:
            text = f"Bybit support: {text}".strip()
        order = ctx.get("order") or {}
        return InboundMessage(
            conversation_external_id=order_id,
            message_external_id=str(message["id"]),
            text=text,
            contact_external_id=order.get("counterparty_id") or None,
            contact_name=order.get("counterparty") or None,
            created_at=_ms_to_datetime(message.get("createDate")),
            attachments=attachments,
            context=ctx or None,
            system=system,
            skip_drafting=support,
            skip_reason="a message from Bybit support" if support else None,
        )


def order_context(info: dict[str, Any]) -> dict[str, Any]:
    """The order's facts under "order" (so FAQ answers can use `{{order.amount}}`). Holds no
    account numbers and no real names: only bank names and the counterparty's nickname."""
    status = _int(info.get("status"), -1)
    side = _int(info.get("side"), -1)
    order = {
        "id": str(info.get("id") or ""),
        "amount": _str(info.get("amount")),
        "currency": _str(info.get("currencyId")),
        "token": _str(info.get("tokenId")),
        "price": _str(info.get("price")),
        "quantity": _str(info.get("quantity")),
        "side": SIDES.get(side, ""),
        "status": STATUS_NAMES.get(status, f"status {status}" if status >= 0 else ""),
        "status_code": status if status >= 0 else None,
        "payment_method": _payment_method(info),
        "counterparty": _str(info.get("targetNickName")),
        "counterparty_id": _str(info.get("targetUserId")),
        "created_at": _iso(info.get("createDate")),
    }
    return {"order": {k: v for k, v in order.items() if v not in ("", None)}}


def _payment_method(info: dict[str, Any]) -> str:
    """Bank names only (never account numbers): the confirmed term, else every offered term."""
    confirmed = info.get("confirmedPayTerm")
    terms = [confirmed] if isinstance(confirmed, dict) and _term_name(confirmed) else []
    if not terms:
        terms = [t for t in info.get("paymentTermList") or [] if isinstance(t, dict)]
    names = list(dict.fromkeys(n for n in map(_term_name, terms) if n))
    return ", ".join(names)


def _term_name(term: dict[str, Any]) -> str:
    bank = _str(term.get("bankName"))
    if bank:
        return bank
    kind = _str(term.get("paymentType"))
    return f"payment type {kind}" if kind else ""


def _grouped(value: Any) -> str:
    try:
        return f"{Decimal(str(value)):,}"
    except (InvalidOperation, ValueError):
        return str(value)


def _newest_first(batch: list[dict[str, Any]]) -> bool:
    return len(batch) > 1 and _int(batch[0].get("createDate")) > _int(batch[-1].get("createDate"))


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def _file_name(url: str) -> str:
    """The last path segment of a file URL ("" if the URL cannot be parsed)."""
    try:
        return posixpath.basename(urlsplit(url).path)
    except ValueError:
        return ""


def _ms_to_datetime(value: Any) -> datetime | None:
    ms = _int(value, -1)
    return datetime.fromtimestamp(ms / 1000, UTC) if ms > 0 else None


def _iso(value: Any) -> str:
    moment = _ms_to_datetime(value)
    return moment.isoformat() if moment else ""


def _positive(settings: dict[str, Any], name: str, default: float) -> float:
    value = settings.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"bybit setting {name!r} must be a positive number, not {value!r}")
    return float(value)

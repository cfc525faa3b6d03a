"""The email channel: a mailbox polled over IMAP (woken by IDLE), replies sent over SMTP."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from frankly.channels.base import (
    ContextField,
    DeliveryError,
    InboundMessage,
    OutboundMessage,
    PollResult,
)
from frankly.channels.email import TLS_MODES, TlsMode
from frankly.channels.email.imap import (
    IdleWaiter,
    ImapError,
    ImapSettings,
    append_sent,
    fetch_new,
    sent_contains,
)
from frankly.channels.email.parse import parse_message
from frankly.channels.email.smtp import SmtpSettings, build_message, send_message
from frankly.errors import Invalid

log = logging.getLogger("frankly.channels.email")

_DEFAULT_PORTS = {
    "imap": {"ssl": 993, "starttls": 143, "none": 143},
    "smtp": {"ssl": 465, "starttls": 587, "none": 25},
}


def _text(settings: dict[str, Any], key: str, default: str | None = None) -> str:
    value = settings.get(key, default)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise Invalid(f"email channel setting {key!r} is required")
    if not isinstance(value, str):
        raise Invalid(f"email channel setting {key!r} must be a string, not {value!r}")
    return value.strip()


def _tls(settings: dict[str, Any], key: str, default: TlsMode) -> TlsMode:
    value = settings.get(key) or default
    for mode in TLS_MODES:
        if value == mode:
            return mode
    raise Invalid(f"email channel setting {key!r} must be one of {', '.join(TLS_MODES)}")


def _port(settings: dict[str, Any], key: str, default: int) -> int:
    value = settings.get(key) or default
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = 0
    if not 0 < port < 65536:
        raise Invalid(f"email channel setting {key!r} must be a port number, not {value!r}")
    return port


def _positive(settings: dict[str, Any], key: str, default: float) -> float:
    value = settings.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = 0.0
    if number <= 0:
        raise Invalid(f"email channel setting {key!r} must be a positive number, not {value!r}")
    return number


class EmailChannel:
    """One support mailbox. Inbound: new UIDs since the cursor, never flagged read. Outbound:
    a plain-text reply threaded under the customer's mail, one Message-ID per outbox entry."""

    kind = "email"

    def __init__(
        self,
        *,
        imap: ImapSettings,
        smtp: SmtpSettings,
        from_address: str,
        display_name: str | None = None,
        poll_seconds: float = 60.0,
        batch_limit: int = 100,
        sent_mailbox: str | None = "Sent",
    ) -> None:
        self.imap = imap
        self.smtp = smtp
        self.from_address = from_address.strip()
        self.display_name = display_name
        self.poll_seconds = poll_seconds
        self.batch_limit = batch_limit
        self.sent_mailbox = sent_mailbox or None
        self._position: tuple[int, int] | None = None  # (uidvalidity, last_uid) of the last poll
        self._idle: bool | None = None
        self._backlog = False
        self._waiters: set[IdleWaiter] = set()

    @classmethod
    def from_config(cls, settings: dict[str, Any], secrets: dict[str, Any]) -> EmailChannel:
        """Build from an account's settings (hosts, ports, TLS modes, addresses) and secrets
        (`imap_password`, `smtp_password`, which defaults to the IMAP one)."""
        from_address = _text(settings, "from_address")
        if from_address.count("@") != 1:
            raise Invalid(f"email channel setting 'from_address' is not an address: {from_address}")
        imap_tls = _tls(settings, "imap_tls", "ssl")
        smtp_tls = _tls(settings, "smtp_tls", "starttls")
        imap_user = _text(settings, "imap_user", from_address)
        imap_password = _text(secrets, "imap_password")
        timeout = _positive(settings, "timeout_seconds", 30.0)
        imap = ImapSettings(
            host=_text(settings, "imap_host"),
            port=_port(settings, "imap_port", _DEFAULT_PORTS["imap"][imap_tls]),
            user=imap_user,
            password=imap_password,
            tls=imap_tls,
            mailbox=_text(settings, "mailbox", "INBOX"),
            timeout=timeout,
        )
        smtp_user = settings.get("smtp_user", imap_user) or None
        smtp = SmtpSettings(
            host=_text(settings, "smtp_host", settings.get("imap_host")),
            port=_port(settings, "smtp_port", _DEFAULT_PORTS["smtp"][smtp_tls]),
            user=smtp_user if isinstance(smtp_user, str) else None,
            password=str(secrets.get("smtp_password") or imap_password) if smtp_user else None,
            tls=smtp_tls,
            timeout=timeout,
        )
        name = settings.get("display_name")
        return cls(
            imap=imap,
            smtp=smtp,
            from_address=from_address,
            display_name=name if isinstance(name, str) and name.strip() else None,
            poll_seconds=_positive(settings, "poll_seconds", 60.0),
            sent_mailbox=str(settings.get("sent_mailbox", "Sent") or "") or None,
        )

    # --- outbound --------------------------------------------------------------------------

    def new_channel_key(self, *, message_id: int) -> str:
        """A Message-ID in the form inbound ids are normalised to, so replies thread back."""
        domain = self.from_address.rsplit("@", 1)[-1].lower()
        return f"<frankly.{message_id}.{uuid.uuid4().hex}@{domain}>"

    async def deliver(self, message: OutboundMessage) -> None:
        """Send through SMTP once per Message-ID: SMTP has no idempotency of its own, so every
        sent mail is also filed in the Sent folder, and a retry (attempt > 1, perhaps after a
        crash between "sent" and "recorded") first looks there and sends nothing if it is."""
        msg = build_message(message, from_address=self.from_address, display_name=self.display_name)
        if self.sent_mailbox and message.attempt > 1:
            try:
                if await asyncio.to_thread(
                    sent_contains, self.imap, self.sent_mailbox, message.channel_key
                ):
                    log.info(
                        "%s is already in %s: not sent again",
                        message.channel_key,
                        self.sent_mailbox,
                    )
                    return
            except ImapError as exc:
                # Can't tell: better late than twice. Retried later (not permanent).
                raise DeliveryError(f"checking {self.sent_mailbox} before a resend: {exc}") from exc
        await send_message(self.smtp, msg)
        if self.sent_mailbox:
            try:
                await asyncio.to_thread(append_sent, self.imap, self.sent_mailbox, msg.as_bytes())
            except ImapError as exc:  # the mail went out; only the copy is missing
                log.warning(
                    "sent %s but could not file it in %s: %s",
                    message.channel_key,
                    self.sent_mailbox,
                    exc,
                )

    def describe_context(self, context: dict[str, Any]) -> list[ContextField]:
        email_context = context.get("email")
        if not isinstance(email_context, dict):
            return []
        fields = []
        for key, label in (("subject", "Subject"), ("from", "From")):
            value = email_context.get(key)
            if isinstance(value, str) and value:
                fields.append(ContextField(label, value))
        return fields

    # --- inbound ---------------------------------------------------------------------------

    async def poll(self, cursor: dict[str, Any]) -> PollResult:
        """Mails newer than `cursor` (`{"uidvalidity", "last_uid"}`), at most `batch_limit`."""
        uidvalidity = cursor.get("uidvalidity")
        last_uid = cursor.get("last_uid", 0)
        batch = await asyncio.to_thread(
            fetch_new,
            self.imap,
            uidvalidity=int(uidvalidity) if isinstance(uidvalidity, int | str) else None,
            last_uid=int(last_uid) if isinstance(last_uid, int | str) else 0,
            limit=self.batch_limit,
        )
        self._idle = batch.idle
        self._backlog = batch.more
        self._position = (batch.uidvalidity, batch.last_uid)
        # Parsing is CPU work on untrusted input: keep it off the event loop the web app shares.
        messages = await asyncio.to_thread(self._parse_batch, [mail.raw for mail in batch.mails])
        return PollResult(
            messages=messages,
            cursor={"uidvalidity": batch.uidvalidity, "last_uid": batch.last_uid},
        )

    def _parse_batch(self, raws: list[bytes]) -> list[InboundMessage]:
        """The customer mails among `raws` (runs in a worker thread)."""
        return [m for m in (self._inbound(raw) for raw in raws) if m is not None]

    def _inbound(self, raw: bytes) -> InboundMessage | None:
        message = parse_message(raw)
        if message.contact_external_id == self.from_address.lower():
            return None  # our own reply (a copy, or a list echoing it): not a customer message
        return message

    async def wait_for_activity(self, timeout: float) -> None:
        """IDLE until the mailbox gets a message newer than the last poll, else sleep."""
        if self._backlog:
            return
        if self._position is None or self._idle is False:
            await asyncio.sleep(timeout)
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiter = IdleWaiter(self.imap)
        self._waiters.add(waiter)
        uidvalidity, last_uid = self._position
        try:
            result = await asyncio.to_thread(
                waiter.wait, timeout, uidvalidity=uidvalidity, last_uid=last_uid
            )
        except asyncio.CancelledError:
            waiter.abort()
            raise
        except ImapError as exc:
            log.warning("IMAP IDLE on %s failed: %s", self.imap.host, exc)
            result = False
        finally:
            self._waiters.discard(waiter)
        if result is None:
            self._idle = False
        if not result:
            await asyncio.sleep(max(0.0, timeout - (loop.time() - started)))

    async def aclose(self) -> None:
        for waiter in list(self._waiters):
            waiter.abort()
        self._waiters.clear()

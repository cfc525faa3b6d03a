"""Outbound mail: a reply a person sent, as a threaded RFC 5322 message, handed to SMTP.

Errors are sorted for the outbox: a 5xx that names this message or recipient is permanent (a
retry would be refused again); 4xx, timeouts, lost connections and auth trouble are retried.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

import aiosmtplib

from frankly.channels.base import DeliveryError, OutboundMessage
from frankly.channels.email import TlsMode
from frankly.channels.email.parse import normalise_message_id

# RFC 5322 suggests keeping the root and the most recent ids when References grows long.
MAX_REFERENCES = 20


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    port: int
    user: str | None
    password: str | None
    tls: TlsMode
    timeout: float = 30.0


def _one_line(value: str) -> str:
    return " ".join(value.split())


def reply_subject(subject: str | None) -> str:
    """`Re: <subject>`, without stacking `Re: Re:` (also for the Russian `Ответ:`/`RE:`)."""
    subject = _one_line(subject or "")
    if not subject:
        return "Re: your message"
    if re.match(r"^(re|ответ|aw)\s*(\[\d+\])?\s*:", subject, re.IGNORECASE):
        return subject
    return f"Re: {subject}"


def _address(address: str, name: str | None, what: str) -> Address:
    address = address.strip()
    if address.count("@") != 1 or any(ch.isspace() or ch in '<>,;"' for ch in address):
        raise DeliveryError(f"{what} {address!r} is not a usable email address", permanent=True)
    local, domain = address.split("@")
    if not local or not domain:
        raise DeliveryError(f"{what} {address!r} is not a usable email address", permanent=True)
    try:
        return Address(display_name=_one_line(name or ""), username=local, domain=domain)
    except (ValueError, IndexError) as exc:
        raise DeliveryError(f"{what} {address!r} is not usable: {exc}", permanent=True) from exc


def build_message(
    message: OutboundMessage, *, from_address: str, display_name: str | None
) -> EmailMessage:
    """The reply as sent: our Message-ID (the outbox's idempotency key), threading headers, the
    text exactly as the send gate produced it (disclosure included), plain UTF-8."""
    if not message.contact_external_id:
        raise DeliveryError("the conversation has no customer email address", permanent=True)
    email_context = message.context.get("email")
    subject = email_context.get("subject") if isinstance(email_context, dict) else None
    msg = EmailMessage()
    msg["From"] = _address(from_address, display_name, "the desk's from address")
    msg["To"] = _address(message.contact_external_id, message.contact_name, "customer address")
    msg["Subject"] = reply_subject(subject if isinstance(subject, str) else None)
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = message.channel_key
    ids = [i for i in (normalise_message_id(t) for t in message.thread_ids) if i]
    if ids:
        if len(ids) > MAX_REFERENCES:
            ids = [ids[0], *ids[-(MAX_REFERENCES - 1) :]]
        msg["In-Reply-To"] = ids[-1]
        msg["References"] = " ".join(ids)
    msg["Auto-Submitted"] = "no"
    msg["X-Frankly-Origin"] = _one_line(message.origin)
    msg.set_content(message.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    for attachment in message.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        msg.add_attachment(
            attachment.data,
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=attachment.filename,
        )
    return msg


async def send_message(settings: SmtpSettings, msg: EmailMessage) -> None:
    """Hand one message to the SMTP server, or raise `DeliveryError` saying why and whether a
    retry can help."""
    where = f"SMTP server {settings.host}:{settings.port}"
    try:
        await aiosmtplib.send(
            msg,
            hostname=settings.host,
            port=settings.port,
            username=settings.user or None,
            password=settings.password if settings.user else None,
            use_tls=settings.tls == "ssl",
            start_tls=settings.tls == "starttls",
            timeout=settings.timeout,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [r.code for r in exc.recipients]
        detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        permanent = bool(codes) and all(code >= 500 for code in codes)
        raise DeliveryError(
            f"{where} refused the recipient ({detail})", permanent=permanent
        ) from exc
    except aiosmtplib.SMTPAuthenticationError as exc:
        # A wrong password is the admin's to fix; the reply waits in the outbox meanwhile.
        raise DeliveryError(
            f"{where} rejected the login for {settings.user!r}: {exc.code} {exc.message}"
        ) from exc
    except (aiosmtplib.SMTPSenderRefused, aiosmtplib.SMTPDataError) as exc:
        raise DeliveryError(
            f"{where} refused the message: {exc.code} {exc.message}", permanent=exc.code >= 500
        ) from exc
    except aiosmtplib.SMTPResponseException as exc:
        raise DeliveryError(f"{where} answered {exc.code} {exc.message}") from exc
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        raise DeliveryError(f"could not reach {where}: {exc}") from exc

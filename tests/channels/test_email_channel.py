"""The email channel against real servers on loopback: pymap (IMAP, with IDLE) and aiosmtpd."""

from __future__ import annotations

import asyncio
import time
from email.message import EmailMessage
from typing import Any

import pytest

from frankly.channels.base import (
    ContextField,
    DeliveryError,
    OutboundMessage,
    PollingChannel,
)
from frankly.channels.email.channel import EmailChannel
from frankly.channels.email.imap import ImapError
from frankly.channels.email.parse import normalise_message_id, parse_message, thread_ids
from frankly.errors import Invalid
from tests.conftest import IN_CI

try:
    from tests.fakes.mail_servers import ImapServer, SmtpServer, closed_port
except ImportError as exc:  # pymap is a dev dependency
    if IN_CI:
        raise
    pytest.skip(
        f"mail test servers unavailable ({exc}); pip install pymap", allow_module_level=True
    )

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
DISCLOSURE = "— Ответ подготовлен ассистентом Frankly (бот) и проверен сотрудником."


def mail(
    n: int,
    *,
    sender: str = "Bob <bob@example.org>",
    body: str | None = None,
    **headers: str,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "support@example.com"
    msg["Subject"] = f"Question {n}"
    msg["Message-ID"] = f"<q{n}@example.org>"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body or f"Where is order {n}?")
    return msg.as_bytes()


def make_channel(
    imap: ImapServer | None = None, smtp: SmtpServer | None = None, **overrides: Any
) -> EmailChannel:
    settings: dict[str, Any] = {
        "imap_host": "127.0.0.1",
        "imap_port": imap.port if imap else closed_port(),
        "imap_tls": "none",
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port if smtp else closed_port(),
        "smtp_tls": "none",
        "smtp_user": "",
        "from_address": "support@example.com",
        "display_name": "ACME Support",
        "timeout_seconds": 5,
        **overrides,
    }
    return EmailChannel.from_config(settings, {"imap_password": "secret"})


def outbound(channel: EmailChannel, **overrides: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "message_id": 7,
        "conversation_external_id": "<q1@example.org>",
        "channel_key": channel.new_channel_key(message_id=7),
        "text": f"Ваш заказ отправлен 15 января.\n\n{DISCLOSURE}",
        "body_text": "Ваш заказ отправлен 15 января.",
        "origin": "draft_edited",
        "disclosure": DISCLOSURE,
        "language": "ru",
        "context": {"email": {"subject": "Where is my order?", "from": "Bob <bob@example.org>"}},
        "contact_external_id": "bob@example.org",
        "contact_name": "Bob",
        "thread_ids": ("<q1@example.org>", "<frankly.5.aa@example.com>", "<q2@example.org>"),
        **overrides,
    }
    return OutboundMessage(**fields)


class TestConfig:
    def test_is_a_polling_channel(self, imap: ImapServer) -> None:
        channel = make_channel(imap)
        assert isinstance(channel, PollingChannel)
        assert channel.kind == "email"

    def test_defaults(self) -> None:
        channel = EmailChannel.from_config(
            {"imap_host": "mail.example.com", "from_address": "help@example.com"},
            {"imap_password": "pw"},
        )
        assert (channel.imap.port, channel.imap.tls, channel.imap.mailbox) == (993, "ssl", "INBOX")
        assert channel.imap.user == "help@example.com"
        assert (channel.smtp.host, channel.smtp.port, channel.smtp.tls) == (
            "mail.example.com",
            587,
            "starttls",
        )
        assert (channel.smtp.user, channel.smtp.password) == ("help@example.com", "pw")
        assert channel.poll_seconds == 60.0

    @pytest.mark.parametrize(
        ("settings", "secrets", "message"),
        [
            ({"from_address": "a@b.c"}, {"imap_password": "x"}, "'imap_host' is required"),
            ({"imap_host": "h", "from_address": "a@b.c"}, {}, "'imap_password' is required"),
            ({"imap_host": "h"}, {"imap_password": "x"}, "'from_address' is required"),
            (
                {"imap_host": "h", "from_address": "a@b.c", "imap_tls": "tls"},
                {"imap_password": "x"},
                "'imap_tls' must be one of ssl, starttls, none",
            ),
            (
                {"imap_host": "h", "from_address": "a@b.c", "smtp_port": "abc"},
                {"imap_password": "x"},
                "'smtp_port' must be a port number",
            ),
        ],
    )
    def test_bad_settings_say_what_is_wrong(
        self, settings: dict[str, Any], secrets: dict[str, Any], message: str
    ) -> None:
        with pytest.raises(Invalid, match=message):
            EmailChannel.from_config(settings, secrets)

    def test_describe_context(self) -> None:
        channel = make_channel()
        context = {"email": {"subject": "Refund", "from": "Bob <bob@example.org>"}}
        assert channel.describe_context(context) == [
            ContextField("Subject", "Refund"),
            ContextField("From", "Bob <bob@example.org>"),
        ]
        assert channel.describe_context({}) == []


class TestPoll:
    async def test_new_mail_arrives_once(self, imap: ImapServer) -> None:
        imap.append(mail(1))
        imap.append(mail(2))
        channel = make_channel(imap)
        first = await channel.poll({})
        assert [m.message_external_id for m in first.messages] == [
            "<q1@example.org>",
            "<q2@example.org>",
        ]
        assert first.messages[0].text == "Where is order 1?"
        assert first.messages[0].contact_external_id == "bob@example.org"
        assert set(first.cursor) == {"uidvalidity", "last_uid"}

        again = await channel.poll(first.cursor)
        assert again.messages == []
        assert again.cursor == first.cursor

        imap.append(mail(3))
        third = await channel.poll(again.cursor)
        assert [m.message_external_id for m in third.messages] == ["<q3@example.org>"]
        assert third.cursor["last_uid"] > first.cursor["last_uid"]
        # Polling never flags anything \\Seen: the mailbox still looks unread to people.
        assert imap.seen_flags() and not any(imap.seen_flags().values())

    async def test_a_restarted_channel_resumes_from_the_stored_cursor(
        self, imap: ImapServer
    ) -> None:
        imap.append(mail(1))
        cursor = (await make_channel(imap).poll({})).cursor
        imap.append(mail(2))
        imap.append(mail(3))
        restarted = make_channel(imap)
        result = await restarted.poll(dict(cursor))
        assert [m.message_external_id for m in result.messages] == [
            "<q2@example.org>",
            "<q3@example.org>",
        ]
        assert (await make_channel(imap).poll(result.cursor)).messages == []

    async def test_cursor_past_the_newest_uid_returns_nothing(self, imap: ImapServer) -> None:
        imap.append(mail(1))
        cursor = (await make_channel(imap).poll({})).cursor
        # IMAP answers "UID n:*" with the newest message even when n is past it.
        ahead = {**cursor, "last_uid": cursor["last_uid"] + 10}
        result = await make_channel(imap).poll(ahead)
        assert result.messages == []
        assert result.cursor == ahead

    async def test_changed_uidvalidity_rescans_the_mailbox(self, imap: ImapServer) -> None:
        imap.append(mail(1))
        imap.append(mail(2))
        cursor = (await make_channel(imap).poll({})).cursor
        stale = {"uidvalidity": cursor["uidvalidity"] + 1, "last_uid": cursor["last_uid"]}
        result = await make_channel(imap).poll(stale)
        assert [m.message_external_id for m in result.messages] == [
            "<q1@example.org>",
            "<q2@example.org>",
        ]
        assert result.cursor == cursor

    async def test_large_backlogs_come_in_batches(self, imap: ImapServer) -> None:
        for n in range(1, 6):
            imap.append(mail(n))
        channel = make_channel(imap)
        channel.batch_limit = 2
        seen: list[str] = []
        cursor: dict[str, Any] = {}
        for _ in range(3):
            result = await channel.poll(cursor)
            seen += [m.message_external_id for m in result.messages]
            cursor = result.cursor
            if len(seen) < 5:
                started = time.monotonic()
                await channel.wait_for_activity(10)  # backlog: no waiting
                assert time.monotonic() - started < 0.5
        assert seen == [f"<q{n}@example.org>" for n in range(1, 6)]

    async def test_attachments_arrive(self, imap: ImapServer) -> None:
        msg = EmailMessage()
        msg["From"] = "carol@example.org"
        msg["Message-ID"] = "<att@example.org>"
        msg["Subject"] = "Screenshot"
        msg.set_content("Payment screenshot and invoice attached")
        msg.add_attachment(PNG, maintype="image", subtype="png", filename="pay.png")
        msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="invoice.pdf")
        imap.append(msg.as_bytes())
        (inbound,) = (await make_channel(imap).poll({})).messages
        assert [(a.filename, a.content_type, a.data) for a in inbound.attachments] == [
            ("pay.png", "image/png", PNG),
            ("invoice.pdf", "application/pdf", PDF),
        ]

    async def test_auto_replies_and_bounces_are_flagged(self, imap: ImapServer) -> None:
        imap.append(mail(1, Auto_Submitted="auto-replied", body="I am out of office"))
        imap.append(mail(2, sender="MAILER-DAEMON@mx.example.net", body="Delivery failed"))
        imap.append(mail(3))
        messages = (await make_channel(imap).poll({})).messages
        assert [(m.skip_drafting, m.skip_reason) for m in messages] == [
            (True, "auto-submitted: auto-replied"),
            (True, "bounce from mailer-daemon@mx.example.net"),
            (False, None),
        ]

    async def test_a_hostile_one_line_megabyte_mail_is_parsed_quickly(
        self, imap: ImapServer
    ) -> None:
        line = b"1 2024 x <" + b"a@" * 500_000
        imap.append(b"From: eve@example.org\r\nMessage-ID: <big@example.org>\r\n\r\n" + line)
        imap.append(mail(2))
        started = time.perf_counter()
        messages = (await make_channel(imap).poll({})).messages
        assert time.perf_counter() - started < 2
        assert [len(m.text) for m in messages] == [len(line), len("Where is order 2?")]

    async def test_our_own_replies_are_not_customer_mail(self, imap: ImapServer) -> None:
        imap.append(mail(1, sender="ACME Support <Support@Example.com>"))
        imap.append(mail(2))
        result = await make_channel(imap).poll({})
        assert [m.message_external_id for m in result.messages] == ["<q2@example.org>"]

    async def test_wrong_password_says_so(self, imap: ImapServer) -> None:
        channel = EmailChannel.from_config(
            {
                "imap_host": "127.0.0.1",
                "imap_port": imap.port,
                "imap_tls": "none",
                "from_address": "support@example.com",
            },
            {"imap_password": "wrong"},
        )
        with pytest.raises(ImapError, match=r"rejected the login for 'support@example\.com'"):
            await channel.poll({})

    async def test_unknown_mailbox_says_so(self, imap: ImapServer) -> None:
        with pytest.raises(ImapError, match="opening mailbox 'Support Queue' failed"):
            await make_channel(imap, mailbox="Support Queue").poll({})

    async def test_server_down_says_so(self) -> None:
        with pytest.raises(ImapError, match=r"could not connect to IMAP server 127\.0\.0\.1"):
            await make_channel().poll({})


class TestWaitForActivity:
    async def test_idle_returns_early_when_mail_arrives(self, imap: ImapServer) -> None:
        channel = make_channel(imap)
        cursor = (await channel.poll({})).cursor
        started = time.monotonic()
        waiting = asyncio.create_task(channel.wait_for_activity(20))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        await asyncio.to_thread(imap.append, mail(1))
        await asyncio.wait_for(waiting, 5)
        assert time.monotonic() - started < 5
        result = await channel.poll(cursor)
        assert [m.message_external_id for m in result.messages] == ["<q1@example.org>"]
        await channel.aclose()

    async def test_mail_between_poll_and_idle_is_not_missed(self, imap: ImapServer) -> None:
        channel = make_channel(imap)
        await channel.poll({})
        imap.append(mail(1))
        started = time.monotonic()
        await channel.wait_for_activity(20)
        assert time.monotonic() - started < 3

    async def test_idle_times_out_quietly(self, imap: ImapServer) -> None:
        channel = make_channel(imap)
        await channel.poll({})
        started = time.monotonic()
        await channel.wait_for_activity(0.8)
        assert 0.7 < time.monotonic() - started < 3

    async def test_cancelling_a_wait_ends_it_at_once(self, imap: ImapServer) -> None:
        channel = make_channel(imap)
        await channel.poll({})
        waiting = asyncio.create_task(channel.wait_for_activity(30))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await channel.aclose()
        assert time.monotonic() - started < 2

    async def test_without_idle_it_sleeps(self) -> None:
        server = ImapServer(idle=False).start()
        try:
            channel = make_channel(server)
            await channel.poll({})
            started = time.monotonic()
            waiting = asyncio.create_task(channel.wait_for_activity(1.0))
            await asyncio.to_thread(server.append, mail(1))
            await waiting
            assert time.monotonic() - started >= 0.95  # no early wake-up without IDLE
        finally:
            server.stop()


class TestDeliver:
    async def test_reply_is_threaded_and_carries_provenance(self, smtp: SmtpServer) -> None:
        channel = make_channel(smtp=smtp)
        message = outbound(channel)
        await channel.deliver(message)
        (received,) = smtp.received
        assert received.mail_from == "support@example.com"
        assert received.rcpt_tos == ["bob@example.org"]
        sent = received.message
        assert sent["Message-ID"] == message.channel_key
        assert sent["In-Reply-To"] == "<q2@example.org>"
        assert sent["References"] == (
            "<q1@example.org> <frankly.5.aa@example.com> <q2@example.org>"
        )
        assert sent["Subject"] == "Re: Where is my order?"
        assert sent["From"] == "ACME Support <support@example.com>"
        assert sent["To"] == "Bob <bob@example.org>"
        assert sent["X-Frankly-Origin"] == "draft_edited"
        assert sent["Auto-Submitted"] == "no"
        assert sent["Date"]
        assert sent.get_content_type() == "text/plain"
        assert sent.get_content_charset() == "utf-8"
        body = sent.get_content()
        assert body.rstrip("\n") == message.text
        assert DISCLOSURE in body

    async def test_customer_reply_threads_back(self, smtp: SmtpServer) -> None:
        channel = make_channel(smtp=smtp)
        message = outbound(channel)
        await channel.deliver(message)
        sent = smtp.received[0].message
        reply = EmailMessage()
        reply["From"] = "bob@example.org"
        reply["Message-ID"] = "<q3@example.org>"
        reply["In-Reply-To"] = sent["Message-ID"]
        reply["References"] = f"{sent['References']} {sent['Message-ID']}"
        reply.set_content("Thanks!")
        assert message.channel_key in thread_ids(reply.as_bytes())
        assert parse_message(reply.as_bytes()).conversation_external_id == "<q1@example.org>"

    def test_channel_keys_are_unique_normalised_message_ids(self) -> None:
        channel = make_channel(from_address="Help@Example.COM")
        keys = {channel.new_channel_key(message_id=7) for _ in range(50)}
        assert len(keys) == 50
        for key in keys:
            assert key.endswith("@example.com>") and key.startswith("<frankly.7.")
            assert normalise_message_id(key) == key

    async def test_subject_is_not_prefixed_twice(self, smtp: SmtpServer) -> None:
        channel = make_channel(smtp=smtp)
        context = {"email": {"subject": "RE: Invoice"}}
        await channel.deliver(outbound(channel, context=context, thread_ids=()))
        sent = smtp.received[0].message
        assert sent["Subject"] == "RE: Invoice"
        assert sent["In-Reply-To"] is None and sent["References"] is None

    async def test_refused_recipient_is_permanent(self, smtp: SmtpServer) -> None:
        smtp.refuse("bob@example.org", "550 5.1.1 <bob@example.org>: no such user")
        channel = make_channel(smtp=smtp)
        with pytest.raises(DeliveryError, match="no such user") as failure:
            await channel.deliver(outbound(channel))
        assert failure.value.permanent is True
        assert smtp.received == []

    async def test_temporary_refusal_is_retried(self, smtp: SmtpServer) -> None:
        smtp.refuse("bob@example.org", "451 4.3.0 mailbox busy, try later")
        channel = make_channel(smtp=smtp)
        with pytest.raises(DeliveryError, match="mailbox busy") as failure:
            await channel.deliver(outbound(channel))
        assert failure.value.permanent is False

    async def test_server_down_is_retried(self) -> None:
        channel = make_channel()
        with pytest.raises(DeliveryError, match="could not reach SMTP server") as failure:
            await channel.deliver(outbound(channel))
        assert failure.value.permanent is False

    async def test_unusable_customer_address_is_permanent(self, smtp: SmtpServer) -> None:
        channel = make_channel(smtp=smtp)
        for address in (None, "not an address", "bob@example.org\r\nBcc: x@evil.test"):
            with pytest.raises(DeliveryError) as failure:
                await channel.deliver(outbound(channel, contact_external_id=address))
            assert failure.value.permanent is True
        assert smtp.received == []

"""SMTP has no idempotency: every sent mail is filed in the Sent folder, and a retry looks there
first, so a crash between "the SMTP server took it" and "Frankly recorded it" sends nothing twice.
Real pymap (IMAP) and aiosmtpd (SMTP) servers on loopback."""

from __future__ import annotations

import dataclasses

import pytest

from frankly.channels.base import DeliveryError
from tests.channels.test_email_channel import make_channel, outbound
from tests.fakes.mail_servers import ImapServer, SmtpServer


class TestSentFolder:
    async def test_a_sent_mail_is_filed_and_a_retry_does_not_send_it_again(
        self, imap: ImapServer, smtp: SmtpServer
    ) -> None:
        channel = make_channel(imap, smtp)
        message = outbound(channel)
        await channel.deliver(message)
        assert len(smtp.received) == 1
        assert list(imap.seen_flags("Sent").values()) == [True]
        # The process died before recording "delivered": the outbox retries with the same key.
        await channel.deliver(dataclasses.replace(message, attempt=2))
        assert len(smtp.received) == 1
        assert len(imap.seen_flags("Sent")) == 1

    async def test_a_retry_of_a_mail_never_sent_sends_it(
        self, imap: ImapServer, smtp: SmtpServer
    ) -> None:
        channel = make_channel(imap, smtp)
        first = outbound(channel)
        await channel.deliver(first)
        other = outbound(channel, channel_key=channel.new_channel_key(message_id=8), attempt=3)
        await channel.deliver(other)
        assert [r.message["Message-ID"] for r in smtp.received] == [
            first.channel_key,
            other.channel_key,
        ]

    async def test_when_the_sent_folder_cannot_be_read_a_retry_waits(
        self, smtp: SmtpServer
    ) -> None:
        channel = make_channel(smtp=smtp)  # IMAP unreachable
        with pytest.raises(DeliveryError, match="Sent") as failure:
            await channel.deliver(dataclasses.replace(outbound(channel), attempt=2))
        assert failure.value.permanent is False
        assert smtp.received == []
        # A first attempt still goes out (only filing the copy fails, and is logged).
        await channel.deliver(outbound(channel))
        assert len(smtp.received) == 1

    async def test_filing_can_be_turned_off(self, imap: ImapServer, smtp: SmtpServer) -> None:
        channel = make_channel(imap, smtp, sent_mailbox="")
        message = outbound(channel)
        await channel.deliver(message)
        await channel.deliver(dataclasses.replace(message, attempt=2))
        assert len(smtp.received) == 2  # nothing to look in: at-least-once, as documented
        conn = imap.client()
        try:
            assert conn.select("Sent", readonly=True)[0] == "NO"  # never created
        finally:
            conn.logout()

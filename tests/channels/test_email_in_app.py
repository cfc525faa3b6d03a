"""The email channel inside the app: an account pointing at a loopback IMAP server (pymap) and
SMTP server (aiosmtpd), the poller storing mail as conversations, drafting, and the outbox
sending a person's reply threaded under the customer's mail — on both databases."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from frankly.channels import service as channel_service
from frankly.channels.accounts import save_account
from frankly.channels.base import PollingChannel
from frankly.channels.email.parse import normalise_message_id, parse_message
from frankly.channels.models import ChannelAccount, ChannelKind
from frankly.channels.registry import REGISTRY
from frankly.channels.runner import poll_once
from frankly.conversations.models import Conversation, Message
from frankly.db import Database, commit
from frankly.drafting import disclosure
from tests.conftest import IN_CI
from tests.factories import Desk, conversation, key, make_desk, run_jobs

try:
    from tests.fakes.mail_servers import ImapServer, SmtpServer
except ImportError as exc:  # pymap and aiosmtpd are dev dependencies
    if IN_CI:
        raise
    pytest.skip(
        f"mail test servers unavailable ({exc}); pip install pymap aiosmtpd",
        allow_module_level=True,
    )

DESK_ADDRESS = "support@example.com"
INTRO_EN = disclosure.disclosure_for(disclosure.DisclosureKind.INTRO, "en").text


@pytest.fixture
def imap() -> Iterator[ImapServer]:
    server = ImapServer(user=DESK_ADDRESS, password="secret").start()
    yield server
    server.stop()


def mail(
    message_id: str,
    body: str,
    *,
    sender: str = "Bob <bob@example.org>",
    subject: str = "Paying for my order",
    **headers: str,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = DESK_ADDRESS
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg.as_bytes()


async def deliver_mail(imap: ImapServer, raw: bytes) -> int:
    """Append a mail to the desk's INBOX over IMAP; returns its UID."""
    return await asyncio.to_thread(imap.append, raw)


async def make_account(db: Database, desk: Desk, imap: ImapServer, smtp: SmtpServer) -> int:
    async with db.sessionmaker() as session:
        account = await save_account(
            session,
            agent=desk.admin,
            kind=ChannelKind.EMAIL,
            name="support-mailbox",
            settings={
                "from_address": DESK_ADDRESS,
                "display_name": "ACME Support",
                "imap_host": imap.host,
                "imap_port": imap.port,
                "imap_tls": "none",
                "smtp_host": smtp.host,
                "smtp_port": smtp.port,
                "smtp_tls": "none",
                "smtp_user": "",
                "timeout_seconds": 5,
            },
            secrets={"imap_password": "secret"},
        )
        await commit(session)
        return account.id


async def poll(db: Database, account_id: int, channel: PollingChannel | None = None) -> int:
    """One poll with the account as stored now; by default through the channel the app builds
    from the stored settings and secrets."""
    async with db.sessionmaker() as session:
        account = await session.get(ChannelAccount, account_id)
    assert account is not None
    if channel is None:
        built = REGISTRY.build(account)
        assert isinstance(built, PollingChannel)
        channel = built
    return await poll_once(db, account=account, channel=channel)


async def detail_of(
    client: httpx.AsyncClient, desk: Desk, external_id: str | None = None
) -> dict[str, Any]:
    """The only email conversation (or the one with `external_id`)."""
    async with desk.db.sessionmaker() as session:
        query = select(Conversation.id).where(Conversation.channel == "email")
        if external_id is not None:
            query = query.where(Conversation.external_id == external_id)
        [conversation_id] = (await session.scalars(query)).all()
    found: dict[str, Any] = await conversation(client, desk, conversation_id)
    return found


async def counts(db: Database) -> tuple[int, int]:
    async with db.sessionmaker() as session:
        conversations = await session.scalar(select(func.count(Conversation.id)))
        messages = await session.scalar(select(func.count(Message.id)))
    return int(conversations or 0), int(messages or 0)


class TestEmailInApp:
    async def test_a_mail_thread_from_question_to_reply_and_back(
        self,
        client: httpx.AsyncClient,
        db: Database,
        imap: ImapServer,
        smtp: SmtpServer,
    ) -> None:
        desk = await make_desk(db)
        account_id = await make_account(db, desk, imap, smtp)

        # 1. The customer's question: a conversation and a draft.
        await deliver_mail(imap, mail("<Q1@example.org>", "Hello, which banks can I pay from?"))
        assert await poll(db, account_id) == 1
        await run_jobs(db)
        detail = await detail_of(client, desk)
        assert detail["external_id"] == "<q1@example.org>"
        assert detail["contact"]["external_id"] == "bob@example.org"
        assert detail["context"]["email"]["subject"] == "Paying for my order"
        [question] = detail["messages"]
        assert question["channel_message_id"] == "<q1@example.org>"
        [draft] = [d for d in detail["drafts"] if d["status"] == "pending"]
        assert draft["text"] == "We accept transfers from T-Bank and Sber."

        # 2. The agent sends it: SMTP gets it threaded, with our Message-ID and the disclosure.
        response = await client.post(
            f"/api/v1/drafts/{draft['id']}/send",
            json={"idempotency_key": key()},
            headers=desk.as_agent(),
        )
        assert response.status_code == 200, response.text
        sent = response.json()["message"]
        our_id = sent["channel_message_id"]
        assert our_id.startswith(f"<frankly.{sent['id']}.") and our_id.endswith("@example.com>")
        assert smtp.received == []
        await run_jobs(db)
        [received] = smtp.received
        assert received.rcpt_tos == ["bob@example.org"]
        reply = received.message
        assert reply["Message-ID"] == our_id
        assert reply["In-Reply-To"] == "<q1@example.org>"
        assert reply["References"] == "<q1@example.org>"
        assert reply["X-Frankly-Origin"] == "draft_as_is"
        assert reply["Subject"] == "Re: Paying for my order"
        body = reply.get_content()
        assert INTRO_EN in body and "We accept transfers from T-Bank and Sber." in body
        assert body.rstrip("\n") == sent["text"]
        detail = await detail_of(client, desk)
        assert detail["messages"][-1]["delivery_status"] == "delivered"

        # 3. A copy of our own reply in the mailbox is not customer mail.
        await deliver_mail(imap, received.data)
        # 4. Bob's out-of-office answers our reply: stored in the thread, never drafted for.
        await deliver_mail(
            imap,
            mail(
                "<ooo-1@example.org>",
                "I am away until Monday.",
                subject="Automatic reply: Re: Paying for my order",
                In_Reply_To=our_id,
                References=f"<q1@example.org> {our_id}",
                Auto_Submitted="auto-replied",
            ),
        )
        assert await poll(db, account_id) == 1
        await run_jobs(db)
        detail = await detail_of(client, desk)
        auto = detail["messages"][-1]
        assert auto["text"].startswith("I am away until Monday.")
        assert auto["direction"] == "in" and auto["drafting"] == "skipped"
        assert not [d for d in detail["drafts"] if d["status"] == "pending"]
        assert detail["needs_reply"] is False

        # 5. Bob's real answer refers to our Message-ID from another root: the same conversation.
        last_uid = await deliver_mail(
            imap,
            mail(
                "<q2@example.org>",
                "Thanks! And how much should I send?",
                subject="Re: Paying for my order",
                In_Reply_To=our_id,
                References=f"<some-other-root@mail.example.org> {our_id}",
            ),
        )
        assert await poll(db, account_id) == 1
        await run_jobs(db)
        assert (await counts(db))[0] == 1
        detail = await detail_of(client, desk)
        assert detail["needs_reply"] is True
        assert [(m["direction"], m["channel_message_id"]) for m in detail["messages"]] == [
            ("in", "<q1@example.org>"),
            ("out", our_id),
            ("in", "<ooo-1@example.org>"),
            ("in", "<q2@example.org>"),
        ]

        # 6. Polling again, or with a fresh channel object and the stored cursor: no duplicates.
        before = await counts(db)
        assert await poll(db, account_id) == 0
        async with db.sessionmaker() as session:
            stored = await session.get(ChannelAccount, account_id)
        assert stored is not None and stored.cursor["last_uid"] == last_uid
        fresh = REGISTRY.build(stored)
        assert isinstance(fresh, PollingChannel)
        assert (await fresh.poll(dict(stored.cursor))).messages == []
        assert await poll(db, account_id, fresh) == 0
        assert await counts(db) == before
        assert len(smtp.received) == 1
        # The channel never marks the customer's mail as read.
        assert not any((await asyncio.to_thread(imap.seen_flags)).values())

    async def test_a_second_reply_references_the_whole_thread(
        self,
        client: httpx.AsyncClient,
        db: Database,
        imap: ImapServer,
        smtp: SmtpServer,
    ) -> None:
        desk = await make_desk(db)
        account_id = await make_account(db, desk, imap, smtp)
        await deliver_mail(imap, mail("<a1@example.org>", "Where is my parcel?"))
        await poll(db, account_id)
        detail = await detail_of(client, desk)
        first = await client.post(
            f"/api/v1/conversations/{detail['id']}/replies",
            json={"text": "It left our warehouse today.", "idempotency_key": key()},
            headers=desk.as_agent(),
        )
        assert first.status_code == 200, first.text
        await run_jobs(db)
        our_first = first.json()["message"]["channel_message_id"]
        await deliver_mail(
            imap,
            mail(
                "<a2@example.org>",
                "Great, and the tracking number?",
                In_Reply_To=our_first,
                References=f"<a1@example.org> {our_first}",
            ),
        )
        assert await poll(db, account_id) == 1
        second = await client.post(
            f"/api/v1/conversations/{detail['id']}/replies",
            json={"text": "It is RA123456789RU.", "idempotency_key": key()},
            headers=desk.as_agent(),
        )
        assert second.status_code == 200, second.text
        await run_jobs(db)
        assert len(smtp.received) == 2
        latest = smtp.received[-1].message
        assert latest["Message-ID"] == second.json()["message"]["channel_message_id"]
        assert latest["In-Reply-To"] == "<a2@example.org>"
        assert latest["References"] == f"<a1@example.org> {our_first} <a2@example.org>"
        assert latest["X-Frankly-Origin"] == "human_written"
        assert INTRO_EN not in latest.get_content()  # a person's own words carry no disclosure

    async def test_a_reply_sent_before_the_mailbox_existed_goes_out_threaded_on_retry(
        self,
        client: httpx.AsyncClient,
        db: Database,
        imap: ImapServer,
        smtp: SmtpServer,
    ) -> None:
        desk = await make_desk(db)
        # A mail conversation from before any mailbox was configured (an import, demo data).
        async with db.writing(), db.sessionmaker() as session:
            result = await channel_service.ingest_inbound(
                session,
                channel="email",
                inbound=parse_message(mail("<old@example.org>", "Is my refund done?")),
            )
            await commit(session)
        response = await client.post(
            f"/api/v1/conversations/{result.conversation.id}/replies",
            json={"text": "Yes, it was sent on Monday.", "idempotency_key": key()},
            headers=desk.as_agent(),
        )
        assert response.status_code == 200, response.text
        message_id = response.json()["message"]["id"]
        await run_jobs(db)
        detail = await detail_of(client, desk)
        failed = detail["messages"][-1]
        assert failed["delivery_status"] == "failed"
        assert "no email account is configured" in failed["delivery_error"]

        await make_account(db, desk, imap, smtp)
        retried = await client.post(f"/api/v1/messages/{message_id}/retry", headers=desk.as_agent())
        assert retried.status_code == 200, retried.text
        await run_jobs(db)
        [received] = smtp.received
        sent = received.message
        detail = await detail_of(client, desk)
        ours = detail["messages"][-1]
        assert ours["delivery_status"] == "delivered"
        # A real Message-ID from the mailbox's domain, so the customer's answer threads back.
        assert sent["Message-ID"] == ours["channel_message_id"]
        assert normalise_message_id(sent["Message-ID"]) == sent["Message-ID"]
        assert sent["Message-ID"].endswith("@example.com>")
        assert sent["In-Reply-To"] == "<old@example.org>"

    async def test_a_very_long_mail_is_kept_shortened_and_does_not_stall_the_mailbox(
        self,
        client: httpx.AsyncClient,
        db: Database,
        imap: ImapServer,
        smtp: SmtpServer,
    ) -> None:
        desk = await make_desk(db)
        account_id = await make_account(db, desk, imap, smtp)
        long_body = "Please read my whole story. " + "word " * 8000  # ~40 KB, over the limit
        await deliver_mail(imap, mail("<long@example.org>", long_body))
        await deliver_mail(
            imap,
            mail("<next@example.org>", "Which banks can I pay from?", sender="eve@example.net"),
        )
        assert await poll(db, account_id) == 2
        async with db.sessionmaker() as session:
            account = await session.get(ChannelAccount, account_id)
            stored = await session.scalar(
                select(Message).where(Message.channel_message_id == "<long@example.org>")
            )
        assert account is not None and account.last_error is None
        assert stored is not None
        assert stored.text.startswith("Please read my whole story. word word")
        assert len(stored.text.encode()) <= 16 * 1024
        assert "shortened" in stored.text
        assert await poll(db, account_id) == 0

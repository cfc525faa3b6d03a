"""Channel throughput and latency: outbox deliveries/s and inbound-to-inbox latency.

(a) Outbox deliveries/s: replies are queued with the real send gate (`send_reply`), then the
    real delivery loop body (`frankly.outbox.delivery.deliver_due`, 8 items a round, as the
    worker runs it) drains them against the fake Bybit server and a local aiosmtpd, each in its
    own process. Baseline, same run: the same number of raw sends straight to the same server
    without Frankly (signed httpx POSTs / aiosmtplib.send, 8 at a time, as the loop). Bybit is
    measured twice: one account rate-limited as Bybit does it (5 writes/s: the ceiling), and the
    pipeline itself (the fake's write limit raised, replies spread over many accounts so the
    client's own 5/s per account never waits). "api" conversations (delivery is a no-op) show
    the outbox machinery alone. SQLite file database, and PostgreSQL when reachable.
(b) Inbound-to-inbox latency: a buyer message added on the fake Bybit server, or a mail
    appended over IMAP (pymap), until the message is committed in the database (what the API
    then returns), with the real pollers running at their configured interval: Bybit latency
    is dominated by the poll interval (FRANKLY_BYBIT_POLL_SECONDS); email is woken by IDLE.

    .venv/bin/python bench/channels.py [--replies 300] [--limited 40] [--samples 30]
                                       [--no-postgres] [--bybit-poll SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
from sqlalchemy import func, select

from frankly.auth import service as auth_service
from frankly.auth.models import Agent
from frankly.channels import accounts as accounts_service
from frankly.channels import service as channel_service
from frankly.channels.base import InboundMessage
from frankly.channels.models import ChannelKind
from frankly.channels.registry import REGISTRY
from frankly.config import get_settings
from frankly.conversations import service as conversation_service
from frankly.conversations.models import Direction, Message
from frankly.db import Database, commit
from frankly.migrations.runner import upgrade_async
from frankly.outbox.delivery import deliver_due
from frankly.outbox.models import OutboxItem, OutboxStatus

ROOT = Path(__file__).resolve().parents[1]
SEND_PATH = "/v5/p2p/order/message/send"
CONCURRENCY = 8  # deliver_due's batch: the loop attempts up to 8 items at once
DESK = "support@example.com"


# -- fakes in their own processes ----------------------------------------------------------------


def _serve(kind: str, accounts: int, writes: int) -> None:
    """Child process: run one fake until SIGTERM (`bench/channels.py --serve bybit|smtp`)."""
    sys.path.insert(0, str(ROOT))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if kind == "bybit":
        from tests.fakes.bybit_server import Account, FakeBybit

        fake = FakeBybit(
            accounts=[Account(*bybit_credentials(n), nickname=f"Desk{n}") for n in range(accounts)],
            writes_per_second=writes,
        )
        print(f"READY {fake.start()}", flush=True)
        stop.wait()
        fake.stop()
        return
    from tests.fakes.mail_servers import SmtpServer

    smtp = SmtpServer().start()
    print(f"READY {smtp.port}", flush=True)
    # One line in, the number of mails received so far out.
    for _ in sys.stdin:
        print(len(smtp.received), flush=True)
    smtp.stop()


def bybit_credentials(n: int) -> tuple[str, str, str]:
    """(api_key, secret, user_id) of the fake's n-th desk account."""
    return (f"key-{n}", f"secret-{n}", str(5000 + n))


class Child:
    """A fake server in a child process (so it does not share the bench's GIL)."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"the fake server did not start (said {line!r})")
        self.address = line.split()[1]

    def smtp_count(self) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("count\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # ends the SMTP child's command loop
        self.process.terminate()
        self.process.wait(10)


async def fake_call(url: str, name: str, **kwargs: Any) -> Any:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        if name == "state":
            response = await http.get("/_fake/state")
        else:
            response = await http.post(f"/_fake/{name}", json=kwargs)
    response.raise_for_status()
    return response.json()["result"]


# -- database setup -------------------------------------------------------------------------------


@asynccontextmanager
async def databases(use_postgres: bool, tmp: Path) -> AsyncIterator[list[tuple[str, str]]]:
    """(label, url) of a fresh migrated SQLite file database, and PostgreSQL when reachable."""
    found = [("SQLite", f"sqlite+aiosqlite:///{tmp / 'outbox.db'}")]
    pg_name = f"frankly_bench_{os.getpid()}"
    admin = None
    if use_postgres:
        import asyncpg

        host = os.environ.get("FRANKLY_TEST_PG_HOST", "127.0.0.1")
        port = int(os.environ.get("FRANKLY_TEST_PG_PORT", "5432"))
        user = os.environ.get("FRANKLY_TEST_PG_USER", "postgres")
        try:
            admin = await asyncpg.connect(
                host=host, port=port, user=user, database="test", timeout=3
            )
        except (OSError, asyncpg.PostgresError) as exc:
            print(f"(PostgreSQL not reachable at {host}:{port}: {exc}; SQLite only)")
        else:
            await admin.execute(f'DROP DATABASE IF EXISTS "{pg_name}"')
            await admin.execute(f'CREATE DATABASE "{pg_name}"')
            found.append(("PostgreSQL", f"postgresql+asyncpg://{user}@{host}:{port}/{pg_name}"))
    try:
        for _, url in found:
            await upgrade_async(url)
        yield found
    finally:
        if admin is not None:
            await admin.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
            await admin.close()


async def make_agent(db: Database) -> int:
    async with db.sessionmaker() as session:
        agent = await auth_service.create_agent(
            session, email=f"bench{uuid.uuid4().hex[:6]}@example.com", password="bench-password-1"
        )
        await commit(session)
        return agent.id


async def make_account(
    db: Database, kind: ChannelKind, name: str, settings: dict[str, Any], secrets: dict[str, Any]
) -> int:
    async with db.writing(), db.sessionmaker() as session:
        account = await accounts_service.save_account(
            session, agent=None, kind=kind, name=name, settings=settings, secrets=secrets
        )
        await commit(session)
        return account.id


@dataclass(frozen=True)
class Target:
    """Where one queued reply goes: a conversation of a channel (and account)."""

    channel: str
    conversation: str
    account_id: int | None
    contact: str
    context: dict[str, Any] | None = None


async def queue_replies(db: Database, agent_id: int, targets: list[Target], tag: str) -> None:
    """One inbound message per target (creating its conversation), then a reply to each through
    the send gate, which queues it in the outbox in the same transaction."""
    for start in range(0, len(targets), 50):
        async with db.writing(), db.sessionmaker() as session:
            agent = await session.get(Agent, agent_id)
            assert agent is not None
            for n, target in enumerate(targets[start : start + 50], start):
                ingested = await channel_service.ingest_inbound(
                    session,
                    channel=target.channel,
                    account_id=target.account_id,
                    inbound=InboundMessage(
                        conversation_external_id=target.conversation,
                        message_external_id=f"{tag}-in-{n}",
                        text=f"question {n}",
                        contact_external_id=target.contact,
                        context=target.context,
                    ),
                )
                await conversation_service.send_reply(
                    session,
                    agent=agent,
                    conversation=ingested.conversation,
                    text=f"{tag} reply {n}: we accept T-Bank and Sber.",
                    idempotency_key=f"{tag}-{n}",
                )
            await commit(session)


async def outbox_counts(db: Database) -> dict[str, int]:
    async with db.sessionmaker() as session:
        rows = await session.execute(
            select(OutboxItem.status, func.count(OutboxItem.id)).group_by(OutboxItem.status)
        )
        return {str(status): count for status, count in rows.all()}


async def drain(db: Database, expected_delivered: int) -> float:
    """Run the delivery loop until nothing is queued; seconds taken."""
    started = time.perf_counter()
    while True:
        if await deliver_due(db, worker_id="bench/out", lease_seconds=120):
            continue
        counts = await outbox_counts(db)
        if not counts.get(OutboxStatus.QUEUED.value):
            break
        await asyncio.sleep(0.02)  # items waiting for a retry after a transient failure
    elapsed = time.perf_counter() - started
    if counts.get(OutboxStatus.FAILED.value) or counts.get("delivered") != expected_delivered:
        raise RuntimeError(f"delivery did not complete cleanly: {counts}")
    return elapsed


# -- baselines: the same sends without Frankly ----------------------------------------------------


async def pool(jobs: list[Callable[[], Awaitable[None]]], concurrency: int) -> float:
    queue = list(reversed(jobs))
    started = time.perf_counter()

    async def worker() -> None:
        while queue:
            await queue.pop()()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def raw_bybit(url: str, sends: list[tuple[int, str]], tag: str) -> float:
    """Signed send-message POSTs (waiting out 10006 as told), CONCURRENCY at a time."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:

        def job(n: int, account: int, order_id: str) -> Callable[[], Awaitable[None]]:
            async def send() -> None:
                key, secret, _ = bybit_credentials(account)
                body = json.dumps(
                    {
                        "message": f"{tag} raw {n}",
                        "contentType": "str",
                        "orderId": order_id,
                        "msgUuid": f"{tag}-{n}",
                    },
                    separators=(",", ":"),
                )
                while True:
                    ts = str(int(time.time() * 1000))
                    sign = hmac.new(
                        secret.encode(), f"{ts}{key}5000{body}".encode(), hashlib.sha256
                    ).hexdigest()
                    headers = {
                        "X-BAPI-API-KEY": key,
                        "X-BAPI-TIMESTAMP": ts,
                        "X-BAPI-RECV-WINDOW": "5000",
                        "X-BAPI-SIGN": sign,
                        "Content-Type": "application/json",
                    }
                    response = await http.post(SEND_PATH, content=body, headers=headers)
                    envelope = response.json()
                    if envelope["ret_code"] == 0:
                        return
                    if envelope["ret_code"] != 10006:
                        raise RuntimeError(f"raw send refused: {envelope}")
                    reset = int(response.headers["X-Bapi-Limit-Reset-Timestamp"]) / 1000
                    await asyncio.sleep(max(reset - time.time(), 0.001))

            return send

        return await pool(
            [job(n, account, order) for n, (account, order) in enumerate(sends)], CONCURRENCY
        )


async def raw_smtp(port: int, count: int, tag: str) -> float:
    """aiosmtplib.send of a plain reply, one connection per mail (as the email channel does)."""

    def job(n: int) -> Callable[[], Awaitable[None]]:
        async def send() -> None:
            msg = EmailMessage()
            msg["From"] = DESK
            msg["To"] = f"customer{n}@example.org"
            msg["Subject"] = "Re: question"
            msg["Message-ID"] = f"<{tag}.{n}@example.com>"
            msg.set_content(f"{tag} raw reply {n}: we accept T-Bank and Sber.")
            await aiosmtplib.send(msg, hostname="127.0.0.1", port=port, timeout=30)

        return send

    return await pool([job(n) for n in range(count)], CONCURRENCY)


# -- (a) outbox deliveries/s ---------------------------------------------------------------------


@dataclass
class Row:
    backend: str
    name: str
    count: int
    frankly: float  # deliveries/s
    baseline: float | None  # raw sends/s

    def line(self) -> str:
        base = f"{self.baseline:>10.1f}" if self.baseline else f"{'—':>10}"
        ratio = f"{self.frankly / self.baseline:>8.2f}" if self.baseline else f"{'—':>8}"
        return f"{self.backend:<11}{self.name:<40}{self.count:>6}{self.frankly:>10.1f}{base}{ratio}"


async def bench_outbox(label: str, url: str, args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    db = Database(url)
    delivered = 0
    try:
        agent = await make_agent(db)
        tag = uuid.uuid4().hex[:6]

        # The outbox alone: "api" conversations, whose delivery is a no-op.
        await queue_replies(
            db, agent, [Target("api", f"api-{n}", None, f"c{n}") for n in range(args.replies)], tag
        )
        delivered += args.replies
        speed = args.replies / await drain(db, delivered)
        rows.append(Row(label, "api channel (outbox alone)", args.replies, speed, None))

        # Bybit, the pipeline: many accounts, the fake's write limit raised.
        accounts = max(1, -(-args.replies // 5))  # ≤ 5 replies per account: its 5/s never waits
        fake = Child("bybit", str(accounts), "100000")
        try:
            ids, orders = [], []
            for n in range(accounts):
                key, secret, _ = bybit_credentials(n)
                ids.append(
                    await make_account(
                        db,
                        ChannelKind.BYBIT,
                        f"bybit-{tag}-{n}",
                        {"base_url": fake.address},
                        {"api_key": key, "api_secret": secret},
                    )
                )
                orders.append(await fake_call(fake.address, "add_order", api_key=key))
            targets = [
                Target("bybit", orders[n % accounts], ids[n % accounts], "buyer")
                for n in range(args.replies)
            ]
            await queue_replies(db, agent, targets, f"{tag}b")
            delivered += args.replies
            speed = args.replies / await drain(db, delivered)
            raw = await raw_bybit(
                fake.address,
                [(n % accounts, orders[n % accounts]) for n in range(args.replies)],
                tag,
            )
            state = await fake_call(fake.address, "state")
            assert len(state["uuid_counts"]) == 2 * args.replies, "a send went missing"
            assert set(state["uuid_counts"].values()) == {1}, "a send was repeated"
            name = f"bybit, {accounts} accounts, limit raised"
            rows.append(Row(label, name, args.replies, speed, args.replies / raw))
        finally:
            fake.stop()

        # Bybit as it is: one account, 5 writes/s (the fake enforces it, the client keeps to it).
        if args.limited and (label == "SQLite" or args.limited_everywhere):
            fake = Child("bybit", "1", "5")
            try:
                key, secret, _ = bybit_credentials(0)
                account = await make_account(
                    db,
                    ChannelKind.BYBIT,
                    f"bybit-{tag}-limited",
                    {"base_url": fake.address},
                    {"api_key": key, "api_secret": secret},
                )
                order = await fake_call(fake.address, "add_order", api_key=key)
                targets = [Target("bybit", order, account, "buyer") for _ in range(args.limited)]
                await queue_replies(db, agent, targets, f"{tag}l")
                delivered += args.limited
                speed = args.limited / await drain(db, delivered)
                raw = await raw_bybit(fake.address, [(0, order)] * args.limited, f"{tag}l")
                state = await fake_call(fake.address, "state")
                assert len(state["uuid_counts"]) == 2 * args.limited
                name = "bybit, 1 account, 5 writes/s (as Bybit)"
                rows.append(Row(label, name, args.limited, speed, args.limited / raw))
            finally:
                fake.stop()

        # Email over SMTP (aiosmtpd), one connection per mail, and each mail's copy filed in the
        # Sent folder over IMAP (pymap) — what makes a resend after a crash a no-op.
        sys.path.insert(0, str(ROOT))
        from tests.fakes.mail_servers import ImapServer

        smtp = Child("smtp", "0", "0")
        sent_folder = ImapServer().start()
        try:
            account = await make_account(
                db,
                ChannelKind.EMAIL,
                f"email-{tag}",
                {
                    "imap_host": "127.0.0.1",
                    "imap_port": sent_folder.port,
                    "imap_user": sent_folder.user,
                    "imap_tls": "none",
                    "smtp_host": "127.0.0.1",
                    "smtp_port": int(smtp.address),
                    "smtp_tls": "none",
                    "smtp_user": "",
                    "from_address": DESK,
                },
                {"imap_password": sent_folder.password},
            )
            targets = [
                Target(
                    "email",
                    f"<q{tag}{n}@example.org>",
                    account,
                    f"customer{n}@example.org",
                    {"email": {"subject": f"question {n}"}},
                )
                for n in range(args.replies)
            ]
            await queue_replies(db, agent, targets, f"{tag}e")
            delivered += args.replies
            speed = args.replies / await drain(db, delivered)
            raw = await raw_smtp(int(smtp.address), args.replies, tag)
            received = smtp.smtp_count()
            assert received == 2 * args.replies, f"SMTP got {received} mails"
            rows.append(
                Row(label, "email, SMTP + Sent copy", args.replies, speed, args.replies / raw)
            )
        finally:
            smtp.stop()
            sent_folder.stop()
    finally:
        await REGISTRY.aclose()
        await db.dispose()
    return rows


# -- (b) inbound-to-inbox latency ----------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def bench_latency(
    tmp: Path, samples: int, bybit_poll: float
) -> dict[str, tuple[list[float], float]]:
    """Per channel: latencies (s) of `samples` messages, and the poll interval configured."""
    sys.path.insert(0, str(ROOT))
    from tests.fakes.mail_servers import ImapServer

    from frankly.channels.runner import Pollers

    url = f"sqlite+aiosqlite:///{tmp / 'inbound.db'}"
    await upgrade_async(url)
    db = Database(url)
    imap_poll = get_settings().imap_poll_seconds
    fake = Child("bybit", "1", "5")
    imap = ImapServer().start()
    pollers = Pollers(db, owner="bench", on_new=lambda: None)
    try:
        key, secret, _ = bybit_credentials(0)
        await make_account(
            db,
            ChannelKind.BYBIT,
            "bybit",
            {"base_url": fake.address, "poll_seconds": bybit_poll},
            {"api_key": key, "api_secret": secret},
        )
        await make_account(
            db,
            ChannelKind.EMAIL,
            "email",
            {
                "imap_host": "127.0.0.1",
                "imap_port": imap.port,
                "imap_tls": "none",
                "imap_user": imap.user,
                "smtp_host": "127.0.0.1",
                "smtp_port": 1,
                "smtp_tls": "none",
                "smtp_user": "",
                "from_address": DESK,
                "poll_seconds": imap_poll,
            },
            {"imap_password": imap.password},
        )
        orders = [await fake_call(fake.address, "add_order", api_key=key) for _ in range(3)]
        seen: dict[str, float] = {}
        added: dict[str, float] = {}

        async def watch() -> None:
            while True:
                pending = [t for t in added if t not in seen]
                if pending:
                    async with db.sessionmaker() as session:
                        found = (
                            await session.scalars(
                                select(Message.text).where(
                                    Message.direction == Direction.IN, Message.text.in_(pending)
                                )
                            )
                        ).all()
                    now = time.perf_counter()
                    for text in found:
                        seen.setdefault(text, now)
                await asyncio.sleep(0.005)

        async def bybit_probe(n: int) -> str:
            text = f"bybit probe {n} {uuid.uuid4().hex[:8]}"
            await fake_call(fake.address, "add_message", order_id=orders[n % 3], text=text)
            return text

        async def email_probe(n: int) -> str:
            text = f"email probe {n} {uuid.uuid4().hex[:8]}"
            msg = EmailMessage()
            msg["From"] = f"customer{n}@example.org"
            msg["To"] = DESK
            msg["Subject"] = f"probe {n}"
            msg["Message-ID"] = f"<probe{n}.{uuid.uuid4().hex}@example.org>"
            msg.set_content(text)
            await asyncio.to_thread(imap.append, msg.as_bytes())
            return text

        async def probes(make: Callable[[int], Awaitable[str]]) -> None:
            for n in range(samples):
                await asyncio.sleep(random.uniform(0.2, 1.0))
                text = await make(n)
                added[text] = time.perf_counter()  # the message exists on the server now

        watcher = asyncio.create_task(watch())
        pollers.start()
        # Let the first polls happen (the cursor is set, IDLE established) before probing.
        await asyncio.sleep(1.0)
        await asyncio.gather(probes(bybit_probe), probes(email_probe))
        deadline = time.perf_counter() + 3 * max(bybit_poll, 1.0) + 10
        while len(seen) < len(added) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        watcher.cancel()
        missing = [t for t in added if t not in seen]
        if missing:
            raise RuntimeError(f"{len(missing)} probe messages never arrived: {missing[:3]}")
        return {
            kind: ([seen[t] - added[t] for t in added if t.startswith(kind)], interval)
            for kind, interval in (("bybit", bybit_poll), ("email", imap_poll))
        }
    finally:
        await pollers.stop()
        await REGISTRY.aclose()
        await db.dispose()
        imap.stop()
        fake.stop()


# -- main -----------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="frankly-bench-channels-"))
    rows: list[Row] = []
    async with databases(not args.no_postgres, tmp) as found:
        for label, url in found:
            rows += await bench_outbox(label, url, args)
    latency = await bench_latency(tmp, args.samples, args.bybit_poll)

    print(
        f"\nFrankly channel bench — {os.cpu_count()} cores; fakes in their own processes; "
        f"delivery loop = deliver_due (16 per round), baseline = raw sends, {CONCURRENCY} at a time"
    )
    print("(a) outbox deliveries/s (queued with send_reply, drained by the real delivery loop)")
    header = f"{'backend':<11}{'path':<40}{'items':>6}{'frankly/s':>10}{'raw/s':>10}{'ratio':>8}"
    print(header)
    for row in rows:
        print(row.line())
    print(
        "  bybit rate limit: 5 writes/s per account (Bybit's, enforced by the fake and kept by "
        "the client), so one account's ceiling is 5 replies/s whatever the pipeline does."
    )
    print("(b) inbound -> committed in the database (what the API returns), pollers running")
    for kind, (values, interval) in latency.items():
        how = "poll interval" if kind == "bybit" else "IMAP IDLE wakes the poller; fallback poll"
        print(
            f"  {kind:<6} n={len(values):<3} p50 {pct(values, 0.5) * 1000:7.0f} ms   "
            f"p99 {pct(values, 0.99) * 1000:7.0f} ms   "
            f"mean {statistics.fmean(values) * 1000:6.0f} ms   ({how} {interval:g} s)"
        )
    print(
        "  Bybit latency is dominated by the poll interval (about half of it on average, up to "
        "all of it): set FRANKLY_BYBIT_POLL_SECONDS (≥ 0.2; each poll costs reads out of 10/s)."
    )
    print(f"total bench time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        _serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replies", type=int, default=300, help="replies per delivery run")
    parser.add_argument("--limited", type=int, default=40, help="replies at Bybit's 5 writes/s")
    parser.add_argument(
        "--limited-everywhere", action="store_true", help="the 5/s run on PostgreSQL too"
    )
    parser.add_argument("--samples", type=int, default=30, help="latency probes per channel")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument(
        "--bybit-poll",
        type=float,
        default=get_settings().bybit_poll_seconds,
        help="the Bybit poll interval (default: FRANKLY_BYBIT_POLL_SECONDS)",
    )
    asyncio.run(main(parser.parse_args()))

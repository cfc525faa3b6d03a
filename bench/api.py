"""Inbound throughput through POST /api/v1/inbound (draft job enqueued) vs a bare endpoint.

Starts a real server (uvicorn, one process, in-process worker) on loopback with a fresh SQLite
database, drives both endpoints with the same concurrent client in the same run, then reads
inbound-to-draft latency from the database (message stored -> draft stored, server clock).
By default drafting jobs queue up during the throughput rounds (as with `frankly serve
--no-workers` plus a worker elsewhere) and a second server drains them; --draft-during-burst keeps
the in-process worker drafting meanwhile on the same two cores.

    python bench/api.py [--requests 2000] [--concurrency 16] [--paced 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "which bank do you accept?",
    "на какой банк переводить?",
    "can I pay from my wife's card?",
    "when are you online?",
    "how long until the coins arrive?",
    "можно оплатить с карты жены?",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def drive(url: str, token: str, n: int, concurrency: int, tag: str) -> list[float]:
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                body = {
                    "conversation_id": f"{tag}-{i % 200}",
                    "message_id": f"{tag}-{i}",
                    "text": QUESTIONS[i % len(QUESTIONS)],
                }
                started = time.perf_counter()
                response = await client.post(url, json=body, headers=headers)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 202:
                    raise RuntimeError(f"{url}: {response.status_code} {response.text}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def draft_latencies(db_url: str, since_id: int) -> tuple[list[float], int, int]:
    from frankly.conversations.models import Draft, DraftingState, Message
    from frankly.db import Database

    database = Database(db_url)
    try:
        async with database.sessionmaker() as session:
            rows = (
                await session.execute(
                    select(Message.created_at, Draft.created_at)
                    .join(Draft, Draft.message_id == Message.id)
                    .where(Message.id > since_id, Draft.engine == "offline")
                )
            ).all()
            states = (
                await session.scalars(select(Message.drafting).where(Message.id > since_id))
            ).all()
    finally:
        await database.dispose()
    queued = sum(1 for s in states if s == DraftingState.QUEUED)
    return [(d - m).total_seconds() for m, d in rows], len(states), queued


async def max_message_id(db_url: str) -> int:
    from sqlalchemy import func

    from frankly.conversations.models import Message
    from frankly.db import Database

    database = Database(db_url)
    try:
        async with database.sessionmaker() as session:
            return int(await session.scalar(select(func.coalesce(func.max(Message.id), 0))) or 0)
    finally:
        await database.dispose()


async def wait_drained(db_url: str, since_id: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, _, queued = await draft_latencies(db_url, since_id)
        if queued == 0:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError("drafting did not finish in time")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--paced", type=int, default=200, help="paced messages for latency")
    parser.add_argument("--rate", type=float, default=20.0, help="paced messages per second")
    parser.add_argument(
        "--draft-during-burst",
        action="store_true",
        help="keep the in-process worker drafting while throughput is measured (2 cores shared)",
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="frankly-bench-"))
    db_url = f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
    env = {**os.environ, "FRANKLY_DATABASE_URL": db_url, "FRANKLY_LOG_LEVEL": "WARNING"}
    frankly = [sys.executable, "-m", "frankly.cli"]
    subprocess.run([*frankly, "db", "upgrade"], env=env, check=True, capture_output=True)
    subprocess.run(
        [*frankly, "demo", "--password", "bench-password"], env=env, check=True, capture_output=True
    )
    token = subprocess.run(
        [*frankly, "token", "create", "bench", "--channel", "bench"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    burst_env = {**env, "FRANKLY_RUN_WORKERS": "true" if args.draft_during_burst else "false"}
    base, server = await start_server(burst_env)
    try:
        # Warm up both paths (index build, connection pool).
        await drive(f"{base}/bare", token, 50, 4, "warm-bare")
        await drive(f"{base}/api/v1/inbound", token, 50, 4, "warm")

        # Alternate the two endpoints in rounds so machine noise hits both alike.
        rounds = 4
        per_round = args.requests // rounds
        totals: dict[str, tuple[float, list[float]]] = {
            "bare endpoint": (0.0, []),
            "POST /api/v1/inbound": (0.0, []),
        }
        for _ in range(rounds):
            for name, path in (
                ("bare endpoint", "/bare"),
                ("POST /api/v1/inbound", "/api/v1/inbound"),
            ):
                tag = uuid.uuid4().hex[:6]
                started = time.perf_counter()
                lat = await drive(f"{base}{path}", token, per_round, args.concurrency, tag)
                elapsed, seen = totals[name]
                totals[name] = (elapsed + time.perf_counter() - started, seen + lat)
        results = {
            name: (per_round * rounds / elapsed, lat) for name, (elapsed, lat) in totals.items()
        }
        args.requests = per_round * rounds
    finally:
        stop_server(server)

    # Drafting: a server with its in-process worker catches up on the backlog, then paced load.
    base, server = await start_server({**env, "FRANKLY_RUN_WORKERS": "true"})
    try:
        since = await max_message_id(db_url) - args.requests
        drain_started = time.perf_counter()
        await wait_drained(db_url, since)
        drain_s = time.perf_counter() - drain_started
        paced_since = await max_message_id(db_url)
        async with httpx.AsyncClient(timeout=30) as client:
            for i in range(args.paced):
                await client.post(
                    f"{base}/api/v1/inbound",
                    json={
                        "conversation_id": f"paced-{i % 20}",
                        "message_id": f"paced-{i}",
                        "text": QUESTIONS[i % len(QUESTIONS)],
                    },
                    headers={"Authorization": f"Bearer {token}"},
                )
                await asyncio.sleep(1 / args.rate)
        await wait_drained(db_url, paced_since)
        paced, _, _ = await draft_latencies(db_url, paced_since)
    finally:
        stop_server(server)

    mode = "worker drafting meanwhile" if args.draft_during_burst else "drafting jobs queued"
    print(
        f"Frankly API bench — SQLite, one uvicorn process ({mode}), "
        f"{args.requests} requests x {args.concurrency} concurrent, {os.cpu_count()} cores"
    )
    print(f"{'endpoint':<24}{'msgs/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, (rate, lat) in results.items():
        print(f"{name:<24}{rate:>10.0f}{pct(lat, 0.5) * 1000:>10.1f}{pct(lat, 0.99) * 1000:>10.1f}")
    ratio = results["POST /api/v1/inbound"][0] / results["bare endpoint"][0]
    print(f"ratio inbound/bare: {ratio:.2f}  (target >= 0.5)")
    print(f"drafting the {args.requests}-message backlog: {args.requests / drain_s:.0f} drafts/s")
    print(
        f"inbound -> draft stored, paced at {args.rate:.0f} msg/s ({len(paced)} drafts): "
        f"p50 {pct(paced, 0.5) * 1000:.1f} ms, p99 {pct(paced, 0.99) * 1000:.1f} ms, "
        f"mean {statistics.fmean(paced) * 1000 if paced else float('nan'):.1f} ms "
        f"(target p99 <= 100 ms)"
    )


async def start_server(env: dict[str, str]) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "_server.py"), str(port)], env=env
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{base}/healthz").status_code == 200:
                return base, server
        except httpx.TransportError:
            time.sleep(0.1)
    server.terminate()
    raise RuntimeError("the bench server did not start")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    server.wait(10)


if __name__ == "__main__":
    asyncio.run(main())

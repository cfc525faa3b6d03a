"""Latency Frankly's LLM writer adds on top of the provider's own streaming.

Starts the fake OpenAI-compatible server (tests/fakes/openai_server.py) in its own process with a
fixed per-token delay, then, interleaved over the same script, measures time to first token and
total time of (a) a raw httpx streaming request straight to the server and (b) `LlmWriter.write`
(prompt rendering, rate limiter, the openai SDK, delta buffering, no-answer parsing, grounding
checks). Both send the same messages over one kept-alive connection.

    python bench/llm_overhead.py [--runs 200] [--tokens 50] [--token-delay 0.002]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from frankly.drafting import grounding  # noqa: E402
from frankly.drafting.llm import (  # noqa: E402
    DRAFT_PROMPT,
    Candidate,
    LlmConfig,
    LlmWriter,
    WriteRequest,
    data_json,
    new_canary,
    render_prompt,
)

KEY = "sk-bench"
FAQ = [
    Candidate(
        "how-to-pay",
        "How do I pay?",
        "Transfer 15 000 ₽ to the Sberbank card 4111 1111 1111 1111 within 30 minutes, then "
        "press 'I have paid'. We check every payment by hand, usually within 10 minutes.",
        0.91,
    ),
    Candidate("hours", "When are you online?", "We are online every day from 10:00 to 19:00.", 0.4),
]
REQUEST = WriteRequest(
    customer_text="hi, how do I pay for the order? which card?",
    language="en",
    candidates=FAQ,
    history=[("customer", "hello"), ("agent", "Hi! How can we help?")],
    context={"order": {"amount": 15000, "currency": "RUB", "status": "awaiting payment"}},
)


REPLY_WORDS = (
    "Please transfer 15 000 ₽ to the Sberbank card 4111 1111 1111 1111 within 30 minutes "
    "and then press I have paid so that we can check your payment by hand"
)


def reply_text(tokens: int) -> str:
    words = REPLY_WORDS.split()
    return " ".join(words[i % len(words)] for i in range(tokens))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def start_fake(port: int, text: str, token_delay: float) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.openai_server",
            "--port",
            str(port),
            "--api-key",
            KEY,
            "--reply",
            text,
            "--chunk-delay",
            str(token_delay),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    for _ in range(200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.05)
    server.terminate()
    raise RuntimeError("the fake OpenAI server did not start")


async def raw_run(
    client: httpx.AsyncClient, url: str, body: dict[str, object]
) -> tuple[float, float]:
    started = time.perf_counter()
    first: float | None = None
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
    done = time.perf_counter()
    assert first is not None, "no content arrived"
    return first - started, done - started


async def writer_run(writer: LlmWriter) -> tuple[float, float]:
    started = time.perf_counter()
    first: list[float] = []

    async def on_delta(_delta: str) -> None:
        if not first:
            first.append(time.perf_counter())

    result = await writer.write(REQUEST, on_delta=on_delta)
    done = time.perf_counter()
    assert result.text and first, "the writer produced no text"
    return first[0] - started, done - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=50, help="tokens in the scripted reply")
    parser.add_argument("--token-delay", type=float, default=0.002, help="seconds per token")
    args = parser.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    server = start_fake(port, reply_text(args.tokens), args.token_delay)
    config = LlmConfig(
        base_url=base, api_key=KEY, model="fake-model", requests_per_minute=10**9, burst=10**6
    )
    writer = LlmWriter(config)
    prompt = render_prompt(
        DRAFT_PROMPT,
        canary=new_canary(),
        language="en",
        language_name="English",
        tone_notes="",
        variant=0,
        candidates_json=data_json([c.__dict__ for c in FAQ]),
        context_json=data_json(dict(REQUEST.context)),
        conversation_json=data_json({"latest_customer_message": REQUEST.customer_text}),
    )
    body: dict[str, object] = {
        "model": "fake-model",
        "messages": [
            {"role": "system", "content": prompt.system},
            {"role": "user", "content": prompt.user},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 400,
        "temperature": 0.3,
    }
    raw: list[tuple[float, float]] = []
    ours: list[tuple[float, float]] = []
    try:
        async with httpx.AsyncClient(
            headers={"Authorization": f"Bearer {KEY}"}, timeout=30
        ) as client:
            url = f"{base}/chat/completions"
            for i in range(args.warmup + args.runs):
                # Alternate which goes first so drift in the server hits both alike.
                if i % 2:
                    a = await raw_run(client, url, body)
                    b = await writer_run(writer)
                else:
                    b = await writer_run(writer)
                    a = await raw_run(client, url, body)
                if i >= args.warmup:
                    raw.append(a)
                    ours.append(b)
    finally:
        await writer.aclose()
        server.terminate()
        server.wait(10)

    print(
        f"LLM writer overhead — fake OpenAI server (separate process), {args.tokens} tokens x "
        f"{args.token_delay * 1000:.1f} ms, {args.runs} runs, {os.cpu_count()} cores"
    )
    print(f"{'':<26}{'ttft p50':>10}{'ttft p99':>10}{'total p50':>11}{'total p99':>11}  (ms)")
    for name, rows in (("(a) raw httpx stream", raw), ("(b) LlmWriter.write", ours)):
        ttft = [r[0] for r in rows]
        total = [r[1] for r in rows]
        print(
            f"{name:<26}{pct(ttft, 0.5) * 1000:>10.2f}{pct(ttft, 0.99) * 1000:>10.2f}"
            f"{pct(total, 0.5) * 1000:>11.2f}{pct(total, 0.99) * 1000:>11.2f}"
        )
    d_ttft = [b[0] - a[0] for a, b in zip(raw, ours, strict=True)]
    d_total = [b[1] - a[1] for a, b in zip(raw, ours, strict=True)]
    print(
        f"{'added by Frankly (b-a)':<26}{pct(d_ttft, 0.5) * 1000:>10.2f}"
        f"{pct(d_ttft, 0.99) * 1000:>10.2f}{pct(d_total, 0.5) * 1000:>11.2f}"
        f"{pct(d_total, 0.99) * 1000:>11.2f}   (paired per run)"
    )
    # Attribution: Frankly's own steps, timed in-process (the rest is the openai SDK).
    text = reply_text(args.tokens)
    started = time.perf_counter()
    for _ in range(args.runs):
        render_prompt(
            DRAFT_PROMPT,
            canary=new_canary(),
            language="en",
            language_name="English",
            tone_notes="",
            variant=0,
            candidates_json=data_json([c.__dict__ for c in FAQ]),
            context_json=data_json(dict(REQUEST.context)),
            conversation_json=data_json({"latest_customer_message": REQUEST.customer_text}),
        )
    render_ms = (time.perf_counter() - started) * 1000 / args.runs
    started = time.perf_counter()
    for _ in range(args.runs):
        grounding.check(
            text,
            sources=[c.answer for c in FAQ],
            context=REQUEST.context,
            customer_text=REQUEST.customer_text,
            system_prompt=prompt.system,
        )
    check_ms = (time.perf_counter() - started) * 1000 / args.runs
    print(
        f"of which (in-process means): prompt render {render_ms:.2f} ms, checks {check_ms:.2f} ms"
    )
    worst = max(pct(d_ttft, 0.99), pct(d_total, 0.99)) * 1000
    verdict = "met" if worst <= 10 else "MISSED"
    print(f"target: added p99 <= 10 ms -> {verdict} ({worst:.2f} ms)")


if __name__ == "__main__":
    asyncio.run(main())

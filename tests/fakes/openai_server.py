"""A local OpenAI-compatible chat-completions server speaking the real wire format.

Real HTTP on 127.0.0.1 (uvicorn + Starlette in a background thread, or `python -m
tests.fakes.openai_server --port N`): `POST /v1/chat/completions`, streaming (SSE
`chat.completion.chunk` objects, a usage chunk when `stream_options.include_usage`, then
`data: [DONE]`) and non-streaming. It checks `Authorization: Bearer <key>`, records every request
and answers from a script queue (`Reply`, `Error`, `Hang`), then from a rule (a function of the
request body) once the queue is empty.

    with FakeOpenAI(api_key="sk-test") as fake:
        fake.script(Error(429, retry_after=0.01), Reply("Hello there"))
        ...  # point the client at fake.base_url, then assert on fake.requests
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

TOKEN = re.compile(r"\s*\S+|\s+$")


def split_tokens(text: str) -> list[str]:
    """Word-sized chunks (each keeps its leading whitespace) that concatenate back to `text`."""
    return TOKEN.findall(text)


@dataclass(frozen=True)
class Reply:
    """A completion. Streamed as `chunks` (default: `text` split into words) unless the client
    asked for a non-streaming reply. `hang_after`/`garbage_after`/`cut_after` break the stream
    after that many content chunks (hang forever / send `garbage` / end the body)."""

    text: str
    chunks: Sequence[str] | None = None
    delay: float = 0.0  # before the response headers
    chunk_delay: float = 0.0  # before each content chunk
    finish_reason: str = "stop"
    usage: bool = True  # send the usage chunk when the client asked for it
    hang_after: int | None = None
    garbage_after: int | None = None
    cut_after: int | None = None  # end the body there: no finish_reason, no [DONE]
    garbage: str = '{"id": "chatcmpl-broken", "choices": [{"delta": {"content": "oops'

    def pieces(self) -> list[str]:
        return list(self.chunks) if self.chunks is not None else split_tokens(self.text)


@dataclass(frozen=True)
class Error:
    """An HTTP error with OpenAI's error body (429 adds `retry-after` when given)."""

    status: int
    retry_after: float | None = None
    message: str = "scripted error"
    raw_body: str | None = None  # sent verbatim instead of the JSON error object


@dataclass(frozen=True)
class Hang:
    """Accept the request and never answer (until the server stops)."""


Step = Reply | Error | Hang
Rule = Callable[[dict[str, Any]], Step]


@dataclass(frozen=True)
class RecordedRequest:
    at: float  # time.monotonic() on arrival
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None  # None when the body was not JSON
    raw: bytes

    def messages(self) -> list[dict[str, Any]]:
        return list((self.body or {}).get("messages", []))

    def message(self, role: str) -> str:
        """The text of the only message with `role` (asserts there is exactly one)."""
        found = [m for m in self.messages() if m.get("role") == role]
        assert len(found) == 1, f"expected one {role} message, got {len(found)}"
        return str(found[0].get("content"))


def _string_after(text: str, key: str) -> str | None:
    """The first JSON string value following `"key":` in `text`, decoded."""
    match = re.search(rf'"{re.escape(key)}"\s*:\s*("(?:[^"\\]|\\.)*")', text)
    return json.loads(match.group(1)) if match else None


def echo_first_candidate(body: dict[str, Any]) -> Step:
    """Rule: reply with the first `"answer": "…"` found in the system message (FAQ candidates
    are rendered as JSON there), or abstain with the no-answer JSON when there is none."""
    system = " ".join(
        str(m.get("content", "")) for m in body.get("messages", []) if m.get("role") == "system"
    )
    answer = _string_after(system, "answer")
    if answer:
        return Reply(answer)
    return Reply('{"no_answer": true, "reason": "no FAQ candidate"}')


def fixed_reply(text: str, *, chunk_delay: float = 0.0, delay: float = 0.0) -> Rule:
    """Rule: always the same reply (used by the benchmark)."""
    step = Reply(text, chunk_delay=chunk_delay, delay=delay)
    return lambda _body: step


@dataclass
class FakeOpenAI:
    """The fake server; a context manager that serves in a background thread."""

    api_key: str = "sk-fake-test-key"
    host: str = "127.0.0.1"
    port: int = 0
    rule: Rule | None = None
    requests: list[RecordedRequest] = field(default_factory=list)
    _queue: deque[Step] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closing: bool = False
    _closed: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    # --- control (any thread) ---

    def script(self, *steps: Step) -> None:
        with self._lock:
            self._queue.extend(steps)

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.rule = None

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def _next(self, body: dict[str, Any]) -> Step:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            rule = self.rule
        if rule is None:
            return Error(500, message="fake server: no scripted reply and no rule")
        return rule(body)

    # --- HTTP ---

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self._completions, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    async def _models(self, request: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0}]}
        )

    async def _completions(self, request: Request) -> Response:
        raw = await request.body()
        try:
            parsed = json.loads(raw)
            body: dict[str, Any] | None = parsed if isinstance(parsed, dict) else None
        except ValueError:
            body = None
        with self._lock:
            self.requests.append(
                RecordedRequest(
                    time.monotonic(), request.url.path, dict(request.headers), body, raw
                )
            )
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided", "invalid_request_error")
        if body is None or not isinstance(body.get("messages"), list) or not body.get("model"):
            return _error(400, "body must be JSON with `model` and `messages`", "invalid_request")
        step = self._next(body)
        if isinstance(step, Hang):
            await self._wait_closing()
            return _error(503, "server shutting down", "server_error")
        if isinstance(step, Error):
            return _scripted_error(step)
        if step.delay:
            await asyncio.sleep(step.delay)
        model = str(body["model"])
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        if not body.get("stream"):
            return JSONResponse(_completion(step, model, prompt_tokens))
        options = body.get("stream_options") or {}
        with_usage = bool(options.get("include_usage")) and step.usage
        return StreamingResponse(
            self._stream(step, model, prompt_tokens, with_usage),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )

    async def _stream(
        self, step: Reply, model: str, prompt_tokens: int, with_usage: bool
    ) -> AsyncIterator[bytes]:
        ident = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            obj: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": "fp_fake",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if with_usage:
                obj["usage"] = None
            return _sse(obj)

        yield chunk({"role": "assistant", "content": "", "refusal": None}, None)
        pieces = step.pieces()
        for i, piece in enumerate(pieces):
            if step.hang_after is not None and i == step.hang_after:
                await self._wait_closing()
                return
            if step.cut_after is not None and i == step.cut_after:
                return
            if step.garbage_after is not None and i == step.garbage_after:
                yield f"data: {step.garbage}\n\n".encode()
                return
            if step.chunk_delay:
                await asyncio.sleep(step.chunk_delay)
            yield chunk({"content": piece}, None)
        if step.hang_after is not None and step.hang_after >= len(pieces):
            await self._wait_closing()
            return
        yield chunk({}, step.finish_reason)
        if with_usage:
            yield _sse(
                {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "service_tier": "default",
                    "system_fingerprint": "fp_fake",
                    "choices": [],
                    "usage": _usage(prompt_tokens, len(pieces)),
                }
            )
        yield b"data: [DONE]\n\n"

    async def _wait_closing(self) -> None:
        """Block a "hanging" response until `stop()` (runs on the server's loop)."""
        if self._closed is None:
            self._closed = asyncio.Event()
            self._loop = asyncio.get_running_loop()
        if not self._closing:
            await self._closed.wait()

    # --- lifecycle ---

    def start(self) -> FakeOpenAI:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app(), log_level="warning", lifespan="off", timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._closing = False
        self._closed = None
        server = self._server
        self._thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])),
            name="fake-openai",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake OpenAI server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self._closing = True
        if self._closed is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._closed.set)
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _sse(obj: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _completion(step: Reply, model: str, prompt_tokens: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
        "service_tier": "default",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": step.text,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": step.finish_reason,
            }
        ],
        "usage": _usage(prompt_tokens, len(step.pieces())),
    }


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)


def _scripted_error(step: Error) -> Response:
    headers = {"retry-after": f"{step.retry_after:g}"} if step.retry_after is not None else {}
    if step.raw_body is not None:
        return Response(step.raw_body, status_code=step.status, headers=headers)
    kind = {429: "rate_limit_exceeded", 401: "invalid_request_error"}.get(
        step.status, "server_error"
    )
    return _error(step.status, step.message, kind, headers)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a fake OpenAI chat-completions API.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key", default="sk-fake-test-key")
    parser.add_argument("--reply", help="always answer this text (default: echo the first FAQ)")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds per token")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before the headers")
    args = parser.parse_args()
    fake = FakeOpenAI(api_key=args.api_key, port=args.port)
    if args.reply is not None:
        fake.rule = fixed_reply(args.reply, chunk_delay=args.chunk_delay, delay=args.delay)
    else:
        fake.rule = echo_first_candidate
    uvicorn.run(fake.app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

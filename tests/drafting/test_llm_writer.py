"""The LLM writer against a real local OpenAI-compatible server (tests/fakes/openai_server.py)."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from frankly.drafting.llm import (
    Candidate,
    LlmConfig,
    LlmUnavailable,
    LlmWriter,
    RateLimiter,
    WriteRequest,
    best_source,
    parse_no_answer,
)
from tests.fakes.openai_server import (
    Error,
    FakeOpenAI,
    Hang,
    Reply,
    echo_first_candidate,
    split_tokens,
)

KEY = "sk-test-0123"
PAY = Candidate(
    slug="how-to-pay",
    question="How do I pay?",
    answer="Transfer 15 000 ₽ to the Sberbank card 4111 1111 1111 1111 within 30 minutes.",
    confidence=0.91,
)
HOURS = Candidate(
    slug="hours",
    question="When are you online?",
    answer="We are online every day from 10:00 to 19:00 Moscow time.",
    confidence=0.42,
)
REPLY = "Hi! Please transfer 15 000 ₽ to the Sberbank card 4111 1111 1111 1111 within 30 minutes."

Factory = Callable[..., LlmWriter]


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as server:
        yield server


@pytest.fixture
def fake(fake_server: FakeOpenAI) -> FakeOpenAI:
    fake_server.reset()
    return fake_server


@pytest.fixture
async def make_writer(fake: FakeOpenAI) -> AsyncIterator[Factory]:
    writers: list[LlmWriter] = []

    def make(**overrides: Any) -> LlmWriter:
        options: dict[str, Any] = {
            "base_url": fake.base_url,
            "api_key": KEY,
            "model": "fake-model",
            "timeout": 2.0,
            "max_retries": 2,
            "requests_per_minute": 100_000,
            "burst": 100,
        }
        http_client = overrides.pop("http_client", None)
        writer = LlmWriter(LlmConfig(**(options | overrides)), http_client=http_client)
        writers.append(writer)
        return writer

    yield make
    for writer in writers:
        await writer.aclose()


def request(text: str = "how can I pay for my order?", **overrides: Any) -> WriteRequest:
    values: dict[str, Any] = {
        "customer_text": text,
        "language": "en",
        "candidates": [PAY, HOURS],
        "history": [("customer", "hello"), ("agent", "Hi, how can we help?")],
        "context": {"order": {"amount": 15000, "currency": "RUB"}},
    }
    return WriteRequest(**(values | overrides))


class Collector:
    def __init__(self) -> None:
        self.deltas: list[str] = []
        self.times: list[float] = []

    async def __call__(self, delta: str) -> None:
        self.deltas.append(delta)
        self.times.append(time.monotonic())


class TestStreaming:
    async def test_deltas_arrive_in_order_and_make_the_final_text(
        self, fake: FakeOpenAI, make_writer: Factory
    ) -> None:
        fake.script(Reply(REPLY, chunk_delay=0.01))
        collect = Collector()
        result = await make_writer().write(request(), on_delta=collect)
        assert result.text == REPLY
        assert "".join(collect.deltas) == REPLY
        assert collect.deltas == split_tokens(REPLY)
        assert collect.times == sorted(collect.times)
        # Streamed as they arrived: the first delta came well before the last.
        assert collect.times[-1] - collect.times[0] >= 0.1
        assert result.no_answer_reason is None
        assert result.entry_slug == "how-to-pay"
        assert result.flags == []
        assert result.blocked is None and not result.stopped

    async def test_metrics_usage_and_prompt_version(
        self, fake: FakeOpenAI, make_writer: Factory
    ) -> None:
        fake.script(Reply(REPLY, delay=0.05, chunk_delay=0.005))
        result = await make_writer().write(request())
        assert result.prompt_version == "llm/draft@1"
        assert result.tokens_out == len(split_tokens(REPLY))
        assert result.tokens_in is not None and result.tokens_in > 50
        assert result.ttft_ms is not None and 50 <= result.ttft_ms < result.total_ms
        assert result.model == "fake-model"
        assert result.finish_reason == "stop"

    async def test_request_shape(self, fake: FakeOpenAI, make_writer: Factory) -> None:
        fake.script(Reply(REPLY))
        await make_writer(max_tokens=123, temperature=0.2).write(request())
        [sent] = fake.requests
        assert sent.headers["authorization"] == f"Bearer {KEY}"
        assert sent.body is not None
        assert sent.body["model"] == "fake-model"
        assert sent.body["stream"] is True
        assert sent.body["stream_options"] == {"include_usage": True}
        assert sent.body["max_tokens"] == 123
        assert sent.body["temperature"] == pytest.approx(0.2)
        assert [m["role"] for m in sent.body["messages"]] == ["system", "user"]

    async def test_missing_usage_gives_none(self, fake: FakeOpenAI, make_writer: Factory) -> None:
        fake.script(Reply(REPLY, usage=False))
        result = await make_writer().write(request())
        assert result.text == REPLY
        assert result.tokens_in is None and result.tokens_out is None

    async def test_truncated_reply_is_flagged(self, fake: FakeOpenAI, make_writer: Factory) -> None:
        fake.script(Reply("Hi! Please transfer 15 000 ₽ to the", finish_reason="length"))
        result = await make_writer(max_tokens=8).write(request())
        assert result.finish_reason == "length"
        assert {"kind": "truncated", "value": "8"}.items() <= result.flags[-1].items()

    async def test_an_httpx_client_can_be_passed_in(
        self, fake: FakeOpenAI, make_writer: Factory
    ) -> None:
        fake.script(Reply(REPLY))
        async with httpx.AsyncClient(timeout=2.0) as client:
            writer = make_writer(http_client=client)
            assert (await writer.write(request())).text == REPLY
            await writer.aclose()
            assert not client.is_closed  # the caller's client stays the caller's


class TestStop:
    async def test_stop_mid_stream_keeps_the_streamed_part(
        self, fake: FakeOpenAI, make_writer: Factory
    ) -> None:
        long_reply = " ".join(f"word{i}" for i in range(60))
        fake.script(Reply(long_reply, chunk_delay=0.01))
        collect = Collector()

        async def should_stop() -> bool:
            return len(collect.deltas) >= 5

        started = time.monotonic()
        result = await make_writer().write(request(), on_delta=collect, should_stop=should_stop)
        assert result.stopped
        assert result.text == "".join(collect.deltas) == "word0 word1 word2 word3 word4"
        assert time.monotonic() - started < 0.5  # 60 chunks x 10 ms were not awaited
        assert result.tokens_out is None  # the usage chunk never came


class TestNoAnswer:
    @pytest.mark.parametrize(
        "output",
        [
            '{"no_answer": true, "reason": "The FAQ does not cover refunds."}',
            '  \n{"no_answer": true, "reason": "The FAQ does not cover refunds."}\n',
            '```json\n{"no_answer": true, "reason": "The FAQ does not cover refunds."}\n```',
            '```\n{"reason": "The FAQ does not cover refunds.", "no_answer": true}```',
        ],
    )
    async def test_abstains_and_streams_nothing(
        self, fake: FakeOpenAI, make_writer: Factory, output: str
    ) -> None:
        fake.script(Reply(output, chunks=list(output)))  # one character per chunk
        collect = Collector()
        result = await make_writer().write(request("can I get a refund?"), on_delta=collect)
        assert result.text is None
        assert result.no_answer_reason == "The FAQ does not cover refunds."
        assert result.entry_slug is None
        assert collect.deltas == []

    async def test_fenced_plain_reply_is_unfenced_and_streamed_once(
        self, fake: FakeOpenAI, make_writer: Factory
    ) -> None:
        fake.script(Reply(f"```\n{REPLY}\n```"))
        collect = Collector()
        result = await make_writer().write(request(), on_delta=collect)
        assert result.text == REPLY
        assert collect.deltas == [REPLY]

    async def test_other_json_is_unusable(self, fake: FakeOpenAI, make_writer: Factory) -> None:
        fake.script(Reply('{"reply": "hello"}'))
        with pytest.raises(LlmUnavailable, match="JSON"):
            await make_writer().write(request())

    def test_parse_no_answer(self) -> None:
        assert parse_no_answer('Sorry. {"no_answer": true, "reason": "x"}') == "x"
        assert parse_no_answer('{"no_answer": true}') == "the model gave no reason"
        assert parse_no_answer('{"no_answer": true, "reason": "cut') is not None
        assert parse_no_answer('{"no_answer": false, "reason": "x"}') is None
        assert parse_no_answer("We accept cards.") is None


class TestProviderFailures:
    async def test_429_then_success_is_retried_by_the_sdk(
        self, fake: FakeOpenAI, make_writer: Factory
    ) -> None:
        fake.script(Error(429, retry_after=0.01), Reply(REPLY))
        result = await make_writer().write(request())
        assert result.text == REPLY
        assert len(fake.requests) == 2

    async def test_429_forever_is_unavailable(self, fake: FakeOpenAI, make_writer: Factory) -> None:
        fake.script(*[Error(429, retry_after=0.01)] * 3)
        with pytest.raises(LlmUnavailable, match="429"):
            await make_writer(max_retries=2).write(request())
        assert len(fake.requests) == 3
        assert fake.pending == 0

    async def test_500_then_success_and_500_forever(
        self, fake: FakeOpenAI, make_writer: Factory
    ) -> None:
        fake.script(Error(500, retry_after=0.01), Reply(REPLY))
        assert (await make_writer().write(request())).text == REPLY
        fake.script(*[Error(500, retry_after=0.01)] * 2)
        with pytest.raises(LlmUnavailable, match="HTTP 500"):
            await make_writer(max_retries=1).write(request())

    async def test_wrong_key_is_unavailable_without_retries(
        self, fake: FakeOpenAI, make_writer: Factory
    ) -> None:
        with pytest.raises(LlmUnavailable, match="HTTP 401"):
            await make_writer(api_key="sk-wrong").write(request())
        assert len(fake.requests) == 1

    async def test_malformed_chunk_is_unavailable(
        self, fake: FakeOpenAI, make_writer: Factory
    ) -> None:
        fake.script(Reply(REPLY, garbage_after=3))
        collect = Collector()
        with pytest.raises(LlmUnavailable, match="malformed"):
            await make_writer().write(request(), on_delta=collect)

    async def test_chunk_of_the_wrong_shape_is_unavailable(
        self, fake: FakeOpenAI, make_writer: Factory
    ) -> None:
        fake.script(Reply(REPLY, garbage_after=2, garbage=json.dumps({"unexpected": 1})))
        with pytest.raises(LlmUnavailable, match="malformed"):
            await make_writer().write(request())

    async def test_stream_cut_short_is_unavailable(
        self, fake: FakeOpenAI, make_writer: Factory
    ) -> None:
        fake.script(Reply(REPLY, cut_after=4))
        with pytest.raises(LlmUnavailable, match="ended before"):
            await make_writer().write(request())

    async def test_hang_is_unavailable_within_the_timeout_budget(
        self, fake: FakeOpenAI, make_writer: Factory
    ) -> None:
        fake.script(Hang(), Hang())
        writer = make_writer(timeout=0.3, max_retries=1)
        started = time.monotonic()
        with pytest.raises(LlmUnavailable, match="timed out"):
            await writer.write(request())
        elapsed = time.monotonic() - started
        assert 0.6 <= elapsed <= writer.config.budget
        assert len(fake.requests) == 2  # the SDK retried the timeout once

    async def test_hang_mid_stream_is_unavailable(
        self, fake: FakeOpenAI, make_writer: Factory
    ) -> None:
        fake.script(Reply(REPLY, hang_after=3))
        started = time.monotonic()
        with pytest.raises(LlmUnavailable, match="timed out"):
            await make_writer(timeout=0.3).write(request())
        assert time.monotonic() - started < 1.0

    async def test_total_timeout_caps_slow_streams(
        self, fake: FakeOpenAI, make_writer: Factory
    ) -> None:
        fake.script(Reply(REPLY, chunk_delay=0.1))  # every gap is under the 2 s read timeout
        started = time.monotonic()
        with pytest.raises(LlmUnavailable, match=r"within 0\.3 s"):
            await make_writer(total_timeout=0.3).write(request())
        assert time.monotonic() - started < 1.0  # the whole stream takes 1.7 s

    async def test_unreachable_provider_is_unavailable(self, make_writer: Factory) -> None:
        with pytest.raises(LlmUnavailable, match="cannot reach"):
            await make_writer(base_url="http://127.0.0.1:9/v1", max_retries=0).write(request())

    async def test_empty_reply_is_unavailable(self, fake: FakeOpenAI, make_writer: Factory) -> None:
        fake.script(Reply("", chunks=[]))
        with pytest.raises(LlmUnavailable, match="empty"):
            await make_writer().write(request())


class TestRateLimit:
    async def test_requests_are_spaced(self, fake: FakeOpenAI, make_writer: Factory) -> None:
        fake.rule = echo_first_candidate
        writer = make_writer(requests_per_minute=600, burst=1)  # one every 100 ms
        for _ in range(4):
            await writer.write(request())
        arrivals = [r.at for r in fake.requests]
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        assert len(gaps) == 3
        # Spaced by the client (arrival times jitter a little in transit).
        assert sum(gaps) >= 0.25 and min(gaps) >= 0.05, gaps  # unlimited: ~5 ms each

    async def test_bucket_allows_a_burst_then_paces(self) -> None:
        limiter = RateLimiter(per_minute=1200, burst=3)  # 20/s
        waits = [await limiter.acquire() for _ in range(5)]
        assert waits[:3] == [0.0, 0.0, 0.0]
        assert all(0 < w <= 0.051 for w in waits[3:]), waits
        assert sum(waits[3:]) >= 0.07, waits

    def test_rate_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="requests_per_minute"):
            RateLimiter(per_minute=0)


class TestPromptContents:
    async def test_candidates_context_history_and_language(
        self, fake: FakeOpenAI, make_writer: Factory
    ) -> None:
        fake.rule = echo_first_candidate
        history = [("customer", f"old message {i}") for i in range(12)]
        result = await make_writer(history_limit=4).write(
            request(
                "как оплатить?",
                language="ru",
                history=history,
                tone_notes="Use the informal 'ты'.",
            )
        )
        assert result.text == PAY.answer  # the rule echoed the best candidate
        [sent] = fake.requests
        system, user = sent.message("system"), sent.message("user")
        assert "Russian" in system and '"ru"' in system
        assert PAY.answer in system and '"confidence": 0.91' in system
        assert system.index(PAY.slug) < system.index(HOURS.slug)  # best first
        assert '"amount": 15000' in system
        assert "Use the informal 'ты'." in system
        assert "old message 7" not in user and all(f"old message {i}" in user for i in (8, 11))
        assert "alternative draft" not in system

    async def test_regenerate_variant_avoids_earlier_drafts(
        self, fake: FakeOpenAI, make_writer: Factory
    ) -> None:
        fake.rule = echo_first_candidate
        await make_writer(temperature=0.3).write(request(variant=2, avoid=["Earlier draft A."]))
        [sent] = fake.requests
        assert "alternative draft number 2" in sent.message("system")
        assert "Earlier draft A." in sent.message("user")
        assert sent.body is not None and sent.body["temperature"] == pytest.approx(0.6)

    async def test_no_disclosure_is_asked_of_the_model(
        self, fake: FakeOpenAI, make_writer: Factory
    ) -> None:
        fake.rule = echo_first_candidate
        await make_writer().write(request())
        system = fake.requests[0].message("system")
        assert "adds its own disclosure" in system
        assert "Hi, I'm the AI assistant" not in system


class TestEntrySlug:
    def test_picks_the_answer_the_reply_is_based_on(self) -> None:
        assert best_source("We're online daily from 10:00 to 19:00 Moscow time.", [PAY, HOURS]) == (
            "hours"
        )
        assert best_source(REPLY, [PAY, HOURS]) == "how-to-pay"

    def test_none_when_no_candidate_fits(self) -> None:
        assert best_source("Thank you, have a nice day!", [PAY, HOURS]) is None
        assert best_source("anything", []) is None

    def test_russian_inflections_match(self) -> None:
        faq = Candidate(
            "card", "Карта", "Переведите деньги на карту Сбербанка в течение часа.", 0.5
        )
        assert best_source("Переводите деньги на карту Сбербанка, пожалуйста.", [faq]) == "card"


class TestRewrite:
    @pytest.mark.parametrize(
        ("kind", "language", "needle"),
        [
            ("shorter", "en", "make the draft shorter"),
            ("formal", "en", "more formal"),
            ("translate", "ru", "translate the draft into Russian"),
        ],
    )
    async def test_kinds(
        self, fake: FakeOpenAI, make_writer: Factory, kind: Any, language: str, needle: str
    ) -> None:
        fake.script(Reply("Transfer 15 000 ₽ to card 4111 1111 1111 1111 in 30 minutes."))
        collect = Collector()
        result = await make_writer().rewrite(
            text=REPLY,
            kind=kind,
            language=language,
            sources=[PAY],
            context={},
            on_delta=collect,
        )
        assert result.prompt_version == "llm/rewrite@1"
        assert result.text == "".join(collect.deltas)
        assert result.flags == []
        assert result.entry_slug == "how-to-pay"
        [sent] = fake.requests
        assert needle in sent.message("system")
        assert json.dumps(REPLY, ensure_ascii=False) in sent.message("user")
        assert REPLY not in sent.message("system")

    async def test_new_facts_in_a_rewrite_are_flagged(
        self, fake: FakeOpenAI, make_writer: Factory
    ) -> None:
        fake.script(Reply("Transfer 16 000 ₽ within 45 minutes."))
        result = await make_writer().rewrite(
            text=REPLY, kind="shorter", language="en", sources=[PAY], context={}
        )
        assert [(f["kind"], f["value"]) for f in result.flags] == [
            ("number", "16000"),
            ("number", "45"),
        ]

    async def test_unknown_kind_is_an_error(self, make_writer: Factory) -> None:
        with pytest.raises(ValueError, match="unknown rewrite kind"):
            await make_writer().rewrite(
                text="x",
                kind="louder",  # type: ignore[arg-type]
                language="en",
                sources=[],
                context={},
            )


class TestFakeServerWireFormat:
    """The fake must parse with the official SDK, streaming and not."""

    async def test_non_streaming_completion(self, fake: FakeOpenAI) -> None:
        fake.script(Reply("plain answer"))
        async with openai.AsyncOpenAI(base_url=fake.base_url, api_key=KEY) as client:
            completion = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
        assert completion.object == "chat.completion"
        assert completion.choices[0].message.content == "plain answer"
        assert completion.usage is not None and completion.usage.completion_tokens == 2

    async def test_sse_lines(self, fake: FakeOpenAI) -> None:
        fake.script(Reply("a b"))
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{fake.base_url}/chat/completions", json=body, headers=headers
            )
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in response.text.split("\n\n") if line]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert [c["choices"][0]["delta"].get("content") for c in chunks[1:3]] == ["a", " b"]
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2

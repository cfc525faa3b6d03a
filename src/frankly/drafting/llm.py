"""The LLM writer: an OpenAI-compatible model writes the reply from the matched FAQ entries.

One `LlmWriter` per provider configuration and process (it owns the connection pool and the
client-side rate limit). It streams text increments to `on_delta`, abstains when the model says
the FAQ doesn't answer the question, runs the grounding checks on the output, and raises
`LlmUnavailable` whenever the provider can't give a usable reply, so the caller falls back to the
offline engine. The server adds the bot disclosure afterwards; the prompts never ask for it.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, cast

import httpx
import jinja2
import openai

from frankly.drafting import grounding
from frankly.prompts import Prompt, load_prompt

DRAFT_PROMPT = "llm/draft"
REWRITE_PROMPT = "llm/rewrite"
LANGUAGE_NAMES = {
    "en": "English",
    "ru": "Russian",
    "uk": "Ukrainian",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "it": "Italian",
    "pt": "Portuguese",
    "tr": "Turkish",
    "kk": "Kazakh",
    "uz": "Uzbek",
}
# Backoff the SDK sleeps between retries without a retry-after header (0.5 s doubling, max 8 s).
_SDK_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)

OnDelta = Callable[[str], Awaitable[None]]
ShouldStop = Callable[[], Awaitable[bool]]
RewriteKind = Literal["shorter", "formal", "translate"]


@dataclass(frozen=True)
class LlmConfig:
    base_url: str
    api_key: str
    model: str
    timeout: float = 20.0  # per HTTP attempt: connect, and the gap between two chunks
    max_tokens: int = 400
    temperature: float = 0.3
    requests_per_minute: int = 60
    max_retries: int = 2  # the SDK's own retries (429, 5xx, timeouts, connection errors)
    burst: int = 5  # requests allowed at once before the per-minute pacing applies
    history_limit: int = 8  # last N conversation messages shown to the model
    total_timeout: float | None = None  # cap on one write, retries included (default: derived)

    @property
    def budget(self) -> float:
        """Seconds one write may take in all: every attempt timing out plus the SDK's backoff."""
        if self.total_timeout is not None:
            return self.total_timeout
        backoff = sum(_SDK_BACKOFF[min(i, len(_SDK_BACKOFF) - 1)] for i in range(self.max_retries))
        return self.timeout * (self.max_retries + 1) + backoff + 1.0


@dataclass(frozen=True)
class Candidate:
    slug: str
    question: str
    answer: str  # already in the customer's language, placeholders filled
    confidence: float


@dataclass(frozen=True)
class WriteRequest:
    customer_text: str
    language: str
    candidates: Sequence[Candidate]
    history: Sequence[tuple[str, str]]  # ("customer" | "agent", text), oldest first
    context: Mapping[str, Any]
    tone_notes: str = ""
    variant: int = 0  # 0 for the first draft, n for the n-th regenerate
    avoid: Sequence[str] = ()  # earlier drafts whose wording not to repeat


@dataclass
class WriteResult:
    """A reply (`text`), an abstention (`no_answer_reason`), or a blocked reply (`blocked`, with
    `text` kept for audit only). `stopped` means `should_stop` ended the stream early and `text`
    is what was streamed so far."""

    text: str | None
    no_answer_reason: str | None
    entry_slug: str | None
    prompt_version: str  # e.g. "llm/draft@1"
    tokens_in: int | None
    tokens_out: int | None
    ttft_ms: float | None
    total_ms: float
    flags: list[dict[str, Any]]
    stopped: bool = False
    blocked: str | None = None
    model: str = ""
    finish_reason: str | None = None
    wait_ms: float = 0.0  # spent waiting for the client-side rate limit (in ttft and total)

    @property
    def showable(self) -> bool:
        return self.text is not None and self.blocked is None


class _Malformed(ValueError):
    """A stream chunk that is not shaped like a chat.completion.chunk."""


class LlmUnavailable(Exception):
    """The provider gave no usable reply (down, timeouts, 429s after retries, malformed output)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RateLimiter:
    """Async token bucket: `per_minute` requests a minute, up to `burst` at once, FIFO waits."""

    def __init__(self, per_minute: float, burst: int = 1) -> None:
        if per_minute <= 0:
            raise ValueError(f"requests_per_minute must be positive, got {per_minute}")
        self.rate = per_minute / 60.0
        self.capacity = float(max(1, burst))
        self._tokens = self.capacity
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> float:
        """Take one token, sleeping until one is available; returns the seconds waited."""
        async with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            waited = 0.0
            if self._tokens < 1.0:
                waited = (1.0 - self._tokens) / self.rate
                await asyncio.sleep(waited)
                self._tokens = 1.0
                self._updated = time.monotonic()
            self._tokens -= 1.0
            return waited


# --- prompts ---


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    system: str
    user: str
    version: str  # "llm/draft@1"


_ENV = jinja2.Environment(
    autoescape=False,  # noqa: S701 - prompts are plain text for a model, not HTML
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=False,
)
_SECTIONS = re.compile(r"<!--\s*system\s*-->(.*)<!--\s*user\s*-->(.*)", re.DOTALL)


@lru_cache(maxsize=32)
def _templates(prompt: Prompt) -> tuple[jinja2.Template, jinja2.Template]:
    match = _SECTIONS.search(prompt.text)
    if match is None:
        raise ValueError(
            f"prompt {prompt.name}@{prompt.version} needs a <!-- system --> section "
            "followed by a <!-- user --> section"
        )
    return _ENV.from_string(match.group(1).strip()), _ENV.from_string(match.group(2).strip())


def render_prompt(name: str, *, directory: Path | None = None, **values: Any) -> RenderedPrompt:
    """Render both sections of prompt `name` (StrictUndefined: a missing value is an error)."""
    prompt = load_prompt(name, directory=directory)
    system, user = _templates(prompt)
    return RenderedPrompt(
        system=system.render(**values),
        user=user.render(**values),
        version=f"{prompt.name}@{prompt.version}",
    )


def data_json(value: Any) -> str:
    """JSON for a data block in a prompt; `<`, `>` and `&` are \\u-escaped so no value can close
    the block's delimiter tag."""
    text = json.dumps(value, ensure_ascii=False, indent=2, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def new_canary() -> str:
    """A per-prompt marker; seeing it in an output proves the system prompt leaked."""
    return f"fr-canary-{secrets.token_hex(8)}"


def _candidates_json(candidates: Sequence[Candidate]) -> str:
    ordered = sorted(candidates, key=lambda c: -c.confidence)
    return data_json(
        [
            {
                "slug": c.slug,
                "question": c.question,
                "answer": c.answer,
                "confidence": round(c.confidence, 2),
            }
            for c in ordered
        ]
    )


# --- output parsing ---

_FENCE = re.compile(r"^```[\w-]*\s*(.*?)\s*```$", re.DOTALL)
_NO_ANSWER_OBJECT = re.compile(r"\{[^{}]*\"no_answer\"\s*:\s*(?:true|\"true\")[^{}]*\}", re.DOTALL)


def _unfence(text: str) -> str:
    match = _FENCE.match(text.strip())
    return match.group(1).strip() if match else text.strip()


def parse_no_answer(text: str) -> str | None:
    """The reason if `text` is the no-answer JSON object (bare, fenced, or embedded in prose)."""
    body = _unfence(text)
    for candidate in [body, *(m.group(0) for m in _NO_ANSWER_OBJECT.finditer(text))]:
        try:
            obj = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("no_answer") in (True, "true"):
            reason = str(obj.get("reason") or "").strip()
            return reason or "the model gave no reason"
    if body.startswith("{") and re.search(r'"no_answer"\s*:\s*true', body):
        return "the model declined (its JSON was cut off)"
    return None


def _holding(visible: str) -> bool:
    """Whether the output so far could still be the no-answer JSON (so nothing is streamed)."""
    return visible.startswith(("{", "```")) or (visible != "" and "```".startswith(visible))


_STOPWORD_TEXT = (
    "the and you your for are with this that have has can will not but our from was were what "
    "when how who which into about there their them they its it's just also please thank thanks "
    "это как что для или его она они так вам вас ваш ваша ваше ваши мне мой моя наш наша если "
    "уже еще ещё при без над под все всё только можно нужно будет есть был была было были"
)
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def _stems(text: str) -> set[str]:
    """Content-word stems (6-letter prefixes, so Russian inflections still match)."""
    words = (w.lower() for w in re.findall(r"\w+", text))
    return {w[:6] for w in words if (len(w) >= 3 or w.isdigit()) and w not in _STOPWORDS}


def best_source(text: str, candidates: Sequence[Candidate]) -> str | None:
    """The slug of the candidate whose answer shares the most content words with `text`;
    None when none shares at least two words and a fifth of its own content words."""
    out = _stems(text)
    best: tuple[int, float, str] | None = None
    for candidate in candidates:
        answer = _stems(candidate.answer)
        shared = len(out & answer)
        if shared < 2 or shared < 0.2 * len(answer):
            continue
        key = (shared, candidate.confidence, candidate.slug)
        if best is None or key[:2] > best[:2]:
            best = key
    return best[2] if best else None


# --- the writer ---


@dataclass
class _Run:
    raw: str = ""
    emitted: str = ""
    stopped: bool = False
    blocked_early: dict[str, Any] | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    ttft_ms: float | None = None
    total_ms: float = 0.0
    finish_reason: str | None = None
    model: str = ""
    wait_ms: float = 0.0


class LlmWriter:
    """Writes and rewrites replies through one OpenAI-compatible provider."""

    def __init__(
        self,
        config: LlmConfig,
        *,
        http_client: httpx.AsyncClient | None = None,
        prompts_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.prompts_dir = prompts_dir
        self._owns_client = http_client is None
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=config.api_key,
            timeout=config.timeout,
            max_retries=config.max_retries,
            # The SDK types this as its own httpx2 client but accepts an httpx one too.
            http_client=cast(Any, http_client),
        )
        self._limiter = RateLimiter(config.requests_per_minute, config.burst)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.close()

    async def write(
        self,
        request: WriteRequest,
        *,
        on_delta: OnDelta | None = None,
        should_stop: ShouldStop | None = None,
    ) -> WriteResult:
        """Draft a reply to `request.customer_text` from its FAQ candidates, or abstain.

        `on_delta` gets increments whose concatenation is `result.text`; nothing is streamed while
        the output could be the no-answer JSON, and streaming ends as soon as a human claim or the
        canary shows up (the result is then `blocked`; the caller retracts what it displayed, as
        it does when prose turned out to wrap the no-answer JSON). `should_stop` is polled after
        every chunk, so keep it cheap (an `asyncio.Event` check, not a query).
        """
        started = time.perf_counter()
        history = (
            list(request.history)[-self.config.history_limit :] if self.config.history_limit else []
        )
        conversation: dict[str, Any] = {
            "earlier_messages": [{"from": who, "text": text} for who, text in history],
            "latest_customer_message": request.customer_text,
        }
        if request.avoid:
            conversation["earlier_drafts_to_reword"] = list(request.avoid)
        prompt = render_prompt(
            DRAFT_PROMPT,
            directory=self.prompts_dir,
            canary=new_canary(),
            language=request.language,
            language_name=LANGUAGE_NAMES.get(request.language, request.language),
            tone_notes=request.tone_notes.strip(),
            variant=request.variant,
            candidates_json=_candidates_json(request.candidates),
            context_json=data_json(dict(request.context)),
            conversation_json=data_json(conversation),
        )
        temperature = min(1.0, self.config.temperature + 0.15 * max(0, request.variant))
        sources = [c.answer for c in request.candidates] + [c.question for c in request.candidates]
        return await self._complete(
            prompt,
            started=started,
            temperature=temperature,
            sources=sources,
            candidates=request.candidates,
            context=request.context,
            customer_text="\n".join([request.customer_text, *(t for _, t in history)]),
            on_delta=on_delta,
            should_stop=should_stop,
        )

    async def rewrite(
        self,
        *,
        text: str,
        kind: RewriteKind,
        language: str,
        sources: Sequence[Candidate],
        context: Mapping[str, Any],
        on_delta: OnDelta | None = None,
        should_stop: ShouldStop | None = None,
    ) -> WriteResult:
        """Rewrite a draft shorter, more formal, or in `language`, keeping its facts."""
        if kind not in ("shorter", "formal", "translate"):
            raise ValueError(f"unknown rewrite kind {kind!r}; use shorter, formal or translate")
        started = time.perf_counter()
        prompt = render_prompt(
            REWRITE_PROMPT,
            directory=self.prompts_dir,
            canary=new_canary(),
            kind=kind,
            language=language,
            language_name=LANGUAGE_NAMES.get(language, language),
            candidates_json=_candidates_json(sources),
            context_json=data_json(dict(context)),
            draft_json=data_json({"draft": text}),
        )
        return await self._complete(
            prompt,
            started=started,
            temperature=self.config.temperature,
            # The draft itself is a source: the agent may have added facts to it.
            sources=[text, *(c.answer for c in sources), *(c.question for c in sources)],
            candidates=sources,
            context=context,
            customer_text="",
            on_delta=on_delta,
            should_stop=should_stop,
        )

    async def _complete(
        self,
        prompt: RenderedPrompt,
        *,
        started: float,
        temperature: float,
        sources: Sequence[str],
        candidates: Sequence[Candidate],
        context: Mapping[str, Any],
        customer_text: str,
        on_delta: OnDelta | None,
        should_stop: ShouldStop | None,
    ) -> WriteResult:
        run = await self._stream(prompt, started, temperature, on_delta, should_stop)
        result = WriteResult(
            text=None,
            no_answer_reason=None,
            entry_slug=None,
            prompt_version=prompt.version,
            tokens_in=run.tokens_in,
            tokens_out=run.tokens_out,
            ttft_ms=run.ttft_ms,
            total_ms=0.0,
            flags=[],
            stopped=run.stopped,
            model=run.model,
            finish_reason=run.finish_reason,
            wait_ms=run.wait_ms,
        )
        if run.blocked_early is not None:
            result.text = run.raw.strip()
        elif run.stopped:
            result.text = run.emitted or None
        else:
            reason = parse_no_answer(run.raw)
            if reason is not None:
                result.no_answer_reason = reason
                result.total_ms = (time.perf_counter() - started) * 1000
                return result
            text = _unfence(run.raw)
            if not text:
                raise LlmUnavailable("the provider returned an empty reply")
            if text.startswith("{"):
                raise LlmUnavailable("the model returned JSON that is not a reply")
            # Output held back while it could have been the no-answer JSON goes out now.
            if on_delta is not None and text != run.emitted and text.startswith(run.emitted):
                await on_delta(text[len(run.emitted) :])
            result.text = text
        if result.text:
            result.flags = grounding.check(
                result.text,
                sources=sources,
                context=context,
                customer_text=customer_text,
                system_prompt=prompt.system,
            )
            if run.blocked_early is not None and run.blocked_early not in result.flags:
                result.flags.insert(0, run.blocked_early)
            result.blocked = grounding.blocking_reason(result.flags)
            if result.blocked is None:
                result.entry_slug = best_source(result.text, candidates)
        if run.finish_reason == "length":
            result.flags.append(
                {
                    "kind": "truncated",
                    "value": str(self.config.max_tokens),
                    "detail": "the reply reached max_tokens and may be cut off",
                }
            )
        result.total_ms = (time.perf_counter() - started) * 1000
        return result

    async def _stream(
        self,
        prompt: RenderedPrompt,
        started: float,
        temperature: float,
        on_delta: OnDelta | None,
        should_stop: ShouldStop | None,
    ) -> _Run:
        run = _Run()
        budget = self.config.budget
        try:
            async with asyncio.timeout(budget):
                run.wait_ms = await self._limiter.acquire() * 1000
                stream = await self._client.chat.completions.create(
                    model=self.config.model,
                    messages=[
                        {"role": "system", "content": prompt.system},
                        {"role": "user", "content": prompt.user},
                    ],
                    stream=True,
                    stream_options={"include_usage": True},
                    max_tokens=self.config.max_tokens,
                    temperature=temperature,
                )
                try:
                    async for chunk in stream:
                        if await self._consume(chunk, run, started, prompt, on_delta):
                            break
                        if should_stop is not None and await should_stop():
                            run.stopped = True
                            break
                finally:
                    await stream.close()
        except TimeoutError:
            raise LlmUnavailable(f"no complete reply within {budget:g} s") from None
        except openai.RateLimitError:
            raise LlmUnavailable(
                f"rate limited by the provider (HTTP 429) after {self.config.max_retries} retries"
            ) from None
        except openai.APITimeoutError:
            raise LlmUnavailable(
                f"the provider timed out ({self.config.timeout:g} s per attempt, "
                f"{self.config.max_retries} retries)"
            ) from None
        except openai.APIConnectionError as exc:
            raise LlmUnavailable(f"cannot reach the provider: {exc.__cause__ or exc}") from None
        except openai.APIStatusError as exc:
            raise LlmUnavailable(
                f"the provider answered HTTP {exc.status_code}: {_short(exc.message)}"
            ) from None
        except (openai.OpenAIError, _Malformed, json.JSONDecodeError, httpx.HTTPError) as exc:
            raise LlmUnavailable(f"malformed reply from the provider: {_short(str(exc))}") from None
        if run.finish_reason is None and not run.stopped and run.blocked_early is None:
            raise LlmUnavailable("the stream ended before the reply was complete")
        run.total_ms = (time.perf_counter() - started) * 1000
        return run

    async def _consume(
        self,
        chunk: Any,
        run: _Run,
        started: float,
        prompt: RenderedPrompt,
        on_delta: OnDelta | None,
    ) -> bool:
        """Take one stream chunk; True when the output is blocked and the stream should end."""
        try:
            usage = chunk.usage
            choices = chunk.choices
            run.model = str(chunk.model or run.model)
        except AttributeError:
            raise _Malformed(f"chunk without choices/usage: {chunk!r:.200}") from None
        if usage is not None:
            run.tokens_in = getattr(usage, "prompt_tokens", None)
            run.tokens_out = getattr(usage, "completion_tokens", None)
        elif not isinstance(choices, list):
            raise _Malformed(f"chunk without choices or usage: {chunk!r:.200}")
        if not choices:
            return False
        try:
            choice = choices[0]
            piece = choice.delta.content if choice.delta is not None else None
            finish = choice.finish_reason
        except (AttributeError, IndexError, TypeError):
            raise _Malformed(f"chunk without a delta: {chunk!r:.200}") from None
        if finish:
            run.finish_reason = str(finish)
        if not piece:
            return False
        if not isinstance(piece, str):
            raise _Malformed(f"delta content is not text: {piece!r:.100}")
        if run.ttft_ms is None:
            run.ttft_ms = (time.perf_counter() - started) * 1000
        run.raw += piece
        visible = run.raw.strip()
        if _holding(visible):
            return False
        early = grounding.blocking_in(visible, system_prompt=prompt.system)
        if early is not None:
            run.blocked_early = early
            return True
        if on_delta is not None and len(visible) > len(run.emitted):
            delta = visible[len(run.emitted) :]
            run.emitted = visible
            await on_delta(delta)
        return False


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"

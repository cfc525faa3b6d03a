"""Cleaning customer and agent text before it is stored."""

from __future__ import annotations

import re
import unicodedata

from frankly.errors import Invalid, TooLarge

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\u2028\u2029\ufeff]")


def clean_text(text: str, *, limit_bytes: int, field: str = "text") -> str:
    """Strip control characters (keeping newlines and tabs), normalise, enforce the size limit."""
    cleaned = _CONTROL.sub("", unicodedata.normalize("NFC", text)).replace("\r\n", "\n")
    cleaned = cleaned.replace("\r", "\n").strip()
    size = len(cleaned.encode("utf-8"))
    if size > limit_bytes:
        raise TooLarge(f"{field} is {size} bytes; the limit is {limit_bytes} bytes")
    if not cleaned:
        raise Invalid(f"{field} is empty")
    return cleaned

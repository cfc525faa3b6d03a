"""How much of a draft survives in what the agent sent.

similarity(draft, sent) is difflib's ratio over word tokens of the case-folded texts:
2·M / (|a| + |b|), M = tokens in matching blocks. 1.0 means the same words in the same order,
0.0 nothing in common. A reply counts as derived from the draft at or above DERIVED_THRESHOLD.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher

DERIVED_THRESHOLD = 0.5
_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.casefold())


def similarity(draft: str, sent: str) -> float:
    a, b = tokens(draft), tokens(sent)
    if not a and not b:
        return 1.0
    return round(SequenceMatcher(None, a, b, autojunk=False).ratio(), 4)


def same_text(draft: str, sent: str) -> bool:
    return " ".join(draft.split()) == " ".join(sent.split())

"""`{{order.amount}}`-style placeholders filled from a conversation's context."""

from __future__ import annotations

import re
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)\s*\}\}")


class MissingValue(LookupError):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def placeholders(text: str) -> list[str]:
    return PLACEHOLDER.findall(text)


def _lookup(context: dict[str, Any], path: str) -> str:
    value: Any = context
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise MissingValue(path)
        value = value[part]
    if value is None or isinstance(value, dict | list) or str(value).strip() == "":
        raise MissingValue(path)
    return str(value)


def fill(text: str, context: dict[str, Any]) -> str:
    """Replace every placeholder; raise MissingValue naming the first one without a value."""
    return PLACEHOLDER.sub(lambda match: _lookup(context, match.group(1)), text)

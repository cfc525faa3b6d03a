"""Prompt and disclosure texts: files under prompts/, loaded by name, each with a version."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from frankly.config import get_settings


class PromptNotFound(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class Prompt:
    name: str  # e.g. "disclosure/intro.en"
    version: int
    text: str


def parse_prompt(name: str, raw: str) -> Prompt:
    """Split YAML front matter (which must carry an integer `version`) from the text."""
    version = 1
    body = raw
    if raw.startswith("---"):
        _, front, body = raw.split("---", 2)
        meta = yaml.safe_load(front) or {}
        version = int(meta.get("version", 1))
    return Prompt(name=name, version=version, text=body.strip())


@lru_cache(maxsize=256)
def _load(directory: Path, name: str) -> Prompt:
    path = directory / f"{name}.md"
    if not path.is_file():
        raise PromptNotFound(f"no prompt file {path}")
    return parse_prompt(name, path.read_text(encoding="utf-8"))


def load_prompt(name: str, *, directory: Path | None = None) -> Prompt:
    return _load(directory or get_settings().prompts_dir, name)

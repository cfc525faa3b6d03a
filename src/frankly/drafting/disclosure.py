"""Server-applied bot disclosure: an introduction on the first AI-derived reply, a marker after."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from frankly.prompts import Prompt, PromptNotFound, load_prompt

FALLBACK_LANGUAGE = "en"


class DisclosureKind(StrEnum):
    INTRO = "intro"
    MARKER = "marker"


@dataclass(frozen=True, slots=True)
class Disclosure:
    kind: DisclosureKind
    language: str
    prompt: Prompt

    @property
    def id(self) -> str:
        return self.prompt.name

    @property
    def version(self) -> int:
        return self.prompt.version

    @property
    def text(self) -> str:
        return self.prompt.text


def disclosure_for(kind: DisclosureKind, language: str | None) -> Disclosure:
    """The disclosure text in the customer's language, falling back to English."""
    for lang in (language or FALLBACK_LANGUAGE, FALLBACK_LANGUAGE):
        try:
            return Disclosure(kind, lang, load_prompt(f"disclosure/{kind.value}.{lang}"))
        except PromptNotFound:
            continue
    raise PromptNotFound(f"no disclosure/{kind.value}.{FALLBACK_LANGUAGE} prompt")


def apply(body: str, disclosure: Disclosure) -> str:
    """The customer-facing text: intro above the reply, marker below it."""
    if disclosure.kind == DisclosureKind.INTRO:
        return f"{disclosure.text}\n\n{body}"
    return f"{body}\n\n{disclosure.text}"


def _all_disclosure_texts(languages: tuple[str, ...]) -> list[str]:
    texts = []
    for kind in DisclosureKind:
        for lang in languages:
            try:
                texts.append(load_prompt(f"disclosure/{kind.value}.{lang}").text)
            except PromptNotFound:
                continue
    return sorted(set(texts), key=len, reverse=True)


def strip(text: str, *, languages: tuple[str, ...] = ("en", "ru")) -> str:
    """Remove disclosure texts an agent left in (or pasted into) a reply, so none is doubled."""
    cleaned = text.strip()
    changed = True
    while changed:
        changed = False
        for known in _all_disclosure_texts(languages):
            if cleaned.startswith(known):
                cleaned, changed = cleaned[len(known) :].strip(), True
            elif cleaned.endswith(known):
                cleaned, changed = cleaned[: -len(known)].strip(), True
    return cleaned


def text_of(disclosure_id: str | None, language: str | None = None) -> str | None:
    """The text of a recorded disclosure (its prompt name, e.g. "disclosure/intro.ru")."""
    if not disclosure_id:
        return None
    try:
        return load_prompt(disclosure_id).text
    except PromptNotFound:
        return None

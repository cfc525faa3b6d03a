"""FAQ entry shapes for the API and for import files (one validation for both)."""

from __future__ import annotations

import re
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

# At least one letter: all-digit references are entry ids in the API.
SLUG_RE = re.compile(r"^(?![0-9]+$)[a-z0-9][a-z0-9_-]{0,99}$")
LANG_RE = re.compile(r"^[a-z]{2}(-[a-z]{2})?$")
MAX_TEXT = 8000


def _clean_list(values: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:
        value = value.strip()
        if value:
            seen.setdefault(value, None)
    return list(seen)


def _check_answers(answers: dict[str, str]) -> dict[str, str]:
    cleaned: dict[str, str] = {}
    for language, text in answers.items():
        language = language.strip().lower()
        if not LANG_RE.match(language):
            raise ValueError(f"answer language {language!r} is not a language code like 'en'")
        if len(text) > MAX_TEXT:
            raise ValueError(f"answer in {language!r} is longer than {MAX_TEXT} characters")
        if text.strip():
            cleaned[language] = text.strip()
    return cleaned


class FaqEntryBase(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class FaqEntryCreate(FaqEntryBase):
    slug: str = Field(min_length=1, max_length=100)
    question: str = Field(min_length=1, max_length=MAX_TEXT)
    paraphrases: list[str] = Field(default_factory=list, max_length=500)
    answers: dict[str, str] = Field(min_length=1)
    tags: list[str] = Field(default_factory=list, max_length=50)
    never_draft: bool = False
    enabled: bool = True

    @field_validator("slug")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG_RE.match(value):
            raise ValueError(
                "use lowercase letters, digits, '-' and '_' (max 100), with at least one letter"
            )
        return value

    @field_validator("paraphrases", "tags")
    @classmethod
    def _lists(cls, value: list[str]) -> list[str]:
        return _clean_list(value)

    @field_validator("answers")
    @classmethod
    def _answers(cls, value: dict[str, str]) -> dict[str, str]:
        cleaned = _check_answers(value)
        if not cleaned:
            raise ValueError("at least one non-empty answer is required")
        return cleaned


class FaqEntryUpdate(FaqEntryBase):
    question: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT)
    paraphrases: list[str] | None = Field(default=None, max_length=500)
    answers: dict[str, str] | None = None
    tags: list[str] | None = Field(default=None, max_length=50)
    never_draft: bool | None = None
    enabled: bool | None = None

    @field_validator("paraphrases", "tags")
    @classmethod
    def _lists(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _clean_list(value)

    @field_validator("answers")
    @classmethod
    def _answers(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        cleaned = _check_answers(value)
        if not cleaned:
            raise ValueError("at least one non-empty answer is required")
        return cleaned


class FaqEntryRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    slug: str
    question: str
    paraphrases: list[str]
    answers: dict[str, str]
    tags: list[str]
    never_draft: bool
    enabled: bool
    version: int
    created_at: datetime
    updated_at: datetime


class FaqVersionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    version: int
    question: str
    paraphrases: list[str]
    answers: dict[str, str]
    tags: list[str]
    never_draft: bool
    enabled: bool
    created_at: datetime
    created_by_id: int | None


class ImportReport(BaseModel):
    created: int = 0
    updated: int = 0
    unchanged: int = 0


class LearnedExampleRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    entry_id: int
    label: str
    text: str
    language: str | None
    message_id: int | None
    created_at: datetime

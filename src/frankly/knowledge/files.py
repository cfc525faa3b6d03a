"""Reading and writing FAQ files (YAML, CSV); a bad file is rejected whole, naming its line."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from frankly.errors import Invalid
from frankly.knowledge.schemas import FaqEntryCreate

CSV_LIST_SEPARATOR = "|"
CSV_BASE_COLUMNS = ("slug", "question", "answer_en", "answer_ru", "paraphrases", "tags")
MAX_FILE_BYTES = 50 * 1024 * 1024


class FaqFileError(Invalid):
    """The file can't be imported; the message names the file, line and field."""


@dataclass(slots=True)
class FaqFileEntry:
    slug: str
    question: str
    paraphrases: list[str] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    never_draft: bool = False
    enabled: bool = True
    line: int = 0

    def as_create(self) -> FaqEntryCreate:
        return FaqEntryCreate(
            slug=self.slug,
            question=self.question,
            paraphrases=self.paraphrases,
            answers=self.answers,
            tags=self.tags,
            never_draft=self.never_draft,
            enabled=self.enabled,
        )


def file_format(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix in {".yaml", ".yml"}:
        return "yaml"
    if suffix == ".csv":
        return "csv"
    raise FaqFileError(
        f"{name}: unknown FAQ file type {suffix or '(none)'}; use .yaml, .yml or .csv"
    )


def read_faq_file(path: Path) -> list[FaqFileEntry]:
    """Parse and validate a whole FAQ file (format from its extension)."""
    fmt = file_format(path.name)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FaqFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return parse_faq_bytes(data, name=path.name, fmt=fmt)


def parse_faq_bytes(data: bytes, *, name: str, fmt: str) -> list[FaqFileEntry]:
    if len(data) > MAX_FILE_BYTES:
        raise FaqFileError(f"{name}: file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise FaqFileError(f"{name} line {line}: not valid UTF-8") from None
    entries = _parse_yaml(text, name) if fmt == "yaml" else _parse_csv(text, name)
    seen: dict[str, int] = {}
    for entry in entries:
        if entry.slug in seen:
            raise FaqFileError(
                f"{name} line {entry.line}: field 'slug': {entry.slug!r} already used on line "
                f"{seen[entry.slug]}"
            )
        seen[entry.slug] = entry.line
    return entries


def _validated(raw: dict[str, Any], *, name: str, line: int, lines: dict[str, int]) -> FaqFileEntry:
    try:
        model = FaqEntryCreate.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(part) for part in err["loc"]]
        field_name = loc[0] if loc else "entry"
        where = lines.get(field_name, line)
        path = ".".join(loc) if loc else "entry"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        raise FaqFileError(f"{name} line {where}: field '{path}': {message}") from None
    return FaqFileEntry(
        slug=model.slug,
        question=model.question,
        paraphrases=model.paraphrases,
        answers=model.answers,
        tags=model.tags,
        never_draft=model.never_draft,
        enabled=model.enabled,
        line=line,
    )


def _parse_yaml(text: str, name: str) -> list[FaqFileEntry]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise FaqFileError(f"{name} line {line}: not valid YAML: {problem}") from None
    if root is None:
        return []
    if not isinstance(root, yaml.SequenceNode):
        raise FaqFileError(
            f"{name} line {root.start_mark.line + 1}: expected a list of FAQ entries"
        )
    loader = yaml.SafeLoader("")
    entries = []
    for item in root.value:
        line = item.start_mark.line + 1
        if not isinstance(item, yaml.MappingNode):
            raise FaqFileError(f"{name} line {line}: each FAQ entry must be a mapping")
        lines = {str(key.value): key.start_mark.line + 1 for key, _ in item.value}
        try:
            raw = loader.construct_document(item)
        except yaml.YAMLError as exc:
            raise FaqFileError(f"{name} line {line}: not valid YAML: {exc}") from None
        entries.append(_validated(raw, name=name, line=line, lines=lines))
    return entries


def _split(value: str) -> list[str]:
    """Split a CSV list cell on unescaped `|`; `\\|` is a literal bar and `\\\\` a backslash."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in value:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == CSV_LIST_SEPARATOR:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def _join(values: Sequence[str]) -> str:
    escaped = (v.replace("\\", "\\\\").replace(CSV_LIST_SEPARATOR, "\\|") for v in values)
    return CSV_LIST_SEPARATOR.join(escaped)


def _parse_csv(text: str, name: str) -> list[FaqFileEntry]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as exc:
        raise FaqFileError(f"{name} line 1: not valid CSV: {exc}") from None
    header = [column.strip().lower() for column in header]
    for required in ("slug", "question"):
        if required not in header:
            raise FaqFileError(f"{name} line 1: missing column '{required}'")
    answer_columns = [column for column in header if column.startswith("answer_")]
    if not answer_columns:
        raise FaqFileError(f"{name} line 1: needs at least one answer column such as 'answer_en'")
    known = {"slug", "question", "paraphrases", "tags", "never_draft", "enabled", *answer_columns}
    unknown = [column for column in header if column not in known]
    if unknown:
        raise FaqFileError(f"{name} line 1: unknown column '{unknown[0]}'")
    entries = []
    next_start = reader.line_num + 1
    try:
        for row in reader:
            # A quoted cell may span lines: report the line where the record starts.
            line, next_start = next_start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise FaqFileError(
                    f"{name} line {line}: expected {len(header)} columns, found {len(row)}"
                )
            cells = dict(zip(header, row, strict=True))
            raw: dict[str, Any] = {
                "slug": cells["slug"],
                "question": cells["question"],
                "answers": {
                    column.removeprefix("answer_"): cells[column] for column in answer_columns
                },
                "paraphrases": _split(cells.get("paraphrases", "")),
                "tags": _split(cells.get("tags", "")),
            }
            for flag in ("never_draft", "enabled"):
                if flag in cells and cells[flag].strip():
                    raw[flag] = _csv_bool(cells[flag], name=name, line=line, column=flag)
            entries.append(_validated(raw, name=name, line=line, lines={}))
    except csv.Error as exc:
        raise FaqFileError(f"{name} line {next_start}: not valid CSV: {exc}") from None
    return entries


def _csv_bool(value: str, *, name: str, line: int, column: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "y"}:
        return True
    if lowered in {"0", "false", "no", "n"}:
        return False
    raise FaqFileError(f"{name} line {line}: field '{column}': expected true or false")


def dump_faq(entries: Sequence[FaqFileEntry], *, fmt: str) -> str:
    """Serialize entries in the import format (a round trip gives the same entries)."""
    if fmt == "yaml":
        return dump_yaml(entries)
    return dump_csv(entries)


def _entry_dict(entry: FaqFileEntry) -> dict[str, Any]:
    data: dict[str, Any] = {
        "slug": entry.slug,
        "question": entry.question,
        "paraphrases": list(entry.paraphrases),
        "answers": dict(entry.answers),
        "tags": list(entry.tags),
        "never_draft": entry.never_draft,
    }
    if not entry.enabled:
        data["enabled"] = False
    return data


def dump_yaml(entries: Iterable[FaqFileEntry]) -> str:
    return yaml.safe_dump(
        [_entry_dict(entry) for entry in entries], allow_unicode=True, sort_keys=False, width=100
    )


def dump_csv(entries: Sequence[FaqFileEntry]) -> str:
    languages = sorted({lang for entry in entries for lang in entry.answers} - {"en", "ru"})
    header = [
        "slug",
        "question",
        "answer_en",
        "answer_ru",
        *(f"answer_{lang}" for lang in languages),
        "paraphrases",
        "tags",
        "never_draft",
        "enabled",
    ]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for entry in entries:
        writer.writerow(
            [
                entry.slug,
                entry.question,
                entry.answers.get("en", ""),
                entry.answers.get("ru", ""),
                *(entry.answers.get(lang, "") for lang in languages),
                _join(entry.paraphrases),
                _join(entry.tags),
                "true" if entry.never_draft else "false",
                "true" if entry.enabled else "false",
            ]
        )
    return out.getvalue()

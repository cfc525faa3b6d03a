"""Offline evaluation of the drafting engine on a desk's own labelled data (``frankly eval``).

Inputs are the FAQ entries, learned examples (text, faq_id) and labelled queries (text, faq_id or
None for "nothing in the FAQ answers this"). Thresholds chosen with ``target_precision`` are
picked from cross-validation over the examples only; the queries are never looked at for that.
"""

from __future__ import annotations

import csv
import io
import resource
import sys
import time
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from frankly.drafting.matcher import EmbeddingCache, EntryText, Matcher, TextEncoder

__all__ = [
    "DEFAULT_THRESHOLD",
    "REPORT_KEYS",
    "EvalFileError",
    "evaluate",
    "load_labelled_csv",
    "pick_threshold",
]

DEFAULT_THRESHOLD = 0.8
REPORT_KEYS = (
    "n",
    "n_in_scope",
    "n_out_of_scope",
    "top1_accuracy",
    "coverage",
    "draft_precision",
    "oos_recall",
    "threshold",
    "build_s",
    "p50_ms",
    "p99_ms",
    "rss_mb",
)


class EvalFileError(Exception):
    """A labelled CSV is unusable; the message names the file and, where known, the line."""


def load_labelled_csv(
    path: Path, *, known: Collection[str] | None = None, require_key: bool = False
) -> list[tuple[str, str | None]]:
    """Read a ``text,faq_id`` CSV (header required, UTF-8); an empty faq_id becomes None.

    With ``known``, a faq_id outside it is an error; with ``require_key``, an empty one is.
    Line numbers in errors are physical lines of the file (quoted newlines are counted).
    """
    name = path.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EvalFileError(f"{name}: cannot read ({exc.strerror or exc})") from None
    if not data.strip():
        raise EvalFileError(f"{name}: empty file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise EvalFileError(f"{name} line {line}: not valid UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except csv.Error as exc:
        raise EvalFileError(f"{name} line 1: {exc}") from None
    columns = [c.strip().lower() for c in header]
    for required in ("text", "faq_id"):
        if required not in columns:
            raise EvalFileError(f"{name} line 1: missing column {required!r}")
    i_text, i_key = columns.index("text"), columns.index("faq_id")
    rows: list[tuple[str, str | None]] = []
    last_line = reader.line_num
    while True:
        start = last_line + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise EvalFileError(f"{name} line {start}: {exc}") from None
        last_line = reader.line_num
        if not any(cell.strip() for cell in record):
            continue
        value = record[i_text].strip() if i_text < len(record) else ""
        key = record[i_key].strip() if i_key < len(record) else ""
        if not value:
            raise EvalFileError(f"{name} line {start}: empty 'text'")
        if not key and require_key:
            raise EvalFileError(f"{name} line {start}: empty 'faq_id'")
        if key and known is not None and key not in known:
            raise EvalFileError(f"{name} line {start}: faq_id {key!r} is not in the FAQ")
        rows.append((value, key or None))
    if not rows:
        raise EvalFileError(f"{name}: no data rows after the header")
    return rows


def _check_unit(name: str, value: float | None) -> None:
    if value is not None and not (0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be within 0..1, got {value}")


def pick_threshold(
    entries: Sequence[EntryText],
    examples: Sequence[tuple[str, str]],
    target_precision: float,
    *,
    encoder: TextEncoder | str | None = "auto",
) -> float:
    """Lowest confidence threshold whose cross-validated draft precision on ``examples`` >= target.

    Only the examples are used (folds also leave whole entries out to stand for off-FAQ mail).
    With too few examples to cross-validate, the calibrated scale is trusted: returns the target.
    """
    _check_unit("target_precision", target_precision)
    return Matcher(entries, examples, encoder=encoder).threshold_for_precision(target_precision)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB.

    Prefers Linux's VmHWM: ru_maxrss survives fork+exec, so a child started by a large parent
    would report the parent's size.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / scale


def evaluate(
    entries: Sequence[EntryText],
    examples: Sequence[tuple[str, str]],
    queries: Sequence[tuple[str, str | None]],
    *,
    threshold: float | None = None,
    target_precision: float | None = None,
    encoder: TextEncoder | str | None = "auto",
) -> dict[str, float | int]:
    """Build the engine on ``entries`` + ``examples`` and score ``queries`` one at a time.

    Returns exactly REPORT_KEYS. Undefined ratios (no in-scope queries, no drafts, no off-FAQ
    queries) are reported as 1.0 for precision/recall and 0.0 for accuracy/coverage.
    ``build_s`` includes encoding every FAQ/example text from a cold cache; latencies include
    encoding each query.
    """
    if threshold is not None and target_precision is not None:
        raise ValueError("give threshold or target_precision, not both")
    _check_unit("threshold", threshold)
    _check_unit("target_precision", target_precision)
    if not queries:
        raise ValueError("no queries to evaluate")
    known = {e.key for e in entries}
    for label in [k for _t, k in examples] + [k for _t, k in queries if k is not None]:
        if label not in known:
            raise ValueError(f"faq_id {label!r} is not in the FAQ")

    started = time.perf_counter()
    matcher = Matcher(entries, examples, encoder=encoder, cache=EmbeddingCache())
    build_s = time.perf_counter() - started
    if target_precision is not None:
        threshold = matcher.threshold_for_precision(target_precision)
    elif threshold is None:
        threshold = DEFAULT_THRESHOLD

    latencies: list[float] = []
    right = drafted = drafted_right = drafted_in_scope = oos_abstained = 0
    n_in = n_out = 0
    for text, key in queries:
        t0 = time.perf_counter()
        candidates = matcher.match(text, k=1)
        latencies.append(time.perf_counter() - t0)
        best = candidates[0] if candidates else None
        draft = best is not None and best.confidence >= threshold
        correct = best is not None and key is not None and best.key == key
        if key is None:
            n_out += 1
            oos_abstained += not draft
        else:
            n_in += 1
            right += correct
            drafted_in_scope += draft
        if draft:
            drafted += 1
            drafted_right += correct
    lat_ms = np.asarray(latencies) * 1000.0
    return {
        "n": len(queries),
        "n_in_scope": n_in,
        "n_out_of_scope": n_out,
        "top1_accuracy": right / n_in if n_in else 0.0,
        "coverage": drafted_in_scope / n_in if n_in else 0.0,
        "draft_precision": drafted_right / drafted if drafted else 1.0,
        "oos_recall": oos_abstained / n_out if n_out else 1.0,
        "threshold": float(threshold),
        "build_s": round(build_s, 4),
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "rss_mb": round(_peak_rss_mb(), 1),
    }

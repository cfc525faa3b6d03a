"""Benchmark the offline FAQ matcher on BANKING77 against a plain scikit-learn baseline.

For each setting the script writes a temporary FAQ YAML (one entry per intent: slug, a question
made from the intent name, an English answer), EXAMPLES.csv (k training texts per intent) and
QUERIES.csv (the whole test split), then runs the same ``evaluate`` the ``frankly eval`` command
uses — through the CLI (``--json``) when it is importable, otherwise in-process. The baseline is
TF-IDF word 1-2-grams + char 2-5-grams with LogisticRegression(C=10) on the same examples.

Nothing here tunes on the test split: the engine picks its fusion weights and calibration by
cross-validation over the examples, and the out-of-scope threshold is chosen from the examples.

Usage: .venv/bin/python bench/faq_match.py [--data DIR] [--seeds 3] [--engines auto,lexical]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from frankly.drafting.evaluation import evaluate, load_labelled_csv  # noqa: E402
from frankly.drafting.matcher import EmbeddingCache, EntryText, Matcher  # noqa: E402

Pair = tuple[str, str]


def load_split(data: Path, name: str) -> list[Pair]:
    """(text, slug) rows of one BANKING77 split; slugs are the lower-cased intent names."""
    with (data / f"{name}.csv").open(encoding="utf-8", newline="") as f:
        return [(row["text"], slug(row["category"])) for row in csv.DictReader(f)]


def slug(category: str) -> str:
    """A valid FAQ slug for an intent name (lowercase letters, digits, '_' and '-')."""
    return re.sub(r"[^a-z0-9_-]+", "", category.lower())


def faq_entries(categories: Sequence[str]) -> list[dict[str, Any]]:
    """One FAQ entry per intent; the question is just the intent name in words."""
    out = []
    for cat in categories:
        words = cat.replace("_", " ")
        out.append(
            {
                "slug": cat,
                "question": words[0].upper() + words[1:] + "?",
                "answers": {"en": f"Here is how {words} works for your account."},
            }
        )
    return out


def sample_examples(
    train: Sequence[Pair], cats: Sequence[str], k: int | None, seed: int
) -> list[Pair]:
    """k random training texts per intent (all when k is None)."""
    if k is None:
        return [(t, c) for t, c in train if c in set(cats)]
    rng = np.random.default_rng(seed)
    by_cat: dict[str, list[str]] = {}
    for text, cat in train:
        by_cat.setdefault(cat, []).append(text)
    return [(str(t), c) for c in cats for t in rng.choice(by_cat[c], k, replace=False)]


def write_files(
    folder: Path,
    entries: list[dict[str, Any]],
    examples: Sequence[Pair],
    queries: Sequence[tuple[str, str | None]],
) -> tuple[Path, Path, Path]:
    """FAQ YAML + EXAMPLES.csv + QUERIES.csv in the ``frankly eval`` formats."""
    faq = folder / "faq.yaml"
    faq.write_text(yaml.safe_dump(entries, allow_unicode=True, sort_keys=False), encoding="utf-8")
    paths = []
    for name, rows in (("EXAMPLES.csv", examples), ("QUERIES.csv", queries)):
        path = folder / name
        with path.open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "faq_id"])
            for text, key in rows:
                w.writerow([text, key or ""])
        paths.append(path)
    return faq, paths[0], paths[1]


def cli_available() -> bool:
    """True when ``frankly.cli`` imports and the FAQ loader exists (the CLI path works)."""
    try:
        import frankly.cli  # noqa: F401
        from frankly.knowledge.files import read_faq_file  # noqa: F401
    except Exception:
        return False
    return True


def run_eval(
    faq: Path,
    examples: Path,
    queries: Path,
    *,
    engine: str,
    via_cli: bool,
    target_precision: float | None = None,
) -> dict[str, float]:
    """One evaluation, through ``frankly eval --json`` in a subprocess or in-process."""
    if via_cli:
        cmd = [
            sys.executable,
            "-m",
            "frankly.cli",
            "eval",
            "--faq",
            str(faq),
            "--examples",
            str(examples),
            "--queries",
            str(queries),
            "--json",
        ]
        if target_precision is not None:
            cmd += ["--target-precision", str(target_precision)]
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), FRANKLY_ENCODER=engine)
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"frankly eval failed: {done.stderr.strip()[-2000:]}")
        report: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
        return report
    entries = [
        EntryText(key=e["slug"], question=e["question"], answers=e["answers"])
        for e in yaml.safe_load(faq.read_text(encoding="utf-8"))
    ]
    known = {e.key for e in entries}
    ex = [(t, k) for t, k in load_labelled_csv(examples, known=known, require_key=True) if k]
    qs = load_labelled_csv(queries, known=known)
    os.environ["FRANKLY_ENCODER"] = engine
    return {
        k: float(v) for k, v in evaluate(entries, ex, qs, target_precision=target_precision).items()
    }


def baseline_accuracy(examples: Sequence[Pair], queries: Sequence[tuple[str, str | None]]) -> float:
    """TF-IDF (word 1-2 + char 2-5) + LogisticRegression(C=10): top-1 on in-scope queries."""
    from scipy.sparse import hstack  # type: ignore[import-untyped,unused-ignore]
    from sklearn.feature_extraction.text import (  # type: ignore[import-untyped,unused-ignore]
        TfidfVectorizer,
    )
    from sklearn.linear_model import (  # type: ignore[import-untyped,unused-ignore]
        LogisticRegression,
    )

    texts = [t for t, _ in examples]
    labels = [c for _, c in examples]
    word = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)
    x = hstack([word.fit_transform(texts), char.fit_transform(texts)]).tocsr()
    model = LogisticRegression(C=10, max_iter=2000).fit(x, labels)
    q = [(t, c) for t, c in queries if c is not None]
    xq = hstack([word.transform([t for t, _ in q]), char.transform([t for t, _ in q])]).tocsr()
    return float(np.mean(model.predict(xq) == np.asarray([c for _, c in q])))


def online_and_rebuild(
    entries: list[dict[str, Any]], examples: Sequence[Pair], engine: str
) -> dict[str, float]:
    """Full rebuild time (encodings reused via ``Matcher.rebuild``) and online add_example cost."""
    os.environ["FRANKLY_ENCODER"] = engine
    faq = [EntryText(key=e["slug"], question=e["question"], answers=e["answers"]) for e in entries]
    matcher = Matcher(faq, examples, cache=EmbeddingCache())
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        matcher.rebuild()
        times.append(time.perf_counter() - t0)
    extra = [(f"{t} please", c) for t, c in examples[::200][:50]]
    matcher.match(extra[0][0])
    adds = []
    for text, key in extra:
        t0 = time.perf_counter()
        matcher.add_example(key, text)
        adds.append(time.perf_counter() - t0)
    return {
        "rebuild_s": float(np.median(times)),
        "add_example_ms": float(np.mean(adds) * 1000),
        "add_example_max_ms": float(np.max(adds) * 1000),
    }


def reliability(
    entries: list[dict[str, Any]], examples: Sequence[Pair], queries: Sequence[Pair], engine: str
) -> list[tuple[str, int, float, float]]:
    """(confidence bin, n, mean confidence, accuracy) of the top candidate on held-out queries."""
    os.environ["FRANKLY_ENCODER"] = engine
    faq = [EntryText(key=e["slug"], question=e["question"], answers=e["answers"]) for e in entries]
    matcher = Matcher(faq, examples, cache=EmbeddingCache())
    top = [matcher.match(t, k=1)[0] for t, _ in queries]
    conf = np.asarray([c.confidence for c in top])
    right = np.asarray([c.key == key for c, (_, key) in zip(top, queries, strict=True)])
    rows = []
    for lo, hi in ((0.0, 0.5), (0.5, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 0.95), (0.95, 1.01)):
        sel = (conf >= lo) & (conf < hi)
        if sel.any():
            rows.append(
                (
                    f"{lo:.2f}-{min(hi, 1.0):.2f}",
                    int(sel.sum()),
                    float(conf[sel].mean()),
                    float(right[sel].mean()),
                )
            )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/banking77"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--shots", default="5,10")
    parser.add_argument("--engines", default="auto,lexical", help="comma list: auto|use|e5|lexical")
    parser.add_argument("--oos", type=int, default=10, help="intents held out as out-of-scope")
    parser.add_argument("--target-precision", type=float, default=0.95)
    parser.add_argument("--in-process", action="store_true", help="skip the CLI subprocess")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)

    train, test = load_split(args.data, "train"), load_split(args.data, "test")
    cats: list[str] = [
        slug(c) for c in json.loads((args.data / "categories.json").read_text(encoding="utf-8"))
    ]
    via_cli = not args.in_process and cli_available()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    print(
        f"# BANKING77: {len(train)} train, {len(test)} test, {len(cats)} intents; "
        f"evaluation via {'frankly eval --json' if via_cli else 'in-process evaluate()'}; "
        f"engines {engines}",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    settings: list[tuple[str, int | None, list[int]]] = [
        (f"{k}/entry", int(k), list(range(args.seeds))) for k in args.shots.split(",") if k
    ]
    settings.append(("all", None, [0]))
    entries = faq_entries(cats)
    queries: list[tuple[str, str | None]] = list(test)
    with tempfile.TemporaryDirectory(prefix="frankly-bench-") as tmp:
        folder = Path(tmp)
        for label, k, seeds in settings:
            runs: dict[str, list[dict[str, float]]] = {e: [] for e in engines}
            base: list[float] = []
            for seed in seeds:
                examples = sample_examples(train, cats, k, seed)
                faq, ex_path, q_path = write_files(folder, entries, examples, queries)
                for engine in engines:
                    runs[engine].append(
                        run_eval(faq, ex_path, q_path, engine=engine, via_cli=via_cli)
                    )
                base.append(baseline_accuracy(examples, queries))
                print(
                    f"  {label} seed {seed}: "
                    + ", ".join(f"{e} {runs[e][-1]['top1_accuracy']:.3f}" for e in engines)
                    + f", baseline {base[-1]:.3f}",
                    flush=True,
                )
            for engine in engines:
                mean = {
                    key: float(np.mean([r[key] for r in runs[engine]])) for key in runs[engine][0]
                }
                results.append(
                    {
                        "setting": label,
                        "engine": engine,
                        "seeds": len(seeds),
                        "baseline": float(np.mean(base)),
                        **mean,
                    }
                )

        # out-of-scope: hold out intents entirely, threshold from the examples only
        rng = np.random.default_rng(1234)
        held = set(rng.choice(cats, args.oos, replace=False).tolist())
        kept = [c for c in cats if c not in held]
        oos_rows: list[dict[str, Any]] = []
        oos_queries = [(t, None if c in held else c) for t, c in test]
        for label, k in (("10/entry", 10), ("all", None)):
            examples = sample_examples(train, kept, k, 0)
            faq, ex_path, q_path = write_files(
                folder, [e for e in entries if e["slug"] in set(kept)], examples, oos_queries
            )
            for engine in engines:
                rep = run_eval(
                    faq,
                    ex_path,
                    q_path,
                    engine=engine,
                    via_cli=via_cli,
                    target_precision=args.target_precision,
                )
                oos_rows.append(
                    {"setting": f"{label}, {args.oos} intents OOS", "engine": engine, **rep}
                )
                print(f"  OOS {label} {engine}: {rep}", flush=True)
        extras = {
            e: online_and_rebuild(entries, sample_examples(train, cats, None, 0), e)
            for e in engines
        }
        calib = {
            e: reliability(entries, sample_examples(train, cats, 10, 0), test, e) for e in engines
        }

    print()
    print("## Top-1 accuracy on the BANKING77 test split (3,080 queries; k examples per entry)")
    print()
    print(
        "| setting | engine | seeds | engine top-1 | baseline top-1 | ratio | coverage@0.8 | "
        "precision@0.8 | build s (cold) | p50 ms | p99 ms | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['setting']} | {r['engine']} | {r['seeds']} | {r['top1_accuracy']:.1%} | "
            f"{r['baseline']:.1%} | {r['top1_accuracy'] / r['baseline']:.3f} | "
            f"{r['coverage']:.1%} | "
            f"{r['draft_precision']:.1%} | {r['build_s']:.2f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['rss_mb']:.0f} |"
        )
    print()
    print(
        f"## Out of scope: {args.oos} intents removed from the FAQ and examples, their test "
        f"queries kept with empty faq_id; threshold picked for precision "
        f">= {args.target_precision} by CV on the examples only"
    )
    print(f"held-out intents: {', '.join(sorted(held))}")
    print()
    print(
        "| setting | engine | threshold | top-1 (in-scope) | coverage | "
        "test draft precision | oos_recall |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in oos_rows:
        print(
            f"| {r['setting']} | {r['engine']} | {r['threshold']:.3f} | {r['top1_accuracy']:.1%} | "
            f"{r['coverage']:.1%} | {r['draft_precision']:.1%} | {r['oos_recall']:.1%} |"
        )
    print()
    print("## Rebuild and online learning at all 10,003 examples")
    print()
    for engine, ex in extras.items():
        print(
            f"- {engine}: full rebuild reusing encodings (Matcher.rebuild) "
            f"{ex['rebuild_s']:.2f} s; add_example {ex['add_example_ms']:.2f} ms mean, "
            f"{ex['add_example_max_ms']:.1f} ms max (including encoding the new text)"
        )
    print()
    print("## Calibration: top candidate on the test split, 10 examples per entry (seed 0)")
    print()
    print("| engine | confidence bin | n | mean confidence | accuracy |")
    print("|---|---|---|---|---|")
    for engine, rows in calib.items():
        for label, n, mean_conf, acc in rows:
            print(f"| {engine} | {label} | {n} | {mean_conf:.3f} | {acc:.3f} |")
    if args.json_out:
        args.json_out.write_text(
            json.dumps(
                {"results": results, "oos": oos_rows, "extras": extras, "calibration": calib},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`frankly eval` logic: labelled CSV loading, report keys and definitions, threshold picking."""

from __future__ import annotations

from pathlib import Path

import pytest

from frankly.drafting.evaluation import (
    REPORT_KEYS,
    EvalFileError,
    evaluate,
    load_labelled_csv,
    pick_threshold,
)
from frankly.drafting.matcher import EntryText, Matcher

FAQ = [
    EntryText("shipping", "How long does delivery take?", ("When will my order arrive?",)),
    EntryText("refund", "How do I get a refund?", ("I want my money back",)),
    EntryText("password", "How do I reset my password?", ("I forgot my password",)),
    EntryText("hours", "What are your opening hours?", ("When are you open?",)),
    EntryText("payment", "Which payment methods do you accept?", ("Can I pay with PayPal?",)),
]
EXAMPLES = [
    (text, key)
    for key, texts in {
        "shipping": [
            "where is my parcel",
            "package not here yet",
            "delivery eta",
            "order late",
            "when does it ship",
            "tracking says nothing",
            "still waiting for my order",
        ],
        "refund": [
            "money back please",
            "return and refund",
            "refund for broken item",
            "how do returns work",
            "reimburse me",
            "refund status",
            "cancel and refund",
        ],
        "password": [
            "cannot log in",
            "reset my login",
            "password not working",
            "locked out",
            "forgot login",
            "reset link missing",
            "change password",
        ],
        "hours": [
            "open tomorrow?",
            "closing time",
            "business hours",
            "open on sunday",
            "holiday hours",
            "what time do you open",
            "are you open now",
        ],
        "payment": [
            "do you take visa",
            "pay by transfer",
            "apple pay?",
            "payment options",
            "cash on delivery",
            "mastercard ok?",
            "can I pay later",
        ],
    }.items()
    for text in texts
]
QUERIES: list[tuple[str, str | None]] = [
    ("my parcel has not arrived", "shipping"),
    ("I want a refund for this", "refund"),
    ("forgot my password again", "password"),
    ("are you open on saturday", "hours"),
    ("can I pay with a credit card", "payment"),
    ("what's the weather like on mars", None),
    ("do you sell bicycles", None),
]


def write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def test_load_labelled_csv(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "queries.csv",
        'text,faq_id\nwhere is my parcel,shipping\n"multi\nline",refund\n\nno idea,\n',
    )
    assert load_labelled_csv(path) == [
        ("where is my parcel", "shipping"),
        ("multi\nline", "refund"),
        ("no idea", None),
    ]
    bom = write(tmp_path, "bom.csv", "\ufefffaq_id,text,extra\nrefund,money back,x\n")
    assert load_labelled_csv(bom) == [("money back", "refund")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "queries.csv: empty file"),
        ("  \n\n", "queries.csv: empty file"),
        ("faq_id\nrefund\n", "queries.csv line 1: missing column 'text'"),
        ("text,label\nhello,refund\n", "queries.csv line 1: missing column 'faq_id'"),
        ("text,faq_id\n", "queries.csv: no data rows after the header"),
        ("text,faq_id\nok,refund\n,refund\n", "queries.csv line 3: empty 'text'"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = write(tmp_path, "queries.csv", content)
    with pytest.raises(EvalFileError) as info:
        load_labelled_csv(path)
    assert str(info.value) == message


def test_non_utf8_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "examples.csv", b"text,faq_id\nfine,refund\nbad \xff\xfe byte,refund\n")
    with pytest.raises(EvalFileError, match=r"^examples\.csv line 3: not valid UTF-8$"):
        load_labelled_csv(path)


def test_unknown_and_missing_faq_id(tmp_path: Path) -> None:
    path = write(
        tmp_path, "examples.csv", 'text,faq_id\nok,refund\n"two\nlines",refund\nhmm,nope\n'
    )
    with pytest.raises(EvalFileError) as info:
        load_labelled_csv(path, known={"refund"})
    assert str(info.value) == "examples.csv line 5: faq_id 'nope' is not in the FAQ"
    blank = write(tmp_path, "ex2.csv", "text,faq_id\nok,refund\nno label,\n")
    with pytest.raises(EvalFileError, match=r"^ex2\.csv line 3: empty 'faq_id'$"):
        load_labelled_csv(blank, require_key=True)
    with pytest.raises(EvalFileError, match=r"^missing\.csv: cannot read"):
        load_labelled_csv(tmp_path / "missing.csv")


def test_evaluate_report_keys_and_definitions() -> None:
    report = evaluate(FAQ, EXAMPLES, QUERIES, threshold=0.5, encoder="lexical")
    assert list(report) == list(REPORT_KEYS)
    assert set(report) == {
        "n", "n_in_scope", "n_out_of_scope", "top1_accuracy", "coverage", "draft_precision",
        "oos_recall", "threshold", "build_s", "p50_ms", "p99_ms", "rss_mb",
    }  # fmt: skip
    assert (report["n"], report["n_in_scope"], report["n_out_of_scope"]) == (7, 5, 2)
    for key in ("top1_accuracy", "coverage", "draft_precision", "oos_recall"):
        assert 0.0 <= report[key] <= 1.0
    assert report["threshold"] == 0.5
    assert report["build_s"] > 0 and report["p99_ms"] >= report["p50_ms"] > 0
    assert report["rss_mb"] > 10

    # recompute the definitions from the matcher itself
    matcher = Matcher(FAQ, EXAMPLES, encoder="lexical")
    best = [matcher.match(text, k=1)[0] for text, _ in QUERIES]
    in_scope = [(b, key) for b, (_, key) in zip(best, QUERIES, strict=True) if key is not None]
    out = [b for b, (_, key) in zip(best, QUERIES, strict=True) if key is None]
    drafts = [(b, key) for b, (_, key) in zip(best, QUERIES, strict=True) if b.confidence >= 0.5]
    assert report["top1_accuracy"] == pytest.approx(
        sum(b.key == key for b, key in in_scope) / len(in_scope)
    )
    assert report["coverage"] == pytest.approx(
        sum(b.confidence >= 0.5 for b, _ in in_scope) / len(in_scope)
    )
    assert report["oos_recall"] == pytest.approx(sum(b.confidence < 0.5 for b in out) / len(out))
    if drafts:
        assert report["draft_precision"] == pytest.approx(
            sum(b.key == key for b, key in drafts) / len(drafts)
        )


def test_threshold_extremes() -> None:
    everything = evaluate(FAQ, EXAMPLES, QUERIES, threshold=0.0, encoder="lexical")
    assert everything["coverage"] == 1.0
    assert everything["oos_recall"] == 0.0
    assert everything["draft_precision"] == pytest.approx(everything["top1_accuracy"] * 5 / 7)
    nothing = evaluate(FAQ, EXAMPLES, QUERIES, threshold=1.0, encoder="lexical")
    assert nothing["coverage"] == 0.0
    assert nothing["oos_recall"] == 1.0


def test_evaluate_validates_arguments() -> None:
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        evaluate(FAQ, EXAMPLES, QUERIES, threshold=1.5, encoder="lexical")
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        evaluate(FAQ, EXAMPLES, QUERIES, target_precision=-0.1, encoder="lexical")
    with pytest.raises(ValueError, match="not both"):
        evaluate(FAQ, EXAMPLES, QUERIES, threshold=0.5, target_precision=0.9, encoder="lexical")
    with pytest.raises(ValueError, match="'nope' is not in the FAQ"):
        evaluate(FAQ, EXAMPLES, [("x", "nope")], encoder="lexical")
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        pick_threshold(FAQ, EXAMPLES, 2.0, encoder="lexical")


def test_pick_threshold_uses_examples_only() -> None:
    low = pick_threshold(FAQ, EXAMPLES, 0.6, encoder="lexical")
    high = pick_threshold(FAQ, EXAMPLES, 0.95, encoder="lexical")
    assert 0.0 <= low <= high <= 1.0
    # the same threshold drives evaluate(target_precision=...), whatever the queries are
    a = evaluate(FAQ, EXAMPLES, QUERIES, target_precision=0.95, encoder="lexical")
    b = evaluate(FAQ, EXAMPLES, QUERIES[:2], target_precision=0.95, encoder="lexical")
    assert a["threshold"] == b["threshold"] == pytest.approx(high)
    # CV precision on the examples at that threshold reaches the target
    matcher = Matcher(FAQ, EXAMPLES, encoder="lexical")
    drafted = [r for r in matcher.cv_records if r.confidence >= high]
    if drafted and high < 1.0:
        assert sum(r.correct for r in drafted) / len(drafted) >= 0.95

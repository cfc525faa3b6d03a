"""FAQ files (YAML, CSV): parsing, the round trip, and bad files naming file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from frankly.knowledge.files import (
    FaqFileEntry,
    FaqFileError,
    dump_faq,
    file_format,
    parse_faq_bytes,
    read_faq_file,
)


def parse(text: str | bytes, name: str = "faq.yaml") -> list[FaqFileEntry]:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return parse_faq_bytes(data, name=name, fmt=file_format(name))


def rejected(text: str | bytes, name: str = "faq.yaml") -> str:
    with pytest.raises(FaqFileError) as info:
        parse(text, name)
    assert info.value.status_code == 422
    return info.value.message


def content(entries: list[FaqFileEntry]) -> list[tuple[object, ...]]:
    """Everything an entry carries except the source line."""
    return [
        (e.slug, e.question, e.paraphrases, e.answers, e.tags, e.never_draft, e.enabled)
        for e in entries
    ]


TRICKY = [
    FaqFileEntry(
        slug="payment-banks",
        question="Which banks can I pay from?",
        paraphrases=["which bank?", "на какой банк переводить", "какие банки, принимаете?"],
        answers={
            "en": 'We accept "T-Bank", Sber, and Alfa.\nNothing else, sorry.',
            "ru": "Принимаем переводы с «Т-Банка», Сбера и Альфы.\n\nДругие — нет.",
        },
        tags=["payments", "банки"],
    ),
    FaqFileEntry(
        slug="paid-release",
        question="Я оплатил, отпустите",
        paraphrases=["i paid, release pls", "payment sent; release"],
        answers={"ru": "Спасибо, сотрудник проверит оплату.", "de": 'Danke, "wir" prüfen das.'},
        never_draft=True,
    ),
    FaqFileEntry(
        slug="yaml_lookalikes",
        question="yes",
        paraphrases=["null", "123", "true", "- dash", "key: value", "#hash"],
        answers={"en": "1.0"},
        tags=["no"],
        enabled=False,
    ),
    FaqFileEntry(slug="minimal", question="Only the basics?", answers={"en": "Yes."}),
]


class TestYamlParse:
    def test_full_entry(self) -> None:
        entries = parse(
            "- slug: payment-banks\n"
            "  question: Which banks?\n"
            "  paraphrases: [which bank, на какой банк]\n"
            "  answers:\n"
            "    en: T-Bank and Sber.\n"
            "    ru: Т-Банк и Сбер.\n"
            "  tags: [payments]\n"
            "  never_draft: true\n"
            "  enabled: false\n"
            "- slug: hours\n"
            "  question: When?\n"
            "  answers: {en: '9 to 5'}\n"
        )
        assert content(entries) == [
            (
                "payment-banks",
                "Which banks?",
                ["which bank", "на какой банк"],
                {"en": "T-Bank and Sber.", "ru": "Т-Банк и Сбер."},
                ["payments"],
                True,
                False,
            ),
            ("hours", "When?", [], {"en": "9 to 5"}, [], False, True),
        ]
        assert [e.line for e in entries] == [1, 10]

    def test_only_slug_question_and_one_answer_are_required(self) -> None:
        [entry] = parse("- slug: a\n  question: Q\n  answers: {ru: Ответ}\n")
        assert content([entry]) == [("a", "Q", [], {"ru": "Ответ"}, [], False, True)]

    def test_yml_extension_and_empty_file(self) -> None:
        assert [e.slug for e in parse("- {slug: a, question: Q, answers: {en: A}}\n", "x.yml")] == [
            "a"
        ]
        assert parse("", "empty.yaml") == []

    def test_byte_order_mark_is_accepted(self) -> None:
        data = "\ufeff- {slug: a, question: Q, answers: {en: A}}\n".encode()
        assert [e.slug for e in parse(data)] == ["a"]


class TestCsvParse:
    def test_lists_are_joined_with_a_bar(self) -> None:
        entries = parse(
            "slug,question,answer_en,answer_ru,paraphrases,tags,never_draft,enabled\n"
            'banks,Which banks?,"T-Bank, Sber",Т-Банк,which bank| на какой банк |,pay|bank,yes,0\n'
            "hours,When?,9 to 5,,,,,\n",
            "faq.csv",
        )
        assert content(entries) == [
            (
                "banks",
                "Which banks?",
                ["which bank", "на какой банк"],
                {"en": "T-Bank, Sber", "ru": "Т-Банк"},
                ["pay", "bank"],
                True,
                False,
            ),
            ("hours", "When?", [], {"en": "9 to 5"}, [], False, True),
        ]
        assert [e.line for e in entries] == [2, 3]

    def test_only_slug_question_and_one_answer_column(self) -> None:
        entries = parse("Slug,Question,answer_ru\na,Q,Ответ\n\n", "faq.csv")
        assert content(entries) == [("a", "Q", [], {"ru": "Ответ"}, [], False, True)]

    def test_empty_csv_has_no_entries(self) -> None:
        assert parse("", "faq.csv") == []


class TestRoundTrip:
    @pytest.mark.parametrize("fmt", ["yaml", "csv"])
    def test_dump_then_parse_gives_the_same_entries(self, fmt: str) -> None:
        text = dump_faq(TRICKY, fmt=fmt)
        assert content(parse(text, f"faq.{fmt}")) == content(TRICKY)

    @pytest.mark.parametrize("fmt", ["yaml", "csv"])
    def test_round_trip_is_stable(self, fmt: str) -> None:
        once = dump_faq(TRICKY, fmt=fmt)
        twice = dump_faq(parse(once, f"faq.{fmt}"), fmt=fmt)
        assert twice == once

    def test_yaml_dump_keeps_russian_readable(self) -> None:
        text = dump_faq(TRICKY, fmt="yaml")
        assert "на какой банк переводить" in text
        assert "\\u" not in text

    def test_read_from_disk(self, tmp_path: Path) -> None:
        path = tmp_path / "faq.csv"
        path.write_text(dump_faq(TRICKY, fmt="csv"), encoding="utf-8")
        assert content(read_faq_file(path)) == content(TRICKY)

    def test_bar_inside_a_paraphrase_survives_csv(self) -> None:
        entry = FaqFileEntry(
            slug="a", question="Q", paraphrases=["T-Bank | Sber?"], answers={"en": "A"}
        )
        assert content(parse(dump_faq([entry], fmt="csv"), "faq.csv")) == content([entry])


class TestBadYaml:
    def test_bad_slug(self) -> None:
        message = rejected(
            "- slug: fine\n  question: Q\n  answers: {en: A}\n"
            "- question: Q\n  slug: Not A Slug\n  answers: {en: A}\n"
        )
        assert message.startswith("faq.yaml line 5: field 'slug':")

    def test_missing_question(self) -> None:
        message = rejected(
            "- slug: a\n  question: Q\n  answers: {en: A}\n- slug: b\n  answers: {en: A}\n"
        )
        assert message.startswith("faq.yaml line 4: field 'question':")
        assert "required" in message.lower()

    @pytest.mark.parametrize("answers", ["{}", "{en: ''}", "{en: '   ', ru: ''}"])
    def test_empty_answers(self, answers: str) -> None:
        message = rejected(f"- slug: a\n  question: Q\n  answers: {answers}\n")
        assert message.startswith("faq.yaml line 3: field 'answers':")

    def test_missing_answers(self) -> None:
        assert rejected("- slug: a\n  question: Q\n").startswith(
            "faq.yaml line 1: field 'answers':"
        )

    def test_unknown_field(self) -> None:
        message = rejected("- slug: a\n  question: Q\n  answers: {en: A}\n  colour: red\n")
        assert message == "faq.yaml line 4: field 'colour': unknown field"

    def test_paraphrases_must_be_a_list(self) -> None:
        message = rejected(
            "- slug: a\n  question: Q\n  paraphrases: just one\n  answers: {en: A}\n"
        )
        assert message.startswith("faq.yaml line 3: field 'paraphrases':")
        assert "list" in message

    def test_paraphrases_must_be_strings(self) -> None:
        message = rejected(
            "- slug: a\n  question: Q\n  paraphrases:\n    - {x: 1}\n  answers: {en: A}\n"
        )
        assert message.startswith("faq.yaml line 3: field 'paraphrases.0':")

    def test_duplicate_slug_names_both_lines(self) -> None:
        message = rejected(
            "- slug: a\n  question: Q\n  answers: {en: A}\n"
            "- slug: b\n  question: Q\n  answers: {en: A}\n"
            "- slug: a\n  question: Q again\n  answers: {en: A}\n"
        )
        assert message.startswith("faq.yaml line 7: field 'slug':")
        assert "line 1" in message

    def test_invalid_yaml(self) -> None:
        message = rejected("- slug: a\n  question: Q\n  answers: {en: A\n- slug: b\n")
        assert message.startswith("faq.yaml line 4: not valid YAML")

    def test_tab_indentation_is_invalid_yaml(self) -> None:
        message = rejected("- slug: a\n\tquestion: Q\n")
        assert message.startswith("faq.yaml line 2: not valid YAML")

    def test_not_a_list(self) -> None:
        message = rejected("slug: a\nquestion: Q\nanswers: {en: A}\n")
        assert message == "faq.yaml line 1: expected a list of FAQ entries"

    def test_entry_not_a_mapping(self) -> None:
        message = rejected("- slug: a\n  question: Q\n  answers: {en: A}\n- just text\n")
        assert message == "faq.yaml line 4: each FAQ entry must be a mapping"

    def test_not_utf8(self) -> None:
        data = b"- slug: a\n  question: Q\n  answers: {ru: " + "Ответ}\n".encode("cp1251")
        message = rejected(data, "legacy.yaml")
        assert message == "legacy.yaml line 3: not valid UTF-8"


class TestBadCsv:
    HEADER = "slug,question,answer_en,paraphrases,never_draft\n"

    def test_missing_column(self) -> None:
        message = rejected("slug,answer_en\na,A\n", "faq.csv")
        assert message == "faq.csv line 1: missing column 'question'"

    def test_no_answer_column(self) -> None:
        assert rejected("slug,question\na,Q\n", "faq.csv").startswith("faq.csv line 1:")

    def test_unknown_column(self) -> None:
        message = rejected("slug,question,answer_en,colour\na,Q,A,red\n", "faq.csv")
        assert message == "faq.csv line 1: unknown column 'colour'"

    def test_wrong_column_count(self) -> None:
        message = rejected(self.HEADER + "a,Q,A,,\nb,Q,A\n", "faq.csv")
        assert message == "faq.csv line 3: expected 5 columns, found 3"

    def test_bad_never_draft(self) -> None:
        message = rejected(self.HEADER + "a,Q,A,,no\nb,Q,A,,maybe\n", "faq.csv")
        assert message == "faq.csv line 3: field 'never_draft': expected true or false"

    def test_bad_slug(self) -> None:
        message = rejected(self.HEADER + "a,Q,A,,\nB B,Q,A,,\n", "faq.csv")
        assert message.startswith("faq.csv line 3: field 'slug':")

    def test_missing_question_value(self) -> None:
        message = rejected(self.HEADER + "a,,A,,\n", "faq.csv")
        assert message.startswith("faq.csv line 2: field 'question':")

    def test_empty_answer(self) -> None:
        message = rejected(self.HEADER + "a,Q,   ,,\n", "faq.csv")
        assert message.startswith("faq.csv line 2: field 'answers':")

    def test_duplicate_slug_names_both_lines(self) -> None:
        message = rejected(self.HEADER + "a,Q,A,,\nb,Q,A,,\na,Q,A,,\n", "faq.csv")
        assert message.startswith("faq.csv line 4: field 'slug':")
        assert "line 2" in message

    def test_error_after_a_multiline_record_counts_physical_lines(self) -> None:
        message = rejected(self.HEADER + 'a,Q,"one\ntwo\nthree",,\nb,Q,A,,maybe\n', "faq.csv")
        assert message.startswith("faq.csv line 5: field 'never_draft'")

    def test_multiline_record_is_named_by_its_first_line(self) -> None:
        message = rejected(self.HEADER + 'a,Q,A,,\nb,"",A,"x\ny",\n', "faq.csv")
        assert message.startswith("faq.csv line 3: field 'question'")

    def test_not_utf8(self) -> None:
        data = self.HEADER.encode() + "a,Q,A,,\nb,Вопрос,A,,\n".encode("cp1251")
        assert rejected(data, "faq.csv") == "faq.csv line 3: not valid UTF-8"


class TestFileType:
    @pytest.mark.parametrize("name", ["faq.txt", "faq.json", "faq"])
    def test_unknown_extension(self, name: str) -> None:
        with pytest.raises(FaqFileError) as info:
            file_format(name)
        assert info.value.message.startswith(f"{name}: unknown FAQ file type")

    def test_unknown_extension_on_disk(self, tmp_path: Path) -> None:
        path = tmp_path / "faq.json"
        path.write_text("[]", encoding="utf-8")
        with pytest.raises(FaqFileError, match=r"faq\.json: unknown FAQ file type \.json"):
            read_faq_file(path)

    def test_case_of_the_extension_does_not_matter(self) -> None:
        assert file_format("FAQ.YAML") == "yaml" and file_format("x.CSV") == "csv"

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(FaqFileError, match="cannot read"):
            read_faq_file(tmp_path / "nope.yaml")

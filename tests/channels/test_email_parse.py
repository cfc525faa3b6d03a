"""Raw mail → InboundMessage: text, quoted history, threading, senders, attachments, robots."""

from __future__ import annotations

import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from frankly.channels.email.parse import (
    html_to_text,
    normalise_message_id,
    parse_message,
    thread_ids,
    trim_quoted,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "email"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def mail(body: str = "Hello", **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = headers.pop("From", "Bob <bob@example.org>")
    msg["To"] = "support@example.com"
    msg["Subject"] = headers.pop("Subject", "Where is my order?")
    msg["Message-ID"] = headers.pop("Message_ID", "<m1@example.org>")
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg.as_bytes()


class TestPlainText:
    def test_plain_mail(self) -> None:
        inbound = parse_message(mail("Where is order 42?\nThanks"))
        assert inbound.text == "Where is order 42?\nThanks"
        assert inbound.message_external_id == "<m1@example.org>"
        assert inbound.conversation_external_id == "<m1@example.org>"
        assert inbound.contact_external_id == "bob@example.org"
        assert inbound.contact_name == "Bob"
        assert inbound.context == {
            "email": {"subject": "Where is my order?", "from": "Bob <bob@example.org>"}
        }
        assert not inbound.skip_drafting
        assert inbound.created_at is None

    def test_date_is_timezone_aware(self) -> None:
        inbound = parse_message(mail(Date="Mon, 15 Jan 2024 12:00:00 +0300"))
        assert inbound.created_at is not None
        assert inbound.created_at.utcoffset() is not None
        assert inbound.created_at.isoformat() == "2024-01-15T12:00:00+03:00"

    def test_subject_stands_in_for_an_empty_body(self) -> None:
        assert parse_message(mail("", Subject="Refund please")).text == "Refund please"

    def test_plain_part_preferred_over_html(self) -> None:
        msg = EmailMessage()
        msg["From"] = "a@example.org"
        msg["Message-ID"] = "<alt@x>"
        msg.set_content("plain words")
        msg.add_alternative("<p>html words</p>", subtype="html")
        assert parse_message(msg.as_bytes()).text == "plain words"


class TestHtml:
    def test_html_only_outlook_mail(self) -> None:
        inbound = parse_message((FIXTURES / "outlook_html_only.eml").read_bytes())
        assert inbound.text == (
            "Hello,\n\nthe invoice still shows the old address.\nCould you fix it please?\n\n"
            "- Street: Hauptstraße 5\n- City: München\n\nThanks & regards,\nAnna"
        )
        assert "alert" not in inbound.text and "margin" not in inbound.text
        assert "Old quoted text" not in inbound.text
        assert inbound.contact_name == "Smith, Anna"
        assert inbound.conversation_external_id == "<frankly.9.aa@example.com>"

    def test_html_to_text_keeps_blocks_and_drops_quotes(self) -> None:
        html = (
            "<div>One<br>Two</div><table><tr><td>a</td><td>b</td></tr></table>"
            "<blockquote><p>quoted <blockquote>deeper</blockquote> still</p></blockquote>"
            "<style>.x{}</style><p>After&nbsp;quote</p><pre>  keep\n  spaces</pre>"
        )
        assert html_to_text(html) == "One\nTwo\n\na b\n\nAfter quote\n\nkeep\nspaces"

    def test_broken_markup(self) -> None:
        assert html_to_text("<p>Hi <b>there<div><script>x</p>never closed") == "Hi there"
        assert html_to_text("<<<>>>&bogus; <p").startswith("<<<>>>&bogus;")


class TestQuotedHistory:
    def test_english_attribution_and_quote_lines(self) -> None:
        text = (
            "Still not here.\n\nOn Mon, 15 Jan 2024 at 12:00, Support <support@example.com> "
            "wrote:\n> Your parcel left on Friday.\n> Regards"
        )
        assert trim_quoted(text) == "Still not here."

    def test_attribution_wrapped_over_two_lines(self) -> None:
        text = (
            "Thanks!\n\nOn Mon, Jan 15, 2024 at 12:00 PM Support Team <\n"
            "support@example.com> wrote:\n\n> old"
        )
        assert trim_quoted(text) == "Thanks!"

    def test_russian_variants(self) -> None:
        assert trim_quoted("Да, верно.\n\n15.01.2024 12:00, Иван Петров написал(а):\n> старое") == (
            "Да, верно."
        )
        assert trim_quoted("Ок\n\nСлужба поддержки пишет:\n> текст") == "Ок"
        inbound = parse_message((FIXTURES / "gmail_reply_ru.eml").read_bytes())
        assert inbound.text == "Спасибо! А когда вернутся деньги на карту?"
        assert inbound.contact_name == "Иван Петров"
        assert inbound.contact_external_id == "ivan.petrov@example.ru"
        assert inbound.context is not None
        assert inbound.context["email"]["subject"] == "Re: Возврат средств"

    def test_outlook_original_message_and_header_block(self) -> None:
        assert trim_quoted("New text\n-----Original Message-----\nFrom: x\nold") == "New text"
        text = "Fixed, thanks\n\nFrom: Support <s@example.com>\nSent: Monday\nTo: me\nSubject: x"
        assert trim_quoted(text) == "Fixed, thanks"
        text = "Готово\n\nОт: Поддержка\nОтправлено: 15 января\nТема: заказ"
        assert trim_quoted(text) == "Готово"

    def test_signature_and_mobile_footer(self) -> None:
        assert trim_quoted("Order 42 please\n-- \nBob Smith\nACME") == "Order 42 please"
        assert trim_quoted("Order 42 please\n\nSent from my iPhone") == "Order 42 please"

    def test_a_line_mentioning_from_is_kept(self) -> None:
        text = "From: the app it says pending.\nWhy?"
        assert trim_quoted(text) == text

    def test_nothing_but_quote_keeps_the_original(self) -> None:
        assert trim_quoted("> only quoted") == "> only quoted"


class TestThreading:
    def test_root_is_first_reference(self) -> None:
        raw = (FIXTURES / "gmail_reply_ru.eml").read_bytes()
        inbound = parse_message(raw)
        assert inbound.message_external_id == "<caf+ru-reply-2@mail.gmail.com>"
        assert inbound.conversation_external_id == "<caf+ru-first-1@mail.gmail.com>"
        assert thread_ids(raw) == ["<caf+ru-first-1@mail.gmail.com>", "<frankly.3.f00@example.com>"]

    def test_in_reply_to_when_no_references(self) -> None:
        raw = mail(In_Reply_To="<Parent@Example.org> (Bob's message of Monday)")
        assert parse_message(raw).conversation_external_id == "<parent@example.org>"
        assert thread_ids(raw) == ["<parent@example.org>"]

    def test_references_without_brackets_and_duplicates(self) -> None:
        raw = mail(References="root@x  <mid@x>", In_Reply_To="<MID@x>")
        assert thread_ids(raw) == ["<root@x>", "<mid@x>"]
        assert parse_message(raw).conversation_external_id == "<root@x>"

    def test_missing_message_id_gets_a_stable_one(self) -> None:
        raw = b"From: a@example.org\r\nSubject: no id\r\n\r\nbody\r\n"
        first, second = parse_message(raw), parse_message(raw)
        assert first.message_external_id == second.message_external_id
        assert first.message_external_id.startswith("<sha256-")
        assert first.conversation_external_id == first.message_external_id
        other = parse_message(raw.replace(b"body", b"other"))
        assert other.message_external_id != first.message_external_id

    @pytest.mark.parametrize(
        ("value", "expected"),
        [("<A@B>", "<a@b>"), (" a@b ", "<a@b>"), ("<a@b> junk", "<a@b>"), ("", None)],
    )
    def test_normalise(self, value: str, expected: str | None) -> None:
        assert normalise_message_id(value) == expected


class TestSender:
    def test_rfc2047_display_name(self) -> None:
        raw = mail(From="=?iso-8859-1?q?J=F6rg_M=FCller?= <JOERG@Example.DE>")
        inbound = parse_message(raw)
        assert inbound.contact_name == "Jörg Müller"
        assert inbound.contact_external_id == "joerg@example.de"

    def test_raw_utf8_header(self) -> None:
        raw = (
            "From: Пётр <petr@example.ru>\r\nSubject: Вопрос\r\nMessage-ID: <p@x>\r\n\r\nтекст\r\n"
        )
        inbound = parse_message(raw.encode("utf-8"))
        assert inbound.contact_name == "Пётр"
        assert inbound.context is not None
        assert inbound.context["email"]["subject"] == "Вопрос"
        assert inbound.text == "текст"

    def test_no_from(self) -> None:
        inbound = parse_message(b"Subject: x\r\nMessage-ID: <n@x>\r\n\r\nhi\r\n")
        assert inbound.contact_external_id is None and inbound.contact_name is None


class TestAttachments:
    def test_images_and_pdf_kept_other_files_dropped(self) -> None:
        msg = EmailMessage()
        msg["From"] = "a@example.org"
        msg["Message-ID"] = "<att@x>"
        msg.set_content("See attached")
        msg.add_attachment(PNG, maintype="image", subtype="png", filename="screen shot.png")
        msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="счёт.pdf")
        msg.add_attachment(PDF, maintype="application", subtype="octet-stream", filename="b.pdf")
        msg.add_attachment(
            b"MZ\x90", maintype="application", subtype="x-msdownload", filename="x.exe"
        )
        inbound = parse_message(msg.as_bytes())
        assert inbound.text == "See attached"
        assert [(a.filename, a.content_type, a.data) for a in inbound.attachments] == [
            ("screen shot.png", "image/png", PNG),
            ("счёт.pdf", "application/pdf", PDF),
            ("b.pdf", "application/pdf", PDF),
        ]

    def test_attachment_only_mail_has_no_invented_text(self) -> None:
        msg = EmailMessage()
        msg["From"] = "a@example.org"
        msg["Subject"] = "photo"
        msg.add_attachment(PNG, maintype="image", subtype="png")
        inbound = parse_message(msg.as_bytes())
        assert inbound.text == ""
        assert [a.filename for a in inbound.attachments] == ["attachment-1.png"]


class TestRobots:
    @pytest.mark.parametrize(
        ("headers", "reason"),
        [
            ({"Auto_Submitted": "auto-replied"}, "auto-submitted: auto-replied"),
            (
                {"Auto_Submitted": "Auto-Generated; owner-email=x@y"},
                "auto-submitted: auto-generated",
            ),
            ({"Precedence": "bulk"}, "precedence: bulk"),
            ({"Precedence": "auto_reply"}, "precedence: auto_reply"),
            ({"X_Autoreply": "yes"}, "x-autoreply header"),
            ({"X_Autorespond": "Out of office"}, "x-autorespond header"),
            ({"From": "postmaster@example.org"}, "bounce from postmaster@example.org"),
        ],
    )
    def test_flagged(self, headers: dict[str, str], reason: str) -> None:
        inbound = parse_message(mail("I am away until Monday", **headers))
        assert inbound.skip_drafting is True
        assert inbound.skip_reason == reason
        assert inbound.text == "I am away until Monday"

    def test_a_person_is_not_flagged(self) -> None:
        inbound = parse_message(mail(Auto_Submitted="no", Precedence="first-class"))
        assert inbound.skip_drafting is False and inbound.skip_reason is None

    def test_delivery_status_report(self) -> None:
        inbound = parse_message((FIXTURES / "bounce_dsn.eml").read_bytes())
        assert inbound.skip_drafting is True
        assert inbound.skip_reason == "delivery report (delivery-status)"
        assert "could not\nbe delivered" in inbound.text
        assert inbound.contact_external_id == "mailer-daemon@mx.example.net"


class TestBrokenInput:
    @pytest.mark.parametrize(
        "raw",
        [
            b"",
            b"\x00\xff\xfe garbage without headers",
            b"From: <<<@@@>>>\r\nSubject: =?bogus-charset?q?x=?=\r\n\r\nbody",
            b"Content-Type: text/plain; charset=no-such-charset\r\nFrom: a@b.c\r\n\r\n\xff\xfebody",
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n"
            b"\r\n!!!notbase64",
            b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
            b"Content-Type: text/html\r\n\r\n<p>unterminated",
            b"Content-Type: multipart/mixed\r\n\r\nno boundary at all",
            b"Date: yesterday-ish\r\nMessage-ID: <>\r\nReferences: <<<\r\nIn-Reply-To: >\r\n\r\nx",
            b"Subject: =?utf-8?b?!!!?=\r\nFrom: =?utf-8?q?=FF=FE?= <x@y.z>\r\n\r\n\x80\x81",
            b'Content-Type: image/png; name="=?x?q?a?="\r\nContent-Transfer-Encoding: base64\r\n'
            b"\r\n%%%",
            b"From: Ann <a@b.c>\r\n\r\n" + "é".encode("latin-1") * 10,
        ],
    )
    def test_never_raises(self, raw: bytes) -> None:
        inbound = parse_message(raw)
        assert inbound.message_external_id
        assert inbound.conversation_external_id
        assert isinstance(inbound.text, str)

    def test_wrong_declared_charset_falls_back(self) -> None:
        raw = b"Content-Type: text/plain; charset=nonsense\r\nFrom: a@b.c\r\n\r\nna\xefve caf\xe9"
        assert parse_message(raw).text == "naïve café"

    def test_latin1_body_declared_utf8(self) -> None:
        raw = b"Content-Type: text/plain; charset=utf-8\r\nFrom: a@b.c\r\n\r\ncaf\xe9"
        assert parse_message(raw).text == "café"


class TestHostileInput:
    """Regexes run on every line and header of untrusted mail: their cost must stay linear."""

    @pytest.mark.parametrize(
        "line",
        [
            "1 2024 x <" + "a@" * 32_000,  # the quote-header pattern, 64 KB
            "1 2024 x <" + "a@" * 500_000,  # the same, 1 MB
            "2024 <" * 170_000,
            "On " + "a " * 500_000,
            "_" * 1_000_000 + "x",
            " " * 1_000_000 + "x",
        ],
        ids=["quote-header-64k", "quote-header-1m", "brackets-1m", "on-1m", "rule-1m", "space-1m"],
    )
    def test_a_huge_single_line_body_parses_quickly(self, line: str) -> None:
        raw = b"From: a@b.c\r\nMessage-ID: <h@b.c>\r\n\r\n" + line.encode() + b"\r\n"
        started = time.perf_counter()
        inbound = parse_message(raw)
        assert time.perf_counter() - started < 2
        assert inbound.text == line.strip()

    @pytest.mark.parametrize("value", ["a" * 200_000, "<" + "a" * 200_000, "x@" + "a" * 200_000])
    def test_a_huge_references_header_parses_quickly(self, value: str) -> None:
        raw = f"From: a@b.c\r\nReferences: {value}\r\nIn-Reply-To: {value}\r\n\r\nhi\r\n"
        started = time.perf_counter()
        inbound = parse_message(raw.encode())
        assert time.perf_counter() - started < 2
        assert inbound.text == "hi"

    def test_many_quote_header_like_lines_parse_quickly(self) -> None:
        line = "1 2024 x <" + "a@" * 450
        started = time.perf_counter()
        assert trim_quoted("\n".join([line] * 1000)).startswith("1 2024 x <a@a@")
        assert time.perf_counter() - started < 2

    def test_a_long_line_is_never_taken_for_an_attribution(self) -> None:
        assert trim_quoted("New\n\nИван написал" + " " * 500 + ":\n> old") == "New"
        padded = "Иван написал" + " " * 2000 + ":"
        assert trim_quoted(f"New\n\n{padded}\n> old") == f"New\n\n{padded}"

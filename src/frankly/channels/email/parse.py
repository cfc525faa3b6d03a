"""Raw RFC 5322 mail → `InboundMessage`: the customer's new text, the thread it belongs to, its
sender, attachments, and whether it is an auto-reply or bounce that must never be drafted for.

Never raises on bad mail: broken charsets, malformed headers and odd MIME trees degrade to the
best text we can recover, because one unparseable message must not stall a mailbox.
"""

from __future__ import annotations

import codecs
import contextlib
import email
import hashlib
import re
from datetime import UTC, datetime
from email.header import Header, decode_header, make_header
from email.message import Message as MailMessage
from email.utils import getaddresses, parseaddr, parsedate_to_datetime
from html.parser import HTMLParser
from typing import Any

from frankly.channels.base import InboundAttachment, InboundMessage

MAX_ATTACHMENTS = 10
_ATTACHMENT_EXTENSIONS = {
    ".pdf": "application/pdf",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}
_BULK_PRECEDENCE = {"bulk", "junk", "list", "auto_reply"}
_BOUNCE_SENDERS = {"mailer-daemon", "postmaster"}
_ID_RE = re.compile(r"<([^<>\s]+)>")


# --- headers -----------------------------------------------------------------------------


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes in a declared charset, falling back to UTF-8 then cp1252 when it lies or is bogus."""
    candidates = []
    if charset:
        name = charset.strip().strip('"').lower()
        with contextlib.suppress(LookupError):
            candidates.append(codecs.lookup(name).name)
    for fallback in ("utf-8", "cp1252"):
        if fallback not in candidates:
            candidates.append(fallback)
    for name in candidates:
        try:
            return data.decode(name)
        except (UnicodeDecodeError, LookupError):
            continue
    return data.decode("utf-8", errors="replace")


def decode_header_value(value: Any) -> str:
    """An RFC 2047 (or raw 8-bit) header value as text, whitespace folded to single spaces."""
    if value is None:
        return ""
    try:
        parts = decode_header(value)
    except Exception:  # a broken encoded word: keep the text as it came
        parts = [(str(value), None)]
    try:
        if any(charset == "unknown-8bit" for _, charset in parts):
            raise LookupError("raw 8-bit header")
        text = str(make_header(parts))
    except Exception:  # unknown charset or raw 8-bit bytes: decode the pieces one by one
        text = "".join(
            _decode_bytes(chunk, charset) if isinstance(chunk, bytes) else chunk
            for chunk, charset in parts
        )
    # Raw 8-bit headers can come back with surrogate escapes; recover them as UTF-8/cp1252.
    if any("\udc80" <= ch <= "\udcff" for ch in text):
        text = _decode_bytes(text.encode("utf-8", "surrogateescape"), None)
    return " ".join(text.split())


def _header(msg: MailMessage, name: str) -> str:
    try:
        value = msg.get(name)
    except Exception:
        return ""
    if isinstance(value, Header):
        return decode_header_value(value)
    return decode_header_value(value) if value is not None else ""


def _raw_header(msg: MailMessage, name: str) -> str:
    """The header undecoded (addresses and ids must be split before RFC 2047 decoding)."""
    try:
        value = msg.get(name)
    except Exception:
        return ""
    if value is None:
        return ""
    if isinstance(value, Header):  # raw 8-bit bytes in the header: decode them first
        return decode_header_value(value)
    return " ".join(str(value).split())


def normalise_message_id(value: str) -> str | None:
    """`<Id@Host>`, ` id@host `… → `<id@host>` (the one form ids are compared and stored in)."""
    value = value.strip()
    match = _ID_RE.search(value)
    inner = match.group(1) if match else value.strip("<> \t")
    if not inner or any(ch.isspace() for ch in inner):
        return None
    return f"<{inner.lower()}>"


# Bracketed ids, or maximal runs of id characters (kept below only if they hold an inner "@").
# Each alternative stops at the next delimiter, so scanning a header is linear in its length
# (a pattern like `[^\s<>()]+@[^\s<>()]+` is quadratic on a long run with no "@").
_ID_TOKEN_RE = re.compile(r"<[^<>]*>|[^\s<>()]+")


def _ids(value: str) -> list[str]:
    # Bracketed ids, or bare tokens that look like ids (not comments such as "(Bob's mail)").
    tokens = [
        token
        for token in _ID_TOKEN_RE.findall(value)
        if token.startswith("<") or "@" in token[1:-1]
    ]
    out: list[str] = []
    for item in tokens:
        norm = normalise_message_id(item)
        if norm and norm not in out:
            out.append(norm)
    return out


def thread_ids(msg: MailMessage | bytes) -> list[str]:
    """Every message id this mail refers to (References oldest first, then In-Reply-To), so
    the runner can attach a reply to a thread it already knows under any of them."""
    if isinstance(msg, bytes):
        msg = email.message_from_bytes(msg)
    out = _ids(_raw_header(msg, "References"))
    for item in _ids(_raw_header(msg, "In-Reply-To")):
        if item not in out:
            out.append(item)
    own = normalise_message_id(_raw_header(msg, "Message-ID"))
    return [item for item in out if item != own]


# --- body text ---------------------------------------------------------------------------

_SKIP_TAGS = {"script", "style", "head", "title", "noscript", "template", "blockquote"}
# Blocks that stand apart with a blank line, and blocks that merely start a new line.
_PARAGRAPH_TAGS = {
    "p", "ul", "ol", "dl", "table", "pre", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "section",
    "article", "header", "footer", "address", "form", "fieldset", "figure", "main", "nav",
    "aside",
}  # fmt: skip
_LINE_TAGS = {"div", "li", "tr", "dt", "dd", "center", "caption"}
_QUOTE_CLASSES = {"gmail_quote", "moz-cite-prefix", "yahoo_quoted", "protonmail_quote"}
_QUOTE_IDS = {"divrplyfwdmsg", "appendonsend", "mail-editor-reference-message-container"}


class _TextExtractor(HTMLParser):
    """Visible text of an HTML mail: scripts, styles and quoted history dropped, block
    elements on their own lines."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip: list[tuple[str, int]] = []  # (tag, nesting depth of that tag)
        self._pre = 0
        self._trailing_newlines = 0
        self._empty = True

    def _break(self, newlines: int) -> None:
        if self._empty:
            return
        while self._trailing_newlines < newlines:
            self.parts.append("\n")
            self._trailing_newlines += 1

    def _block(self, tag: str) -> None:
        if tag in _PARAGRAPH_TAGS:
            self._break(2)
        elif tag in _LINE_TAGS:
            self._break(1)
        elif tag == "br":
            self.parts.append("\n")
            self._trailing_newlines += 1

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip:
            skip_tag, depth = self._skip[-1]
            if tag == skip_tag:
                self._skip[-1] = (skip_tag, depth + 1)
            return
        values = dict(attrs)
        classes = set((values.get("class") or "").lower().split())
        if tag in _SKIP_TAGS or (
            tag == "div"
            and (classes & _QUOTE_CLASSES or (values.get("id") or "").lower() in _QUOTE_IDS)
        ):
            self._skip.append((tag, 1))
            return
        if tag == "pre":
            self._pre += 1
        self._block(tag)
        if tag == "li":
            self.parts.append("- ")
        if tag in {"td", "th"}:
            self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if not self._skip:
            self._block(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._skip:
            skip_tag, depth = self._skip[-1]
            if tag == skip_tag:
                if depth == 1:
                    self._skip.pop()
                else:
                    self._skip[-1] = (skip_tag, depth - 1)
            return
        if tag == "pre" and self._pre:
            self._pre -= 1
        if tag != "br":
            self._block(tag)

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        text = data if self._pre else re.sub(r"\s+", " ", data)
        self.parts.append(text)
        if text.strip():
            self._empty = False
            self._trailing_newlines = len(text) - len(text.rstrip("\n")) if self._pre else 0


def html_to_text(html: str) -> str:
    """Readable plain text from an HTML body (never raises on broken markup)."""
    parser = _TextExtractor()
    # HTMLParser is lenient, but an assertion on odd input must not escape.
    with contextlib.suppress(Exception):
        parser.feed(html)
        parser.close()
    lines = [line.strip() for line in "".join(parser.parts).replace("\xa0", " ").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


_ATTRIBUTION = [
    re.compile(r"^\s*On\b.{0,400}\bwrote:\s*$", re.IGNORECASE | re.DOTALL),
    re.compile(r"^\s*Am\b.{0,400}\bschrieb.{0,200}:\s*$", re.IGNORECASE | re.DOTALL),
    re.compile(
        r"^.{0,400}\b(написал|написала|написал\(а\)|пишет)\s*:\s*$", re.IGNORECASE | re.DOTALL
    ),
    # Gmail/Yandex in Russian and others: "пн, 15 янв. 2024 г. в 12:00, Иван <ivan@x.ru>:".
    # The address parts are bounded (RFC 5321 limits) so a hostile line costs linear time.
    re.compile(r"^.{0,300}\d{4}.{0,300}<[^<>\s@]{1,64}@[^<>\s@]{1,255}>\s*:\s*$", re.DOTALL),
]
# Quote headers are short; longer lines skip the heuristics so their cost stays bounded.
MAX_HEURISTIC_LINE = 1000
_SEPARATORS = [
    re.compile(r"^\s*-{2,}\s*Original Message\s*-{2,}\s*$", re.IGNORECASE),
    re.compile(r"^\s*-{2,}\s*Исходное сообщение\s*-{2,}\s*$", re.IGNORECASE),
    re.compile(r"^\s*_{10,}\s*$"),  # Outlook's rule above the quoted header block
]
_OUTLOOK_FROM = re.compile(r"^\s*\*?(From|От|Von)\s*:\*?\s", re.IGNORECASE)
_OUTLOOK_NEXT = re.compile(
    r"^\s*\*?(Sent|Date|To|Subject|Отправлено|Дата|Кому|Тема|Gesendet|An|Betreff)\s*:",
    re.IGNORECASE,
)
_MOBILE_FOOTER = re.compile(
    r"^\s*(Sent from my \w+|Get Outlook for \w+|Отправлено с (моего )?\w+)\b.*$", re.IGNORECASE
)


def _starts_quote(lines: list[str], index: int, stripped: str) -> bool:
    """Whether line `index` (`stripped`, at most `MAX_HEURISTIC_LINE` long) opens quoted
    history: a separator, an attribution ("On … wrote:", possibly wrapped) or Outlook headers."""
    if any(p.match(stripped) for p in _SEPARATORS):
        return True
    if any(p.match(stripped) for p in _ATTRIBUTION):
        return True
    # Attribution lines are often wrapped onto two lines by the sender's client.
    following = lines[index + 1].strip() if index + 1 < len(lines) else None
    if (
        following is not None
        and following.endswith(":")
        and not stripped.startswith(">")
        and len(stripped) + len(following) < MAX_HEURISTIC_LINE
        and any(p.match(f"{stripped} {following}") for p in _ATTRIBUTION)
    ):
        return True
    return bool(_OUTLOOK_FROM.match(stripped)) and any(
        _OUTLOOK_NEXT.match(line) for line in lines[index + 1 : index + 4]
    )


def trim_quoted(text: str) -> str:
    """The new part of a reply: quoted history ("On … wrote:", "> " lines, Outlook headers,
    Russian "…написал(а):") and the "-- " signature removed. Returns the input if nothing
    would remain."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept: list[str] = []
    for index, line in enumerate(lines):
        stripped = line.rstrip()
        if stripped in {"--", "-- "} or line == "-- ":
            break
        if len(stripped) <= MAX_HEURISTIC_LINE and _starts_quote(lines, index, stripped):
            break
        if stripped.lstrip().startswith(">"):
            continue
        kept.append(stripped)
    while kept and (not kept[-1].strip() or _MOBILE_FOOTER.match(kept[-1])):
        kept.pop()
    result = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
    return result or text.strip()


def _payload_text(part: MailMessage) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    return _decode_bytes(payload, charset)


def _payload_bytes(part: MailMessage) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:  # a transfer encoding too broken to decode: treat as empty
        return b""
    return data if isinstance(data, bytes) else b""


def _is_attachment(part: MailMessage) -> bool:
    try:
        disposition = (part.get_content_disposition() or "").lower()
    except Exception:
        disposition = ""
    return disposition == "attachment"


def _body_text(msg: MailMessage) -> str:
    plain: str | None = None
    html: str | None = None
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if ctype not in {"text/plain", "text/html"} or _is_attachment(part):
            continue
        if ctype == "text/plain" and plain is None:
            plain = _payload_text(part)
        elif ctype == "text/html" and html is None:
            html = _payload_text(part)
    if plain is not None and plain.strip():
        return trim_quoted(plain)
    if html is not None:
        return trim_quoted(html_to_text(html))
    return ""


def _filename(part: MailMessage) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        name = None
    if not name:
        return None
    return decode_header_value(name).replace("/", "_").replace("\\", "_")[:200] or None


def _attachments(msg: MailMessage) -> list[InboundAttachment]:
    """Images and PDFs (also pasted inline images); other files are not kept by Frankly."""
    out: list[InboundAttachment] = []
    for part in msg.walk():
        if part.is_multipart() or len(out) >= MAX_ATTACHMENTS:
            continue
        ctype = part.get_content_type()
        name = _filename(part)
        extension = ("." + name.rsplit(".", 1)[-1].lower()) if name and "." in name else ""
        if not (ctype.startswith("image/") or ctype == "application/pdf"):
            if ctype != "application/octet-stream" or extension not in _ATTACHMENT_EXTENSIONS:
                continue
            ctype = _ATTACHMENT_EXTENSIONS[extension]
        data = _payload_bytes(part)
        if not data:
            continue
        if not name:
            guess = next((e for e, t in _ATTACHMENT_EXTENSIONS.items() if t == ctype), "")
            name = f"attachment-{len(out) + 1}{guess}"
        out.append(InboundAttachment(filename=name, content_type=ctype, data=data))
    return out


# --- auto-replies and bounces ------------------------------------------------------------


def auto_reply_reason(msg: MailMessage) -> str | None:
    """Why this mail is machine-generated (auto-reply, bounce, bulk), or None for a person."""
    try:
        return _auto_reply_reason(msg)
    except Exception:  # a header too broken to read is not evidence of a robot
        return None


def _auto_reply_reason(msg: MailMessage) -> str | None:
    auto = _header(msg, "Auto-Submitted").split(";")[0].strip().lower()
    if auto and auto != "no":
        return f"auto-submitted: {auto}"
    precedence = _header(msg, "Precedence").strip().lower()
    if precedence in _BULK_PRECEDENCE:
        return f"precedence: {precedence}"
    for name in ("X-Autoreply", "X-Autorespond"):
        if _header(msg, name):
            return f"{name.lower()} header"
    if msg.get_content_type() == "multipart/report":
        report = str(msg.get_param("report-type") or "").lower()
        return f"delivery report ({report or 'multipart/report'})"
    address = parseaddr(_raw_header(msg, "From"))[1].lower()
    if address.split("@", 1)[0] in _BOUNCE_SENDERS:
        return f"bounce from {address}"
    if _raw_header(msg, "Return-Path").strip() == "<>":
        return "null return path (delivery notification)"
    return None


# --- the message -------------------------------------------------------------------------


def _date(msg: MailMessage) -> datetime | None:
    value = _header(msg, "Date")
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _sender(msg: MailMessage) -> tuple[str | None, str | None]:
    raw = _raw_header(msg, "From")
    try:
        pairs = getaddresses([raw])
    except Exception:
        pairs = []
    for name, address in pairs:
        if "@" in address:
            display = decode_header_value(name).strip().strip('"').strip() or None
            return address.strip().lower(), display
    return None, None


def parse_message(raw: bytes) -> InboundMessage:
    """One raw mail as an `InboundMessage` (never raises)."""
    try:
        msg = email.message_from_bytes(raw)
    except Exception:  # the stdlib parser is forgiving; this is a last resort
        msg = MailMessage()
        msg.set_payload(raw.decode("utf-8", errors="replace"))
    own_id = normalise_message_id(_raw_header(msg, "Message-ID"))
    if own_id is None:
        own_id = f"<sha256-{hashlib.sha256(raw).hexdigest()[:40]}@frankly.invalid>"
    references = _ids(_raw_header(msg, "References"))
    in_reply_to = _ids(_raw_header(msg, "In-Reply-To"))
    root = (references or in_reply_to or [own_id])[0]
    address, name = _sender(msg)
    subject = _header(msg, "Subject")
    try:
        text = _body_text(msg)
        attachments = _attachments(msg)
    except Exception:  # a MIME tree the stdlib chokes on: keep the mail, lose the body
        text, attachments = "", []
    if not text.strip() and subject and not attachments:
        text = subject
    reason = auto_reply_reason(msg)
    sender = f"{name} <{address}>" if name and address else (address or "")
    return InboundMessage(
        conversation_external_id=root,
        message_external_id=own_id,
        text=text,
        contact_external_id=address,
        contact_name=name,
        created_at=_date(msg),
        attachments=attachments,
        context={"email": {"subject": subject, "from": sender}},
        skip_drafting=reason is not None,
        skip_reason=reason,
        thread_refs=thread_ids(msg),
    )

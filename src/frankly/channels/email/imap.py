"""IMAP in: fetch mails newer than a UID cursor without marking them read, and IDLE.

Built on the stdlib `imaplib` run in a worker thread: it is typed, does SSL and STARTTLS, and
has no third-party parser to trust; IDLE (not in `imaplib` before 3.14) is the short exchange
below on a connection of its own. Every call opens and closes its own connection, so a server
that drops idle sessions never leaves a poller with a dead one.
"""

from __future__ import annotations

import contextlib
import imaplib
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from frankly.channels.email import TlsMode

FETCH_CHUNK = 25
_UID_RE = re.compile(rb"\bUID (\d+)", re.IGNORECASE)
_IDLE_TAG = b"FKIDLE"


class ImapError(Exception):
    """The mailbox could not be read (connection, login, mailbox name, protocol)."""


@dataclass(frozen=True, slots=True)
class ImapSettings:
    host: str
    port: int
    user: str
    password: str
    tls: TlsMode
    mailbox: str = "INBOX"
    timeout: float = 30.0


@dataclass(slots=True)
class FetchedMail:
    uid: int
    raw: bytes


@dataclass(slots=True)
class FetchBatch:
    uidvalidity: int
    last_uid: int
    mails: list[FetchedMail] = field(default_factory=list)
    # More new UIDs than the batch limit: the caller should poll again soon.
    more: bool = False
    idle: bool = False


def _quote(mailbox: str) -> str:
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _where(settings: ImapSettings) -> str:
    return f"IMAP server {settings.host}:{settings.port}"


def _check(settings: ImapSettings, what: str, typ: str, data: list[object]) -> None:
    if typ != "OK":
        detail = b" ".join(d for d in data if isinstance(d, bytes)).decode(errors="replace")
        raise ImapError(f"{_where(settings)}: {what} failed: {typ} {detail}".strip())


def _open(settings: ImapSettings) -> imaplib.IMAP4:
    where = _where(settings)
    try:
        conn: imaplib.IMAP4
        if settings.tls == "ssl":
            conn = imaplib.IMAP4_SSL(
                settings.host,
                settings.port,
                ssl_context=ssl.create_default_context(),
                timeout=settings.timeout,
            )
        else:
            conn = imaplib.IMAP4(settings.host, settings.port, timeout=settings.timeout)
            if settings.tls == "starttls":
                conn.starttls(ssl.create_default_context())
    except (OSError, imaplib.IMAP4.error) as exc:
        raise ImapError(f"could not connect to {where} ({settings.tls}): {exc}") from exc
    try:
        conn.login(settings.user, settings.password)
    except imaplib.IMAP4.error as exc:
        _close(conn)
        raise ImapError(f"{where} rejected the login for {settings.user!r}: {exc}") from exc
    except OSError as exc:
        _close(conn)
        raise ImapError(f"{where} dropped the connection during login: {exc}") from exc
    return conn


def _close(conn: imaplib.IMAP4) -> None:
    try:
        conn.logout()
    except (OSError, imaplib.IMAP4.error):
        with contextlib.suppress(OSError):
            conn.shutdown()


@contextmanager
def _session(settings: ImapSettings) -> Iterator[imaplib.IMAP4]:
    conn = _open(settings)
    try:
        yield conn
    except imaplib.IMAP4.error as exc:
        raise ImapError(f"{_where(settings)}: {exc}") from exc
    except OSError as exc:
        raise ImapError(f"{_where(settings)}: connection failed: {exc}") from exc
    finally:
        _close(conn)


def _capabilities(conn: imaplib.IMAP4) -> set[str]:
    """Capabilities after login (many servers announce IDLE only to authenticated users)."""
    typ, data = conn.capability()
    caps = set(getattr(conn, "capabilities", ()))
    if typ == "OK":
        for item in data:
            if isinstance(item, bytes):
                caps.update(item.decode(errors="replace").upper().split())
    return caps


def _examine(settings: ImapSettings, conn: imaplib.IMAP4) -> int:
    """Open the mailbox read-only (so nothing is flagged \\Seen) and return its UIDVALIDITY."""
    typ, data = conn.select(_quote(settings.mailbox), readonly=True)
    _check(settings, f"opening mailbox {settings.mailbox!r}", typ, list(data))
    _, values = conn.response("UIDVALIDITY")
    if not values or values[0] is None:
        typ, values = conn.status(_quote(settings.mailbox), "(UIDVALIDITY)")
        _check(settings, "STATUS UIDVALIDITY", typ, list(values))
        match = re.search(rb"UIDVALIDITY (\d+)", values[0] or b"")
        return int(match.group(1)) if match else 0
    return int(values[0])


def _uids_after(settings: ImapSettings, conn: imaplib.IMAP4, last_uid: int) -> list[int]:
    typ, data = conn.uid("SEARCH", f"UID {last_uid + 1}:*")
    _check(settings, "UID SEARCH", typ, list(data))
    uids = {int(tok) for item in data if item for tok in item.split() if tok.isdigit()}
    # "n:*" always matches the newest message, even when its UID is below n.
    return sorted(uid for uid in uids if uid > last_uid)


def _parse_fetch(data: list[object]) -> list[FetchedMail]:
    mails: list[FetchedMail] = []
    for index, item in enumerate(data):
        if not isinstance(item, tuple) or len(item) < 2:
            continue
        meta, body = item[0], item[1]
        match = _UID_RE.search(meta) if isinstance(meta, bytes) else None
        if match is None and index + 1 < len(data):  # some servers put UID after the literal
            after = data[index + 1]
            match = _UID_RE.search(after) if isinstance(after, bytes) else None
        if match is not None and isinstance(body, bytes):
            mails.append(FetchedMail(uid=int(match.group(1)), raw=body))
    return mails


def fetch_new(
    settings: ImapSettings, *, uidvalidity: int | None, last_uid: int, limit: int
) -> FetchBatch:
    """Mails with a UID above `last_uid` (all of them again when UIDVALIDITY changed), oldest
    first, at most `limit`, fetched with BODY.PEEK[] so their flags stay as they were."""
    with _session(settings) as conn:
        idle = "IDLE" in _capabilities(conn)
        current = _examine(settings, conn)
        if uidvalidity is not None and current != uidvalidity:
            last_uid = 0  # the UIDs were renumbered: re-scan; ingest dedupes on Message-ID
        uids = _uids_after(settings, conn, last_uid)
        batch = FetchBatch(uidvalidity=current, last_uid=last_uid, idle=idle)
        batch.more = len(uids) > limit
        uids = uids[:limit]
        for start in range(0, len(uids), FETCH_CHUNK):
            chunk = uids[start : start + FETCH_CHUNK]
            typ, data = conn.uid("FETCH", ",".join(map(str, chunk)), "(UID BODY.PEEK[])")
            _check(settings, "UID FETCH", typ, list(data))
            wanted = set(chunk)
            batch.mails.extend(m for m in _parse_fetch(list(data)) if m.uid in wanted)
        # Advance past every UID searched, also one expunged between SEARCH and FETCH.
        if uids:
            batch.last_uid = max(uids)
        batch.mails.sort(key=lambda m: m.uid)
        return batch


def sent_contains(settings: ImapSettings, mailbox: str, message_id: str) -> bool:
    """Whether `mailbox` (the Sent folder) already holds a mail with this Message-ID: an
    earlier attempt sent it and the process died before recording that."""
    with _session(settings) as conn:
        typ, data = conn.select(_quote(mailbox), readonly=True)
        if typ != "OK":
            return False  # no Sent folder yet: nothing was recorded there
        needle = message_id.replace("\\", "").replace('"', "")
        typ, data = conn.uid("SEARCH", "HEADER", "Message-ID", f'"{needle}"')
        _check(settings, "UID SEARCH HEADER Message-ID", typ, list(data))
        return any(item and item.split() for item in data if isinstance(item, bytes))


def append_sent(settings: ImapSettings, mailbox: str, raw: bytes) -> None:
    """Keep a copy of a sent mail in `mailbox` (created when missing), flagged \\Seen."""
    with _session(settings) as conn:
        typ, data = conn.append(_quote(mailbox), "(\\Seen)", None, raw)
        if typ != "OK" and b"TRYCREATE" in b" ".join(d for d in data if isinstance(d, bytes)):
            conn.create(_quote(mailbox))
            typ, data = conn.append(_quote(mailbox), "(\\Seen)", None, raw)
        _check(settings, f"APPEND to {mailbox!r}", typ, list(data))


class IdleWaiter:
    """One IMAP IDLE wait on its own connection; `abort()` from another thread ends it."""

    def __init__(self, settings: ImapSettings) -> None:
        self.settings = settings
        self._conn: imaplib.IMAP4 | None = None
        self._aborted = threading.Event()
        self._raw = False

    def abort(self) -> None:
        self._aborted.set()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.socket().shutdown(socket.SHUT_RDWR)

    def wait(self, timeout: float, *, uidvalidity: int | None, last_uid: int) -> bool | None:
        """True when the mailbox has (or gets) a message newer than `last_uid`; False after
        `timeout` without one; None when the server does not support IDLE."""
        deadline = time.monotonic() + timeout
        conn = _open(self.settings)
        self._conn = conn
        try:
            if self._aborted.is_set():
                return False
            if "IDLE" not in _capabilities(conn):
                return None
            current = _examine(self.settings, conn)
            # Mail that arrived between the last poll and now would not be announced by IDLE.
            if current != uidvalidity or _uids_after(self.settings, conn, last_uid):
                return True
            return self._idle(conn, deadline)
        except (OSError, imaplib.IMAP4.error, ImapError) as exc:
            if self._aborted.is_set():
                return False  # abort() shut the socket under us: that is the expected end
            if isinstance(exc, ImapError):
                raise
            raise ImapError(f"{_where(self.settings)}: IDLE failed: {exc}") from exc
        finally:
            self._conn = None
            if self._aborted.is_set() or self._raw:
                with contextlib.suppress(OSError):
                    conn.shutdown()
            else:
                _close(conn)

    def _idle(self, conn: imaplib.IMAP4, deadline: float) -> bool:
        # imaplib reads through a buffered file, which cannot say whether it holds data without
        # blocking; so from IDLE on this connection is read raw and never handed back to it.
        self._raw = True
        sock = conn.socket()
        sock.sendall(_IDLE_TAG + b" IDLE\r\n")
        reader = _LineReader(sock)
        line = reader.readline(deadline=time.monotonic() + self.settings.timeout)
        if line is None or not line.startswith(b"+"):
            raise ImapError(f"{_where(self.settings)}: IDLE refused: {line!r}")
        activity = False
        while not activity and not self._aborted.is_set():
            line = reader.readline(deadline=deadline, should_stop=self._aborted.is_set)
            if line is None:
                break
            activity = re.match(rb"^\* \d+ (EXISTS|RECENT)\b", line) is not None
        if not self._aborted.is_set():
            sock.sendall(b"DONE\r\n")
            finish = time.monotonic() + 5.0
            while (line := reader.readline(deadline=finish)) is not None:
                if line.startswith(_IDLE_TAG + b" "):
                    sock.sendall(b"FKOUT LOGOUT\r\n")
                    break
        return activity


class _LineReader:
    """CRLF lines from a socket with a deadline, without blocking past it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def readline(
        self, *, deadline: float, should_stop: Callable[[], bool] | None = None
    ) -> bytes | None:
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (should_stop is not None and should_stop()):
                return None
            pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0
            if not pending:
                readable, _, _ = select.select([self.sock], [], [], min(remaining, 1.0))
                if not readable:
                    continue
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ImapError("the IMAP server closed the connection during IDLE")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

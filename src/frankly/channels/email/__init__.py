"""Email: IMAP polling (with IDLE) in, SMTP out, RFC 5322 parsing and threading."""

from typing import Literal

# How a connection is secured: TLS from the first byte, upgraded with STARTTLS, or plain.
TlsMode = Literal["ssl", "starttls", "none"]
TLS_MODES: tuple[TlsMode, ...] = ("ssl", "starttls", "none")

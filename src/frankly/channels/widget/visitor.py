"""Who a widget visitor is (a random id in a signed cookie) and how much they may send.

The cookie holds `<visitor id>.<HMAC>`; a cookie that does not verify is simply ignored and the
visitor gets a new identity, never an error. Rate limits are in-process sliding windows: each
app instance counts on its own, which is enough to stop a runaway script or a flood from one
address (a shared limit across instances would need a shared store).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

COOKIE = "frankly_visitor"
COOKIE_PATH = "/chat"
COOKIE_MAX_AGE = 365 * 24 * 3600
_VISITOR_ID = re.compile(r"[0-9a-f]{32}")
_PURPOSE = b"frankly-widget-visitor\x00"


def new_visitor_id() -> str:
    """A fresh random visitor id (128 bits, hex)."""
    return secrets.token_hex(16)


def _mac(visitor_id: str, secret: str) -> str:
    digest = hmac.new(secret.encode(), _PURPOSE + visitor_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(visitor_id: str, *, secret: str) -> str:
    """The cookie value for a visitor id."""
    return f"{visitor_id}.{_mac(visitor_id, secret)}"


def verify(value: str | None, *, secret: str) -> str | None:
    """The visitor id in a cookie value, or None when it is missing, malformed or tampered."""
    if not value or value.count(".") != 1:
        return None
    visitor_id, mac = value.split(".")
    if not _VISITOR_ID.fullmatch(visitor_id):
        return None
    if not hmac.compare_digest(mac, _mac(visitor_id, secret)):
        return None
    return visitor_id


@dataclass(slots=True)
class SlidingWindow:
    """At most `limit` hits per key in any `window` seconds."""

    limit: int
    window: float
    _hits: dict[str, deque[float]] = field(default_factory=dict)
    _max_keys: int = 100_000

    def hit(self, key: str, *, now: float | None = None) -> float | None:
        """Count a hit; None when allowed, else the seconds until one is allowed again."""
        now = time.monotonic() if now is None else now
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= self._max_keys:
                self._prune(now)
            hits = self._hits[key] = deque()
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return max(hits[0] + self.window - now, 0.001)
        hits.append(now)
        return None

    def _prune(self, now: float) -> None:
        stale = [k for k, h in self._hits.items() if not h or h[-1] <= now - self.window]
        for key in stale:
            del self._hits[key]
        if len(self._hits) >= self._max_keys:
            self._hits.clear()  # under a flood of distinct keys, forget rather than grow


@dataclass(slots=True)
class Limits:
    """Per-visitor and per-address limits for messages and (stricter) uploads."""

    messages_per_visitor: SlidingWindow = field(default_factory=lambda: SlidingWindow(20, 60))
    messages_per_ip: SlidingWindow = field(default_factory=lambda: SlidingWindow(60, 60))
    uploads_per_visitor: SlidingWindow = field(default_factory=lambda: SlidingWindow(5, 60))
    uploads_per_ip: SlidingWindow = field(default_factory=lambda: SlidingWindow(20, 60))

    def check(self, *, upload: bool, visitor: str, ip: str) -> tuple[float, str] | None:
        """None when allowed; else (retry after seconds, what was exceeded)."""
        if upload:
            pairs = [
                (self.uploads_per_visitor, visitor, "uploads from this visitor"),
                (self.uploads_per_ip, ip, "uploads from this address"),
            ]
        else:
            pairs = [
                (self.messages_per_visitor, visitor, "messages from this visitor"),
                (self.messages_per_ip, ip, "messages from this address"),
            ]
        for window, key, what in pairs:
            wait = window.hit(key)
            if wait is not None:
                return wait, f"too many {what}: at most {window.limit} per minute"
        return None

"""Who a widget visitor is (a random id in a signed cookie) and how much they may send.

The cookie holds `<visitor id>.<HMAC>`. Identities are minted only when the chat page loads; a
write with a cookie that does not verify is refused (the page must be reloaded), so a script
cannot dodge the per-visitor limits by sending junk cookies. Rate limits are in-process sliding
windows with a bounded number of keys: each app instance counts on its own, which is enough to
stop a runaway script or a flood from one address (a shared limit across instances would need a
shared store).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict, deque
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
    """At most `limit` hits per key in any `window` seconds, remembering at most `max_keys`
    keys: when full, idle keys go first, then the least recently hit one (never all at once)."""

    limit: int
    window: float
    max_keys: int = 100_000
    # Ordered by last hit, oldest first, so eviction and expiry look only at the front.
    _hits: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return len(self._hits)

    def hit(self, key: str, *, now: float | None = None) -> float | None:
        """Count a hit; None when allowed, else the seconds until one is allowed again (a
        refused hit is not counted)."""
        now = time.monotonic() if now is None else now
        hits = self._hits.get(key)
        if hits is None:
            self._make_room(now)
            hits = self._hits[key] = deque()
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return max(hits[0] + self.window - now, 0.001)
        hits.append(now)
        self._hits.move_to_end(key)
        return None

    def _make_room(self, now: float) -> None:
        while self._hits:
            oldest = next(iter(self._hits.values()))
            expired = not oldest or oldest[-1] <= now - self.window
            if not expired and len(self._hits) < self.max_keys:
                return
            self._hits.popitem(last=False)


@dataclass(slots=True)
class Limits:
    """Per-address and per-visitor limits for messages and (stricter) uploads, and a cap on the
    conversations one address may start."""

    messages_per_visitor: SlidingWindow = field(default_factory=lambda: SlidingWindow(20, 60))
    messages_per_ip: SlidingWindow = field(default_factory=lambda: SlidingWindow(60, 60))
    uploads_per_visitor: SlidingWindow = field(default_factory=lambda: SlidingWindow(5, 60))
    uploads_per_ip: SlidingWindow = field(default_factory=lambda: SlidingWindow(20, 60))
    conversations_per_ip: SlidingWindow = field(default_factory=lambda: SlidingWindow(10, 3600))

    def check(self, *, upload: bool, visitor: str, ip: str) -> tuple[float, str] | None:
        """None when allowed; else (retry after seconds, what was exceeded). The address is
        checked first, and a request it refuses is not counted against the visitor."""
        if upload:
            pairs = [
                (self.uploads_per_ip, ip, "uploads from this address"),
                (self.uploads_per_visitor, visitor, "uploads from this visitor"),
            ]
        else:
            pairs = [
                (self.messages_per_ip, ip, "messages from this address"),
                (self.messages_per_visitor, visitor, "messages from this visitor"),
            ]
        for window, key, what in pairs:
            wait = window.hit(key)
            if wait is not None:
                return wait, f"too many {what}: at most {window.limit} per minute"
        return None

    def check_new_conversation(self, *, ip: str) -> tuple[float, str] | None:
        """Count a conversation started from `ip`; None when allowed, else (retry after, why)."""
        window = self.conversations_per_ip
        wait = window.hit(ip)
        if wait is None:
            return None
        hours = f"{window.window / 3600:g} hours" if window.window != 3600 else "hour"
        return wait, f"too many new chats from this address: at most {window.limit} per {hours}"


MAX_SOCKETS_PER_VISITOR = 3
MAX_SOCKETS_PER_IP = 50


@dataclass(slots=True)
class SocketCounts:
    """Open live-feed sockets per visitor and per address (entries vanish at zero)."""

    per_visitor: int = MAX_SOCKETS_PER_VISITOR
    per_ip: int = MAX_SOCKETS_PER_IP
    _visitors: dict[str, int] = field(default_factory=dict)
    _ips: dict[str, int] = field(default_factory=dict)

    def acquire(self, *, visitor: str, ip: str) -> str | None:
        """Take a slot; None when taken, else why not (the caller must not `release`)."""
        if self._visitors.get(visitor, 0) >= self.per_visitor:
            return f"too many open chat tabs (at most {self.per_visitor})"
        if self._ips.get(ip, 0) >= self.per_ip:
            return f"too many chat connections from this address (at most {self.per_ip})"
        self._visitors[visitor] = self._visitors.get(visitor, 0) + 1
        self._ips[ip] = self._ips.get(ip, 0) + 1
        return None

    def release(self, *, visitor: str, ip: str) -> None:
        for counts, key in ((self._visitors, visitor), (self._ips, ip)):
            left = counts.get(key, 0) - 1
            if left > 0:
                counts[key] = left
            else:
                counts.pop(key, None)

    def open_for(self, visitor: str) -> int:
        return self._visitors.get(visitor, 0)

"""A small async client for the Bybit v5 P2P endpoints an order-chat inbox needs.

It signs every request (HMAC-SHA256 over timestamp + key + recv window + exact payload), keeps
to the per-account limits (10 reads/s, 5 writes/s) itself, and turns both response envelopes
into results or typed errors. It deliberately has no way to mark an order paid or release
assets: Frankly must never be able to move money.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import httpx

log = logging.getLogger("frankly.channels.bybit")
T = TypeVar("T")

PATH_ACCOUNT_INFO = "/v5/p2p/user/personal/info"
PATH_PENDING_ORDERS = "/v5/p2p/order/pending/simplifyList"
PATH_ORDER_INFO = "/v5/p2p/order/info"
PATH_CHAT_MESSAGES = "/v5/p2p/order/message/listpage"
PATH_SEND_MESSAGE = "/v5/p2p/order/message/send"

RATE_LIMITED = 10006
RECV_WINDOW_ERROR = 10002
AUTH_CODES = frozenset({10003, 10004, 10005, 10007, 10009, 10010})
SERVER_ERROR_CODES = frozenset({10016})
SUCCESS = 0

# Hosts (`host` for port 443, or `host:port`) that may serve chat files outside the API origin,
# fetched over https and never with the key or a signature. The spec (docs/p2p upload and chat
# pages, pybit 5.17) only ever shows files as relative `/fiat/p2p/oss/...` paths on the API
# host and names no file host, so none is allowed: absolute URLs elsewhere are refused.
BYBIT_FILE_HOSTS: frozenset[str] = frozenset()
_DEFAULT_PORTS = {"http": 80, "https": 443}


class BybitError(Exception):
    """Bybit refused a request; `code` is the retCode (or HTTP status, or -1 for no answer)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"Bybit error {code}: {message}")
        self.code = code
        self.message = message


class BybitRateLimited(BybitError):
    """Too many requests (retCode 10006 per account, or HTTP 403 per IP) even after waiting."""


class BybitAuthError(BybitError):
    """The key, secret, permissions or clock are wrong: retrying will not help."""


class BybitUnavailable(BybitError):
    """No usable answer: 5xx, a network error or timeout, or a malformed envelope."""


def sign(secret: str, *, timestamp: int, api_key: str, recv_window: int, payload: str) -> str:
    """Lowercase hex HMAC-SHA256 of timestamp + api_key + recv_window + payload (raw body or
    query string as sent)."""
    message = f"{timestamp}{api_key}{recv_window}{payload}"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


class RateLimiter:
    """At most `per_second` requests in any rolling one-second window.

    A request's slot is stamped when its response arrives, so the server (which counts arrivals)
    can never see more than the limit in a window, whatever the network delay.
    """

    def __init__(self, per_second: int, window: float = 1.0) -> None:
        if per_second < 1:
            raise ValueError("a rate limit must allow at least one request per second")
        self.per_second = per_second
        self.window = window
        self._done: deque[float] = deque()
        self._in_flight = 0
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._lock:
            while True:
                now = time.monotonic()
                while self._done and self._done[0] <= now - self.window:
                    self._done.popleft()
                if len(self._done) + self._in_flight < self.per_second:
                    break
                wait = self._done[0] + self.window - now if self._done else 0.01
                await asyncio.sleep(max(wait, 0.001))
            self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            self._done.append(time.monotonic())


@dataclass(frozen=True, slots=True)
class DownloadedFile:
    data: bytes
    content_type: str


class BybitClient:
    """Signed, rate-limited calls to the P2P read endpoints and send-message (nothing else)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        api_secret: str,
        recv_window: int = 5000,
        reads_per_second: int = 10,
        writes_per_second: int = 5,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        timeout: float = 10.0,
        max_retries: int = 3,
        retry_backoff: float = 0.5,
        ip_ban_backoff: float = 5.0,
        ip_ban_backoff_cap: float = 60.0,
        max_rate_limit_wait: float = 10.0,
        max_download_bytes: int = 10 * 1024 * 1024,
        file_hosts: frozenset[str] = BYBIT_FILE_HOSTS,
    ) -> None:
        if not api_key or not api_secret:
            raise ValueError("Bybit needs both an API key and an API secret")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._secret = api_secret
        self.recv_window = recv_window
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.ip_ban_backoff = ip_ban_backoff
        self.ip_ban_backoff_cap = ip_ban_backoff_cap
        self.max_rate_limit_wait = max_rate_limit_wait
        self.max_download_bytes = max_download_bytes
        self.file_hosts = frozenset(host.lower() for host in file_hosts)
        self.reads = RateLimiter(reads_per_second)
        self.writes = RateLimiter(writes_per_second)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, transport=transport, timeout=timeout, follow_redirects=False
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- endpoints ---------------------------------------------------------------------------

    async def account_info(self) -> dict[str, Any]:
        return _as_dict(await self._post(PATH_ACCOUNT_INFO, {}), PATH_ACCOUNT_INFO)

    async def pending_orders(self, page: int = 1, size: int = 30) -> dict[str, Any]:
        """One page of pending orders: `{"count": int, "items": [...]}`."""
        body = {"page": page, "size": size}
        return _as_dict(await self._post(PATH_PENDING_ORDERS, body), PATH_PENDING_ORDERS)

    async def order_info(self, order_id: str) -> dict[str, Any]:
        body = {"orderId": order_id}
        return _as_dict(await self._post(PATH_ORDER_INFO, body), PATH_ORDER_INFO)

    async def chat_messages(self, order_id: str, page: int = 1, size: int = 30) -> list[Any]:
        """One page of an order's chat (the list nested at `result.result`)."""
        body = {"orderId": order_id, "size": str(size), "currentPage": str(page)}
        result = _as_dict(await self._post(PATH_CHAT_MESSAGES, body), PATH_CHAT_MESSAGES)
        messages = result.get("result") or []
        if not isinstance(messages, list):
            raise BybitUnavailable(-1, f"{PATH_CHAT_MESSAGES}: result.result is not a list")
        return messages

    async def send_chat_message(
        self, order_id: str, message: str, msg_uuid: str, content_type: str = "str"
    ) -> None:
        """Send one chat message; Bybit dedupes on `msg_uuid`, so a retry reuses it."""
        body = {
            "message": message,
            "contentType": content_type,
            "orderId": order_id,
            "msgUuid": msg_uuid,
        }
        await self._post(PATH_SEND_MESSAGE, body, write=True)

    async def download(self, url: str) -> DownloadedFile:
        """Fetch a chat file named in a (counterparty-written) message. Relative paths such as
        `/fiat/p2p/oss/...`, and absolute URLs on the API origin, are fetched signed; https URLs
        on `file_hosts` unsigned; anything else is refused (`BybitError`, code -1) unfetched."""
        absolute, signed = self._file_url(url)
        query = urlsplit(absolute).query

        async def attempt() -> DownloadedFile:
            headers = self._auth_headers(query) if signed else {}
            async with self.reads.slot(), self._http.stream("GET", absolute, headers=headers) as r:
                if r.status_code != 200:
                    await r.aread()
                    self._check_status(r, f"download {url}")
                    raise BybitError(r.status_code, f"download {url}: HTTP {r.status_code}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in r.aiter_bytes():
                    size += len(chunk)
                    if size > self.max_download_bytes:
                        raise BybitError(
                            -1, f"download {url}: larger than {self.max_download_bytes} bytes"
                        )
                    chunks.append(chunk)
                kind = r.headers.get("content-type", "application/octet-stream")
                return DownloadedFile(b"".join(chunks), kind.split(";")[0].strip())

        return await self._with_retries(attempt)

    def _file_url(self, url: str) -> tuple[str, bool]:
        """The absolute URL to fetch for `url` and whether it may carry the key and signature.
        Decided on the URL httpx will request (after joining), so `//host/x`-style tricks and
        look-alike hosts land in the refused branch."""
        if not url or any(ch.isspace() or ord(ch) < 32 or ch == "\\" for ch in url):
            raise BybitError(-1, "download refused: the file URL is empty or malformed")
        try:
            absolute = urljoin(self.base_url + "/", url)
            target = _origin(absolute)
            own = _origin(self.base_url)
        except ValueError as exc:
            raise BybitError(-1, f"download refused: {exc}") from None
        if target == own:
            return absolute, True
        scheme, host, port = target
        allowed = f"{host}:{port}" in self.file_hosts or (port == 443 and host in self.file_hosts)
        if scheme == "https" and allowed:
            return absolute, False
        raise BybitError(
            -1, f"download refused: {scheme}://{host}:{port} is not the Bybit API or a file host"
        )

    # -- plumbing ----------------------------------------------------------------------------

    def _auth_headers(self, payload: str, recv_window: int | None = None) -> dict[str, str]:
        window = recv_window or self.recv_window
        timestamp = int(time.time() * 1000)
        return {
            "X-BAPI-API-KEY": self.api_key,
            "X-BAPI-TIMESTAMP": str(timestamp),
            "X-BAPI-RECV-WINDOW": str(window),
            "X-BAPI-SIGN": sign(
                self._secret,
                timestamp=timestamp,
                api_key=self.api_key,
                recv_window=window,
                payload=payload,
            ),
        }

    async def _post(self, path: str, body: dict[str, Any], *, write: bool = False) -> Any:
        raw = json.dumps(body, separators=(",", ":"))
        limiter = self.writes if write else self.reads
        window = self.recv_window

        async def attempt() -> Any:
            nonlocal window
            headers = self._auth_headers(raw, window) | {"Content-Type": "application/json"}
            async with limiter.slot():
                response = await self._http.post(path, content=raw.encode(), headers=headers)
            try:
                return self._result(response, path)
            except BybitAuthError as exc:
                if exc.code == RECV_WINDOW_ERROR:
                    window += 2500  # as pybit does: a slightly wider window for a slow clock
                raise

        return await self._with_retries(attempt)

    async def _with_retries(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt` again after rate limits (waiting as told), IP bans (backing off),
        outages (bounded retries) and one recv-window miss; raise the last error otherwise."""
        unavailable = limited = banned = recv = 0
        while True:
            try:
                return await attempt()
            except _IpBanned as exc:
                banned += 1
                if banned > self.max_retries:
                    message = f"{exc.message} (gave up after {banned} tries)"
                    raise BybitRateLimited(403, message) from None
                delay = min(self.ip_ban_backoff * 2 ** (banned - 1), self.ip_ban_backoff_cap)
                log.warning("Bybit answered 403 (IP rate limit); waiting %.1fs", delay)
                await asyncio.sleep(delay)
            except _Throttled as exc:
                limited += 1
                if limited > self.max_retries:
                    raise BybitRateLimited(exc.code, exc.message) from None
                await asyncio.sleep(min(exc.wait, self.max_rate_limit_wait))
            except BybitUnavailable:
                unavailable += 1
                if unavailable > self.max_retries:
                    raise
                await asyncio.sleep(self.retry_backoff * 2 ** (unavailable - 1))
            except BybitAuthError as exc:
                recv += 1
                if exc.code != RECV_WINDOW_ERROR or recv > 1:
                    raise
            except httpx.TransportError as exc:
                unavailable += 1
                if unavailable > self.max_retries:
                    raise BybitUnavailable(-1, f"network error: {exc!r}") from exc
                await asyncio.sleep(self.retry_backoff * 2 ** (unavailable - 1))

    def _check_status(self, response: httpx.Response, what: str) -> None:
        if response.status_code == 403:
            raise _IpBanned(403, f"{what}: HTTP 403 (IP rate limit or region block)")
        if response.status_code >= 500:
            raise BybitUnavailable(response.status_code, f"{what}: HTTP {response.status_code}")
        if response.status_code == 401:
            raise BybitAuthError(401, f"{what}: HTTP 401 (API key rejected)")

    def _result(self, response: httpx.Response, path: str) -> Any:
        self._check_status(response, path)
        try:
            envelope = response.json()
        except ValueError:
            if response.status_code != 200:
                raise BybitError(
                    response.status_code, f"{path}: HTTP {response.status_code}"
                ) from None
            raise BybitUnavailable(-1, f"{path}: the response body is not JSON") from None
        if not isinstance(envelope, dict):
            raise BybitUnavailable(-1, f"{path}: the response is not a JSON object")
        code = envelope["retCode"] if "retCode" in envelope else envelope.get("ret_code")
        message = str(envelope.get("retMsg", envelope.get("ret_msg", "")))
        if not isinstance(code, int) or isinstance(code, bool):
            raise BybitUnavailable(-1, f"{path}: the response has no retCode/ret_code")
        if code == SUCCESS and response.status_code == 200:
            return envelope.get("result")
        what = f"{path}: {message or 'no message'}"
        if code == RATE_LIMITED:
            raise _Throttled(code, what, wait=_reset_wait(response))
        if code == RECV_WINDOW_ERROR:
            raise BybitAuthError(code, f"{what} (is the server clock in sync?)")
        if code in AUTH_CODES:
            raise BybitAuthError(code, what)
        if code in SERVER_ERROR_CODES:
            raise BybitUnavailable(code, what)
        if code == SUCCESS:
            raise BybitError(response.status_code, f"{path}: HTTP {response.status_code}")
        raise BybitError(code, what)


class _IpBanned(BybitError):
    pass


class _Throttled(BybitError):
    def __init__(self, code: int, message: str, *, wait: float) -> None:
        super().__init__(code, message)
        self.wait = wait


def _reset_wait(response: httpx.Response) -> float:
    """Seconds until `X-Bapi-Limit-Reset-Timestamp` (epoch ms); one second if it is absent."""
    raw = response.headers.get("X-Bapi-Limit-Reset-Timestamp")
    try:
        return max(0.0, int(raw) / 1000 - time.time()) if raw else 1.0
    except ValueError:
        return 1.0


def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of `url` as httpx will connect to it; ValueError if unusable."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise ValueError(f"not a valid URL: {url[:100]!r}") from None
    scheme = parsed.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parsed.host:
        raise ValueError(f"not an http(s) URL: {url[:100]!r}")
    if parsed.userinfo:
        raise ValueError("the URL carries a user name or password")
    return scheme, parsed.host.lower(), parsed.port or _DEFAULT_PORTS[scheme]


def _as_dict(result: Any, path: str) -> dict[str, Any]:
    if result is None:
        return {}
    if not isinstance(result, dict):
        raise BybitUnavailable(-1, f"{path}: result is not an object")
    return result

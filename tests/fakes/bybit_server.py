"""A fake Bybit v5 P2P server on 127.0.0.1 that speaks the real wire format.

It verifies every signature over the exact bytes received and the timestamp window, enforces the
per-account limits (10 reads/s, 5 writes/s → retCode 10006 with X-Bapi-Limit-Reset-Timestamp),
pages pending orders and chats, serves chat files, dedupes sends on msgUuid (counting repeats),
and can be told to fail (403, 5xx, malformed bodies, rate limits, slow answers). With
``public_files=True`` it also plays a file host that serves files unsigned (as a CDN would), and
with ``ssl_context`` it serves https (``url`` then names ``localhost``).

In-process: ``fake = FakeBybit(); fake.start(); ...; fake.stop()``.
Separate process: ``python -m tests.fakes.bybit_server --port 0 --state-file state.json`` prints
``READY http://127.0.0.1:PORT``; the state file is rewritten after every change, and the same
scripting is available over HTTP under ``/_fake/`` (see ``_admin``).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import itertools
import json
import os
import signal
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PENDING_STATUSES = {5, 10, 20, 30, 90, 100, 110}
WRITE_PATHS = {"/v5/p2p/order/message/send", "/v5/p2p/oss/upload_file"}
FILE_PREFIX = "/fiat/p2p/oss/showObj/"
LIST_ITEM_KEYS = [
    *("id", "side", "tokenId", "orderType", "amount", "currencyId", "price", "status"),
    *("targetNickName", "targetUserId", "createDate", "transferLastSeconds", "userId"),
    *("sellerRealName", "buyerRealName"),
]
FAIL_KINDS = {"403", "500", "502", "503", "malformed", "no_code", "rate_limit", "slow"}


@dataclass(frozen=True)
class Account:
    api_key: str = "test-key"
    secret: str = "test-secret"
    user_id: str = "1001"
    nickname: str = "FranklyDesk"


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    at: float
    # What the fake answered: HTTP status and retCode (None when there was no envelope).
    status: int = 200
    code: int | None = None

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class _Failure:
    path: str
    kind: str
    remaining: int
    wait_ms: int = 300
    after: int = 0  # requests to let through first


@dataclass
class _Limiter:
    per_second: int
    hits: deque[float] = field(default_factory=deque)

    def take(self, now: float) -> float | None:
        """None if allowed (and counted), else the epoch time the window frees up."""
        while self.hits and self.hits[0] <= now - 1.0:
            self.hits.popleft()
        if len(self.hits) >= self.per_second:
            return self.hits[0] + 1.0
        self.hits.append(now)
        return None


class FakeBybit:
    """The fake's state and behaviour; `start()` serves it over real HTTP on loopback."""

    def __init__(
        self,
        *,
        accounts: list[Account] | None = None,
        envelope: str = "snake",
        reads_per_second: int = 10,
        writes_per_second: int = 5,
        clock_offset_ms: int = 0,
        state_file: str | Path | None = None,
        port: int = 0,
        public_files: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.accounts = {a.api_key: a for a in (accounts or [Account()])}
        self.envelope = envelope
        self.reads_per_second = reads_per_second
        self.writes_per_second = writes_per_second
        self.clock_offset_ms = clock_offset_ms
        self.state_file = Path(state_file) if state_file else None
        self.port = port
        self.public_files = public_files
        self.ssl_context = ssl_context
        self.lock = threading.RLock()
        self.orders: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self.files: dict[str, tuple[str, bytes]] = {}
        self.uuid_counts: dict[str, int] = {}
        self.requests: list[RecordedRequest] = []
        self.rate_limited = 0
        self._failures: list[_Failure] = []
        self._limiters: dict[tuple[str, str], _Limiter] = {}
        self._ids = itertools.count(int(time.time() * 1000) * 10)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        if self.state_file and self.state_file.exists():
            self._load()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> str:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", self.port), handler)
        self.port = self._server.server_address[1]
        if self.ssl_context is not None:
            self._server.socket = self.ssl_context.wrap_socket(
                self._server.socket, server_side=True
            )
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        if self.ssl_context is not None:
            return f"https://localhost:{self.port}"
        return f"http://127.0.0.1:{self.port}"

    # -- scripting -------------------------------------------------------------------------------

    def _next_id(self) -> str:
        return str(next(self._ids))

    def add_order(
        self,
        order_id: str | None = None,
        *,
        amount: str = "15000",
        currency: str = "RUB",
        token: str = "USDT",
        price: str = "92.5",
        quantity: str = "162.1621",
        status: int = 10,
        side: int = 1,
        buyer_user_id: str = "2002",
        buyer_nickname: str = "buyer42",
        bank_name: str = "Tinkoff",
        account_no: str = "40817810099910004312",
        api_key: str = "test-key",
    ) -> str:
        """A pending order of `api_key`'s account against a buyer; returns its id."""
        me = self.accounts[api_key]
        with self.lock:
            oid = order_id or self._next_id()
            term = {
                "id": "77",
                "realName": "Desk Owner",
                "paymentType": 75,
                "bankName": bank_name,
                "branchName": "",
                "accountNo": account_no,
                "qrcode": "",
            }
            self.orders[oid] = {
                "id": oid,
                "side": side,
                "itemId": "1",
                "userId": me.user_id,
                "nickName": me.nickname,
                "makerUserId": me.user_id,
                "targetUserId": buyer_user_id,
                "targetNickName": buyer_nickname,
                "sellerRealName": "Desk Owner",
                "buyerRealName": "Ivan Buyer",
                "tokenId": token,
                "currencyId": currency,
                "price": price,
                "quantity": quantity,
                "amount": amount,
                "paymentType": 75,
                "status": status,
                "createDate": str(int(time.time() * 1000)),
                "paymentTermList": [term],
                "confirmedPayTerm": dict(term),
                "transferLastSeconds": "900",
                "remark": "",
                "orderType": "ORIGIN",
                "_api_key": api_key,
            }
            self.messages[oid] = []
            self._save()
            return oid

    def set_status(self, order_id: str, status: int) -> None:
        """Change an order's status (a status outside the pending set drops it from the list)."""
        with self.lock:
            self.orders[order_id]["status"] = status
            self._save()

    def add_message(
        self,
        order_id: str,
        text: str = "",
        *,
        kind: str = "str",
        data: bytes = b"",
        file_name: str | None = None,
        user_id: str | None = None,
        msg_type: int | None = None,
        created_ms: int | None = None,
        url: str | None = None,
    ) -> str:
        """A chat message: by default from the order's buyer. `kind` is str/pic/pdf/video;
        files are stored and the message carries their relative URL (or `url`, verbatim, e.g.
        a file on another host)."""
        with self.lock:
            order = self.orders[order_id]
            sender = user_id if user_id is not None else order["targetUserId"]
            mid = self._next_id()
            message = text
            if kind != "str":
                name = file_name or f"{mid}.{ {'pic': 'png', 'pdf': 'pdf', 'video': 'mp4'}[kind] }"
                ctype = {"pic": "image/png", "pdf": "application/pdf", "video": "video/mp4"}[kind]
                self.files[f"p2p/{mid}/{name}"] = (ctype, data)
                message = url if url is not None else f"{FILE_PREFIX}p2p/{mid}/{name}"
                file_name = name
            default_type = {"str": 1, "pic": 2, "pdf": 7, "video": 8}[kind]
            own = sender == self.accounts[order["_api_key"]].user_id
            self.messages[order_id].append(
                {
                    "id": mid,
                    "message": message,
                    "userId": sender,
                    "msgType": default_type if msg_type is None else msg_type,
                    "msgCode": 0,
                    "createDate": str(created_ms or int(time.time() * 1000)),
                    "contentType": kind,
                    "orderId": order_id,
                    "msgUuid": "",
                    "nickName": "" if sender == "0" else order["targetNickName"],
                    "fileName": file_name or "",
                    "accountId": "",
                    "isRead": 1 if own else 0,
                    "roleType": "sys" if msg_type == 0 else "user",
                    "onlyForCustomer": 0,
                }
            )
            self._save()
            return mid

    def add_file(self, name: str, data: bytes, content_type: str = "image/png") -> str:
        """A file with no chat message (as on a file host); returns its path."""
        with self.lock:
            self.files[f"files/{name}"] = (content_type, data)
            return f"{FILE_PREFIX}files/{name}"

    def add_system_message(self, order_id: str, text: str) -> str:
        return self.add_message(order_id, text, user_id="0", msg_type=0)

    def fail_next(
        self, path: str, kind: str, count: int = 1, *, wait_ms: int = 300, after: int = 0
    ) -> None:
        """After letting `after` through, the next `count` requests to `path` ("*" for any)
        fail with `kind`: 403, 500, 502, 503, malformed (not JSON), no_code (JSON without
        retCode), rate_limit (10006 with a reset `wait_ms` ahead) or slow (answer after
        `wait_ms`)."""
        if kind not in FAIL_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}; use one of {sorted(FAIL_KINDS)}")
        with self.lock:
            self._failures.append(_Failure(path, kind, count, wait_ms, after))

    def clear_failures(self) -> None:
        with self.lock:
            self._failures.clear()

    def chat(self, order_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(m) for m in self.messages[order_id]]

    def requests_to(self, path: str) -> list[RecordedRequest]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    # -- persistence -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "envelope": self.envelope,
                "orders": self.orders,
                "messages": self.messages,
                "files": {
                    k: [ctype, base64.b64encode(data).decode()]
                    for k, (ctype, data) in self.files.items()
                },
                "uuid_counts": self.uuid_counts,
                "rate_limited": self.rate_limited,
                "request_counts": _count_paths(self.requests),
            }

    def _save(self) -> None:
        if self.state_file is None:
            return
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.snapshot()))
        os.replace(tmp, self.state_file)

    def _load(self) -> None:
        assert self.state_file is not None
        state = json.loads(self.state_file.read_text())
        self.envelope = state.get("envelope", self.envelope)
        self.orders = state.get("orders", {})
        self.messages = state.get("messages", {})
        self.files = {
            k: (ctype, base64.b64decode(data)) for k, (ctype, data) in state["files"].items()
        }
        self.uuid_counts = state.get("uuid_counts", {})

    # -- protocol --------------------------------------------------------------------------------

    def envelope_for(self, code: int, message: str, result: Any) -> dict[str, Any]:
        if self.envelope == "camel":
            return {
                "retCode": code,
                "retMsg": message if code else "OK",
                "result": result,
                "retExtInfo": {},
                "time": int(time.time() * 1000),
            }
        return {
            "ret_code": code,
            "ret_msg": message if code else "SUCCESS",
            "result": result,
            "ext_code": "",
            "ext_info": {},
            "time_now": f"{time.time():.6f}",
        }

    def take_failure(self, path: str) -> _Failure | None:
        with self.lock:
            for failure in self._failures:
                if failure.remaining > 0 and failure.path in (path, "*"):
                    if failure.after > 0:
                        failure.after -= 1
                        return None
                    failure.remaining -= 1
                    return failure
            return None

    def authenticate(self, headers: dict[str, str], payload: bytes) -> tuple[Account, int, str]:
        """The caller's account, or raise _Reject with the documented code."""
        key = headers.get("x-bapi-api-key", "")
        account = self.accounts.get(key)
        if account is None:
            raise _Reject(10003, "API key is invalid.")
        try:
            ts = int(headers.get("x-bapi-timestamp", ""))
            window = int(headers.get("x-bapi-recv-window", "5000"))
        except ValueError:
            raise _Reject(10001, "timestamp or recv_window is not an integer") from None
        server_time = int(time.time() * 1000) + self.clock_offset_ms
        if not server_time - window <= ts < server_time + 1000:
            raise _Reject(
                10002,
                "invalid request, please check your server timestamp or recv_window param. "
                f"req_timestamp[{ts}],server_timestamp[{server_time}],recv_window[{window}]",
            )
        signed = f"{ts}{key}{window}".encode() + payload
        expected = hmac.new(account.secret.encode(), signed, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, headers.get("x-bapi-sign", "")):
            raise _Reject(10004, "Error sign, please check your signature generation algorithm.")
        return account, ts, key

    def throttle(self, account: Account, path: str) -> float | None:
        write = path in WRITE_PATHS
        bucket = (account.user_id, "write" if write else "read")
        with self.lock:
            limiter = self._limiters.setdefault(
                bucket, _Limiter(self.writes_per_second if write else self.reads_per_second)
            )
            reset = limiter.take(time.time())
            if reset is not None:
                self.rate_limited += 1
            return reset

    def route(self, account: Account, path: str, body: dict[str, Any]) -> Any:
        with self.lock:
            if path == "/v5/p2p/user/personal/info":
                return {
                    "userId": account.user_id,
                    "nickName": account.nickname,
                    "accountId": 1,
                    "kycLevel": "2",
                }
            if path in ("/v5/p2p/order/pending/simplifyList", "/v5/p2p/order/simplifyList"):
                page, size = _int_field(body, "page"), _int_field(body, "size")
                if page < 1 or not 1 <= size <= 30:
                    raise _Reject(10001, "page must be >= 1 and size between 1 and 30")
                mine = [o for o in self.orders.values() if o["_api_key"] == account.api_key]
                if path.endswith("pending/simplifyList"):
                    mine = [o for o in mine if o["status"] in PENDING_STATUSES]
                mine.sort(key=lambda o: o["createDate"], reverse=True)
                items = [self._list_item(o) for o in mine[(page - 1) * size : page * size]]
                return {"count": len(mine), "items": items}
            if path == "/v5/p2p/order/info":
                order = self._order(account, body)
                return {k: v for k, v in order.items() if not k.startswith("_")}
            if path == "/v5/p2p/order/message/listpage":
                order = self._order(account, body)
                size = _int_field(body, "size", string=True)
                page = _int_field(body, "currentPage", string=True, default="1")
                if page < 1 or not 1 <= size <= 30:
                    raise _Reject(10001, "currentPage must be >= 1 and size between 1 and 30")
                chat = sorted(self.messages[order["id"]], key=lambda m: int(m["createDate"]))
                chat.reverse()  # newest first
                return {"count": len(chat), "result": chat[(page - 1) * size : page * size]}
            if path == "/v5/p2p/order/message/send":
                return self._send(account, body)
            raise _Reject(404, f"no such endpoint {path}", http_status=404)

    def _order(self, account: Account, body: dict[str, Any]) -> dict[str, Any]:
        order_id = body.get("orderId")
        if not isinstance(order_id, str):
            raise _Reject(10001, "orderId is required and must be a string")
        order = self.orders.get(order_id)
        if order is None or order["_api_key"] != account.api_key:
            raise _Reject(912100001, f"order {order_id} does not exist")
        return order

    def _send(self, account: Account, body: dict[str, Any]) -> None:
        for name in ("message", "contentType", "orderId", "msgUuid"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise _Reject(10001, f"{name} is required and must be a non-empty string")
        order = self._order(account, body)
        if body["contentType"] not in ("str", "pic", "pdf", "video"):
            raise _Reject(10001, f"contentType {body['contentType']!r} is not allowed")
        uuid = body["msgUuid"]
        self.uuid_counts[uuid] = self.uuid_counts.get(uuid, 0) + 1
        if self.uuid_counts[uuid] == 1:
            if order["status"] not in PENDING_STATUSES:
                self.uuid_counts[uuid] -= 1
                if not self.uuid_counts[uuid]:
                    del self.uuid_counts[uuid]
                raise _Reject(912100052, "order is closed; messages can no longer be sent")
            self.messages[order["id"]].append(
                {
                    "id": self._next_id(),
                    "message": body["message"],
                    "userId": account.user_id,
                    "msgType": 1,
                    "msgCode": 0,
                    "createDate": str(int(time.time() * 1000)),
                    "contentType": body["contentType"],
                    "orderId": order["id"],
                    "msgUuid": uuid,
                    "nickName": account.nickname,
                    "fileName": body.get("fileName", ""),
                    "accountId": "",
                    "isRead": 1,
                    "roleType": "user",
                    "onlyForCustomer": 0,
                }
            )
        self._save()
        return None

    def _list_item(self, order: dict[str, Any]) -> dict[str, Any]:
        me = self.accounts[order["_api_key"]].user_id
        unread = sum(1 for m in self.messages[order["id"]] if m["userId"] != me and not m["isRead"])
        keys = LIST_ITEM_KEYS
        item = {k: order[k] for k in keys}
        item.update(fee="0", selfUnreadMsgCount=str(unread), unreadMsgCount="0")
        return item

    def sent_texts(self, order_id: str) -> list[str]:
        """Texts of messages the desk account sent into an order's chat."""
        with self.lock:
            me = self.accounts[self.orders[order_id]["_api_key"]].user_id
            return [m["message"] for m in self.messages[order_id] if m["userId"] == me]


def localhost_tls(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) TLS contexts for a fresh self-signed `localhost` certificate written
    under `directory`; the client context trusts only that certificate."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "localhost.pem", directory / "localhost.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return server, client


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many concurrent clients (the benchmark) must not hit SYN drops


class _Reject(Exception):
    def __init__(self, code: int, message: str, *, http_status: int = 200) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status


def _int_field(
    body: dict[str, Any], name: str, *, string: bool = False, default: Any = None
) -> int:
    value = body.get(name, default)
    if string and isinstance(value, str) and value.isdigit():
        return int(value)
    if not string and isinstance(value, int) and not isinstance(value, bool):
        return value
    kind = "a string of digits" if string else "an integer"
    raise _Reject(10001, f"{name} is required and must be {kind}")


def _count_paths(requests: list[RecordedRequest]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in requests:
        counts[r.path] = counts.get(r.path, 0) + 1
    return counts


class _Handler(BaseHTTPRequestHandler):
    fake: FakeBybit
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stalls

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _reply(
        self,
        status: int,
        body: bytes,
        ctype: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _envelope(self, record: RecordedRequest, code: int, msg: str, result: Any) -> None:
        record.code = code
        self._reply(200, json.dumps(self.fake.envelope_for(code, msg, result)).encode())

    def _handle(self, method: str) -> None:
        fake = self.fake
        split = urlsplit(self.path)
        path, query = split.path, split.query
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path.startswith("/_fake/"):
            self._admin(method, path, body)
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        record = RecordedRequest(method, path, query, headers, body, time.time())
        with fake.lock:
            fake.requests.append(record)
        failure = fake.take_failure(path)
        if failure is not None:
            if failure.kind == "slow":
                time.sleep(failure.wait_ms / 1000)
            elif failure.kind == "rate_limit":
                reset = str(int(time.time() * 1000) + failure.wait_ms)
                record.code = 10006
                payload = fake.envelope_for(10006, "Too many visits!", None)
                self._reply(
                    200,
                    json.dumps(payload).encode(),
                    headers={"X-Bapi-Limit-Reset-Timestamp": reset},
                )
                return
            else:
                record.status = (
                    200 if failure.kind in ("malformed", "no_code") else int(failure.kind)
                )
                text = {
                    "malformed": b"<html>upstream hiccup</html>",
                    "no_code": b'{"result": {}}',
                    "403": b"access too frequent",
                }.get(failure.kind, b"<html>bad gateway</html>")
                self._reply(record.status, text, "text/html")
                return
        if method == "GET" and fake.public_files and "x-bapi-api-key" not in headers:
            try:
                self._file(record, path)
            except _Reject as exc:
                record.status = exc.http_status
                self._reply(exc.http_status, exc.message.encode(), "text/plain")
            return
        try:
            account, _, _ = fake.authenticate(headers, body if method == "POST" else query.encode())
            frees_at = fake.throttle(account, path)
            if frees_at is not None:
                record.code = 10006
                payload = fake.envelope_for(10006, "Too many visits!", None)
                self._reply(
                    200,
                    json.dumps(payload).encode(),
                    headers={"X-Bapi-Limit-Reset-Timestamp": str(int(frees_at * 1000) + 1)},
                )
                return
            if method == "GET":
                self._file(record, path)
                return
            if headers.get("content-type", "").split(";")[0] != "application/json":
                raise _Reject(10001, "Content-Type must be application/json")
            try:
                parsed = json.loads(body or b"{}")
            except ValueError:
                raise _Reject(10001, "the body is not JSON") from None
            if not isinstance(parsed, dict):
                raise _Reject(10001, "the body must be a JSON object")
            result = fake.route(account, path, parsed)
        except _Reject as exc:
            if exc.http_status != 200:
                record.status = exc.http_status
                self._reply(exc.http_status, exc.message.encode(), "text/plain")
                return
            self._envelope(record, exc.code, exc.message, None)
            return
        self._envelope(record, 0, "", result)

    def _file(self, record: RecordedRequest, path: str) -> None:
        if not path.startswith(FILE_PREFIX):
            raise _Reject(404, f"no such file {path}", http_status=404)
        with self.fake.lock:
            found = self.fake.files.get(path[len(FILE_PREFIX) :])
        if found is None:
            raise _Reject(404, f"no such file {path}", http_status=404)
        record.status = 200
        self._reply(200, found[1], found[0])

    def _admin(self, method: str, path: str, body: bytes) -> None:
        """Scripting over HTTP for tests in another process: POST JSON keyword arguments to
        /_fake/add_order, add_message, add_system_message, set_status, fail_next, envelope;
        GET /_fake/state for a snapshot."""
        fake = self.fake
        name = path.removeprefix("/_fake/")
        try:
            if method == "GET" and name == "state":
                result: Any = fake.snapshot()
            elif method == "POST" and name in {
                "add_order",
                "add_message",
                "add_system_message",
                "set_status",
                "fail_next",
                "clear_failures",
            }:
                kwargs = json.loads(body or b"{}")
                if "data" in kwargs:
                    kwargs["data"] = base64.b64decode(kwargs["data"])
                result = getattr(fake, name)(**kwargs)
            elif method == "POST" and name == "envelope":
                fake.envelope = json.loads(body)["style"]
                result = fake.envelope
            else:
                self._reply(404, b'{"error": "unknown admin call"}')
                return
        except (TypeError, KeyError, ValueError) as exc:
            self._reply(400, json.dumps({"error": str(exc)}).encode())
            return
        self._reply(200, json.dumps({"result": result}).encode())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the fake Bybit P2P server.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--state-file", default=None)
    parser.add_argument("--envelope", choices=["snake", "camel"], default="snake")
    parser.add_argument("--api-key", default="test-key")
    parser.add_argument("--api-secret", default="test-secret")
    parser.add_argument("--user-id", default="1001")
    args = parser.parse_args(argv)
    fake = FakeBybit(
        accounts=[Account(args.api_key, args.api_secret, args.user_id)],
        envelope=args.envelope,
        state_file=args.state_file,
        port=args.port,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"READY {fake.start()}", flush=True)
    stop.wait()
    fake.stop()


if __name__ == "__main__":
    main()

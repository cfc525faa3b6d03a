"""Real mail servers on loopback: pymap (a pure-Python IMAP4rev1 server with IDLE, in-memory
mailboxes) and aiosmtpd, each on its own event loop in a thread so a test's blocking client
calls (stdlib imaplib) can't stall them.
"""

from __future__ import annotations

import asyncio
import imaplib
import socket
import threading
from argparse import Namespace
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, TypeVar

from aiosmtpd.smtp import SMTP, Envelope, Session
from proxyprotocol.reader import ProxyProtocolReader
from pymap.backend.dict import Config as DictConfig
from pymap.backend.dict import DictBackend, Login
from pymap.config import BackendCapability
from pymap.imap import IMAPServer
from pysasl.hashing import BuiltinHash

T = TypeVar("T")


class _LoopThread:
    """An asyncio loop running in a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class _NoIdleConfig(DictConfig):
    """A server that does not offer IDLE (pymap's `disable_idle` option is not wired up)."""

    @property
    def backend_capability(self) -> BackendCapability:
        return BackendCapability(idle=False, object_id=True, multi_append=True)


class ImapServer:
    """pymap's dict backend with one user; `append()` delivers a mail over IMAP APPEND."""

    def __init__(
        self, *, user: str = "support@example.com", password: str = "secret", idle: bool = True
    ) -> None:
        self.host = "127.0.0.1"
        self.user = user
        self.password = password
        self.idle = idle
        self.port = 0
        self._thread = _LoopThread("pymap")
        self._stack = AsyncExitStack()

    def start(self) -> ImapServer:
        self.port = self._thread.run(self._start())
        return self

    async def _start(self) -> int:
        args = Namespace(
            host=self.host, port=0, debug=False, cert=None, key=None, tls=False,
            passlib_cfg=None, proxy_protocol=None, inherited_sockets=None,
            demo_data=False, demo_user=self.user, demo_password=self.password,
        )  # fmt: skip
        config_type = DictConfig if self.idle else _NoIdleConfig
        config = config_type.from_args(
            args,
            secure_auth=False,  # plain LOGIN without TLS, on loopback only
            invalid_user_sleep=0.0,
            hash_context=BuiltinHash(rounds=1000),  # 500k PBKDF2 rounds cost 0.3 s per login
        )
        login = Login(config)
        await DictBackend._add_demo_user(config, login)  # how pymap's own init adds the user
        backend = DictBackend(login, config)
        config.apply_context()
        await backend.start(self._stack)
        callback = ProxyProtocolReader(config.proxy_protocol).get_callback(
            IMAPServer(backend.login, config)
        )
        server = await asyncio.start_server(callback, host=self.host, port=0)
        await self._stack.enter_async_context(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    def stop(self) -> None:
        self._thread.run(self._stack.aclose())
        self._thread.stop()

    def client(self) -> imaplib.IMAP4:
        conn = imaplib.IMAP4(self.host, self.port, timeout=10)
        conn.login(self.user, self.password)
        return conn

    def append(self, raw: bytes, mailbox: str = "INBOX") -> int:
        """Deliver one mail; returns its UID."""
        conn = self.client()
        try:
            typ, data = conn.append(mailbox, None, None, raw)
            assert typ == "OK", data
            text = data[0].decode() if isinstance(data[0], bytes) else ""
            return int(text.split("APPENDUID", 1)[1].split()[1].rstrip("]"))
        finally:
            conn.logout()

    def seen_flags(self, mailbox: str = "INBOX") -> dict[int, bool]:
        """UID → whether the mail is flagged \\Seen (the channel must never set it)."""
        conn = self.client()
        try:
            conn.select(mailbox, readonly=True)
            _, data = conn.uid("FETCH", "1:*", "(UID FLAGS)")
            out: dict[int, bool] = {}
            for item in data:
                if isinstance(item, bytes) and b"UID" in item:
                    uid = int(item.split(b"UID ", 1)[1].split()[0].rstrip(b")"))
                    out[uid] = b"\\Seen" in item
            return out
        finally:
            conn.logout()


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        # SMTP carries CRLF line ends; the parser keeps them in the content unless normalised.
        parsed = message_from_bytes(self.data.replace(b"\r\n", b"\n"), policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class _Handler:
    received: list[ReceivedMail] = field(default_factory=list)
    # Recipient → SMTP reply to RCPT TO (e.g. "550 5.1.1 no such user").
    refuse: dict[str, str] = field(default_factory=dict)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.lower() in self.refuse:
            return self.refuse[address.lower()]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.received.append(
            ReceivedMail(str(envelope.mail_from), list(envelope.rcpt_tos), envelope.content)
        )
        return "250 Message accepted for delivery"


class SmtpServer:
    """aiosmtpd collecting every accepted message in `received`."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.handler = _Handler()
        self._thread = _LoopThread("aiosmtpd")
        self._server: asyncio.Server | None = None

    @property
    def received(self) -> list[ReceivedMail]:
        return self.handler.received

    def refuse(self, address: str, reply: str) -> None:
        self.handler.refuse[address.lower()] = reply

    def start(self) -> SmtpServer:
        async def start() -> int:
            factory: Callable[[], SMTP] = lambda: SMTP(self.handler, hostname="mx.test")  # noqa: E731
            self._server = await asyncio.get_running_loop().create_server(factory, self.host, 0)
            port: int = self._server.sockets[0].getsockname()[1]
            return port

        self.port = self._thread.run(start())
        return self

    def stop(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        self._thread.run(stop())
        self._thread.stop()


def closed_port() -> int:
    """A loopback port with nothing listening (a mail server that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port

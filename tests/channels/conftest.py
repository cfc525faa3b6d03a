"""Real servers on loopback for the channel tests: IMAP (pymap), SMTP (aiosmtpd), fake Bybit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.bybit_server import FakeBybit
from tests.fakes.mail_servers import ImapServer, SmtpServer


@pytest.fixture
def imap() -> Iterator[ImapServer]:
    server = ImapServer().start()
    yield server
    server.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def fake() -> Iterator[FakeBybit]:
    # Generous server limits keep these tests quick (the client keeps the real ones itself;
    # the rate-limit tests start a server with Bybit's own).
    server = FakeBybit(reads_per_second=1000, writes_per_second=1000)
    server.start()
    yield server
    server.stop()

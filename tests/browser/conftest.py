"""Real-browser fixtures: one real Frankly server (uvicorn in a subprocess, in-process workers and
live hub) on a fresh SQLite file, and headless Debian Chromium driven by Playwright's async API.

Every page a test opens records console errors, uncaught exceptions and CSP violations; any of
them fails the test at teardown unless the test allowed that exact kind of message.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from frankly.auth import service as auth_service
from frankly.db import Database, commit
from frankly.migrations.runner import upgrade
from tests.factories import PASSWORD, make_desk

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("FRANKLY_TEST_CHROMIUM", "/usr/bin/chromium")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
ARTIFACTS = REPO / "test-artifacts"
SCREENSHOTS = REPO / "docs" / "screenshots"
WAIT_MS = 8_000  # explicit waits on selectors / text; drafting takes well under a second

# Runs in every page before its own scripts (CDP injection, not subject to the page's CSP):
# reports CSP violations as console errors and records the live events the page received.
WATCH_PAGE = """
window.__franklyEvents = [];
document.addEventListener("securitypolicyviolation", function (e) {
  var where = e.sourceFile ? " at " + e.sourceFile + ":" + e.lineNumber + ":" + e.columnNumber : "";
  var on = e.target && e.target.outerHTML ? " on " + e.target.outerHTML.slice(0, 200) : "";
  console.error("CSP violation: " + e.violatedDirective + " blocked " +
                (e.blockedURI || "inline") + where + on);
});
document.addEventListener("frankly:event", function (e) { window.__franklyEvents.push(e.detail); });
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    """The running server, who can sign in to it, and how to post customer messages."""

    base: str
    channel_token: str
    admin_email: str
    anna_email: str
    boris_email: str
    log: Path

    async def inbound(
        self,
        text: str,
        *,
        conversation: str | None = None,
        name: str | None = None,
        language: str | None = "en",
        context: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """POST /api/v1/inbound as the channel; the accepted body (has conversation_id)."""
        contact: dict[str, Any] = {"id": f"contact-{uuid.uuid4().hex[:8]}"}
        if name is not None:
            contact["name"] = name
        if language is not None:
            contact["language"] = language
        body: dict[str, Any] = {
            "conversation_id": conversation or f"conv-{uuid.uuid4().hex[:10]}",
            "message_id": uuid.uuid4().hex,
            "text": text,
            "contact": contact,
        }
        if context is not None:
            body["context"] = context
        async with httpx.AsyncClient(base_url=self.base, timeout=10) as http:
            response = await http.post(
                "/api/v1/inbound",
                json=body,
                headers={"Authorization": f"Bearer {self.channel_token}"},
            )
        assert response.status_code == 202, response.text
        accepted: dict[str, Any] = response.json()
        accepted["external_id"] = body["conversation_id"]
        return accepted

    async def wait_drafted(self, conversation_id: int, within: float = 8.0) -> dict[str, Any]:
        """Poll the API (as the admin) until drafting ran for the conversation's last message."""
        async with httpx.AsyncClient(base_url=self.base, timeout=10) as http:
            login = await http.post(
                "/api/v1/auth/login", json={"email": self.admin_email, "password": PASSWORD}
            )
            assert login.status_code == 200, login.text
            deadline = asyncio.get_running_loop().time() + within
            while True:
                detail = (await http.get(f"/api/v1/conversations/{conversation_id}")).json()
                states = [m.get("drafting") for m in detail.get("messages", [])]
                if states and states[-1] not in {"pending", "queued", "running", None}:
                    return dict(detail)
                assert asyncio.get_running_loop().time() < deadline, f"not drafted: {detail}"
                await asyncio.sleep(0.05)


def _start_server(url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`uvicorn --factory frankly.main:create_app`: the real app, its workers and live hub."""
    env = {
        **os.environ,
        "FRANKLY_DATABASE_URL": url,
        "FRANKLY_ENV": "development",
        "FRANKLY_RUN_WORKERS": "true",
        "FRANKLY_WORKER_POLL_SECONDS": "0.2",
        "FRANKLY_LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
    }
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "frankly.main:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-4000:]
    except OSError:
        return ""


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        reason = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
        if IN_CI:
            pytest.fail(f"{reason}; under CI=true the browser tests must run")
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture(scope="session")
async def live_server(
    chromium_path: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LiveServer]:
    """One uvicorn process for the whole browser suite: migrated, seeded, workers running."""
    folder = tmp_path_factory.mktemp("browser")
    url = f"sqlite+aiosqlite:///{folder / 'frankly.db'}"
    await asyncio.to_thread(upgrade, url)
    database = Database(url)
    try:
        desk = await make_desk(database)
        async with database.sessionmaker() as session:
            boris = await auth_service.create_agent(
                session, email="boris@example.com", password=PASSWORD, name="Boris"
            )
            await commit(session)
    finally:
        await database.dispose()

    port = _free_port()
    log = folder / "server.log"
    process = _start_server(url, port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=1) as http:
            for _ in range(300):
                assert process.poll() is None, f"server exited:\n{_tail(log)}"
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            else:
                pytest.fail(f"server at {base} did not become ready:\n{_tail(log)}")
        yield LiveServer(
            base=base,
            channel_token=desk.channel_token,
            admin_email=desk.admin.email,
            anna_email=desk.agent.email,
            boris_email=boris.email,
            log=log,
        )
    finally:
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
async def browser(chromium_path: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        await launched.close()


@dataclass
class Problems:
    """Console errors, uncaught exceptions and CSP violations seen by one test's pages."""

    seen: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def allow(self, pattern: str) -> None:
        """Expected noise for this test only (e.g. a 403 page, a socket failing while offline)."""
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [
            line
            for line in self.seen
            if "CSP violation" in line
            or "Content Security Policy" in line
            or not any(p.search(line) for p in self.allowed)
        ]


@dataclass
class Browsing:
    """Opens signed-in (or anonymous) pages in fresh browser contexts for one test."""

    browser: Any
    server: LiveServer
    problems: Problems
    contexts: list[Any] = field(default_factory=list)

    async def page(self, *, width: int = 1280, height: int = 800) -> Any:
        context = await self.browser.new_context(
            viewport={"width": width, "height": height}, base_url=self.server.base
        )
        context.set_default_timeout(WAIT_MS)
        await context.add_init_script(WATCH_PAGE)
        self.contexts.append(context)
        page = await context.new_page()
        tag = f"[page {len(self.contexts)}]"
        page.on(
            "console",
            lambda m: (
                self.problems.seen.append(f"{tag} console.{m.type}: {m.text}")
                if m.type == "error"
                else None
            ),
        )
        page.on("pageerror", lambda e: self.problems.seen.append(f"{tag} uncaught: {e}"))
        return page

    async def sign_in(self, email: str, *, width: int = 1280, height: int = 800) -> Any:
        """A new page, signed in through the real form; left on the inbox."""
        page = await self.page(width=width, height=height)
        await sign_in(page, email)
        return page

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()


async def sign_in(page: Any, email: str, next_path: str = "/inbox") -> None:
    await page.goto("/login" + ("" if next_path == "/inbox" else f"?next={next_path}"))
    await page.fill("#email", email)
    await page.fill("#password", PASSWORD)
    async with page.expect_navigation():
        await page.click("button[type=submit]")
    await wait_live(page)


async def wait_event(page: Any, topic: str, kind: str) -> None:
    """Wait until the page has received (and dispatched) a live event of this topic and kind."""
    await page.wait_for_function(
        "([topic, kind]) => window.__franklyEvents.some(e => e.topic === topic && e.kind === kind)",
        arg=[topic, kind],
        timeout=WAIT_MS,
    )


async def settle(page: Any) -> None:
    """Let live refreshes triggered so far finish: inbox.js debounces them by at most 300 ms,
    then htmx marks elements with .htmx-request while their request is in flight."""
    await page.wait_for_timeout(400)
    await page.wait_for_function(
        "() => document.querySelectorAll('.htmx-request').length === 0", timeout=WAIT_MS
    )


async def wait_live(page: Any) -> None:
    """Wait until the page's live socket is open (events from now on reach it)."""
    await page.wait_for_selector("#live-state[data-state=open]", timeout=WAIT_MS)


@pytest.fixture
async def browsing(browser: Any, live_server: LiveServer) -> AsyncIterator[Browsing]:
    problems = Problems()
    session = Browsing(browser, live_server, problems)
    try:
        yield session
    finally:
        await session.close()
    bad = problems.unexpected()
    assert not bad, "browser console errors / JS errors / CSP violations:\n" + "\n".join(bad)


def screenshot_paths(name: str) -> tuple[Path, Path]:
    ARTIFACTS.mkdir(exist_ok=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name, SCREENSHOTS / name

"""live.js end to end: the real script (in Node, with a few browser globals) against a real server:
events dispatched, last id kept, resume after the server restarts, topic changes."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from frankly.db import Database
from tests.factories import Desk
from tests.live.conftest import TIMEOUT, Server, login, publish

LIVE_JS = Path(__file__).resolve().parents[2] / "src" / "frankly" / "static" / "live.js"
NODE = shutil.which("node")

# Browser globals live.js uses; the socket adds the cookie and Origin a browser would send.
HARNESS = r"""
const fs = require("fs");
const readline = require("readline");
const [scriptPath, base, cookie, topics] = process.argv.slice(1);
const url = new URL(base);
const store = new Map();
const win = new EventTarget();
win.location = { protocol: url.protocol, host: url.host };
win.sessionStorage = {
  getItem: (k) => (store.has(k) ? store.get(k) : null),
  setItem: (k, v) => store.set(k, String(v)),
};
win.console = console;
const doc = new EventTarget();
doc.readyState = "complete";
doc.visibilityState = "visible";
doc.body = { dataset: { liveTopics: topics } };
const NativeSocket = WebSocket;
class BrowserSocket extends NativeSocket {
  constructor(target) {
    super(target, { headers: { Cookie: "frankly_session=" + cookie, Origin: base } });
  }
}
globalThis.window = win;
globalThis.document = doc;
globalThis.WebSocket = BrowserSocket;
const out = (line) => process.stdout.write(JSON.stringify(line) + "\n");
for (const name of ["frankly:event", "frankly:resync", "frankly:live"]) {
  doc.addEventListener(name, (e) => out({ name, detail: e.detail }));
}
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const { call, args } = JSON.parse(line);
  out({ name: "result", detail: win.FranklyLive[call](...(args || [])) ?? null });
});
(0, eval)(fs.readFileSync(scriptPath, "utf8"));
"""


def _node_has_websocket() -> bool:
    if NODE is None:
        return False
    probe = subprocess.run(
        [
            NODE,
            "--experimental-websocket",
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _node_has_websocket(), reason="needs Node 20+ with WebSocket")


@dataclass
class Tab:
    """live.js running in Node; what it dispatched, line by line."""

    process: asyncio.subprocess.Process

    async def next(self, name: str, within: float = TIMEOUT) -> Any:
        assert self.process.stdout is not None
        async with asyncio.timeout(within):
            while True:
                line = await self.process.stdout.readline()
                assert line, "node exited"
                message = json.loads(line)
                if message["name"] == name:
                    return message["detail"]

    async def started(self) -> int:
        """The tab's last event id once its first stream has begun."""
        for _ in range(500):
            last = await self.call("lastEventId")
            if last is not None:
                return int(last)
            await asyncio.sleep(0.01)
        raise AssertionError("the tab never learnt where its stream began")

    async def call(self, name: str, *args: Any) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"call": name, "args": list(args)}).encode() + b"\n")
        await self.process.stdin.drain()
        return await self.next("result")


@pytest.fixture
async def tab(server: Server, desk: Desk) -> AsyncIterator[Tab]:
    cookie = await login(server.base, desk.agent.email)
    assert NODE is not None
    process = await asyncio.create_subprocess_exec(
        NODE,
        "--experimental-websocket",
        "--no-warnings",
        "-e",
        HARNESS,
        str(LIVE_JS),
        server.base,
        cookie,
        "inbox conversation:1",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    yield Tab(process)
    process.kill()
    await process.wait()


class TestLiveJs:
    async def test_events_resume_after_a_server_restart(
        self, server: Server, tab: Tab, db: Database
    ) -> None:
        assert await tab.next("frankly:live") == {"state": "open"}
        first = await publish(db, "conversation:1", "message.new", n=1)
        event = await tab.next("frankly:event")
        assert (event["id"], event["topic"], event["kind"]) == (
            first,
            "conversation:1",
            "message.new",
        )
        assert event["data"] == {"n": 1}
        assert await tab.call("lastEventId") == first

        await server.stop()
        assert (await tab.next("frankly:live"))["state"] == "closed"
        missed = [await publish(db, "inbox", n=2), await publish(db, "conversation:1", n=3)]
        await server.start()

        assert await tab.next("frankly:live") == {"state": "open"}
        got = [(await tab.next("frankly:event"))["id"] for _ in range(2)]
        assert got == missed
        marker = await publish(db, "inbox", n=4)
        assert (await tab.next("frankly:event"))["id"] == marker  # nothing twice
        assert await tab.call("lastEventId") == marker

    async def test_set_topics_changes_what_arrives(self, tab: Tab, db: Database) -> None:
        assert (await tab.next("frankly:live"))["state"] == "open"
        await tab.call("setTopics", ["conversation:9"])
        await asyncio.sleep(0.2)  # the subscribe frame travels; no ack reaches the page
        await publish(db, "inbox")
        wanted = await publish(db, "conversation:9")
        assert (await tab.next("frankly:event"))["id"] == wanted

    async def test_a_tab_that_saw_no_event_yet_still_catches_up(
        self, server: Server, tab: Tab, db: Database
    ) -> None:
        before = await publish(db, "inbox")  # before the tab subscribed: not for it
        assert (await tab.next("frankly:live"))["state"] == "open"
        assert await tab.started() >= before  # the "subscribed" reply says where it began
        await server.stop()
        assert (await tab.next("frankly:live"))["state"] == "closed"
        missed = await publish(db, "inbox")
        await server.start()
        assert (await tab.next("frankly:event"))["id"] == missed
        assert await tab.call("lastEventId") == missed > before

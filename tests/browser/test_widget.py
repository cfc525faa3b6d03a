"""The web chat in a real browser: a customer on /chat/{desk} and an agent in the inbox, each in
their own browser context; the reply the agent sends appears on the customer's page live. Also
the embed script on a merchant page served from another origin."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from playwright.async_api import expect
from sqlalchemy import select

from frankly.channels.models import ChannelAccount, ChannelKind
from frankly.conversations.models import Conversation
from frankly.db import Database, commit
from frankly.drafting.disclosure import DisclosureKind, disclosure_for
from tests.browser.conftest import WAIT_MS, Browsing, LiveServer, screenshot_paths, wait_live

pytestmark = pytest.mark.asyncio(loop_scope="session")
expect.set_options(timeout=WAIT_MS)

NOTICE_EN = "An assistant drafts replies; a person reviews and sends each one."
NOTICE_RU = "Ответы готовит ассистент; человек проверяет и отправляет каждый из них."


def _database(server: LiveServer) -> Database:
    """The live server's SQLite file (the fixture keeps it next to the server log)."""
    return Database(f"sqlite+aiosqlite:///{server.log.parent / 'frankly.db'}")


async def add_desk(server: LiveServer, **settings: Any) -> str:
    name = f"shop-{uuid.uuid4().hex[:6]}"
    database = _database(server)
    try:
        async with database.sessionmaker() as session:
            session.add(ChannelAccount(kind=ChannelKind.WIDGET, name=name, settings=settings))
            await commit(session)
    finally:
        await database.dispose()
    return name


async def conversation_of(server: LiveServer, desk: str, within: float = 8.0) -> int:
    """The database id of the (only) conversation on this desk, once it exists."""
    database = _database(server)
    deadline = asyncio.get_running_loop().time() + within
    try:
        while True:
            async with database.sessionmaker() as session:
                found = await session.scalar(
                    select(Conversation.id).where(
                        Conversation.channel == "widget",
                        Conversation.external_id.startswith(f"{desk}:"),
                    )
                )
            if found is not None:
                return int(found)
            assert asyncio.get_running_loop().time() < deadline, "no widget conversation"
            await asyncio.sleep(0.05)
    finally:
        await database.dispose()


async def screenshot(page: Any, name: str) -> None:
    artifact, committed = screenshot_paths(name)
    await page.screenshot(path=str(artifact), timeout=WAIT_MS, caret="initial")
    if os.environ.get("FRANKLY_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(artifact, committed)


async def test_customer_asks_agent_sends_and_the_reply_appears_live(
    browsing: Browsing, live_server: LiveServer
) -> None:
    desk = await add_desk(live_server, title="Crypto Shop support")
    customer = await browsing.page(width=420, height=720)
    await customer.goto(f"/chat/{desk}")
    await expect(customer.locator("#chat-notice")).to_have_text(NOTICE_EN)
    await expect(customer.locator("h1")).to_have_text("Crypto Shop support")

    await customer.fill("#chat-text", "which bank?")
    await customer.press("#chat-text", "Enter")
    mine = customer.locator("#chat-log li.mine")
    await expect(mine).to_have_count(1)
    await expect(mine.locator(".body")).to_have_text("which bank?")
    await expect(customer.locator("#chat-log li.pending")).to_have_count(0)
    await expect(customer.locator("body")).to_have_attribute("data-live", "open")
    await customer.evaluate("window.__noReload = true")

    conversation_id = await conversation_of(live_server, desk)
    await live_server.wait_drafted(conversation_id)
    agent = await browsing.sign_in(live_server.anna_email)
    await agent.goto(f"/inbox/c/{conversation_id}")
    await wait_live(agent)
    await expect(agent.locator("#thread")).to_contain_text("which bank?")
    await expect(agent.locator("#draft-text")).to_have_value(re.compile("T-Bank"))
    # The customer sees nothing of the draft while it waits for a person.
    await expect(customer.locator("#chat-log li.desk")).to_have_count(0)

    await agent.click("#send-button")
    await expect(agent.locator("#thread li.msg.out")).to_contain_text("T-Bank")

    reply = customer.locator("#chat-log li.desk")
    await expect(reply).to_have_count(1)
    intro = disclosure_for(DisclosureKind.INTRO, "en").text
    body = (await reply.locator(".body").inner_text()).strip()
    assert body.startswith(intro), body
    assert "T-Bank" in body
    assert await customer.evaluate("window.__noReload === true"), "the page reloaded"
    await expect(customer.locator("#chat-notice")).to_be_visible()  # the notice stays
    await screenshot(customer, "widget.png")


async def test_customer_text_is_shown_as_text_and_russian_browsers_get_russian(
    browsing: Browsing, live_server: LiveServer
) -> None:
    desk = await add_desk(live_server, greeting="<b>Hi</b> there")
    context = await browsing.browser.new_context(
        base_url=live_server.base, locale="ru-RU", viewport={"width": 420, "height": 720}
    )
    browsing.contexts.append(context)
    page = await context.new_page()
    page.on("pageerror", lambda e: browsing.problems.seen.append(f"uncaught: {e}"))
    page.on(
        "console",
        lambda m: browsing.problems.seen.append(m.text) if m.type == "error" else None,
    )
    await page.goto(f"/chat/{desk}")
    await expect(page.locator("#chat-notice")).to_have_text(NOTICE_RU)
    await expect(page.locator(".greeting")).to_have_text("<b>Hi</b> there")
    script = "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=1>"
    await page.fill("#chat-text", script)
    await page.click("#chat-send")
    await expect(page.locator("#chat-log li.mine .body")).to_have_text(script)
    await expect(page.locator("#chat-log li.pending")).to_have_count(0)  # stored
    await page.reload()
    await expect(page.locator("#chat-log li.mine .body")).to_have_text(script)
    assert await page.evaluate("typeof window.__pwned") == "undefined"
    assert await page.locator("#chat-log img, #chat-log script, .greeting b").count() == 0


MERCHANT_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>Shop</title></head>
<body><h1>A merchant's shop</h1>
<script src="{base}/widget/{desk}.js" async></script>
</body></html>"""


@pytest.fixture
def merchant_site() -> Iterator[tuple[str, dict[str, str]]]:
    """A plain web server on another port (another origin) serving the merchant's page."""
    pages: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path, "").encode()
            self.send_response(200 if body else 404)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", pages
    finally:
        server.shutdown()
        server.server_close()


async def test_embed_script_opens_the_chat_in_a_frame_on_a_merchant_site(
    browsing: Browsing, live_server: LiveServer, merchant_site: tuple[str, dict[str, str]]
) -> None:
    desk = await add_desk(live_server)
    origin, pages = merchant_site
    pages["/shop"] = MERCHANT_PAGE.format(base=live_server.base, desk=desk)
    page = await browsing.page()
    await page.goto(f"{origin}/shop")
    launcher = page.locator("#frankly-chat-launcher")
    await expect(launcher).to_have_attribute("aria-expanded", "false")
    await launcher.click()
    await expect(launcher).to_have_attribute("aria-expanded", "true")
    frame = page.frame_locator("#frankly-chat-frame")
    await expect(frame.locator("#chat-notice")).to_have_text(NOTICE_EN)
    await frame.locator("#chat-text").fill("when are you online?")
    await frame.locator("#chat-send").click()
    await expect(frame.locator("#chat-log li.mine .body")).to_have_text("when are you online?")
    await expect(frame.locator("#chat-log li.pending")).to_have_count(0)
    await screenshot(page, "widget-embed.png")

    conversation_id = await conversation_of(live_server, desk)
    detail = await live_server.wait_drafted(conversation_id)
    assert detail["context"]["page_url"] == f"{origin}/shop"

    await frame.locator("#chat-close").click()
    await expect(launcher).to_have_attribute("aria-expanded", "false")
    await expect(page.locator("#frankly-chat-frame")).to_be_hidden()

    # The inbox itself still cannot be framed (an untracked context: the refusal is logged as
    # a CSP error, which is the point here).
    pages["/evil"] = (
        '<!doctype html><link rel="icon" href="data:,">'
        f'<iframe id="login" src="{live_server.base}/login"></iframe>'
        f'<iframe id="chat" src="{live_server.base}/chat/{desk}"></iframe>'
    )
    context = await browsing.browser.new_context()
    try:
        framing = await context.new_page()
        await framing.goto(f"{origin}/evil")
        chat = framing.frame_locator("#chat")
        await expect(chat.locator("#chat-notice")).to_have_text(NOTICE_EN)
        await framing.wait_for_timeout(300)
        assert await framing.frame_locator("#login").locator("#email").count() == 0
    finally:
        await context.close()

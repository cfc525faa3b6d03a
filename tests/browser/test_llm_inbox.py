"""LLM drafting in a real browser: an admin points the desk at an OpenAI-compatible provider (the
local fake), a draft streams into the open conversation token by token over the WebSocket, the
agent stops it, then asks for a one-click rewrite. Runs last in the browser suite (file order) and
switches the provider off again, so the other browser tests keep the offline engine."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import expect

from tests.browser.conftest import WAIT_MS, Browsing, LiveServer, screenshot_paths, wait_live
from tests.fakes.openai_server import FakeOpenAI, Reply

pytestmark = pytest.mark.asyncio(loop_scope="session")
expect.set_options(timeout=WAIT_MS)

LONG = " ".join(["We accept transfers from T-Bank and Sber, from an account in your own name."] * 6)


async def _save_llm(page: Any, *, base_url: str, model: str, key: str) -> None:
    await page.goto("/settings")
    await page.fill("#llm-base-url", base_url)
    await page.fill("#llm-model", model)
    if key:
        await page.fill("#llm-key", key)
    async with page.expect_navigation():
        await page.click("#llm-title ~ form button[type=submit]")


@pytest.fixture
async def provider(browsing: Browsing, live_server: LiveServer) -> AsyncIterator[FakeOpenAI]:
    with FakeOpenAI(api_key="sk-browser") as fake:
        admin = await browsing.sign_in(live_server.admin_email)
        await _save_llm(admin, base_url=fake.base_url, model="fake-model", key="sk-browser")
        await expect(admin.locator("#llm-title")).to_contain_text("on (settings)")
        # The key never comes back to the browser.
        assert "sk-browser" not in await admin.content()
        try:
            yield fake
        finally:
            await _save_llm(admin, base_url="", model="", key="")
            await expect(admin.locator("#llm-title")).to_contain_text("off")


async def test_a_draft_streams_in_live_can_be_stopped_and_rewritten(
    browsing: Browsing, live_server: LiveServer, provider: FakeOpenAI
) -> None:
    provider.script(Reply(LONG, chunk_delay=0.12))
    page = await browsing.sign_in(live_server.anna_email)
    accepted = await live_server.inbound("which bank do you accept?", name="Olga Petrova")
    conversation_id = accepted["conversation_id"]
    await page.goto(f"/inbox/c/{conversation_id}")
    await wait_live(page)
    await page.evaluate("window.__noReload = true")

    streaming = page.locator("#streaming-text")
    await expect(streaming).to_contain_text("We accept transfers")
    first = len(await streaming.inner_text())
    await expect(streaming).not_to_have_text(await streaming.inner_text())  # still growing
    assert len(await streaming.inner_text()) > first
    artifact, committed = screenshot_paths("llm-streaming.png")
    await page.screenshot(path=str(artifact), caret="initial")
    if os.environ.get("FRANKLY_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(artifact, committed)
    # Nothing can be sent while the assistant writes.
    await expect(page.locator("#send-button")).to_have_count(0)

    await page.click("#stop-button")
    draft = page.locator("#draft-text")
    await expect(draft).to_be_visible()
    await expect(page.locator("#draft-flags")).to_contain_text("Stopped early")
    text = await draft.input_value()
    assert text and len(text) < len(LONG)
    assert await page.evaluate("window.__noReload === true"), "the page reloaded"

    provider.script(Reply("T-Bank or Sber, from your own account."))
    await page.click("button[value=shorter]")
    await expect(draft).to_have_value("T-Bank or Sber, from your own account.")
    assert "shorter" in str(provider.requests[-1].body).lower()

"""The agent inbox in a real browser: sign-in, live updates, drafts, claims, escaping, access,
reconnects, keyboard and layout. One real server for the session; every test makes its own
conversations (a fresh external id each) and finds them by their database id."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from typing import Any

import pytest
from playwright.async_api import expect

from frankly.drafting.disclosure import DisclosureKind, disclosure_for
from tests.browser.conftest import (
    WAIT_MS,
    Browsing,
    LiveServer,
    screenshot_paths,
    settle,
    sign_in,
    wait_event,
    wait_live,
)
from tests.factories import PASSWORD

pytestmark = pytest.mark.asyncio(loop_scope="session")
expect.set_options(timeout=WAIT_MS)

ORDER = {"order": {"id": "P2P-10432", "amount": "15000", "currency": "RUB", "side": "buy"}}


def row(page: Any, conversation_id: int) -> Any:
    return page.locator(f'#conv-list a[data-conversation-id="{conversation_id}"]')


async def mark_page(page: Any) -> None:
    """A flag a reload would wipe: asserting it later proves the update came without one."""
    await page.evaluate("window.__noReload = true")


async def assert_not_reloaded(page: Any) -> None:
    assert await page.evaluate("window.__noReload === true"), "the page reloaded"


async def open_conversation(page: Any, conversation_id: int) -> None:
    await page.goto(f"/inbox/c/{conversation_id}")
    await expect(page.locator(f"#conversation-{conversation_id}")).to_be_visible()
    await wait_live(page)


DEMO = [
    ("how much should I send for the order?", "Maria Ivanova", "en", ORDER),
    ("на какой банк переводить?", "Olga Petrova", "ru", None),
    ("i paid release pls", "Ivan Sidorov", "en", None),
    ("can I pay from my wife's card?", "Sergey Kuznetsov", "en", None),
]


async def test_screenshots_of_the_inbox_and_a_conversation(
    browsing: Browsing, live_server: LiveServer
) -> None:
    """docs/screenshots/inbox.png and conversation.png at 1280×800. First in the module, so the
    list shows these realistic conversations rather than the other tests' fixtures."""
    ids = []
    for text, name, language, context in reversed(DEMO):
        accepted = await live_server.inbound(text, name=name, language=language, context=context)
        ids.append(accepted["conversation_id"])
        await live_server.wait_drafted(accepted["conversation_id"])
    page = await browsing.sign_in(live_server.anna_email)
    for conversation_id in ids:
        await expect(row(page, conversation_id)).to_be_visible()
    await _screenshot(page, "inbox.png")

    await open_conversation(page, ids[-1])
    await expect(page.locator("#draft-text")).to_have_value("Please send exactly 15000 RUB.")
    await expect(page.locator("#provenance")).to_contain_text("Will be sent as draft as is")
    await _screenshot(page, "conversation.png")


async def test_live_inbound_then_edit_and_send_with_ctrl_enter(
    browsing: Browsing, live_server: LiveServer
) -> None:
    page = await browsing.page()
    await page.goto("/login")
    await page.fill("#email", live_server.anna_email)
    await page.fill("#password", "wrong-password")
    async with page.expect_navigation():
        await page.click("button[type=submit]")
    browsing.problems.allow(r"Failed to load resource: .* status of 401")
    await expect(page.locator("p.error[role=alert]")).to_be_visible()
    await page.fill("#password", PASSWORD)
    async with page.expect_navigation():
        await page.click("button[type=submit]")
    await expect(page).to_have_url(re.compile(r"/inbox$"))
    await wait_live(page)
    await expect(page.locator("#live-state")).to_have_text("live")
    await mark_page(page)

    # A customer writes: the conversation, then its draft, show up in the open list live.
    accepted = await live_server.inbound("which bank do I pay to?", name="Olga Petrova")
    conversation_id = accepted["conversation_id"]
    link = row(page, conversation_id)
    await expect(link).to_be_visible()
    await expect(link).to_contain_text("which bank do I pay to?")
    await expect(link.locator(".tag.draft")).to_have_text("draft")
    await assert_not_reloaded(page)

    async with page.expect_navigation():
        await link.click()
    await wait_live(page)
    draft = page.locator("#draft-text")
    await expect(draft).to_have_value(re.compile("T-Bank"))
    await expect(page.locator("#provenance")).to_contain_text("Will be sent as draft as is")

    # The customer writes again while the conversation is open: the pane refreshes live.
    await mark_page(page)
    await live_server.inbound("when are you online?", conversation=accepted["external_id"])
    await expect(page.locator("#thread")).to_contain_text("when are you online?")
    await expect(draft).to_have_value(re.compile("09:00"))
    await assert_not_reloaded(page)

    original = await draft.input_value()
    edited = original.replace("Moscow time", "Moscow time, every day")
    assert edited != original
    await draft.fill(edited)
    await expect(page.locator("#provenance")).to_contain_text("Will be sent as draft edited")

    await page.press("#draft-text", "Control+Enter")
    sent = page.locator("#thread li.msg.out").last
    await expect(sent.locator(".badge")).to_contain_text("draft edited")
    await expect(sent.locator(".meta")).to_contain_text("sent by Anna")
    intro = disclosure_for(DisclosureKind.INTRO, "en").text
    body = (await sent.locator(".body").inner_text()).strip()
    assert body.startswith(intro), body
    assert body.endswith("every day."), body
    await expect(page.locator("#toast")).to_contain_text("Sent (draft edited)")
    await expect(page.locator("#draft-text")).to_have_count(0)
    # The list follows live: answered, the conversation leaves "Needs reply".
    await wait_event(page, "inbox", "message.sent")
    await expect(row(page, conversation_id)).to_have_count(0)
    await settle(page)
    await _screenshot(page, "sent.png", publish=False, full_page=True)


async def test_typing_right_after_focusing_the_draft_keeps_the_edit(
    browsing: Browsing, live_server: LiveServer
) -> None:
    accepted = await live_server.inbound("what bank do you accept", name="Pavel Morozov")
    conversation_id = accepted["conversation_id"]
    await live_server.wait_drafted(conversation_id)
    page = await browsing.sign_in(live_server.anna_email)
    await open_conversation(page, conversation_id)
    draft = page.locator("#draft-text")
    edited = "We accept transfers from T-Bank and Sber only."

    # Focusing claims the conversation; the page must not reload the pane for its own claim
    # (that used to wipe the edit and toast "Anna is replying now." to Anna herself).
    await draft.fill(edited)  # focus (claims) and type at once, as a person does
    await wait_event(page, f"conversation:{conversation_id}", "conversation.claimed")
    await settle(page)
    assert await draft.input_value() == edited, "the typed edit was thrown away"
    await expect(page.locator("#provenance")).to_contain_text("Will be sent as draft edited")
    assert "is replying" not in (await page.locator("#toast").inner_text())


async def test_abstained_conversation_offers_suggestions_and_use_this_faq_drafts(
    browsing: Browsing, live_server: LiveServer
) -> None:
    accepted = await live_server.inbound("i paid release pls", name="Ivan Sidorov")
    conversation_id = accepted["conversation_id"]
    await live_server.wait_drafted(conversation_id)
    page = await browsing.sign_in(live_server.anna_email)
    await expect(row(page, conversation_id).locator(".tag.human")).to_have_text("needs a human")
    await open_conversation(page, conversation_id)

    await expect(page.locator("#panel-title")).to_have_text("Needs a human")
    suggestions = page.locator("ul.suggestions li")
    await expect(suggestions.first).to_be_visible()
    await expect(suggestions.first).to_contain_text("paid-release")
    await expect(page.locator("#draft-text")).to_have_count(0)

    await suggestions.first.get_by_role("button", name="Use this FAQ").click()
    await expect(page.locator("#panel-title")).to_have_text("Draft")
    await expect(page.locator("#draft-text")).to_have_value(
        "Thanks, a person will check the payment."
    )
    await expect(page.locator("#draft-panel .why")).to_contain_text("paid-release")
    await expect(page.locator("#toast")).to_contain_text("Draft from paid-release")


async def test_claim_shows_who_is_replying_and_take_over_lets_the_other_agent_send(
    browsing: Browsing, live_server: LiveServer
) -> None:
    accepted = await live_server.inbound("what bank do you accept", name="Sergey Kuznetsov")
    conversation_id = accepted["conversation_id"]
    await live_server.wait_drafted(conversation_id)
    anna = await browsing.sign_in(live_server.anna_email)
    boris = await browsing.sign_in(live_server.boris_email)
    await open_conversation(anna, conversation_id)
    await open_conversation(boris, conversation_id)
    await expect(boris.locator("#send-button")).to_be_enabled()
    await mark_page(boris)

    async with anna.expect_response(lambda r: r.url.endswith("/claim") and r.ok):
        await anna.focus("#draft-text")

    banner = boris.locator("#claim-banner")
    await expect(banner).to_contain_text("Anna is replying")
    await expect(boris.locator("#send-button")).to_be_disabled()
    await expect(boris.locator("#draft-text")).to_have_attribute("readonly", "")
    await assert_not_reloaded(boris)

    await banner.get_by_role("button", name="Take over").click()
    await expect(boris.locator("#claim-banner")).to_have_count(0)
    send = boris.locator("#send-button")
    await expect(send).to_be_enabled()
    # Anna's pane (not edited) follows live: now Boris is replying.
    await expect(anna.locator("#claim-banner")).to_contain_text("Boris is replying")

    await send.click()
    sent = boris.locator("#thread li.msg.out").last
    await expect(sent.locator(".badge")).to_contain_text("draft as is")
    await expect(sent.locator(".meta")).to_contain_text("sent by Boris")
    await expect(anna.locator("#thread li.msg.out")).to_contain_text("T-Bank")


async def test_customer_html_is_shown_as_text_and_never_runs(
    browsing: Browsing, live_server: LiveServer
) -> None:
    page = await browsing.sign_in(live_server.anna_email)
    await mark_page(page)
    script = "<script>window.__pwned=1</script>"
    image = '<img src=x onerror="window.__pwned=1">'
    accepted = await live_server.inbound(
        f"hello {script} and {image}", name='<b id="xss-name">Mallory</b>'
    )
    conversation_id = accepted["conversation_id"]

    link = row(page, conversation_id)  # swapped in by htmx on a live event
    await expect(link.locator(".snippet")).to_contain_text(script)
    await expect(link.locator(".snippet")).to_contain_text(image)
    await expect(link.locator(".title")).to_contain_text('<b id="xss-name">Mallory</b>')
    await assert_not_reloaded(page)
    assert await page.evaluate("typeof window.__pwned") == "undefined"
    assert await page.locator("#xss-name, #conv-list img, #conv-list script").count() == 0

    await open_conversation(page, conversation_id)
    body = page.locator("#thread li.msg.in .body").first
    await expect(body).to_contain_text(script)
    await expect(body).to_contain_text(image)
    await expect(page.locator("#conversation-pane h2").first).to_contain_text("<b id=")
    assert await page.locator("#thread img, #thread script, #xss-name").count() == 0
    assert await page.evaluate("typeof window.__pwned") == "undefined"


async def test_agents_get_403_on_admin_pages_and_anonymous_visits_go_to_login(
    browsing: Browsing, live_server: LiveServer
) -> None:
    browsing.problems.allow(r"Failed to load resource: .* status of 403")
    page = await browsing.sign_in(live_server.anna_email)
    for path in ("/settings", "/admin"):
        response = await page.goto(path)
        assert response is not None and response.status == 403, path
        await expect(page.locator("main h1")).to_have_text("Not allowed")
        await expect(page.locator("main")).to_contain_text("this page is for admins")
    # Admin links are not even offered to an agent.
    await expect(page.locator("header nav a[href='/settings']")).to_have_count(0)
    await expect(page.locator("header nav a[href='/admin']")).to_have_count(0)

    anonymous = await browsing.page()
    await anonymous.goto("/inbox")
    await expect(anonymous).to_have_url(re.compile(r"/login\?next=/inbox$"))
    await expect(anonymous.locator("#email")).to_be_visible()
    await expect(anonymous.locator("#live-state")).to_have_count(0)


class Link:
    """Routes the page's /ws through Playwright so the test can cut the live socket and refuse
    new ones, as a dropped network does. (Chromium's offline emulation alone leaves an open
    WebSocket up, so it is used together with this.)"""

    def __init__(self) -> None:
        self.offline = False
        self.open: list[tuple[Any, Any]] = []

    async def install(self, page: Any) -> None:
        await page.route_web_socket(re.compile(r"/ws$"), self._route)

    async def _route(self, ws: Any) -> None:
        if self.offline:
            await ws.close(code=1001, reason="offline")
            return
        self.open.append((ws, ws.connect_to_server()))

    async def drop(self, page: Any) -> None:
        self.offline = True
        await page.context.set_offline(True)
        routes, self.open = self.open, []
        for ws, server in routes:
            await server.close(code=1001, reason="offline")
            await ws.close(code=1001, reason="offline")

    async def restore(self, page: Any) -> None:
        self.offline = False
        await page.context.set_offline(False)  # fires "online": live.js reconnects at once


async def _missed_while_offline(page: Any, link: Link, live_server: LiveServer, name: str) -> int:
    """Drop the link, let a customer write, bring the link back; the new conversation's id."""
    state = page.locator("#live-state")
    await expect(state).to_have_text("live")
    await link.drop(page)
    await expect(state).to_have_text("reconnecting…")
    await expect(state).to_have_attribute("data-state", "closed")

    accepted = await live_server.inbound("are you open now", name=name)
    conversation_id: int = accepted["conversation_id"]
    await live_server.wait_drafted(conversation_id)
    await expect(state).to_have_text("reconnecting…")
    assert await row(page, conversation_id).count() == 0

    await link.restore(page)
    await expect(state).to_have_text("live")
    await expect(state).to_have_attribute("data-state", "open")
    return conversation_id


async def test_socket_drop_and_reconnect_still_delivers_the_missed_event(
    browsing: Browsing, live_server: LiveServer
) -> None:
    page = await browsing.page()
    link = Link()
    await link.install(page)
    await sign_in(page, live_server.anna_email)
    await mark_page(page)
    # The tab has seen an event before the drop, so it knows where to resume from.
    before = await live_server.inbound("which bank?", name="Natalia Popova")
    await expect(row(page, before["conversation_id"])).to_be_visible()
    await wait_event(page, "inbox", "draft.new")

    conversation_id = await _missed_while_offline(page, link, live_server, "Dmitry Volkov")
    new = row(page, conversation_id)
    await expect(new).to_be_visible()
    await expect(new.locator(".tag.draft")).to_be_visible()
    await assert_not_reloaded(page)


async def test_reconnect_delivers_missed_events_to_a_tab_that_saw_none_before(
    browsing: Browsing, live_server: LiveServer
) -> None:
    page = await browsing.page()
    link = Link()
    await link.install(page)
    await sign_in(page, live_server.anna_email)
    await mark_page(page)

    conversation_id = await _missed_while_offline(page, link, live_server, "Yulia Fedorova")
    await expect(row(page, conversation_id)).to_be_visible(timeout=3_000)
    await assert_not_reloaded(page)


async def test_an_event_between_page_render_and_socket_open_is_not_lost(
    browsing: Browsing, live_server: LiveServer
) -> None:
    page = await browsing.page()
    gate = asyncio.Event()

    async def slow_socket(ws: Any) -> None:  # a slow network: the socket opens late
        await gate.wait()
        ws.connect_to_server()

    await page.route_web_socket(re.compile(r"/ws$"), slow_socket)
    await page.goto("/login")
    await page.fill("#email", live_server.anna_email)
    await page.fill("#password", PASSWORD)
    async with page.expect_navigation():
        await page.click("button[type=submit]")
    await expect(page.locator("#live-state")).to_have_attribute("data-state", "connecting")

    accepted = await live_server.inbound("which bank?", name="Kirill Belov")
    await live_server.wait_drafted(accepted["conversation_id"])
    gate.set()
    await wait_live(page)
    await expect(row(page, accepted["conversation_id"])).to_be_visible(timeout=3_000)


async def test_keyboard_j_k_move_the_selection_and_enter_opens(
    browsing: Browsing, live_server: LiveServer
) -> None:
    for text, name in (("how much do I pay", "Anton Orlov"), ("which bank?", "Elena Smirnova")):
        accepted = await live_server.inbound(text, name=name, context=ORDER)
        await live_server.wait_drafted(accepted["conversation_id"])
    page = await browsing.sign_in(live_server.anna_email)
    links = page.locator("#conv-list a[data-conversation-id]")
    assert await links.count() >= 2
    selected = page.locator("#conv-list a.selected")

    await page.keyboard.press("j")
    await expect(selected).to_have_count(1)
    await expect(links.nth(0)).to_have_class(re.compile(r"\bselected\b"))
    await expect(links.nth(0)).to_be_focused()
    await page.keyboard.press("j")
    await expect(links.nth(1)).to_have_class(re.compile(r"\bselected\b"))
    await expect(links.nth(1)).to_be_focused()
    await page.keyboard.press("k")
    await expect(links.nth(0)).to_have_class(re.compile(r"\bselected\b"))
    await expect(selected).to_have_count(1)

    # Typing in the search box is not navigation.
    await page.focus("#q")
    await page.keyboard.press("j")
    await expect(links.nth(0)).to_have_class(re.compile(r"\bselected\b"))
    await page.locator("#q").blur()

    target = await links.nth(0).get_attribute("data-conversation-id")
    await links.nth(0).focus()
    async with page.expect_navigation():
        await page.keyboard.press("Enter")
    await expect(page).to_have_url(re.compile(rf"/inbox/c/{target}\b"))
    await expect(page.locator(f"#conversation-{target}")).to_be_visible()


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (900, 700)])
async def test_layout_send_visible_and_no_horizontal_overflow(
    browsing: Browsing, live_server: LiveServer, width: int, height: int
) -> None:
    accepted = await live_server.inbound(
        "how much should I send for the order?", name="Maria Ivanova", context=ORDER
    )
    conversation_id = accepted["conversation_id"]
    await live_server.wait_drafted(conversation_id)
    page = await browsing.sign_in(live_server.anna_email, width=width, height=height)
    await _no_overflow(page)
    await _screenshot(page, f"layout-{width}x{height}-inbox.png", publish=False)

    await open_conversation(page, conversation_id)
    await expect(page.locator("#draft-text")).to_have_value(re.compile("15000 RUB"))
    send = page.locator("#send-button")
    await expect(send).to_be_visible()
    await send.scroll_into_view_if_needed()
    await expect(send).to_be_in_viewport()
    box = await send.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, box
    await _no_overflow(page)
    await _screenshot(page, f"layout-{width}x{height}-conversation.png", publish=False)


async def _no_overflow(page: Any) -> None:
    sizes = await page.evaluate(
        "({scroll: document.scrollingElement.scrollWidth, inner: window.innerWidth})"
    )
    assert sizes["scroll"] <= sizes["inner"], f"horizontal overflow on {page.url}: {sizes}"


async def _screenshot(
    page: Any, name: str, *, publish: bool = True, full_page: bool = False
) -> None:
    """Into test-artifacts/; with publish and FRANKLY_UPDATE_SCREENSHOTS=1, also into
    docs/screenshots/ (committed, linked from the README), so a test run leaves the tree clean.

    caret="initial": Playwright's default caret hiding puts style="" attributes on inputs, which
    htmx then copies onto swapped-in elements, a (test-made) CSP style-src-attr violation.
    """
    artifact, committed = screenshot_paths(name)
    await page.screenshot(path=str(artifact), timeout=WAIT_MS, caret="initial", full_page=full_page)
    if publish and os.environ.get("FRANKLY_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(artifact, committed)

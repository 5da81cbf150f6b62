"""A model answer that is one long word: the page keeps up, wraps it, and keeps it exact.

A model can be made to write 300 KB without a space. Chromium lays a paragraph
out again from its start each time text is appended to it (it shapes the whole
run of text since the last line break once more), so one layout costs time in
proportion to the word so far. The page used to lay itself out once per event
(static/app.js read the page's height before and after each swap), so the
stream cost grew with the square of the word: 57 s of a frozen tab for this
test's 300 KB in 1,500 events, 70 s in the attack pass that found it, where
ordinary text, whose line breaks end each run, stays cheap. The page now lays
out at most once per frame. The thought line, which shows the reasoning's last
400 characters, now wraps a long word too instead of widening a phone's page.

This test uses its own page, without observe.js: that observer reads the
answer's innerText after every swap, which forces a layout per event, the
very cost this test is about.
"""

from __future__ import annotations

import string
import time
from collections.abc import AsyncIterator

import pytest_asyncio
from playwright.async_api import BrowserContext, expect

from providers.events import Answer, Reasoning
from tests.conftest import Pause, ScriptedProvider
from tests.e2e.conftest import ServeApp, new_tab
from tests.e2e.scripts import THOUGHT_PAUSE_S
from tests.e2e.tab import Tab

# One word: letters and digits, so that a lost, doubled or reordered piece shows.
WORD = (string.ascii_letters + string.digits) * (300_000 // 62 + 1)
WORD = WORD[:300_000]
# 1,500 answer_chunk events: with answer_window=0 the app sends each piece as it
# comes, as it does for a model slower than the window.
PIECE = 200
# On a 2-core test machine: 57 s before the fix, 1.3 s after.
SHOWN_WITHIN_S = 15.0
PHONE = {"width": 360, "height": 740}
# How much wider than the window the page is; 0 when nothing sticks out.
OVERFLOW = "document.documentElement.scrollWidth - document.documentElement.clientWidth"


@pytest_asyncio.fixture(loop_scope="session")
async def bare_tab(browser: BrowserContext, serve_app: ServeApp) -> AsyncIterator[Tab]:
    """A page like the ``tab`` fixture's (records problems, never leaves the
    machine), without observe.js, and without a screenshot on failure: a whole
    page with 300 KB of wrapped text is over 100,000 pixels tall."""
    tab = await new_tab(browser, observe=False)
    try:
        yield tab
    finally:
        await tab.page.close()


async def test_a_300_kb_word_is_shown_in_seconds_wrapped_and_exact(bare_tab, serve_app):
    tab = bare_tab
    reasoning = WORD[:2_000]  # the thought line shows its last 400 characters
    script = [
        Reasoning(reasoning),
        Pause(THOUGHT_PAUSE_S),
        *(Answer(WORD[start : start + PIECE]) for start in range(0, len(WORD), PIECE)),
    ]
    served = await serve_app(ScriptedProvider(script), answer_window=0, max_answer_chars=1_000_000)
    await tab.page.set_viewport_size(PHONE)
    await tab.open(served.url)

    started = time.monotonic()
    await tab.submit("One long word, please.")
    # The thought line wraps its one long word too.
    await expect(tab.response.locator(".thoughts")).to_contain_text(reasoning[-400:])
    assert await tab.page.evaluate(OVERFLOW) <= 0
    await expect(tab.answer).not_to_be_empty()  # the answer streams, and wraps
    assert await tab.page.evaluate(OVERFLOW) <= 0

    try:
        await expect(tab.final).to_be_visible(timeout=SHOWN_WITHIN_S * 1000)
    except AssertionError:
        raise AssertionError(
            f"no final answer within {SHOWN_WITHIN_S:.0f} s: the tab is busy laying out"
        ) from None
    assert time.monotonic() - started < SHOWN_WITHIN_S

    # Exactly the word: what Copy copies, and what the Markdown shows.
    assert await tab.final.locator(".answer-source").text_content() == WORD
    rendered = await tab.final.locator(".answer-rendered").text_content()
    assert rendered is not None and rendered.strip() == WORD  # one <p>, and a newline after it
    await tab.final.get_by_role("button", name="Copy").click()
    await expect(tab.final.get_by_role("button", name="Copied")).to_be_visible()
    assert await tab.page.evaluate("navigator.clipboard.readText()") == WORD
    # Wrapped: nothing wider than the phone.
    assert await tab.page.evaluate(OVERFLOW) <= 0
    assert not tab.problems()

""" "Show the wire" (static/wire.js): beside each answer, every SSE message as the
browser received it, from htmx's own SSE events; a reconnect shows as one."""

from __future__ import annotations

import re

import aiohttp
from playwright.async_api import expect

from providers.events import Answer, Reasoning
from tests.conftest import Pause, ScriptedProvider
from tests.e2e.tab import Tab
from tests.snippet import uid_from_snippet
from tests.sse_client import SSEEvent, parse_stream

SCRIPT = [Reasoning("Let me think."), Answer("The first "), Answer("**bold** answer."), Pause(0.05)]
# Every provider event its own SSE event: the page gets exactly what a client gets.
ONE_BY_ONE = {"answer_window": 0.0, "thought_interval": 0.0, "plain_stream": False}


async def events_sent(url: str, prompt: str) -> list[SSEEvent]:
    """The events the server sends for ``prompt``, read as a plain HTTP client."""
    async with aiohttp.ClientSession(url) as session:
        async with session.post("/process_prompt", data={"prompt": prompt}) as posted:
            uid = uid_from_snippet(await posted.text())
        async with session.get("/response-stream", params={"uid": uid}) as stream:
            return parse_stream(await stream.text())[0]


async def wire_rows(tab: Tab) -> list[tuple[str, str]]:
    """The panel's messages: (event, id), in order."""
    rows = await tab.turn.locator(".wire-row.wire-message").evaluate_all(
        "rows => rows.map(row => [row.dataset.event, row.querySelector('.wire-id').textContent])"
    )
    return [(name, event_id) for name, event_id in rows]


async def test_the_wire_panel_lists_every_event_the_server_sent_in_order(tab, serve_app):
    served = await serve_app(ScriptedProvider(SCRIPT), **ONE_BY_ONE)
    sent = await events_sent(served.url, "Same prompt")
    await tab.open(served.url)
    toggle = tab.page.get_by_label("Show the wire")
    await expect(toggle).not_to_be_checked()  # off by default
    await toggle.focus()
    await tab.page.keyboard.press("Space")  # from the keyboard
    await expect(toggle).to_be_checked()

    await tab.submit("Same prompt")
    await tab.turn_ended()
    panel = tab.turn.get_by_role("complementary", name=re.compile("The wire"))
    await expect(panel).to_be_visible()
    await expect(panel.locator(".wire-message").last).to_have_attribute("data-event", "close")

    assert await wire_rows(tab) == [(event.event, f"id {event.id}") for event in sent]
    # The data as the characters it is (never as markup), with its size in bytes.
    chunk = panel.locator(".wire-message[data-event=answer_chunk]").last
    last_chunk = [event for event in sent if event.event == "answer_chunk"][-1]
    await expect(chunk.locator(".wire-data")).to_have_text(last_chunk.data)
    await expect(chunk.locator(".wire-size")).to_have_text(f"{len(last_chunk.data.encode())} B")
    assert await panel.locator("strong").count() == 0
    assert not tab.problems()  # the Content-Security-Policy held, nothing failed


async def test_the_wire_panel_marks_a_reconnect_with_its_last_event_id(tab, serve_app):
    script = [Answer("Before the cut. "), Pause(1.0), Answer("After the cut.")]
    served = await serve_app(ScriptedProvider(script), **ONE_BY_ONE)
    await tab.open(served.url)
    await tab.page.get_by_label("Show the wire").check()
    await tab.submit("Cut me")
    await expect(tab.answer).to_contain_text("Before the cut.")
    before = await wire_rows(tab)

    served.cut_streams()
    await tab.wait_until_stream_closed()

    panel = tab.turn.locator(".wire")
    await expect(panel.locator(".wire-lost")).to_have_count(1)
    reconnect = panel.locator(".wire-reconnect")
    await expect(reconnect).to_have_text(
        re.compile(rf"Reconnected: the browser sent Last-Event-ID: {before[-1][1][3:]}$")
    )
    ids = [int(event_id[3:]) for _, event_id in await wire_rows(tab)]
    assert ids == list(range(1, len(ids) + 1))  # nothing lost, nothing twice
    assert (await wire_rows(tab))[-1][0] == "close"
    assert len(served.stream_requests()) == 2


async def test_the_wire_toggle_is_remembered_and_hides_the_panel(tab, serve_app):
    served = await serve_app(ScriptedProvider(SCRIPT), **ONE_BY_ONE)
    await tab.open(served.url)
    toggle = tab.page.get_by_label("Show the wire")
    await toggle.check()
    await tab.submit("Hello")
    await tab.turn_ended()
    await expect(tab.turn.locator(".wire")).to_be_visible()

    await toggle.uncheck()
    await expect(tab.turn.locator(".wire")).to_be_hidden()
    await toggle.check()
    await tab.page.reload()
    await expect(tab.page.get_by_label("Show the wire")).to_be_checked()
    assert not tab.problems()


async def test_a_long_stream_keeps_the_panel_capped_and_says_how_many_it_folded(tab, serve_app):
    words = [Answer(f"word{n} ") for n in range(300)]
    served = await serve_app(ScriptedProvider(words), **ONE_BY_ONE)
    sent = await events_sent(served.url, "Many words")
    await tab.open(served.url)
    await tab.page.get_by_label("Show the wire").check()
    await tab.submit("Many words")
    await tab.turn_ended()
    panel = tab.turn.locator(".wire")
    await expect(panel.locator(".wire-message").last).to_have_attribute("data-event", "close")

    shown = await wire_rows(tab)
    folded = await panel.locator(".wire-folded").text_content() or ""
    count = int(folded.split()[0].replace(",", ""))
    assert len(await panel.locator(".wire-row").all()) == 200  # the cap, notes included
    assert shown == [(event.event, f"id {event.id}") for event in sent][-len(shown) :]
    assert count + len(shown) == len(sent) + 1  # every message, and the "Connected" note
    assert not tab.problems()


async def test_a_server_error_event_shows_as_a_message_not_as_a_lost_connection(tab, serve_app):
    served = await serve_app("demo", **ONE_BY_ONE)
    await tab.open(served.url)
    await tab.page.get_by_label("Show the wire").check()
    await tab.submit("/error on purpose")
    await tab.turn_ended()
    panel = tab.turn.locator(".wire")
    await expect(panel.locator(".wire-message[data-event=error]")).to_have_count(1)
    await expect(panel.locator(".wire-lost")).to_have_count(0)
    await expect(panel.locator(".wire-message").last).to_have_attribute("data-event", "close")

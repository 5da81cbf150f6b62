"""Streams that do not end as planned: the model fails, the person asks again or
presses Stop, the connection drops.

In each case the page must stay readable and honest: what was shown stays
shown, an error is said in words, and no stream is left open or retried.
"""

import asyncio
import re

import pytest
from playwright.async_api import expect

from providers.events import Answer, Failure
from tests.conftest import Hang, Pause, ScriptedProvider
from tests.e2e.scripts import CHUNK_PAUSE_S, NO_RECONNECT_WATCH_S, ByPrompt, paced
from tests.e2e.tab import REFUSAL_STATUS_LINE, SSE_ERROR_EVENT_LINE

UPSTREAM_GONE = "The model server went away: connection reset by peer."
GRACE_S = 1.0


async def test_upstream_failure_keeps_the_partial_answer_and_says_what_went_wrong(tab, serve_app):
    partial = ["Part one, ", "part two"]
    script = [*paced(map(Answer, partial), Pause(CHUNK_PAUSE_S)), Failure(UPSTREAM_GONE)]
    served = await serve_app(ScriptedProvider(script))
    await tab.open(served.url)

    await tab.submit("Tell me something long.")
    await expect(tab.alert).to_have_text(UPSTREAM_GONE)
    await tab.wait_until_stream_closed()
    await asyncio.sleep(NO_RECONNECT_WATCH_S)

    # The part that arrived stays, rendered and labelled as the answer so far
    # (never as a final answer), with the error beside it.
    await expect(tab.final).to_have_count(1)
    await expect(tab.final.locator(".answer-label")).to_have_text("The answer so far:")
    await expect(tab.final.locator(".answer-rendered")).to_have_text("".join(partial))
    await expect(tab.alert).to_have_text(UPSTREAM_GONE)
    await expect(tab.response.get_by_role("status")).to_have_text("Stopped by an error.")
    assert len(served.stream_requests()) == 1  # closed for good: no reconnect
    assert len(tab.stream_requests()) == 1
    # The one console line an `event: error` always causes: it reaches the
    # EventSource's `onerror` too, where htmx-ext-sse logs the event object.
    assert not tab.problems(SSE_ERROR_EVENT_LINE)


async def test_a_failure_before_any_text_shows_the_error_and_no_empty_answer_box(tab, serve_app):
    served = await serve_app(ScriptedProvider([Failure(UPSTREAM_GONE)]))
    await tab.open(served.url)
    await tab.submit("Anything.")

    await expect(tab.alert).to_have_text(UPSTREAM_GONE)
    await tab.wait_until_stream_closed()
    await expect(tab.response.locator(".final-container")).to_be_hidden()
    assert not tab.problems(SSE_ERROR_EVENT_LINE)


@pytest.mark.parametrize("when", ["before-its-first-word", "while-the-first-answer-streams"])
async def test_asking_again_while_an_answer_streams_is_refused_and_both_turns_stay(
    tab, serve_app, when
):
    """One answer at a time in a conversation: a prompt sent while one streams is
    refused beside the box with its text kept, the first answer is not cut, and
    once it ended the same prompt makes a second turn below the first."""
    first = ScriptedProvider([Pause(0.5), Answer("First answer, "), Pause(1.0), Answer("in full.")])
    second = ScriptedProvider([Answer("Second answer.")])
    served = await serve_app(ByPrompt({"first": first, "second": second}))
    await tab.open(served.url)

    await tab.submit("first")
    await expect(tab.turns).to_have_count(1)  # taken: the conversation exists
    if when == "while-the-first-answer-streams":
        await expect(tab.answer).to_have_text("First answer, ")
    await tab.submit("second")

    await expect(tab.refusal).to_have_text(
        "An answer is still being written in this conversation. Wait for it, or stop it (Esc)."
    )
    await expect(tab.prompt_box).to_have_value("second")  # kept, to send later
    # The first answer goes on to its end, untouched.
    await expect(tab.final.locator(".answer-text")).to_have_text("First answer, in full.")
    await tab.turn_ended()
    await expect(tab.turns).to_have_count(1)
    assert second.started == 0

    await tab.send_button.click()  # the kept prompt, now that the first answer ended
    await expect(tab.turns).to_have_count(2)
    await expect(tab.final.locator(".answer-text")).to_have_text("Second answer.")
    await expect(tab.refusal).to_have_count(0)
    # Both turns stay, in order, each with its own answer.
    await expect(tab.turns.locator(".prompt-text")).to_have_text(["first", "second"])
    await expect(tab.turns.locator(".final-container.done .answer-text")).to_have_text(
        ["First answer, in full.", "Second answer."]
    )
    # Each stream was asked for once, and neither was cut or reopened.
    assert (first.started, second.started) == (1, 1)
    assert len(served.stream_requests()) == 2
    closes = [e["type"] for e in await tab.sse_events() if e["name"] == "htmx:sseClose"]
    assert closes == ["message", "message"]
    assert not tab.problems(REFUSAL_STATUS_LINE)


async def test_stop_ends_the_generation_and_keeps_the_answer_so_far(tab, serve_app):
    provider = ScriptedProvider([Answer("The first part. "), Hang()])  # would never end
    served = await serve_app(provider)
    await tab.open(served.url)
    await tab.submit("Tell me everything.")
    await expect(tab.answer).to_have_text("The first part. ")

    await tab.response.get_by_role("button", name="Stop").click()

    # What arrived becomes the final answer, with a note that says why it ends there.
    await expect(tab.final.locator(".answer-text")).to_have_text("The first part. ")
    await expect(tab.final.locator(".note")).to_have_text("You stopped the answer here.")
    await asyncio.wait_for(provider.closed.wait(), timeout=2.0)  # the model was let go
    await tab.wait_until_stream_closed()
    await expect(tab.response.get_by_role("status")).to_have_text("Stopped.")
    await expect(tab.response.get_by_role("button", name="Stop")).to_have_count(0)
    assert not tab.problems()


# --- a dropped connection ------------------------------------------------------------

# What the console shows when a stream's connection drops (measured here):
# Chromium says the response ended inside its chunked body, and htmx-ext-sse
# logs the EventSource's own error event.
DROPPED_CONNECTION_LINES = (
    re.compile(r"^Failed to load resource: net::ERR_INCOMPLETE_CHUNKED_ENCODING$"),
    re.compile(r"^\[object Event\]$"),
)
BEFORE, AFTER = "Before the drop. ", "After the drop."


async def drop_the_connection_mid_answer(tab, serve_app) -> None:
    """Stream the first part, cut the TCP connection from the server's side, let
    the browser come back, and wait until the stream ends with `close`."""
    # The pause keeps the second part from arriving before the cut.
    script = [Answer(BEFORE), Pause(1.0), Answer(AFTER)]
    served = await serve_app(ScriptedProvider(script))
    await tab.open(served.url)
    await tab.submit("Tell me a story.")
    await expect(tab.answer).to_have_text(BEFORE)

    served.cut_streams()
    await tab.wait_until_stream_closed()
    # The drop really reached the page: the EventSource reported it.
    assert "htmx:sseError" in [e["name"] for e in await tab.sse_events()]
    assert len(served.stream_requests()) == 2  # one reconnect, then done


async def test_a_dropped_connection_resumes_without_undefined_or_errors(tab, serve_app):
    await drop_the_connection_mid_answer(tab, serve_app)

    # The browser came back with Last-Event-ID and the stream went on from
    # there: the answer is whole, and no part was shown twice on the way.
    await expect(tab.final.locator(".answer-text")).to_have_text(BEFORE + AFTER)
    whole = " ".join((BEFORE + AFTER).split())
    assert all(whole.startswith(step) for step in await tab.answer_steps())
    # The EventSource's own `error` event (no data) never reached the error
    # line: static/app.js stops it before htmx swaps it.
    for state in await tab.timeline():
        assert "undefined" not in str(state.values()), state
    await expect(tab.page.locator("body")).not_to_contain_text("undefined")
    await expect(tab.alert).to_be_hidden()
    assert "htmx:swapError" not in [e["name"] for e in await tab.sse_events()]
    assert tab.page_errors == []
    assert not tab.problems(*DROPPED_CONNECTION_LINES)


# Switches off static/app.js's guard, and nothing else of it: a listener that
# runs first (window, capture phase) keeps htmx:sseBeforeMessage from ever
# reaching the guard's listener on the document.
SILENCE_THE_GUARD = """
window.addEventListener("htmx:sseBeforeMessage", (event) => event.stopPropagation(), true);
"""


async def test_without_the_app_js_guard_a_drop_breaks_the_page(tab, serve_app):
    """The control for the test above: it shows why static/app.js's guard exists.

    Without it, the browser's own `error` event on a drop reaches the
    `sse-swap="error"` listener with no data. htmx 2.0.11 then fails inside
    its swap: with hx-swap="innerHTML" no text "undefined" is swapped in, the
    page gets this error instead. If this test starts failing, htmx-ext-sse
    handles the case itself and the guard can go.
    """
    await tab.page.add_init_script(script=SILENCE_THE_GUARD)
    await drop_the_connection_mid_answer(tab, serve_app)

    assert "htmx:swapError" in [e["name"] for e in await tab.sse_events()]
    assert any("Cannot read properties of undefined" in error for error in tab.page_errors)

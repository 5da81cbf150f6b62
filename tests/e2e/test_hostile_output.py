"""Model output is text, never markup: in the thought line, the answer and the error line.

A model can be made to write anything, including HTML that runs script or
that htmx would obey (hx-swap-oob moves an element anywhere on the page).
The page must show such output as the characters it is, and nothing outside
the answer may change.
"""

import re

import pytest
from playwright.async_api import expect

from providers.events import Answer, Failure, Reasoning, Status
from tests.conftest import Pause, ScriptedProvider
from tests.e2e.scripts import CHUNK_PAUSE_S, THOUGHT_PAUSE_S
from tests.e2e.tab import SSE_ERROR_EVENT_LINE

HOSTILE = (
    "<img src=x onerror=alert(1)>"
    "<script>alert(2)</script>"
    # Out-of-band swaps: the first would replace the whole response area, the
    # others the thought line and the page's heading (htmx finds them by selector).
    '<div id="response-container" hx-swap-oob="true">HIJACK</div>'
    '<div hx-swap-oob="innerHTML:.thoughts">HIJACK</div>'
    '<p hx-swap-oob="innerHTML:h1">HIJACK</p>'
    # And Markdown, for the final answer: a link that would run script.
    "[click me](javascript:alert(3))"
)

# The page outside the response area, as HTML: the heading, the notice, the
# form. But for the form's hidden conversation id and the export link: the first
# prompt sets them on purpose (checked on their own below).
OUTSIDE_THE_RESPONSE = """() => {
  const body = document.body.cloneNode(true);
  body.querySelector("#response-container").replaceChildren();
  body.querySelector("#conversation").remove();
  body.querySelector("#export").remove();
  return body.innerHTML;
}"""
CONVERSATION_ID = re.compile(r"^c[0-9a-f]{32}$")


@pytest.mark.parametrize("ending", ["final-answer", "error"])
async def test_hostile_model_output_shows_as_text_and_changes_nothing_else(tab, serve_app, ending):
    script = [
        Status(HOSTILE),
        Pause(THOUGHT_PAUSE_S),
        Reasoning(HOSTILE),
        Pause(THOUGHT_PAUSE_S),
        Answer(HOSTILE),
        Pause(CHUNK_PAUSE_S),
    ]
    if ending == "error":
        script.append(Failure(HOSTILE))
    served = await serve_app(ScriptedProvider(script))
    await tab.open(served.url)
    outside_before = await tab.page.evaluate(OUTSIDE_THE_RESPONSE)

    await tab.submit("Say something nasty.")
    # Any end will do: obeyed markup could replace the stream's element, and
    # the assertions below should then say what changed, not time out.
    await tab.wait_until_stream_closed(for_any_reason=True)

    # Shown as the exact characters, wherever model text goes.
    thoughts = await tab.seen("thought")
    assert HOSTILE in thoughts
    assert HOSTILE in await tab.seen("answer")
    if ending == "error":
        await expect(tab.alert).to_have_text(HOSTILE)
    else:
        # Rendered as Markdown, it is still one paragraph of plain text.
        await expect(tab.final.locator(".answer-rendered")).to_have_text(HOSTILE)
        await expect(tab.final.locator(".answer-text")).to_have_text(HOSTILE)
        await expect(tab.final.locator(".reasoning-text")).to_have_text(HOSTILE)
    # No script ran, and none of it became an element.
    assert tab.dialogs == []
    await expect(tab.response.locator("img, script, a, [hx-swap-oob]")).to_have_count(0)
    # The thought line only ever showed what the server put there.
    assert all(thought == HOSTILE or "HIJACK" not in thought for thought in thoughts), thoughts
    # Outside the response area, not one character changed.
    await expect(tab.page.locator("h1")).to_have_text("Generative AI streaming with HTMX")
    assert await tab.page.evaluate(OUTSIDE_THE_RESPONSE) == outside_before
    # The one change outside: the conversation's id, where the server put it.
    await expect(tab.page.locator("input#conversation")).to_have_count(1)
    cid = await tab.page.locator("#conversation").input_value()
    assert CONVERSATION_ID.match(cid), cid
    assert tab.page.url == f"{served.url}c/{cid}"
    await expect(tab.page.locator("#export")).to_have_attribute("href", f"/c/{cid}/export")
    await expect(tab.turns).to_have_count(1)
    await expect(tab.response.locator(".stream")).to_have_count(1)
    assert not tab.problems(SSE_ERROR_EVENT_LINE)

"""In Chromium: the answer's Markdown is rendered while it streams (bold is bold,
code is monospaced and highlighted before the answer ends), and the final answer
changes nothing that was shown, resumed after a dropped connection or not."""

from playwright.async_api import expect

from providers.events import Answer
from tests.conftest import Pause, ScriptedProvider
from tests.e2e.scripts import CHUNK_PAUSE_S, paced

BEFORE_CODE_ENDS = [
    "## Sorting words\n\n", "Use **sorted", "()** with a", " `key`, the", " shortest first:\n\n",
    "```python\n", 'words = ["pear", "fig", "banana"]\n', "print(sorted(words, key=len))\n",
    "# ['fig', 'pear', 'banana']\n", "```\n\n",
]  # fmt: skip
AFTER_CODE_ENDS = [
    "- `key=len`", " compares lengths\n", "- `reverse=True` flips it\n\n", "| word | length |\n",
    "|---|--:|\n", "| fig | 3 |\n", "| pear | 4 |\n\n",
    "More in [the Python docs](https://docs.python.org/3/howto/sorting.html).",
]  # fmt: skip
#: Long enough to look at the page while the answer is unfinished.
MID_ANSWER_PAUSE_S = 1.5


def markdown_answer() -> ScriptedProvider:
    pause = Pause(CHUNK_PAUSE_S)
    script = paced(map(Answer, BEFORE_CODE_ENDS), pause)
    script += [Pause(MID_ANSWER_PAUSE_S), *paced(map(Answer, AFTER_CODE_ENDS), pause)]
    return ScriptedProvider(script)


#: Keeps what the answer looked like just before the final answer replaced it.
KEEP_LAST_STREAMED_STATE = """
document.body.addEventListener("htmx:sseBeforeMessage", (event) => {
  const live = document.querySelector(".answer-live");
  if (event.detail.type === "final_answer" && live) {
    window.lastStreamed = { html: live.innerHTML, text: live.innerText };
  }
});
"""


async def test_markdown_is_rendered_while_it_streams_and_the_end_changes_no_text(
    tab, serve_app, artifacts
):
    served = await serve_app(markdown_answer())
    await tab.open(served.url)
    await tab.page.evaluate(KEEP_LAST_STREAMED_STATE)
    await tab.submit("How do I sort words by length?")

    live = tab.turn.locator(".answer-live")
    await expect(live.locator("strong")).to_have_text("sorted()")  # bold, mid-answer
    await expect(live.locator("h2")).to_have_text("Sorting words")
    keyword = live.locator(".code-block code span.nb", has_text="print")
    await expect(keyword).to_be_visible()  # highlighted before the answer ends
    assert await tab.final.count() == 0
    code_font = await live.locator(".code-block pre").evaluate(
        "pre => getComputedStyle(pre).fontFamily"
    )
    assert "monospace" in code_font
    colour = await keyword.evaluate("span => getComputedStyle(span).color")
    text_colour = await live.locator("p").first.evaluate("p => getComputedStyle(p).color")
    assert colour != text_colour  # the highlight stylesheet applies
    await tab.screenshot(artifacts, "live-markdown-mid-answer")

    await tab.turn_ended()
    streamed = await tab.page.evaluate("window.lastStreamed")
    rendered = tab.final.locator(".answer-rendered")
    assert await rendered.inner_text() == streamed["text"]  # the final swap changed no text
    assert await rendered.inner_html() == streamed["html"]  # nor any element
    await expect(rendered.locator("table td.align-right")).to_have_text(["3", "4"])
    link = rendered.get_by_role("link", name="the Python docs")
    assert await link.get_attribute("target") == "_blank"
    assert not tab.problems()  # the Content-Security-Policy held: no inline style or script


async def test_a_resumed_stream_ends_with_the_same_page_as_an_uninterrupted_one(tab, serve_app):
    finals = []
    for cut in (False, True):
        served = await serve_app(markdown_answer())
        await tab.open(served.url)
        await tab.page.evaluate(KEEP_LAST_STREAMED_STATE)
        await tab.submit("How do I sort words by length?")
        await expect(tab.turn.locator(".answer-live .code-block")).to_be_visible()
        if cut:
            served.cut_streams()  # the connection drops in the middle of the answer
        await tab.turn_ended()
        if cut:
            assert len(served.stream_requests()) == 2  # it came back once
        finals.append(await tab.page.evaluate("window.lastStreamed"))
    assert finals[0] == finals[1]

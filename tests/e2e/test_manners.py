"""What people expect of an answer box beyond the stream itself: the keyboard,
a status line for screen readers, Stop that goes away, code you can copy, a page
that follows the answer, and a layout that fits a phone and a dark theme."""

import asyncio

from playwright.async_api import expect

from providers.events import Answer
from tests.conftest import Hang, Pause, ScriptedProvider
from tests.e2e.scripts import CHUNK_PAUSE_S, ByPrompt, paced

CODE = 'print("hello")'


async def test_ctrl_enter_submits_and_the_status_line_speaks_twice(tab, serve_app):
    provider = ScriptedProvider(paced([Answer("One, "), Answer("two.")], Pause(CHUNK_PAUSE_S)))
    served = await serve_app(provider)
    await tab.open(served.url)
    await tab.page.get_by_label("Prompt", exact=True).fill("Count to two.")

    await tab.page.get_by_label("Prompt", exact=True).press("Control+Enter")
    status = tab.response.get_by_role("status")
    await expect(status).to_have_text("Generating…")
    await expect(tab.response.locator("[aria-busy=true]")).to_have_count(1)
    await expect(tab.response.get_by_role("button", name="Stop")).to_be_visible()

    await expect(tab.final).to_have_count(1)
    await expect(status).to_have_text("Done.")
    await expect(tab.response.locator("[aria-busy=true]")).to_have_count(0)
    await expect(tab.response.get_by_role("button", name="Stop")).to_have_count(0)
    # One live region only: the streaming text itself must not be announced per token.
    assert await tab.response.locator("[aria-live]").count() == 1
    assert not tab.problems()


async def test_stop_keeps_the_partial_answer_as_the_final_one(tab, serve_app):
    served = await serve_app(ScriptedProvider([Answer("Half of it"), Hang()]))
    await tab.open(served.url)
    await tab.submit("Go on forever.")
    await expect(tab.answer).to_have_text("Half of it")

    await tab.response.get_by_role("button", name="Stop").click()
    await expect(tab.final).to_contain_text("You stopped the answer here.")
    await expect(tab.final.locator(".answer-rendered")).to_have_text("Half of it")
    await expect(tab.response.get_by_role("status")).to_have_text("Stopped.")


async def test_code_block_copy_button_copies_the_code(tab, serve_app):
    answer = f"Run this:\n\n```python\n{CODE}\n```\n"
    served = await serve_app(ScriptedProvider([Answer(answer)]))
    await tab.open(served.url)
    await tab.submit("Show me code.")

    code_block = tab.final.locator(".code-block")
    await expect(code_block.locator("code")).to_have_text(CODE + "\n")
    await code_block.get_by_role("button", name="Copy").click()
    await expect(code_block.get_by_role("button")).to_have_text("Copied")
    copied = await tab.page.evaluate("navigator.clipboard.readText()")
    assert copied == CODE + "\n"


async def scroll_gap(tab) -> float:
    """How far the page's bottom is below the window's bottom, in CSS pixels."""
    return await tab.page.evaluate(
        "document.documentElement.scrollHeight - window.innerHeight - window.scrollY"
    )


FOLLOWED_PX = 80  # the page follows when the window is this close to the bottom


async def assert_followed(tab, within: float = 2.0) -> None:
    """The window reaches the bottom: the page follows once per frame, so allow a
    busy machine a few frames."""
    deadline = asyncio.get_running_loop().time() + within
    while (gap := await scroll_gap(tab)) >= FOLLOWED_PX:
        assert asyncio.get_running_loop().time() < deadline, f"{gap} px below the window"
        await asyncio.sleep(0.05)


def long_answer(lines: int, word: str = "Line") -> list:
    """One line per event, faster than a frame (a scroll event arrives a frame
    late: a page that trusted it would pull the person back down in between)."""
    return paced([Answer(f"{word} {n} of a long answer.\n") for n in range(lines)], Pause(0.005))


# Scroll to the top and say which line the answer has reached, in one step:
# the answer must not be able to grow in between.
SCROLL_UP_AND_COUNT = """(answer) => {
  window.scrollTo(0, 0);
  return answer.textContent.match(/Line \\d+ /g).length;
}"""


async def test_page_follows_the_answer_unless_the_person_scrolled_up(tab, serve_app):
    provider = ScriptedProvider([*long_answer(200), Hang()])
    served = await serve_app(provider, answer_window=0)
    await tab.page.set_viewport_size({"width": 800, "height": 500})
    await tab.open(served.url)
    await tab.submit("A long one, please.")

    await expect(tab.answer).to_contain_text("Line 20 ")
    await assert_followed(tab)  # followed to the bottom

    shown = await tab.answer.evaluate(SCROLL_UP_AND_COUNT)  # the person scrolls up to read
    assert shown + 20 < 200, "the answer ended before the test could scroll"
    await expect(tab.answer).to_contain_text(f"Line {shown + 20} ")
    assert await tab.page.evaluate("window.scrollY") == 0  # left where the person is


async def test_a_new_prompt_is_followed_even_after_scrolling_up(tab, serve_app):
    """On a short window (a phone on its side) the form and a new stream are
    taller than the window: the new answer is followed all the same."""
    first = ScriptedProvider(long_answer(60))
    second = ScriptedProvider([*long_answer(60, word="Again"), Hang()])
    served = await serve_app(ByPrompt({"first": first, "second": second}), answer_window=0)
    await tab.page.set_viewport_size({"width": 740, "height": 360})
    await tab.open(served.url)
    await tab.submit("first")
    await expect(tab.final).to_contain_text("Line 59 ")
    await tab.turn_ended()  # one answer at a time: the next prompt waits for this one

    await tab.page.evaluate("window.scrollTo(0, 0)")  # back up, to read the first answer
    await tab.submit("second")
    await expect(tab.turns).to_have_count(2)
    await expect(tab.answer).to_contain_text("Again 40 ")
    await assert_followed(tab)


async def test_layout_fits_a_phone_and_follows_a_dark_theme(tab, serve_app):
    served = await serve_app("demo")
    await tab.page.set_viewport_size({"width": 360, "height": 740})
    await tab.page.emulate_media(color_scheme="dark")
    await tab.open(served.url)
    await tab.submit("A phone in the dark.")
    await expect(tab.final).to_have_count(1)

    overflow = await tab.page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0  # nothing wider than the phone
    background = await tab.page.evaluate("getComputedStyle(document.body).backgroundColor")
    red, green, blue = (int(part) for part in background[4:-1].split(","))
    assert max(red, green, blue) < 64  # dark
    await asyncio.sleep(0)
    assert not tab.problems()


async def test_without_htmx_the_page_says_why_instead_of_reloading(tab, serve_app):
    """The CDN out of reach and no `npm ci`: the form must not silently reload."""
    served = await serve_app("demo")
    await tab.page.route("**/vendor/*.js", lambda route: route.abort())
    await tab.open(served.url)

    await expect(tab.page.get_by_role("alert")).to_contain_text("htmx did not load")
    await tab.page.get_by_label("Prompt", exact=True).fill("Anything")
    await tab.page.get_by_role("button", name="Send", exact=True).click()
    await asyncio.sleep(0.3)
    assert tab.page.url == served.url  # no plain GET reload with the prompt in the URL

"""A prompt the server refuses gets a readable message in the page, and the form keeps working.

htmx 2 does not swap 4xx responses in by default; the page's htmx-config meta
tag lists the refusal statuses (413, 422 and others) it must swap in.
"""

from playwright.async_api import expect

from providers.events import Answer
from tests.conftest import ScriptedProvider
from tests.e2e.tab import REFUSAL_STATUS_LINE

LIMIT = 20


async def test_empty_and_too_long_prompts_are_refused_readably_then_a_good_one_streams(
    tab, serve_app
):
    served = await serve_app(ScriptedProvider([Answer("Here you are.")]), max_prompt_chars=LIMIT)
    await tab.open(served.url)
    prompt_box = tab.page.get_by_label("Prompt", exact=True)

    await tab.submit("   ")
    await expect(tab.alert).to_have_text("Please type a prompt first.")

    too_long = "x" * (LIMIT + 5)
    await tab.submit(too_long)
    await expect(tab.alert).to_have_text(
        f"The prompt is {LIMIT + 5} characters long; the limit is {LIMIT}."
    )
    await expect(prompt_box).to_have_value(too_long)  # kept, to shorten rather than retype

    await tab.submit("Hello")
    await expect(tab.final.locator(".answer-text")).to_have_text("Here you are.")
    await expect(tab.alert).to_be_hidden()  # the refusal made way for the answer
    assert len(served.stream_requests()) == 1  # refused prompts opened no stream
    # Chromium logs each 4xx status itself, though the page shows our message.
    assert not tab.problems(REFUSAL_STATUS_LINE)

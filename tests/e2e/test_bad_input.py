"""A prompt the server refuses gets a readable message next to the prompt box,
the typed text stays, the thread is untouched, and the form keeps working.

htmx 2 does not swap 4xx responses in by default; the page's htmx-config meta
tag lists the refusal statuses (413, 422 and others) it must swap in, and the
server retargets them to ``#prompt-error`` (HX-Retarget).
"""

from playwright.async_api import expect

from providers.events import Answer
from tests.conftest import ScriptedProvider
from tests.e2e.tab import REFUSAL_STATUS_LINE

# Longer than the default system prompt, which the page sends with every
# prompt and which the server holds to the same limit.
LIMIT = 80

# What a person cannot do, since the box has maxlength: the page's own script
# takes the limit off, as an old browser or a hand-made request would.
LIFT_MAXLENGTH = "box => box.removeAttribute('maxlength')"


async def test_empty_and_too_long_prompts_are_refused_readably_then_a_good_one_streams(
    tab, serve_app
):
    served = await serve_app(ScriptedProvider([Answer("Here you are.")]), max_prompt_chars=LIMIT)
    await tab.open(served.url)

    await tab.submit("   ")
    await expect(tab.refusal).to_have_text("Please type a prompt first.")
    await expect(tab.prompt_box).to_have_value("   ")

    # The box takes no more than the limit, and its counter says it is full.
    too_long = "x" * (LIMIT + 5)
    await tab.prompt_box.fill(too_long)
    await expect(tab.prompt_box).to_have_value(too_long[:LIMIT])
    await expect(tab.page.locator(".count")).to_have_text(f"{LIMIT} / {LIMIT}")

    # Past the limit all the same, the server refuses it in words.
    await tab.prompt_box.evaluate(LIFT_MAXLENGTH)
    await tab.submit(too_long)
    await expect(tab.refusal).to_have_text(
        f"The prompt is {LIMIT + 5} characters long; the limit is {LIMIT}."
    )
    await expect(tab.prompt_box).to_have_value(too_long)  # kept, to shorten rather than retype
    await expect(tab.turns).to_have_count(0)  # a refusal never makes a turn

    await tab.submit("Hello")
    await expect(tab.final.locator(".answer-text")).to_have_text("Here you are.")
    await expect(tab.refusal).to_have_count(0)  # the refusal made way for the answer
    await expect(tab.turns).to_have_count(1)
    assert len(served.stream_requests()) == 1  # refused prompts opened no stream
    # Chromium logs each 4xx status itself, though the page shows our message.
    assert not tab.problems(REFUSAL_STATUS_LINE)

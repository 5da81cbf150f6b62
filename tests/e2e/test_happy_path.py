"""A prompt, as a person sees it answered: thoughts, an answer that grows, the final answer.

Each test types into the real page in Chromium and reads what the page shows.
The model is played by a ScriptedProvider, or by the fake OpenAI-compatible
server behind the real provider, with pauses, so that every step is visible
on its own; observe.js writes down each state of the page.
"""

import asyncio
import re

import pytest
from playwright.async_api import expect

import tests.fake_upstream as upstream
from providers.events import Answer, Reasoning, Status
from providers.openai import OpenAISettings
from tests.conftest import Pause, ScriptedProvider
from tests.e2e.scripts import CHUNK_PAUSE_S, NO_RECONNECT_WATCH_S, THOUGHT_PAUSE_S, paced

# Everything that is easy to lose between a model and a browser: spaces at
# both ends, a blank line, non-ASCII text and emoji (two UTF-16 units each).
PIECES = [
    "  Two spaces lead",
    " the answer,",
    "\n\nthen a blank line, ",
    "Grüße, 世界 ",
    "🎉🤖",
    " and two spaces trail  ",
]
ANSWER = "".join(PIECES)


async def test_thoughts_then_a_growing_answer_then_the_final_answer_exactly(
    tab, serve_app, artifacts
):
    script = [
        Status("Reading the prompt…"),
        Pause(THOUGHT_PAUSE_S),
        Reasoning("Counting the spaces."),
        Pause(THOUGHT_PAUSE_S),
        *paced(map(Answer, PIECES), Pause(CHUNK_PAUSE_S)),
    ]
    # The plain stream: every character as the model wrote it (Markdown rendered
    # while it streams has its own tests, in test_live_markdown.py).
    served = await serve_app(ScriptedProvider(script), plain_stream=True)
    await tab.open(served.url)

    await tab.submit("Write something with spaces at both ends.")
    uid = await tab.uid()
    final = tab.page.locator(f"#{uid}-final-container")
    await expect(final).to_have_class(re.compile(r"\bdone\b"))
    await tab.wait_until_stream_closed()
    await tab.screenshot(artifacts, "happy-path")

    # The thought line appeared, then changed.
    thoughts = await tab.seen("thought")
    assert "Reading the prompt…" in thoughts
    assert thoughts.index("Reading the prompt…") < thoughts.index("Counting the spaces.")

    # The answer grew in steps, and every step was the start of the answer:
    # nothing garbled, reordered or shown twice on the way.
    steps = [text for text in await tab.seen("answer") if text]
    assert len(steps) >= 4, steps
    assert all(ANSWER.startswith(step) for step in steps), steps
    # On screen, too, every space and line break was there while it streamed:
    # the stream div has `white-space: pre-wrap`, without which they collapse.
    streamed = [(s["answer"], s["answerShown"]) for s in await tab.timeline() if s["answer"]]
    streamed = [(text, shown) for text, shown in streamed if shown is not None]
    assert len(streamed) >= 4, streamed
    assert all(text == shown for text, shown in streamed), streamed

    # The final answer replaced the streaming box: one container, no stream div.
    await expect(tab.response.locator(".final-container")).to_have_count(1)
    await expect(tab.page.locator(f"#{uid}-answer-stream")).to_have_count(0)
    await expect(final).not_to_have_attribute("aria-busy", "true")
    # It is shown as Markdown (the blank line makes two paragraphs) and keeps
    # the exact text, to the character, for its Copy button.
    await expect(final.locator(".answer-rendered p")).to_have_text(
        ["Two spaces lead the answer,", "then a blank line, Grüße, 世界 🎉🤖 and two spaces trail"]
    )
    assert await final.locator(".answer-text").text_content() == ANSWER
    await final.get_by_role("button", name="Copy", exact=True).click()
    assert await tab.page.evaluate("navigator.clipboard.readText()") == ANSWER
    # The stream says it is over: the status line, and no Stop button any more.
    await expect(tab.response.get_by_role("status")).to_have_text("Done.")
    await expect(tab.response.get_by_role("button", name="Stop")).to_have_count(0)
    await expect(tab.alert).to_be_hidden()
    assert not tab.problems()


async def test_a_finished_stream_is_closed_and_never_reopened(tab, serve_app):
    served = await serve_app(ScriptedProvider([Answer("Short and complete.")]))
    await tab.open(served.url)

    await tab.submit("Hello")
    await tab.wait_until_stream_closed()  # htmx closed it on the server's `close`
    await asyncio.sleep(NO_RECONNECT_WATCH_S)

    await expect(tab.final.locator(".answer-text")).to_have_text("Short and complete.")
    assert len(tab.stream_requests()) == 1  # what the browser asked for
    assert len(served.stream_requests()) == 1  # what reached the server
    assert [e["name"] for e in await tab.sse_events()].count("htmx:sseOpen") == 1
    assert not tab.problems()


# Reasoning comes from a real provider here: providers/openai.py reads it from
# the fake OpenAI-compatible model server (tests/fake_upstream.py), in the two
# shapes model servers send it in.
REASONING = ["The person wants a haiku. ", "Five, seven, five syllables."]
HAIKU = ["An old silent pond\n", "a frog jumps into the pond\n", "splash! Silence again."]


def model_server_reply(shape: str) -> list[bytes | upstream.Pause]:
    """The fake model server's stream: reasoning, then the haiku, paced."""
    if shape == "reasoning_content":  # a field of its own (DeepSeek, llama.cpp, vLLM…)
        thinking = [upstream.chunk(reasoning_content=text) for text in REASONING]
    else:  # inline in the answer's text, between tags (servers that do not parse it)
        first, second = REASONING
        thinking = [
            upstream.chunk(content="<think>" + first),
            upstream.chunk(content=second + "</think>\n\n"),
        ]
    return [
        upstream.chunk(role="assistant", content=""),
        *paced(thinking, upstream.Pause(THOUGHT_PAUSE_S)),
        *paced([upstream.chunk(content=text) for text in HAIKU], upstream.Pause(CHUNK_PAUSE_S)),
        upstream.chunk(finish_reason="stop"),
        upstream.DONE,
    ]


@pytest.mark.parametrize("shape", ["reasoning_content", "think-tags"])
async def test_reasoning_shows_as_thoughts_and_stays_out_of_the_answer(
    tab, serve_app, fake_model, shape
):
    fake_model.reply(model_server_reply(shape))
    settings = OpenAISettings(base_url=fake_model.base_url, model="fake-model")
    served = await serve_app("openai", openai=settings)
    await tab.open(served.url)

    await tab.submit("A haiku, please.")
    await expect(tab.final).to_be_visible()

    # The thought line showed the reasoning as it grew.
    thoughts = await tab.seen("thought")
    assert any(REASONING[0].strip() in thought for thought in thoughts), thoughts
    assert any(REASONING[1] in thought for thought in thoughts), thoughts
    # The answer never contained any of it, while streaming or at the end.
    for step in await tab.seen("answer"):
        assert not any(piece.strip() in step for piece in REASONING), step
        assert "think>" not in step
    await expect(tab.final.locator(".answer-text")).to_have_text("".join(HAIKU))
    # The final answer keeps the reasoning folded away under its own summary.
    reasoning = tab.final.locator("details.reasoning")
    await expect(reasoning.locator("summary")).to_have_text(re.compile(r"^Thought for "))
    await expect(reasoning.locator(".reasoning-text")).to_be_hidden()
    await expect(reasoning.locator(".reasoning-text")).to_have_text("".join(REASONING))
    assert not tab.problems()


async def test_the_demo_provider_answers_with_a_quiet_console(tab, serve_app):
    """The app as shipped, with no model: nothing in the console, no page error.

    Every test above ends with the same check; this one runs the real demo
    provider (its pace shortened) rather than a script.
    """
    served = await serve_app("demo", demo_delay=0.002)
    await tab.open(served.url)

    await tab.submit("A short story about a robot who discovers music.")
    await expect(tab.final).to_be_visible(timeout=10_000)
    await tab.wait_until_stream_closed()

    await expect(tab.final.locator(".answer-rendered")).to_contain_text("demo provider")
    assert [message.text for message in tab.console] == []  # not even a warning or log line
    assert not tab.problems()

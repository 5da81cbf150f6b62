"""The page as a conversation: turns that follow each other, a thread that
survives a reload or Back, refusals that leave it alone, the model picker,
the export, and the last turn's Regenerate, Retry, Edit and Escape.

Every test drives the real app on loopback in Chromium, as a person would:
the keyboard, the buttons and links, the browser's own reload and Back.
"""

from __future__ import annotations

import asyncio
import json
import re

from playwright.async_api import expect

import tests.fake_upstream as upstream
from providers.events import Answer, Failure
from providers.openai import OpenAISettings
from tests.conftest import Hang, Pause, ScriptedProvider
from tests.e2e.scripts import ByPrompt, InOrder, paced
from tests.e2e.tab import REFUSAL_STATUS_LINE, SSE_ERROR_EVENT_LINE, Tab

CONVERSATION_URL = re.compile(r"/c/c[0-9a-f]{32}$")
NOT_FOUND_LINE = re.compile(
    r"^Failed to load resource: the server responded with a status of 404\b"
)


async def final_answers(tab: Tab) -> list[str]:
    """Each turn's final answer, exactly as the model wrote it."""
    return await tab.turns.locator(".final-container.done .answer-source").all_text_contents()


async def conversation_id(tab: Tab) -> str:
    """The conversation the form continues, and the page's URL is about."""
    cid = await tab.page.locator("#conversation").input_value()
    assert tab.page.url.endswith(f"/c/{cid}"), (tab.page.url, cid)
    return cid


def earlier(provider: ScriptedProvider) -> list[tuple[str, str]]:
    """The earlier turns the provider's one request carried, as (role, text)."""
    [request] = provider.requests
    return [(message.role, message.content) for message in request.earlier]


# --- a conversation, by keyboard --------------------------------------------------------

PROMPTS = [["What is htmx?"], ["Two lines:", "the second came with Shift+Enter."], ["Thank you!"]]
ANSWERS = ["A library for HTML over the wire.", "Both lines arrived.", "You are welcome."]


async def test_a_three_turn_conversation_typed_with_the_keyboard(tab, serve_app):
    prompts = ["\n".join(lines) for lines in PROMPTS]
    scripts = {p: ScriptedProvider([Answer(a)]) for p, a in zip(prompts, ANSWERS, strict=True)}
    served = await serve_app(ByPrompt(scripts))
    await tab.open(served.url)

    for number, lines in enumerate(PROMPTS, start=1):
        await tab.send_with_enter(*lines)  # Shift+Enter between the lines, Enter sends
        await expect(tab.turns).to_have_count(number)
        await tab.turn_ended()
        # Ready for the next one: empty, and where the keyboard is.
        await expect(tab.prompt_box).to_have_value("")
        await expect(tab.prompt_box).to_be_focused()

    # All three turns, in order, each prompt and answer exact.
    assert await tab.turns.locator(".prompt-text").all_text_contents() == prompts
    assert await final_answers(tab) == ANSWERS
    # Shift+Enter made a new line, not a prompt of its own.
    assert [line for line in served.requests if line.startswith("POST ")] == [
        "POST /process_prompt"
    ] * 3
    # The address is the conversation's, and each prompt went with what came before.
    await expect(tab.page).to_have_url(CONVERSATION_URL)
    await conversation_id(tab)
    assert earlier(scripts[prompts[2]]) == [
        ("user", prompts[0]),
        ("assistant", ANSWERS[0]),
        ("user", prompts[1]),
        ("assistant", ANSWERS[1]),
    ]
    assert not tab.problems()


# --- a reload, and Back --------------------------------------------------------------------

THIRD = [f"Part {n} of the third answer. " for n in range(1, 11)]


async def test_a_reload_during_turn_three_shows_the_thread_and_turn_three_resumes(tab, serve_app):
    scripts = {
        "one": ScriptedProvider([Answer("First answer.")]),
        "two": ScriptedProvider([Answer("Second answer.")]),
        "three": ScriptedProvider(paced(map(Answer, THIRD), Pause(0.2))),  # 2 s in all
    }
    served = await serve_app(ByPrompt(scripts))
    await tab.open(served.url)
    for prompt in ("one", "two"):
        await tab.ask(prompt)
    await tab.submit("three")
    await expect(tab.answer).to_contain_text("Part 2 ")

    await tab.page.reload()

    # The server rendered the thread: two final answers, and turn three as far
    # as it had got, with its stream resuming after the events already shown.
    await expect(tab.turns).to_have_count(3)
    await expect(tab.turns.locator(".prompt-text")).to_have_text(["one", "two", "three"])
    resuming = tab.turn.locator("[sse-connect]")
    assert "&after=" in (await resuming.get_attribute("sse-connect") or "")
    await tab.turn_ended()
    full = "".join(THIRD)
    assert await final_answers(tab) == ["First answer.", "Second answer.", full]
    # Since the reload, every state of the answer was the start of the full
    # answer (nothing repeated, nothing skipped), starting mid-way.
    steps, whole = await tab.answer_steps(), " ".join(full.split())
    assert steps[0].startswith(" ".join("".join(THIRD[:2]).split())), steps
    assert steps[0] != whole and all(whole.startswith(step) for step in steps), steps
    # One generation, listened to twice; no turn was asked again.
    assert [script.started for script in scripts.values()] == [1, 1, 1]
    assert len(served.stream_requests()) == 4
    assert "&after=" in served.stream_requests()[-1]
    assert not tab.problems()


LINKED = "See [the health check](/healthz) for how the server is."


async def test_a_link_in_an_answer_opens_a_new_tab_and_the_conversation_stays(tab, serve_app):
    provider = InOrder([ScriptedProvider([Answer(LINKED)]), ScriptedProvider([Answer("Still.")])])
    served = await serve_app(provider)
    await tab.open(served.url)
    await tab.ask("Where do I see how the server is?")
    cid = await conversation_id(tab)

    link = tab.final.get_by_role("link", name="the health check")
    assert await link.get_attribute("rel") == "noopener noreferrer"
    async with tab.page.context.expect_page() as opened:
        await link.click()  # a real click: the page opens in a tab of its own
    new_tab = await opened.value
    await expect(new_tab).to_have_url(f"{served.url}healthz")
    await new_tab.close()

    await expect(tab.page).to_have_url(f"{served.url}c/{cid}")
    await expect(tab.turns).to_have_count(1)
    await expect(tab.final.locator(".answer-rendered")).to_have_text(
        "See the health check for how the server is."
    )
    # And the conversation goes on from there.
    await tab.submit("And now?")
    await expect(tab.turns).to_have_count(2)
    await expect(tab.final.locator(".answer-source")).to_have_text("Still.")
    assert await conversation_id(tab) == cid
    assert earlier(provider.scripts[1]) == [
        ("user", "Where do I see how the server is?"),
        ("assistant", LINKED),
    ]
    assert not tab.problems()


# --- refusals ------------------------------------------------------------------------------


# The thread's HTML, but for the classes htmx adds and removes for a moment
# after a swap (htmx-added, htmx-settling).
THREAD_AS_HTML = """thread => {
  const copy = thread.cloneNode(true);
  for (const element of copy.querySelectorAll("[class*=htmx-]")) {
    element.classList.remove("htmx-added", "htmx-settling", "htmx-swapping");
  }
  return copy.innerHTML;
}"""


async def test_a_refused_prompt_leaves_the_thread_and_keeps_the_typed_text(tab, serve_app):
    # Two prompts a minute: the first, then the empty one (every POST counts).
    served = await serve_app(ScriptedProvider([Answer("The one answer.")]), prompts_per_minute=2)
    await tab.open(served.url)
    await tab.ask("First.")
    thread = await tab.response.evaluate(THREAD_AS_HTML)

    await tab.prompt_box.press("Enter")  # nothing typed
    await expect(tab.refusal).to_have_text("Please type a prompt first.")
    # Beside the box, and part of its description for a screen reader.
    await expect(tab.prompt_box).to_have_accessible_description(
        re.compile("Please type a prompt first.")
    )

    await tab.prompt_box.fill("Second, too soon.")
    await tab.prompt_box.press("Enter")
    await expect(tab.refusal).to_have_text(
        re.compile(r"^That is 2 prompts in a minute, the most allowed\. Please wait \d+ s\.$")
    )
    await expect(tab.prompt_box).to_have_value("Second, too soon.")  # kept, to send later
    # The thread did not change by one character.
    assert await tab.response.evaluate(THREAD_AS_HTML) == thread
    await expect(tab.turns).to_have_count(1)
    assert len(served.stream_requests()) == 1
    assert not tab.problems(REFUSAL_STATUS_LINE)


# --- the model picker --------------------------------------------------------------------

MODELS = {"object": "list", "data": [{"id": "model-a"}, {"id": "model-b"}]}


async def test_the_model_picked_in_the_settings_is_the_one_asked(tab, serve_app, fake_model):
    # The fake answers requests in order: first the page's list of models, then the chat.
    fake_model.reply(json.dumps(MODELS).encode(), content_type="application/json")
    fake_model.reply(
        [
            upstream.chunk(role="assistant", content=""),
            upstream.chunk(content="Hello from B."),
            upstream.chunk(finish_reason="stop"),
            upstream.DONE,
        ]
    )
    settings = OpenAISettings(base_url=fake_model.base_url, model="")
    served = await serve_app("openai", openai=settings)
    await tab.open(served.url)

    await tab.page.get_by_text("Model and settings", exact=True).click()
    picker = tab.page.get_by_label("Model", exact=True)
    await expect(picker.locator("option")).to_have_text(["model-a", "model-b"])
    await picker.select_option("model-b")
    await tab.submit("Who are you?")

    await expect(tab.final.locator(".answer-source")).to_have_text("Hello from B.")
    await expect(tab.final.locator(".stats")).to_contain_text("model-b")
    asked = [(request.method, request.path) for request in fake_model.requests]
    assert asked == [("GET", "/v1/models"), ("POST", "/v1/chat/completions")]
    assert fake_model.requests[1].json["model"] == "model-b"
    # The conversation keeps its model: its page shows it picked.
    await tab.page.reload()
    await expect(tab.page.get_by_label("Model", exact=True)).to_have_value("model-b")
    assert not tab.problems()


# --- export --------------------------------------------------------------------------------


async def test_export_downloads_the_thread_as_markdown(tab, serve_app, tmp_path):
    scripts = {
        "Name a colour.": ScriptedProvider([Answer("Teal.")]),
        "And a *bird*?": ScriptedProvider([Answer("A **heron**.")]),
    }
    served = await serve_app(ByPrompt(scripts))
    await tab.open(served.url)
    for prompt in scripts:
        await tab.ask(prompt)
    # The export link is on the conversation's page as the server renders it,
    # with this browser's recent conversations, this one marked as the current.
    await tab.page.reload()
    recent = tab.page.locator("details.recent")
    await recent.get_by_text("Recent conversations").click()
    current = recent.get_by_role("link", name="Name a colour.")
    await expect(current).to_have_attribute("aria-current", "page")
    await expect(current).to_have_attribute("href", re.compile(CONVERSATION_URL.pattern))

    async with tab.page.expect_download() as started:
        await tab.page.get_by_role("link", name="Export as Markdown").click()
    download = await started.value
    assert re.fullmatch(r"conversation-\d{4}-\d{2}-\d{2}\.md", download.suggested_filename)
    saved = tmp_path / download.suggested_filename
    await download.save_as(saved)
    text = await asyncio.to_thread(saved.read_text, encoding="utf-8")

    assert text.startswith("# Name a colour.\n")
    places = [
        text.index(part) for part in ["Name a colour.\n", "Teal.", "And a *bird*?", "**heron**"]
    ]
    assert places == sorted(places), text  # each prompt, then its answer, as written
    assert not tab.problems()


# --- the last turn: Retry, Regenerate, Edit; Escape -------------------------------------


async def test_retry_and_regenerate_answer_the_last_prompt_again_in_its_place(tab, serve_app):
    provider = InOrder(
        [
            ScriptedProvider([Answer("Hi.")]),
            ScriptedProvider([Failure("The model fell over.")]),
            ScriptedProvider([Answer("Second, at last.")]),  # Retry
            ScriptedProvider([Answer("Second, once more.")]),  # Regenerate
        ]
    )
    served = await serve_app(provider)
    await tab.open(served.url)
    for prompt in ("Hello", "Tell me more"):
        await tab.ask(prompt)

    # The failed turn, as a reload renders it: marked, with what it had and why.
    await tab.page.reload()
    await expect(tab.turn).to_have_class(re.compile(r"\bfailed\b"))
    await expect(tab.alert).to_have_text("The model fell over.")
    # Only the last turn has its buttons; a failed one is retried.
    await expect(tab.turns.first.locator(".turn-actions")).to_be_hidden()
    await expect(tab.turn.get_by_role("button", name="Regenerate")).to_be_hidden()
    failed_uid = await tab.uid()
    await tab.turn.get_by_role("button", name="Retry").click()
    await expect(tab.final.locator(".answer-source")).to_have_text("Second, at last.")
    await tab.turn_ended()
    await expect(tab.page.locator(f"#turn-{failed_uid}")).to_have_count(0)  # replaced

    await tab.turn.get_by_role("button", name="Regenerate").click()
    await expect(tab.final.locator(".answer-source")).to_have_text("Second, once more.")
    await tab.turn_ended()

    await expect(tab.turns.locator(".prompt-text")).to_have_text(["Hello", "Tell me more"])
    assert await final_answers(tab) == ["Hi.", "Second, once more."]
    # Asked again with the same prompt, after the first turn only.
    for script in provider.scripts[2:]:
        assert script.requests[0].prompt == "Tell me more"
        assert earlier(script) == [("user", "Hello"), ("assistant", "Hi.")]
    assert len(served.stream_requests()) == 4
    assert not tab.problems(SSE_ERROR_EVENT_LINE)  # the failure's `event: error`


async def test_edit_puts_the_last_prompt_back_and_sending_replaces_its_turn(tab, serve_app):
    provider = InOrder(
        [
            ScriptedProvider([Answer("Hi.")]),
            ScriptedProvider([Answer("Paris.")]),
            ScriptedProvider([Answer("Rome.")]),
        ]
    )
    served = await serve_app(provider)
    await tab.open(served.url)
    for prompt in ("Hello", "The capital of France?"):
        await tab.ask(prompt)

    await expect(tab.turns.first.get_by_role("button", name="Edit")).to_be_hidden()
    await tab.turn.get_by_role("button", name="Edit").click()
    await expect(tab.prompt_box).to_have_value("The capital of France?")
    await expect(tab.prompt_box).to_be_focused()
    await expect(tab.page.get_by_text("Editing your last prompt")).to_be_visible()

    await tab.prompt_box.fill("The capital of Italy?")
    await tab.prompt_box.press("Enter")
    await expect(tab.final.locator(".answer-source")).to_have_text("Rome.")
    await tab.turn_ended()

    await expect(tab.turns.locator(".prompt-text")).to_have_text(["Hello", "The capital of Italy?"])
    assert await final_answers(tab) == ["Hi.", "Rome."]
    await expect(tab.page.get_by_text("Editing your last prompt")).to_be_hidden()
    await expect(tab.prompt_box).to_have_value("")
    assert provider.scripts[2].requests[0].prompt == "The capital of Italy?"
    assert earlier(provider.scripts[2]) == [("user", "Hello"), ("assistant", "Hi.")]
    assert not tab.problems()


async def test_escape_stops_the_answer_being_written(tab, serve_app):
    provider = ScriptedProvider([Answer("Half of it"), Hang()])  # would never end
    served = await serve_app(provider)
    await tab.open(served.url)
    await tab.send_with_enter("Go on forever.")
    await expect(tab.answer).to_have_text("Half of it")

    await tab.page.keyboard.press("Escape")

    await expect(tab.final.locator(".answer-source")).to_have_text("Half of it")
    await expect(tab.final.locator(".note")).to_have_text("You stopped the answer here.")
    await expect(tab.status).to_have_text("Stopped.")
    await asyncio.wait_for(provider.closed.wait(), timeout=2.0)  # the model was let go
    await tab.turn_ended()
    await expect(tab.prompt_box).to_be_focused()
    await expect(tab.turn.get_by_role("button", name="Regenerate")).to_be_visible()
    # A reload shows it stopped, not failed and not still streaming.
    await tab.page.reload()
    await expect(tab.final.locator(".note")).to_have_text("You stopped the answer here.")
    await expect(tab.turn).not_to_have_class(re.compile(r"\bfailed\b"))
    await expect(tab.turn.locator("[sse-connect]")).to_have_count(0)
    assert not tab.problems()


async def test_an_unknown_conversation_says_so_and_offers_a_new_chat(tab, serve_app):
    served = await serve_app(ScriptedProvider([Answer("Unused.")]))
    response = await tab.page.goto(f"{served.url}c/c{'0' * 32}")
    assert response is not None and response.status == 404
    await expect(tab.page.get_by_role("alert")).to_contain_text("This conversation has expired")
    await tab.page.get_by_role("link", name="Start a new chat").click()
    await expect(tab.page).to_have_url(served.url)
    await tab.ask("A fresh start.")
    await expect(tab.final.locator(".answer-source")).to_have_text("Unused.")
    # Chromium logs the 404 status of the page itself.
    assert not tab.problems(NOT_FOUND_LINE)

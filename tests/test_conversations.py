"""Conversations over real sockets: the model gets the conversation so far, the page
keeps the thread across reloads, and every refusal leaves the thread as it was.

The fake OpenAI-compatible server records each request: the tests assert the
exact ``messages`` the model received.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re

import pytest

from conversations import ChatSettings, Conversations, Turn
from providers.events import Answer
from providers.openai import DEFAULT_SYSTEM_PROMPT, OpenAISettings
from tests.conftest import Hang, Pause, ScriptedProvider, read_stream
from tests.each_store import start_app_on_each_store, tune  # noqa: F401  (both stores)
from tests.fake_upstream import DONE, chunk, frame
from tests.fake_upstream import Pause as UpstreamPause
from tests.snippet import uid_from_snippet
from tests.waiting import eventually, healthz

SYSTEM = {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}


def reply_with(fake_upstream, text: str, **options) -> None:
    fake_upstream.reply([chunk(content=text), chunk(finish_reason="stop"), DONE], **options)


async def start_openai(start_app, fake_upstream, model: str = "m", **config):
    openai = OpenAISettings(base_url=fake_upstream.base_url, model=model)
    return await start_app("openai", openai=openai, **config)


async def ask(client, prompt: str = "", conversation: str = "", **fields):
    """POST the form as the page does; the response."""
    form = {"prompt": prompt, "conversation": conversation, **fields}
    return await client.post("/process_prompt", data=form, headers={"HX-Request": "true"})


async def turn(client, prompt: str, conversation: str = "", **fields) -> tuple[str, str]:
    """Ask, read the answer to its end: (the conversation's id, the turn's uid)."""
    response = await ask(client, prompt, conversation, **fields)
    assert response.status == 200, await response.text()
    uid = uid_from_snippet(await response.text())
    conversation = conversation or response.headers["HX-Push-Url"].removeprefix("/c/")
    _, events, _ = await read_stream(client, uid)
    assert events[-1].event == "close"
    return conversation, uid


def messages_of(fake_upstream, n: int = -1) -> list[dict]:
    return fake_upstream.requests[n].json["messages"]


async def page(client, conversation: str) -> str:
    response = await client.get(f"/c/{conversation}")
    assert response.status == 200
    return await response.text()


# --- what the model receives ---------------------------------------------------------------


async def test_a_three_turn_conversation_sends_the_conversation_so_far(start_app, fake_upstream):
    client = await start_openai(start_app, fake_upstream)
    for text in ["Paris.", "About 2.1 million.", "The Seine."]:
        reply_with(fake_upstream, text)
    cid, _ = await turn(client, "Capital of France?")
    await turn(client, "How many people live there?", cid)
    await turn(client, "Which river?", cid)

    assert messages_of(fake_upstream, 0) == [
        SYSTEM,
        {"role": "user", "content": "Capital of France?"},
    ]
    assert messages_of(fake_upstream) == [
        SYSTEM,
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "How many people live there?"},
        {"role": "assistant", "content": "About 2.1 million."},
        {"role": "user", "content": "Which river?"},
    ]


async def test_the_history_budget_leaves_out_the_oldest_turns_and_says_so(start_app, fake_upstream):
    budget = len(DEFAULT_SYSTEM_PROMPT) + 3 * 10 + 5  # the new prompt and one turn fit
    client = await start_openai(start_app, fake_upstream, history_chars=budget)
    for text in ["answer one", "answer two", "answer 3"]:
        reply_with(fake_upstream, text)
    cid, _ = await turn(client, "prompt one")
    await turn(client, "prompt two", cid)
    await turn(client, "prompt 3!!", cid)

    assert messages_of(fake_upstream) == [
        SYSTEM,
        {"role": "user", "content": "prompt two"},
        {"role": "assistant", "content": "answer two"},
        {"role": "user", "content": "prompt 3!!"},
    ]
    assert "1 earlier turn was not sent to the model" in await page(client, cid)


async def test_regenerate_sends_the_last_prompt_again_without_its_answer(start_app, fake_upstream):
    client = await start_openai(start_app, fake_upstream)
    for text in ["First.", "Second.", "Second, again."]:
        reply_with(fake_upstream, text)
    cid, _ = await turn(client, "One")
    _, last = await turn(client, "Two", cid)

    response = await ask(client, conversation=cid, replace=last, again="1")
    assert response.status == 200
    assert response.headers["HX-Retarget"] == f"#turn-{last}"
    assert response.headers["HX-Reswap"] == "outerHTML"
    _, events, _ = await read_stream(client, uid_from_snippet(await response.text()))
    assert events[-2].event == "final_answer"

    assert messages_of(fake_upstream) == [
        SYSTEM,
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "First."},
        {"role": "user", "content": "Two"},
    ]
    thread = await page(client, cid)
    assert thread.count('<article class="turn') == 2
    assert "Second, again." in thread and "Second.</p>" not in thread


async def test_edit_replaces_the_last_prompt_and_its_answer(start_app, fake_upstream):
    client = await start_openai(start_app, fake_upstream)
    for text in ["First.", "Wrong one.", "Right one."]:
        reply_with(fake_upstream, text)
    cid, _ = await turn(client, "One")
    _, last = await turn(client, "Tow", cid)
    await turn(client, "Two", cid, replace=last)

    assert messages_of(fake_upstream)[-1] == {"role": "user", "content": "Two"}
    assert len(messages_of(fake_upstream)) == 4
    thread = await page(client, cid)
    assert "Tow" not in thread and "Wrong one." not in thread and "Right one." in thread


async def test_a_failed_turn_keeps_its_partial_answer_and_retry_replaces_it(
    start_app, fake_upstream
):
    client = await start_openai(start_app, fake_upstream)
    reply_with(fake_upstream, "First.")
    fake_upstream.reply(
        [chunk(content="Half an ans"), frame({"error": {"message": "the GPU caught fire"}})]
    )
    reply_with(fake_upstream, "A whole answer.")
    cid, _ = await turn(client, "One")
    _, failed = await turn(client, "Two", cid)

    thread = await page(client, cid)
    assert 'class="turn done failed"' in thread
    assert "Half an ans" in thread and "the GPU caught fire" in thread
    assert "Retry" in thread

    await turn(client, "", cid, replace=failed, again="1")
    assert messages_of(fake_upstream) == [
        SYSTEM,
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "First."},
        {"role": "user", "content": "Two"},
    ]
    thread = await page(client, cid)
    assert "failed" not in re.findall(r'class="turn[^"]*"', thread)[-1]
    assert "A whole answer." in thread and "Half an ans" not in thread


async def test_a_stopped_answer_is_sent_as_far_as_it_got(start_app, fake_upstream):
    client = await start_openai(start_app, fake_upstream)
    fake_upstream.reply([chunk(content="Once upon"), UpstreamPause(30), chunk(content=" never")])
    reply_with(fake_upstream, "Fine.")
    response = await ask(client, "Tell a story")
    cid = response.headers["HX-Push-Url"].removeprefix("/c/")
    uid = uid_from_snippet(await response.text())
    stream = await client.get("/response-stream", params={"uid": uid})
    await stream.content.readuntil(b"Once upon")
    await client.post("/stop", params={"uid": uid})
    await stream.text()

    await turn(client, "Go on", cid)
    assert messages_of(fake_upstream)[-3:] == [
        {"role": "user", "content": "Tell a story"},
        {"role": "assistant", "content": "Once upon"},
        {"role": "user", "content": "Go on"},
    ]
    assert "You stopped the answer here." in await page(client, cid)


async def test_the_demo_provider_quotes_the_previous_prompt(start_app):
    client = await start_app()
    cid, _ = await turn(client, "What is SSE?")
    response = await ask(client, "And htmx?", cid)
    _, events, _ = await read_stream(client, uid_from_snippet(await response.text()))
    final = html.unescape(events[-2].data)
    assert "one earlier turn" in final and "What is SSE?" in final


# --- the page ----------------------------------------------------------------------------------


async def test_a_conversation_has_its_own_url_and_the_page_shows_the_thread(start_app):
    provider = ScriptedProvider([Answer("**bold** answer")])
    client = await start_app(provider=provider)
    response = await ask(client, "First <question>")
    assert response.status == 200
    url = response.headers["HX-Push-Url"]
    assert re.fullmatch(r"/c/c[0-9a-f]{32}", url)
    assert f'value="{url.removeprefix("/c/")}" hx-swap-oob="true"' in await response.text()
    await read_stream(client, uid_from_snippet(await response.text()))

    thread = await (await client.get(url)).text()
    assert "First &lt;question&gt;" in thread
    assert "<strong>bold</strong> answer" in thread  # rendered as Markdown
    assert f'value="{url.removeprefix("/c/")}"' in thread  # the next prompt continues it


async def test_a_page_rendered_mid_stream_resumes_without_repeating_or_losing_text(start_app):
    pieces = [Answer(f"word{n} ") for n in range(20)]
    provider = ScriptedProvider([*pieces[:10], Pause(0.5), *pieces[10:]])
    client = await start_app(provider=provider, grace_period=5)
    response = await ask(client, "Count")
    cid = response.headers["HX-Push-Url"].removeprefix("/c/")
    first = await client.get(
        "/response-stream", params={"uid": uid_from_snippet(await response.text())}
    )
    await first.content.readuntil(b"word9 ")
    first.close()  # the reload: the old page goes away

    thread = await page(client, cid)
    after = re.search(r'sse-connect="/response-stream\?uid=(\w+)&amp;after=(\d+)"', thread)
    assert after is not None
    shown = re.search(r'class="answer-text" sse-swap="answer_chunk"[^>]*>([^<]*)<', thread)
    resumed = await client.get(
        "/response-stream", params={"uid": after.group(1), "after": after.group(2)}
    )
    _, events, _ = await read_stream_text(resumed)
    streamed = "".join(e.data for e in events if e.event == "answer_chunk")
    assert shown.group(1) + streamed == "".join(p.text for p in pieces)


async def read_stream_text(response):
    from tests.sse_client import parse_stream

    text = await response.text()
    events, comments = parse_stream(text)
    return text, events, comments


async def test_an_expired_conversation_says_so_and_offers_a_new_one(start_app):
    client = await start_app(conversation_ttl=0.2, uid_ttl=0.2)  # swept every 0.05 s
    cid, _ = await turn(client, "Hello")
    await eventually(lambda: no_conversations(client))

    response = await client.get(f"/c/{cid}")
    assert response.status == 404
    text = await response.text()
    assert "This conversation has expired" in text and 'href="/"' in text
    refused = await ask(client, "Still there?", cid)
    assert refused.status == 404
    assert refused.headers["HX-Retarget"] == "#prompt-error"


async def no_conversations(client) -> bool:
    return (await healthz(client))["conversations"] == 0


async def test_the_browser_remembers_its_recent_conversations(start_app):
    client = await start_app()
    first, _ = await turn(client, "About cats")
    second, _ = await turn(client, "About dogs")
    assert client.session.cookie_jar.filter_cookies(client.make_url("/"))["recent"].value == (
        f"{second}.{first}"
    )
    listing = await (await client.get("/")).text()
    assert f'href="/c/{second}"' in listing and "About dogs" in listing
    assert listing.index("About dogs") < listing.index("About cats")


async def test_export_downloads_the_thread_as_markdown(start_app):
    client = await start_app(provider=ScriptedProvider([Answer("An answer.")]))
    cid, _ = await turn(client, "A question")
    response = await client.get(f"/c/{cid}/export")
    assert response.status == 200
    assert response.content_type == "text/markdown"
    assert response.headers["Content-Disposition"].startswith('attachment; filename="conversation-')
    text = await response.text()
    assert "A question" in text and "An answer." in text and "scripted-model" in text

    small = await start_app(provider=ScriptedProvider([Answer("x" * 500)]), max_export_bytes=100)
    cid, _ = await turn(small, "A question")
    refused = await small.get(f"/c/{cid}/export")
    assert refused.status == 413
    text = await refused.text()
    assert "too large to export" in text and f'href="/c/{cid}"' in text


async def test_conversation_ids_never_reach_the_access_log(start_app, caplog):
    client = await start_app()
    with caplog.at_level(logging.INFO, logger="aiohttp.access"):
        cid, _ = await turn(client, "Hello")
        await client.get(f"/c/{cid}")
        await client.get(f"/c/{cid}/export")
        await asyncio.sleep(0.05)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "aiohttp.access")
    assert "/c/…" in logged and cid not in logged


# --- refusals change nothing -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({"conversation": "c-forged"}, 404, "This conversation has expired"),
        ({"conversation": "c" + "0" * 32}, 404, "This conversation has expired"),
        ({"replace": "u" + "0" * 32}, 409, "Only the last prompt"),
        ({"temperature": "7"}, 422, "The temperature must be a number from 0 to 2."),
        ({"temperature": "warm"}, 422, "The temperature must be a number from 0 to 2."),
        ({"model": "gpt-99"}, 422, "does not offer a model called"),
        ({"prompt": ""}, 422, "Please type a prompt first."),
        ({"system_prompt": "x" * 4001}, 413, "The system prompt is 4,001 characters long"),
    ],
    ids=["forged-id", "unknown-id", "edit-not-last", "too-hot", "not-a-number",
         "unlisted-model", "empty", "long-system-prompt"],
)  # fmt: skip
async def test_a_refused_prompt_leaves_the_thread_as_it_was(start_app, fields, status, message):
    provider = ScriptedProvider([Answer("The answer.")], listed=["small", "large"])
    client = await start_app(provider=provider)
    cid, first = await turn(client, "First")
    before = await page(client, cid)

    form = {"prompt": "Another", "conversation": cid, **fields}
    if "replace" in fields:
        await turn(client, "Second", cid)  # the first is no longer the last
        form["replace"] = first
        before = await page(client, cid)
    response = await ask(client, **form)
    assert response.status == status
    assert message in html.unescape(await response.text())
    assert response.headers["HX-Retarget"] == "#prompt-error"
    assert await page(client, cid) == before


async def test_a_turn_posted_while_the_answer_streams_is_refused(start_app):
    client = await start_app(provider=ScriptedProvider([Answer("x"), Hang()]))
    response = await ask(client, "First")
    cid = response.headers["HX-Push-Url"].removeprefix("/c/")
    stream = await client.get(
        "/response-stream", params={"uid": uid_from_snippet(await response.text())}
    )
    await stream.content.readuntil(b"data: x")
    refused = await ask(client, "Second", cid)
    assert refused.status == 409
    assert "still being written" in await refused.text()
    stream.close()


async def test_a_conversation_keeps_at_most_its_turns(start_app):
    client = await start_app(provider=ScriptedProvider([Answer("ok")]), max_turns=2)
    cid, _ = await turn(client, "one")
    await turn(client, "two", cid)
    refused = await ask(client, "three", cid)
    assert refused.status == 409
    assert "reached 2 turns" in await refused.text()


async def test_the_least_recently_used_conversation_goes_first(start_app):
    client = await start_app(provider=ScriptedProvider([Answer("ok")]), max_conversations=2)
    first, _ = await turn(client, "one")
    second, _ = await turn(client, "two")
    await page(client, first)  # used again: now the second is the oldest
    await turn(client, "three")
    assert (await client.get(f"/c/{first}")).status == 200
    assert (await client.get(f"/c/{second}")).status == 404


class FirstAnswerHangs(ScriptedProvider):
    """Its script for every prompt; the first prompt's answer then never ends."""

    async def stream(self, request):
        first = not self.requests
        async for event in super().stream(request):
            yield event
        if first:
            await asyncio.Event().wait()


async def test_a_conversation_whose_answer_streams_is_never_the_one_forgotten(start_app):
    client = await start_app(provider=FirstAnswerHangs([Answer("ok")]), max_conversations=2)
    response = await ask(client, "An answer that goes on")
    streaming = response.headers["HX-Push-Url"].removeprefix("/c/")
    stream = await client.get(
        "/response-stream", params={"uid": uid_from_snippet(await response.text())}
    )
    await stream.content.readuntil(b"event: answer_chunk")
    second, _ = await turn(client, "two")
    third, _ = await turn(client, "three")  # past the bound: the oldest but streaming stays
    assert (await client.get(f"/c/{streaming}")).status == 200
    assert (await client.get(f"/c/{second}")).status == 404
    assert (await client.get(f"/c/{third}")).status == 200
    stream.close()


async def test_the_operator_can_fix_the_model_and_the_page_shows_it_read_only(
    start_app, fake_upstream
):
    client = await start_openai(start_app, fake_upstream, model="fixed-model")
    text = await (await client.get("/")).text()
    assert 'value="fixed-model" readonly' in text and "<select" not in text
    refused = await ask(client, "Hi", model="other")
    assert refused.status == 422
    assert "only asks the model fixed-model" in await refused.text()


async def test_the_page_offers_the_models_the_server_lists(start_app, fake_upstream):
    models = b'{"object": "list", "data": [{"id": "qwen3"}, {"id": "llama3.2"}]}'
    fake_upstream.reply(models, content_type="application/json")
    client = await start_openai(start_app, fake_upstream, model="")
    text = await (await client.get("/")).text()
    assert "<option selected>qwen3</option>" in text and "<option>llama3.2</option>" in text

    reply_with(fake_upstream, "Hello from llama.")
    await turn(client, "Hi", model="llama3.2", temperature="0.3", system_prompt="Be terse.")
    request = fake_upstream.requests[-1].json
    assert request["model"] == "llama3.2" and request["temperature"] == 0.3
    assert request["messages"][0] == {"role": "system", "content": "Be terse."}


async def test_regenerate_keeps_the_conversations_model_and_settings(start_app, fake_upstream):
    models = b'{"object": "list", "data": [{"id": "qwen3"}, {"id": "llama3.2"}]}'
    fake_upstream.reply(models, content_type="application/json")
    client = await start_openai(start_app, fake_upstream, model="")
    reply_with(fake_upstream, "First try.")
    reply_with(fake_upstream, "Second try.")
    settings = {"model": "llama3.2", "temperature": "0.3", "system_prompt": "Be terse."}
    cid, last = await turn(client, "Hi", **settings)
    await turn(client, "", cid, replace=last, again="1")  # what the button sends, at least

    first, again = fake_upstream.requests[-2].json, fake_upstream.requests[-1].json
    assert again["messages"] == first["messages"]
    assert (again["model"], again["temperature"]) == ("llama3.2", 0.3)
    assert again["messages"][0] == {"role": "system", "content": "Be terse."}
    assert 'value="0.3"' in await page(client, cid)  # still the conversation's


async def test_an_emptied_edit_is_refused_not_answered_again(start_app):
    client = await start_app(provider=ScriptedProvider([Answer("ok")]))
    cid, last = await turn(client, "Hello")
    refused = await ask(client, "   ", cid, replace=last)
    assert refused.status == 422
    assert "Please type a prompt first." in await refused.text()


async def test_a_turn_never_opened_shows_why_and_does_not_hold_its_conversation(start_app):
    client = await start_app(provider=ScriptedProvider([Answer("ok")]), uid_ttl=0.2)
    response = await ask(client, "Nobody opens this")
    cid = response.headers["HX-Push-Url"].removeprefix("/c/")
    await eventually(lambda: nothing_pending(client))

    thread = await page(client, cid)  # a 500 once: a turn that ended before its stream began
    assert "This answer was never opened" in html.unescape(thread)
    await turn(client, "And this one?", cid)


async def test_a_turn_not_opened_yet_gives_way_to_the_next_prompt(start_app, monkeypatch):
    tune(monkeypatch, "GIVE_WAY_S", 0.1)
    client = await start_app(provider=ScriptedProvider([Answer("ok")]))
    response = await ask(client, "The page closed at once")
    cid = response.headers["HX-Push-Url"].removeprefix("/c/")
    await asyncio.sleep(0.2)
    await turn(client, "Here I am again", cid)  # not a 409 for a minute


async def nothing_pending(client) -> bool:
    return (await healthz(client))["uids_pending"] == 0


async def test_a_gone_conversation_lets_the_next_prompt_start_a_new_one(start_app):
    client = await start_app()
    refused = await ask(client, "Still there?", "c" + "0" * 32)
    assert refused.status == 404
    text = await refused.text()
    assert 'id="conversation" name="conversation" value="" hx-swap-oob="true"' in text


async def test_pages_are_never_served_from_a_cache(start_app):
    client = await start_app()
    cid, _ = await turn(client, "Hello")
    for url in ["/", f"/c/{cid}"]:
        assert (await client.get(url)).headers["Cache-Control"] == "no-store"


async def test_all_conversations_together_keep_at_most_their_characters(start_app):
    client = await start_app(provider=ScriptedProvider([Answer("x" * 1000)]), max_kept_chars=2500)
    first, _ = await turn(client, "one")
    second, _ = await turn(client, "two")
    third, _ = await turn(client, "three")  # 3 x ~1,000 characters: the oldest goes
    assert (await client.get(f"/c/{first}")).status == 404
    assert (await client.get(f"/c/{second}")).status == 200
    assert (await client.get(f"/c/{third}")).status == 200


def test_making_room_skips_streaming_conversations_and_forgets_no_more_than_it_must():
    conversations = Conversations(max_conversations=2, max_kept_chars=100, idle_ttl=60.0)
    streaming = conversations.new(ChatSettings())
    conversations.set_turns(streaming, [Turn("u1", "still answering", ChatSettings())])
    conversations.new(ChatSettings())
    newer = conversations.new(ChatSettings())  # the one before it makes room; the stream stays
    assert list(conversations) == [newer, streaming]  # in use: now the most recently used

    newest = conversations.new(ChatSettings())
    conversations.set_turns(newest, [Turn("u2", "x" * 200, ChatSettings(), outcome="done")])
    conversations.make_room()  # over both bounds: all but the streaming one and the newest go
    assert list(conversations) == [newest, streaming]
    assert conversations.kept_chars == len("still answering") + 200


async def test_a_prompt_never_opened_does_not_hold_back_the_bound(start_app, monkeypatch):
    # Prompts whose page went away before opening the stream: once --uid-ttl has
    # passed, their answers can never stream, and their conversations may be
    # forgotten like any other, though their JSON on Redis still has a turn not
    # done. With as many of them at the oldest end as making room looks at (2
    # here), the bound would otherwise stop working for every later conversation.
    monkeypatch.setattr("redis_store.BOUND_CANDIDATES", 2)
    monkeypatch.setattr("conversations.MAKE_ROOM_LOOKS", 2)
    client = await start_app(
        provider=ScriptedProvider([Answer("ok")]), max_conversations=3, uid_ttl=0.2
    )
    abandoned = []
    for prompt in ("left one", "left two"):
        response = await ask(client, prompt)
        assert response.status == 200
        abandoned.append(response.headers["HX-Push-Url"].removeprefix("/c/"))
    await asyncio.sleep(0.5)  # past --uid-ttl: never to be opened
    assert "never opened" in await (await client.get(f"/c/{abandoned[0]}")).text()
    answered = [(await turn(client, f"q{n}"))[0] for n in range(4)]
    kept = [cid for cid in [*abandoned, *answered] if (await client.get(f"/c/{cid}")).status == 200]
    assert len(kept) <= 3, kept

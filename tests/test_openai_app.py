"""The app in front of an OpenAI-compatible server (the fake upstream, on loopback)."""

import asyncio
import html
import logging
import math
import re

import pytest

from providers.openai import OpenAISettings
from tests.conftest import post_prompt, read_stream
from tests.fake_upstream import DONE, Pause, chunk, error_body, usage_chunk
from tests.waiting import eventually

KEY = "sk-test-0123456789abcdef"


async def start_openai(start_app, fake_upstream, config=None, **settings):
    openai = OpenAISettings(**{"base_url": fake_upstream.base_url, "model": "m", **settings})
    return await start_app("openai", openai=openai, **(config or {}))


def texts(events, name):
    return [html.unescape(e.data) for e in events if e.event == name]


async def test_reasoning_shows_as_thoughts_and_never_in_the_answer(start_app, fake_upstream):
    fake_upstream.reply(
        [
            chunk(role="assistant", content=None, reasoning_content=""),
            chunk(reasoning_content="The user greets me. "),
            chunk(reasoning_content="I greet back."),
            chunk(content="Hello"),
            chunk(content=" <there>!"),
            chunk(finish_reason="stop"),
            usage_chunk(12, 3),
            DONE,
        ],
        split="bytes",
    )
    client = await start_openai(start_app, fake_upstream)
    uid = await post_prompt(client, "Hi")
    _, events, _ = await read_stream(client, uid)

    assert "The user greets me. I greet back." in texts(events, "thought")
    assert "".join(texts(events, "answer_chunk")) == "Hello <there>!"
    final = texts(events, "final_answer")[0]
    assert "I greet back." in final.split("<details", 1)[1]  # folded away, not in the answer
    assert "3 tokens" in final and "tokens/s" in final and " s in all" in final
    assert [e.event for e in events[-2:]] == ["final_answer", "close"]
    request = fake_upstream.requests[0]
    assert request.json["model"] == "m" and request.json["stream"] is True
    assert request.json["messages"][-1] == {"role": "user", "content": "Hi"}


async def test_inline_think_tags_split_across_chunks(start_app, fake_upstream):
    pieces = ["<th", "ink>", "Hmm, ", "a greeting.</th", "ink>\n\n", "Hi", " there"]
    fake_upstream.reply([*(chunk(content=p) for p in pieces), chunk(finish_reason="stop"), DONE])
    client = await start_openai(start_app, fake_upstream)
    uid = await post_prompt(client)
    _, events, _ = await read_stream(client, uid)

    assert "Hmm, a greeting." in texts(events, "thought")
    assert "".join(texts(events, "answer_chunk")) == "Hi there"


async def test_stats_count_from_when_held_text_came_not_when_it_was_let_go(
    start_app, fake_upstream
):
    """An untagged answer is held back (it might end in an orphan </think>),
    but the model's time to first token is when its first text came."""
    hold = 0.5
    fake_upstream.reply([chunk(content="Hello"), Pause(hold + 0.2), chunk(content=" there"), DONE])
    client = await start_openai(start_app, fake_upstream, reasoning_hold=hold)
    _, events, _ = await read_stream(client, await post_prompt(client))

    assert ttft_of(events) < hold - 0.1  # held for `hold`, but it came at once


async def test_stats_count_from_when_held_text_came_when_it_was_reasoning(start_app, fake_upstream):
    """Held text that an orphan </think> shows to be reasoning came first too."""
    thinking = 0.5
    fake_upstream.reply(
        [chunk(content="Let me see."), Pause(thinking), chunk(content="</think>Yes."), DONE]
    )
    client = await start_openai(start_app, fake_upstream, reasoning_hold=math.inf)
    _, events, _ = await read_stream(client, await post_prompt(client))

    assert "".join(texts(events, "answer_chunk")) == "Yes."
    assert ttft_of(events) < thinking - 0.1


def ttft_of(events) -> float:
    """The time to first token in the final answer's stats line."""
    final = texts(events, "final_answer")[0]
    return float(re.search(r"first token after ([0-9.]+) s", final).group(1))


async def test_upstream_error_mid_stream_keeps_partial_answer_and_says_what(
    start_app, fake_upstream
):
    fake_upstream.reply(
        [chunk(content="Partial"), b'data: {"error": {"message": "GPU fell over"}}\n\n', DONE]
    )
    client = await start_openai(start_app, fake_upstream)
    uid = await post_prompt(client)
    _, events, _ = await read_stream(client, uid)

    assert "".join(texts(events, "answer_chunk")) == "Partial"
    assert [e.event for e in events[-2:]] == ["error", "close"]
    assert "GPU fell over" in events[-2].data


async def test_unreachable_model_server_is_a_readable_error(start_app, unused_tcp_port):
    openai = OpenAISettings(base_url=f"http://127.0.0.1:{unused_tcp_port}/v1", model="m")
    client = await start_app("openai", openai=openai)
    uid = await post_prompt(client)
    _, events, _ = await read_stream(client, uid)
    assert [e.event for e in events[-2:]] == ["error", "close"]
    assert f"Could not reach the model server at 127.0.0.1:{unused_tcp_port}" in events[-2].data


async def test_api_key_never_reaches_page_events_or_logs(start_app, fake_upstream, caplog):
    caplog.set_level(logging.DEBUG)
    fake_upstream.reply(
        error_body(f"Incorrect API key provided: {KEY[:6]}****{KEY[-4:]}", "invalid_api_key"),
        status=401,
        content_type="application/json",
    )
    client = await start_openai(start_app, fake_upstream, {"log_prompts": True}, api_key=KEY)
    page = await (await client.get("/")).text()
    uid = await post_prompt(client)
    text, events, _ = await read_stream(client, uid)

    assert fake_upstream.requests[0].headers["Authorization"] == f"Bearer {KEY}"
    assert "refused this app&#x27;s API key" in events[-2].data
    for seen in (page, text, caplog.text):
        assert KEY not in seen and KEY[-4:] not in seen


async def test_browser_leaving_releases_the_upstream_request(start_app, fake_upstream):
    fake_upstream.reply([chunk(content="Thinking hard")], stall=30)
    client = await start_openai(start_app, fake_upstream, {"grace_period": 0})
    uid = await post_prompt(client)
    response = await client.get("/response-stream", params={"uid": uid})
    await response.content.readuntil(b"data: Thinking hard\n\n")

    left = asyncio.get_running_loop().time()
    response.close()
    released = await fake_upstream.wait_disconnected(within=2)
    assert released - left < 1.0


async def test_browsers_leaving_at_once_are_each_let_go_as_abandoned(
    start_app, fake_upstream, caplog
):
    """The store hangs up on each model server connection as its browser leaves,
    then cancels the producer: every generation ends as abandoned, none as a
    stream the model server broke off."""
    caplog.set_level(logging.INFO, logger="stream")
    for _ in range(10):
        fake_upstream.reply([chunk(content="Thinking hard")], stall=30)
    client = await start_openai(start_app, fake_upstream, {"grace_period": 0})
    browsers = []
    for _ in range(10):
        uid = await post_prompt(client)
        browsers.append(await client.get("/response-stream", params={"uid": uid}))
        await browsers[-1].content.readuntil(b"data: Thinking hard\n\n")

    for browser in browsers:
        browser.close()
    await eventually(lambda: caplog.text.count("outcome=") == 10, within=2)
    assert caplog.text.count("outcome=abandoned") == 10, caplog.text


async def test_model_is_discovered_when_the_server_serves_one(start_app, fake_upstream):
    fake_upstream.reply(
        b'{"object": "list", "data": [{"id": "smollm2"}]}', content_type="application/json"
    )
    fake_upstream.reply([chunk(content="ok"), chunk(finish_reason="stop"), DONE])
    client = await start_openai(start_app, fake_upstream, model="")
    uid = await post_prompt(client)
    _, events, _ = await read_stream(client, uid)

    assert fake_upstream.requests[0].path.endswith("/v1/models")
    assert fake_upstream.requests[1].json["model"] == "smollm2"
    assert "Connecting to smollm2…" in texts(events, "thought")


async def test_several_models_and_none_chosen_asks_to_choose(start_app, fake_upstream):
    fake_upstream.reply(
        b'{"data": [{"id": "qwen3"}, {"id": "llama3.2"}]}', content_type="application/json"
    )
    client = await start_openai(start_app, fake_upstream, model="")
    uid = await post_prompt(client)
    _, events, _ = await read_stream(client, uid)
    assert "Choose a model in the page&#x27;s settings; the server offers: qwen3, llama3.2" in (
        events[-2].data
    )


@pytest.mark.parametrize(
    ("status", "base_url_suffix", "says", "hint"),
    [(404, "", "answered 404 Not Found.", "Check the base URL: most servers want it to end in /v1"),
     (401, "/v1", "The model server wants an API key (401 Unauthorized).", "Set OPENAI_API_KEY."),
     (500, "/v1", "answered 500 Internal Server Error: Not Found.", "Or name one with --model")],
    ids=["base-url-without-v1", "no-key", "server-error"],
)  # fmt: skip
async def test_no_model_and_a_refused_list_of_models_says_why(
    start_app, fake_upstream, caplog, status, base_url_suffix, says, hint
):
    """The person reads what happened; the operator's log says what to change too."""
    fake_upstream.reply(b'{"detail":"Not Found"}', status=status, content_type="application/json")
    base_url = fake_upstream.base_url.removesuffix("/v1") + base_url_suffix
    client = await start_openai(start_app, fake_upstream, model="", base_url=base_url)
    with caplog.at_level(logging.INFO, logger="stream"):
        _, events, _ = await read_stream(client, await post_prompt(client))

    error = texts(events, "error")[0]
    assert error.startswith("No model is set, and asking for one failed.")
    assert says in error and hint not in error
    logged = [r.getMessage() for r in caplog.records if "outcome=failed" in r.getMessage()]
    assert len(logged) == 1 and says in logged[0] and hint in logged[0]


async def test_the_page_never_shows_credentials_or_a_query_of_the_base_url(
    start_app, unused_tcp_port
):
    base_url = f"http://me:hunter2@127.0.0.1:{unused_tcp_port}/v1?api-key=sk-in-url"
    client = await start_app("openai", openai=OpenAISettings(base_url=base_url, model=""))
    page = await (await client.get("/")).text()

    assert f"<code>http://127.0.0.1:{unused_tcp_port}/v1</code>" in page
    assert "hunter2" not in page and "sk-in-url" not in page


async def test_no_model_and_an_unreachable_server_says_so(start_app, unused_tcp_port):
    openai = OpenAISettings(base_url=f"http://127.0.0.1:{unused_tcp_port}/v1", model="")
    client = await start_app("openai", openai=openai)
    page = await (await client.get("/")).text()
    uid = await post_prompt(client)
    _, events, _ = await read_stream(client, uid)

    assert f"the model served at\n      <code>http://127.0.0.1:{unused_tcp_port}/v1</code>" in page
    assert "Could not reach the model server at 127.0.0.1:" in events[-2].data
    assert "to ask which model to use" in events[-2].data

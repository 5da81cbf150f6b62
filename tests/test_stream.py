"""The stream's contract, on a real socket: POST bridge, GET stream, cleanup."""

import asyncio
import html
import logging
import re
import time

import pytest
from aiohttp import ClientSession, web

from providers.events import Answer, Failure, Finished, Reasoning, Status, Usage
from server import STORE, Config, make_app
from tests.conftest import Crash, Hang, Pause, ScriptedProvider, post_prompt, read_stream
from tests.snippet import uid_from_snippet
from tests.sse_client import parse_stream

UID = re.compile(r"^u[0-9a-f]{32}$")


async def health(client):
    response = await client.get("/healthz")
    return await response.json()


async def wait_for_health(client, expected, within=2.0):
    """Poll /healthz until it shows ``expected``; the last reading either way."""
    deadline = time.monotonic() + within
    while True:
        reading = await health(client)
        if all(reading[key] == value for key, value in expected.items()):
            return reading
        if time.monotonic() > deadline:
            return reading
        await asyncio.sleep(0.02)


async def test_post_returns_the_sse_snippet_with_four_listeners(start_app):
    client = await start_app()
    response = await client.post("/process_prompt", data={"prompt": "Hi"})
    snippet = await response.text()
    uid = uid_from_snippet(snippet)

    assert response.status == 200
    assert response.content_type == "text/html"
    assert UID.match(uid)
    assert 'hx-ext="sse"' in snippet
    assert f'sse-connect="/response-stream?uid={uid}"' in snippet
    assert 'sse-close="close"' in snippet
    assert 'sse-swap="thought" hx-swap="innerHTML"' in snippet
    assert re.search(
        rf'<div id="{uid}-final-container"[^>]*>\s*<div[^>]*sse-swap="answer_chunk" '
        r'hx-swap="beforeend"></div>',
        snippet,
    )
    assert f'sse-swap="final_answer" hx-target="#{uid}-final-container" hx-swap="outerHTML"' in (
        snippet
    )
    assert 'sse-swap="error" hx-swap="innerHTML"' in snippet


async def test_uids_are_random_and_start_with_a_letter(start_app):
    client = await start_app()
    uids = {await post_prompt(client) for _ in range(50)}
    assert len(uids) == 50
    assert all(UID.match(uid) for uid in uids)


async def test_post_only_stores_the_prompt(start_app):
    provider = ScriptedProvider([Answer("x")])
    client = await start_app(provider=provider)
    await post_prompt(client)
    assert provider.started == 0
    assert await health(client) == {
        "status": "ok",
        "provider": "scripted",
        "streams_in_flight": 0,
        "uids_pending": 1,
        "listeners": 0,
        "streams_kept": 1,
        "conversations": 1,  # its turn's conversation
    }


async def test_stream_headers(start_app):
    client = await start_app()
    uid = await post_prompt(client)
    response = await client.get(
        "/response-stream", params={"uid": uid}, headers={"Accept-Encoding": "gzip, br"}
    )
    await response.read()
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "Content-Encoding" not in response.headers


async def test_stream_sends_exact_events_then_close(start_app):
    # Short pauses let each event reach the socket before the next one: a
    # newer thought replaces an older one that was not sent yet.
    beat = Pause(0.02)
    provider = ScriptedProvider(
        [
            Status("Connecting…"), beat,
            Reasoning("Let me "), beat,
            Reasoning("think."), beat,
            Answer("Hello"), beat,
            Answer(" <b>world</b>"),
            Usage(prompt_tokens=3, completion_tokens=2),
            Finished("stop"),
        ]
    )  # fmt: skip
    client = await start_app(provider=provider)
    uid = await post_prompt(client)
    text, events, _ = await read_stream(client, uid)

    assert text.startswith(
        "retry: 1000\n\n"
        "event: thought\nid: 1\ndata: Connecting…\n\n"
        "event: thought\nid: 2\ndata: Let me \n\n"
        "event: thought\nid: 3\ndata: Let me think.\n\n"
        "event: answer_chunk\nid: 4\ndata: Hello\n\n"
        "event: answer_chunk\nid: 5\ndata:  &lt;b&gt;world&lt;/b&gt;\n\n"
        "event: thought\nid: 6\ndata: \n\n"
        "event: final_answer\nid: 7\n"
    )
    assert text.endswith("event: close\nid: 8\ndata: \n\n")
    assert [event.event for event in events] == [
        "thought", "thought", "thought", "answer_chunk", "answer_chunk",
        "thought", "final_answer", "close",
    ]  # fmt: skip
    assert [event.id for event in events] == [str(n) for n in range(1, 9)]


async def test_a_model_without_reasoning_shows_writing_when_its_answer_starts(start_app):
    """No reasoning to show: once the answer's first text comes, the thought
    line says "Writing…" instead of keeping the last status."""
    provider = ScriptedProvider([Status("Connecting…"), Pause(0.05), Answer("Hello"), Hang()])
    client = await start_app(provider=provider)
    uid = await post_prompt(client)
    response = await client.get("/response-stream", params={"uid": uid})
    events = []
    async with asyncio.timeout(5):
        while "answer_chunk" not in [event.event for event in events]:
            frame = await response.content.readuntil(b"\n\n")
            assert frame, f"the stream ended after {events}"
            events += parse_stream(frame.decode())[0]
    response.close()

    *before, first_answer = events
    assert (first_answer.event, first_answer.data) == ("answer_chunk", "Hello")
    # What the thought line says when "Hello" appears (the status it replaces
    # may have been sent first, or replaced before it was).
    assert [event.data for event in before if event.event == "thought"][-1] == "Writing…"


async def test_final_answer_replaces_its_container_and_keeps_its_id(start_app):
    provider = ScriptedProvider(
        [Reasoning("Hmm."), Answer("<i>42</i>\n"), Usage(completion_tokens=2)]
    )
    client = await start_app(provider=provider)
    uid = await post_prompt(client)
    _, events, _ = await read_stream(client, uid)
    final = next(event.data for event in events if event.event == "final_answer")

    assert final.startswith(f'<div id="{uid}-final-container"')
    assert '<pre class="answer-text answer-source" hidden>&lt;i&gt;42&lt;/i&gt;\n</pre>' in final
    assert '<div class="answer-rendered"><p>&lt;i&gt;42&lt;/i&gt;</p>\n</div>' in final
    assert "<details" in final and "Hmm." in final  # the reasoning, folded away
    assert "2 tokens" in final
    assert "<i>" not in final


ANSWERS = {
    "spaces-at-both-ends": ["  lead", "ing", " and trailing  "],
    "blank-lines": ["para one\n\n", "\n", "para two\n"],
    "crlf-and-cr": ["a\r\n", "b\rc"],
    "unicode-and-emoji": ["Grüße, ", "世界 ", "🎉🤖", "\u2028x"],
    "markup-as-text": ["<script>alert(1)</script>", " &amp; ", "<div hx-swap-oob='true'>"],
    "space-only-chunks": [" ", "  ", "\t"],
}


@pytest.mark.parametrize("pieces", ANSWERS.values(), ids=ANSWERS.keys())
async def test_joined_chunks_unescaped_equal_the_answer_exactly(start_app, pieces):
    client = await start_app(provider=ScriptedProvider([Answer(p) for p in pieces]))
    uid = await post_prompt(client)
    _, events, _ = await read_stream(client, uid)
    chunks = [event.data for event in events if event.event == "answer_chunk"]

    assert [html.unescape(chunk) for chunk in chunks] == pieces
    final = next(event.data for event in events if event.event == "final_answer")
    shown = final.split('<pre class="answer-text answer-source" hidden>', 1)[1].split("</pre>")[0]
    assert html.unescape(shown) == "".join(pieces)


async def test_every_payload_is_escaped(start_app):
    hostile = "<img src=x onerror=alert(1)><script>alert(2)</script>"
    provider = ScriptedProvider(
        [Status(hostile), Reasoning(hostile), Answer(hostile), Failure(hostile)]
    )
    client = await start_app(provider=provider)
    uid = await post_prompt(client)
    text, events, _ = await read_stream(client, uid)

    assert "<img" not in text and "<script" not in text
    assert [html.unescape(e.data) for e in events if e.event == "error"] == [hostile]


async def test_provider_failure_sends_the_answer_so_far_then_error_then_close(start_app):
    provider = ScriptedProvider([Answer("**Part**"), Failure("The model server went away.")])
    client = await start_app(provider=provider)
    uid = await post_prompt(client)
    _, events, _ = await read_stream(client, uid)

    assert [e.event for e in events[-4:]] == ["thought", "final_answer", "error", "close"]
    so_far = events[-3].data
    assert "The answer so far:" in so_far and "<strong>Part</strong>" in so_far  # rendered
    assert (events[-2].data, events[-1].data) == ("The model server went away.", "")


async def test_a_failure_before_any_text_sends_only_the_error(start_app):
    provider = ScriptedProvider([Failure("The model server went away.")])
    client = await start_app(provider=provider)
    _, events, _ = await read_stream(client, await post_prompt(client))
    assert [e.event for e in events[-3:]] == ["thought", "error", "close"]


async def test_provider_crash_sends_a_plain_error_and_server_keeps_serving(start_app, caplog):
    provider = ScriptedProvider([Answer("Part"), Crash(RuntimeError("secret internals"))])
    client = await start_app(provider=provider)
    uid = await post_prompt(client)
    text, events, _ = await read_stream(client, uid)

    assert [e.event for e in events[-2:]] == ["error", "close"]
    assert "Something went wrong on the server" in events[-2].data
    assert "secret internals" not in text and "Traceback" not in text
    assert "secret internals" in caplog.text  # the operator still gets the traceback
    assert (await client.get("/healthz")).status == 200


async def test_unknown_uid_gets_error_then_close(start_app):
    client = await start_app()
    for params in ({"uid": "u" + "0" * 32}, {"uid": "../../etc"}, {}):
        response = await client.get("/response-stream", params=params)
        text = await response.text()
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert text == (
            "event: error\nid: 1\ndata: This answer is unknown or has expired: it may have "
            "been shown already, or waited too long. Please submit the prompt again.\n\n"
            "event: close\nid: 2\ndata: \n\n"
        )


async def test_uid_streams_once_then_is_unknown(start_app):
    client = await start_app()
    uid = await post_prompt(client)
    _, first, _ = await read_stream(client, uid)
    _, second, _ = await read_stream(client, uid)

    assert first[-2].event == "final_answer"
    assert [e.event for e in second] == ["error", "close"]
    assert "unknown or has expired" in second[0].data


async def test_second_get_while_streaming_is_refused(start_app):
    provider = ScriptedProvider([Answer("a"), Hang()])
    client = await start_app(provider=provider)
    uid = await post_prompt(client)
    first = await client.get("/response-stream", params={"uid": uid})
    await first.content.readuntil(b"\n\n")  # the first stream is under way

    _, second, _ = await read_stream(client, uid)
    first.close()

    assert [e.event for e in second] == ["error", "close"]
    assert "streamed to another window" in second[0].data
    assert provider.started == 1


async def test_store_entry_is_removed_when_the_stream_ends(start_app):
    client = await start_app()
    uid = await post_prompt(client)
    assert (await health(client))["uids_pending"] == 1
    await read_stream(client, uid)
    assert await health(client) == {
        "status": "ok", "provider": "demo", "streams_in_flight": 0, "uids_pending": 0,
        "listeners": 0, "streams_kept": 0, "conversations": 1,  # kept for a reload
    }  # fmt: skip


async def test_unclaimed_uid_expires_after_its_ttl(start_app):
    client = await start_app(uid_ttl=0.2)
    uid = await post_prompt(client)
    reading = await wait_for_health(client, {"uids_pending": 0}, within=2.0)
    _, events, _ = await read_stream(client, uid)

    assert reading["uids_pending"] == 0  # the sweeper removed it
    assert [e.event for e in events] == ["error", "close"]


async def test_pings_keep_a_quiet_stream_alive(start_app):
    provider = ScriptedProvider([Pause(0.35), Answer("late")])
    client = await start_app(provider=provider, ping_interval=0.1)
    uid = await post_prompt(client)
    text, events, comments = await read_stream(client, uid)

    assert comments.count("ping") >= 2
    assert ": ping\n\n" in text
    assert events[-1].event == "close"


async def test_a_stream_that_goes_quiet_after_an_event_is_pinged(start_app):
    """The pinger skips streams that spoke within a ping interval; one that
    stops speaking must still get its pings."""
    provider = ScriptedProvider([Answer("early "), Pause(0.35), Answer("late")])
    client = await start_app(provider=provider, ping_interval=0.1)
    uid = await post_prompt(client)
    text, _, _ = await read_stream(client, uid)

    between = text[text.index("data: early ") : text.index("data: late")]
    assert between.count(": ping\n\n") >= 2


async def test_a_browser_that_left_is_logged_as_abandoned(start_app, caplog):
    caplog.set_level(logging.INFO, logger="stream")
    provider = ScriptedProvider([Answer("Once"), Hang()])
    client = await start_app(provider=provider)
    uid = await post_prompt(client)
    response = await client.get("/response-stream", params={"uid": uid})
    await response.content.readuntil(b"data: Once\n\n")
    response.close()
    await asyncio.wait_for(provider.closed.wait(), timeout=1.0)
    await wait_for_health(client, {"streams_kept": 0})

    assert f"stream {uid[:9]} provider=scripted outcome=abandoned" in caplog.text


@pytest.mark.parametrize("moment", ["while-thinking", "while-answering"])
async def test_client_leaving_mid_stream_stops_generation_and_frees_entry(start_app, moment):
    script = [Hang()] if moment == "while-thinking" else [Answer("Once"), Hang()]
    provider = ScriptedProvider([Status("Connecting…"), *script])
    client = await start_app(provider=provider)
    uid = await post_prompt(client)
    response = await client.get("/response-stream", params={"uid": uid})
    await response.content.readuntil(b"\n\n")
    assert (await health(client))["streams_in_flight"] == 1

    response.close()  # the browser tab goes away
    await asyncio.wait_for(provider.closed.wait(), timeout=1.0)
    reading = await wait_for_health(client, {"streams_in_flight": 0, "uids_pending": 0})
    assert reading["streams_in_flight"] == 0
    assert reading["uids_pending"] == 0


async def test_failed_ping_to_a_departed_client_ends_the_stream():
    """Even when the server runs without handler cancellation, the next ping
    finds out that the client left, and the stream lets go of everything."""
    provider = ScriptedProvider([Status("Connecting…"), Hang()])
    app = make_app(Config(ping_interval=0.05, grace_period=0), provider=provider)
    runner = web.AppRunner(app, handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with ClientSession(f"http://127.0.0.1:{port}") as session:
            response = await session.post("/process_prompt", data={"prompt": "hi"})
            uid = uid_from_snippet(await response.text())
            stream = await session.get("/response-stream", params={"uid": uid})
            await stream.content.readuntil(b"\n\n")
            stream.close()
            await asyncio.wait_for(provider.closed.wait(), timeout=2.0)
            assert (await app[STORE].counts())["streams_in_flight"] == 0
    finally:
        await runner.cleanup()


async def test_prompt_text_is_logged_only_when_asked(start_app, caplog):
    caplog.set_level(logging.INFO, logger="stream")
    secret_prompt = "my diary entry for today"
    for log_prompts in (False, True):
        client = await start_app(log_prompts=log_prompts)
        await read_stream(client, await post_prompt(client, secret_prompt))
        assert (secret_prompt in caplog.text) is log_prompts

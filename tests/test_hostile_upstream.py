"""The app in front of a hostile model server (the fake upstream, on loopback).

Each test is an attack a model server could make on the app: the stream must
end with a readable message, nothing secret may reach the page or the log, and
the app must keep answering everyone else (``/healthz``) meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import html
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from providers.openai import OpenAISettings
from tests.conftest import StartApp, post_prompt, read_stream
from tests.fake_upstream import DONE, FakeUpstream, chunk, error_body, frame
from tests.sse_client import SSEEvent

#: The longest anyone asking /healthz may wait while an attack runs.
HEALTHZ_WITHIN = 0.5
#: How often /healthz is asked while an attack runs.
HEALTHZ_EVERY = 0.05
#: A fast server's writes: this many small chunks (about 60 KB) at a time.
FRAMES_PER_WRITE = 400
#: How long a flood of 40,000 small chunks may take in all (about 1 s in
#: linear time; 10-20 s when each chunk re-reads what came before).
FLOOD_WITHIN = 5.0
UNCAPPED = 10_000_000  # --max-answer-chars out of the way of a flood that must go through
#: --max-answer-chars for the tests of that cap: far less than the model server sends.
SMALL_CAP = 1_000
CAP_NOTE = f"reached this server's limit of {SMALL_CAP:,} characters"
#: The model servers of the cap's tests take over 5 s to send all they have:
#: the cap must end the answer well before that (it takes well under 1 s here),
#: and the app let go of the server at once.
CAPPED_WITHIN = 3.0
RELEASED_WITHIN = 1.0


async def start_openai(
    start_app: StartApp,
    upstream: FakeUpstream,
    config: dict[str, Any] | None = None,
    **settings: Any,
) -> TestClient:
    openai = OpenAISettings(**{"base_url": upstream.base_url, "model": "m", **settings})
    return await start_app("openai", openai=openai, **(config or {}))


def flood(frame: bytes, count: int) -> list[bytes]:
    """``count`` copies of ``frame``, written ``FRAMES_PER_WRITE`` at a time."""
    return [frame * FRAMES_PER_WRITE] * (count // FRAMES_PER_WRITE)


def texts(events: list[SSEEvent], name: str) -> list[str]:
    return [html.unescape(event.data) for event in events if event.event == name]


@dataclass
class Watched:
    """A stream read to its end while /healthz was asked again and again."""

    events: list[SSEEvent]
    #: From the start of the read to the end of the stream.
    seconds: float
    #: The longest anyone asking /healthz meanwhile would have waited.
    slowest_healthz: float


async def read_watched(client: TestClient, uid: str) -> Watched:
    """Read the stream of ``uid`` while asking /healthz every ``HEALTHZ_EVERY`` s.

    The app shares one event loop with the fake upstream and this client, so a
    stalled loop shows in the answers' delays, also when it stalls between two
    questions: a delay counts from when the question was due.
    """
    started = time.monotonic()
    reading = asyncio.ensure_future(read_stream(client, uid))
    slowest = 0.0
    while not reading.done():
        due = time.monotonic() + HEALTHZ_EVERY
        await asyncio.sleep(HEALTHZ_EVERY)
        response = await client.get("/healthz")
        assert response.status == 200
        slowest = max(slowest, time.monotonic() - due)
    _, events, _ = await reading
    return Watched(events, time.monotonic() - started, slowest)


# --- A: white space that keeps the <think> splitter undecided ---


async def test_a_flood_of_white_space_does_not_stall_the_app(
    start_app: StartApp, fake_upstream: FakeUpstream
) -> None:
    """40,000 pieces of white space cost linear time: everyone else is still served."""
    spaces = flood(chunk(content=" " * 8), 40_000)
    fake_upstream.reply([*spaces, chunk(content="Done."), chunk(finish_reason="stop"), DONE])
    client = await start_openai(start_app, fake_upstream, {"max_answer_chars": UNCAPPED})
    watched = await read_watched(client, await post_prompt(client))

    assert "".join(texts(watched.events, "answer_chunk")).endswith("Done.")
    assert watched.seconds < FLOOD_WITHIN, watched.seconds
    assert watched.slowest_healthz < HEALTHZ_WITHIN, watched.slowest_healthz


async def test_a_flood_of_held_text_does_not_stall_the_app(
    start_app: StartApp, fake_upstream: FakeUpstream
) -> None:
    """Untagged text is held until a </think> or the end: 40,000 pieces of it
    are searched for the tag once each, not again with every new piece."""
    words = flood(chunk(content="Held on. "), 40_000)
    fake_upstream.reply([*words, chunk(finish_reason="stop"), DONE])
    client = await start_openai(
        start_app, fake_upstream, {"max_answer_chars": UNCAPPED}, reasoning_hold=math.inf
    )
    watched = await read_watched(client, await post_prompt(client))

    assert "".join(texts(watched.events, "answer_chunk")) == "Held on. " * 40_000
    assert watched.seconds < FLOOD_WITHIN, watched.seconds
    assert watched.slowest_healthz < HEALTHZ_WITHIN, watched.slowest_healthz


# --- the answer cap releases the model server ---


def slow_flood(content: str, total_bytes: int) -> list[bytes]:
    """Chunks of ``content``, ``total_bytes`` in all, in writes of about 64 KB
    (a reply's ``delay`` apart)."""
    frame = chunk(content=content)
    per_write = 64_000 // len(frame)
    return [frame * per_write] * (total_bytes // (len(frame) * per_write))


async def read_capped(client: TestClient, fake_upstream: FakeUpstream) -> list[SSEEvent]:
    """Read a stream that the cap must end in time; check the model server was let go."""
    async with asyncio.timeout(CAPPED_WITHIN):
        _, events, _ = await read_stream(client, await post_prompt(client))
    await fake_upstream.wait_disconnected(within=RELEASED_WITHIN)
    (final,) = texts(events, "final_answer")
    assert CAP_NOTE in final
    return events


async def test_an_answer_past_the_cap_releases_the_model_server(
    start_app: StartApp, fake_upstream: FakeUpstream
) -> None:
    """A model that writes on and on: the answer ends at --max-answer-chars with
    a note, and the connection is closed, so the model server stops generating."""
    sentence = "All work and no play makes Jack a dull boy. "
    fake_upstream.reply([chunk(content=sentence)] * 2_000, delay=0.005)  # over 10 s
    client = await start_openai(  # no hold: the text is answer as it comes
        start_app, fake_upstream, {"max_answer_chars": SMALL_CAP}, reasoning_hold=0
    )
    events = await read_capped(client, fake_upstream)

    assert "".join(texts(events, "answer_chunk")) == (sentence * 100)[:SMALL_CAP]


@pytest.mark.parametrize(
    ("content", "hold"),
    [(" " * 1_000, 1.0),  # white space keeps the <think> splitter undecided
     ("Held on. " * 100, math.inf)],  # untagged text is held until </think> or the end
    ids=["white-space", "held-text"],
)  # fmt: skip
async def test_text_the_splitter_keeps_back_is_capped_too(
    start_app: StartApp, fake_upstream: FakeUpstream, content: str, hold: float
) -> None:
    """8 MB of it, in writes 50 ms apart: the splitter gives it out past its
    bound, so the cap sees it and ends the answer, instead of the app keeping
    it all in memory, out of the cap's sight, until the model server is done."""
    fake_upstream.reply(slow_flood(content, 8_000_000), delay=0.05)  # over 6 s
    client = await start_openai(
        start_app, fake_upstream, {"max_answer_chars": SMALL_CAP}, reasoning_hold=hold
    )
    await read_capped(client, fake_upstream)


# --- B: a compressed stream, although the app asks for the identity encoding ---


async def test_a_gzip_bomb_is_refused_unread(
    start_app: StartApp, fake_upstream: FakeUpstream
) -> None:
    """150 KB of gzip that would inflate to 39 MB of chunks: never inflated."""
    inflated = chunk(content="Boom! ") * 200_000
    fake_upstream.reply(gzip.compress(inflated), headers={"Content-Encoding": "gzip"})
    client = await start_openai(start_app, fake_upstream)
    watched = await read_watched(client, await post_prompt(client))

    assert texts(watched.events, "error") == [
        "The model server sent a compressed (gzip) stream, which this app does not accept."
    ]  # and the operator's log asks whether a proxy compresses it
    assert not texts(watched.events, "answer_chunk")
    assert watched.slowest_healthz < HEALTHZ_WITHIN, watched.slowest_healthz


# --- C: a chunk that is not JSON ---


async def test_a_malformed_chunk_is_reported_not_skipped(
    start_app: StartApp, fake_upstream: FakeUpstream
) -> None:
    """Text that cannot be read must not vanish from the answer without a word."""
    torn = b'data: {"choices": [{"delta": {"content": " the middle"}}\n\n'
    fake_upstream.reply([chunk(content="The start,"), torn, chunk(content=" the end."), DONE])
    client = await start_openai(start_app, fake_upstream)
    _, events, _ = await read_stream(client, await post_prompt(client))

    assert "".join(texts(events, "answer_chunk")) == "The start,"
    assert texts(events, "error") == [
        "The model server sent a chunk that is not a JSON object: "
        '{"choices": [{"delta": {"content": " the middle"}}'
    ]


# --- a long upstream message: cleaned in linear time ---


async def test_a_long_error_message_does_not_stall_the_app(
    start_app: StartApp, fake_upstream: FakeUpstream
) -> None:
    """A 20,000-character word used to take the redaction pattern seconds."""
    long_word = "A" * 20_000
    fake_upstream.reply([chunk(content="So far"), frame({"error": {"message": long_word}})])
    client = await start_openai(start_app, fake_upstream)
    watched = await read_watched(client, await post_prompt(client))

    (error,) = texts(watched.events, "error")
    assert error.startswith("The model server reported an error: AAAA") and error.endswith("A…")
    assert watched.slowest_healthz < HEALTHZ_WITHIN, watched.slowest_healthz


# --- D: the API key echoed in another form ---

#: Each of its runs of 8 characters holds a letter, so no run reads the same
#: in upper case: the echo in upper case tests that redaction ignores case.
KEY = "sk-proj-AbCdEfGhIjKlMnOpQrSt"
KEY_ECHOED = f"{KEY.upper()}, {KEY[:12]}… and {KEY[:10]} {KEY[10:]}"


def key_runs_in(text: str) -> list[str]:
    """The runs of 8 characters of ``KEY`` in ``text``, in any case."""
    key, seen = KEY.casefold(), text.casefold()
    return [key[i : i + 8] for i in range(len(key) - 7) if key[i : i + 8] in seen]


@pytest.mark.parametrize("where", ["http-error", "in-stream-error"])
async def test_an_echoed_key_reaches_neither_page_nor_log(
    start_app: StartApp, fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    caplog.set_level(logging.DEBUG)
    message = f"Invalid key {KEY_ECHOED} for this model."
    if where == "http-error":
        fake_upstream.reply(error_body(message), status=400, content_type="application/json")
    else:
        fake_upstream.reply([chunk(content="Hi"), frame({"error": {"message": message}})])
    client = await start_openai(start_app, fake_upstream, {"log_prompts": True}, api_key=KEY)
    page = await (await client.get("/")).text()
    text, events, _ = await read_stream(client, await post_prompt(client))

    (error,) = texts(events, "error")
    assert error.endswith(
        "Invalid key [redacted] [redacted] and [redacted] [redacted] for this model."
    )
    for seen in (page, text, caplog.text):
        assert not key_runs_in(seen)


async def test_a_model_named_like_the_key_is_not_shown(
    start_app: StartApp, fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    models = {"data": [{"id": KEY.upper()}, {"id": "small-model"}]}
    fake_upstream.reply(json.dumps(models).encode(), content_type="application/json")
    fake_upstream.reply([chunk(content="Hello."), chunk(finish_reason="stop"), DONE])
    client = await start_openai(start_app, fake_upstream, model="", api_key=KEY)
    text, events, _ = await read_stream(client, await post_prompt(client))

    assert fake_upstream.requests[1].json["model"] == "small-model"
    assert "".join(texts(events, "answer_chunk")) == "Hello."
    assert not key_runs_in(text) and not key_runs_in(caplog.text)


# --- E: a user and password in the base URL ---

USER, PASSWORD = "me", "hunter2"


async def test_credentials_in_the_base_url_go_upstream_and_nowhere_else(
    start_app: StartApp, fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_upstream.reply([chunk(content="Hello."), chunk(finish_reason="stop"), DONE])
    fake_upstream.reply(b"Not here", status=404, content_type="text/plain")
    base_url = str(URL(fake_upstream.base_url).with_user(USER).with_password(PASSWORD))
    client = await start_openai(start_app, fake_upstream, base_url=base_url)
    page = await (await client.get("/")).text()
    answered, events, _ = await read_stream(client, await post_prompt(client))
    refused, errors, _ = await read_stream(client, await post_prompt(client))

    assert "".join(texts(events, "answer_chunk")) == "Hello."
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert fake_upstream.requests[0].headers["Authorization"] == basic
    assert texts(errors, "error") == ["The model server answered 404 Not Found."]
    for seen in (page, answered, refused, caplog.text):
        assert PASSWORD not in seen and f"{USER}:" not in seen


async def test_credentials_in_an_unreachable_base_url_reach_neither_page_nor_log(
    start_app: StartApp, unused_tcp_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    base_url = f"http://{USER}:{PASSWORD}@127.0.0.1:{unused_tcp_port}/v1"
    client = await start_app("openai", openai=OpenAISettings(base_url=base_url, model="m"))
    text, events, _ = await read_stream(client, await post_prompt(client))

    assert texts(events, "error") == [
        f"Could not reach the model server at 127.0.0.1:{unused_tcp_port}: Connection refused."
    ]
    assert PASSWORD not in text and PASSWORD not in caplog.text


# --- a lone surrogate from the model ---


async def test_a_lone_surrogate_does_not_crash_the_stream(
    start_app: StartApp, fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """JSON can spell half a surrogate pair ("\\ud83d"): it must reach the page as U+FFFD."""
    fake_upstream.reply(
        [
            b'data: {"choices": [{"delta": {"reasoning_content": "Hm \\ud83d"}}]}\n\n',
            b'data: {"choices": [{"delta": {"content": "A \\udc00 B"}}]}\n\n',
            b'data: {"error": {"message": "Bad \\ud83d thing"}}\n\n',
        ]
    )
    client = await start_openai(start_app, fake_upstream, reasoning_hold=0)
    _, events, _ = await read_stream(client, await post_prompt(client))

    assert "".join(texts(events, "answer_chunk")) == "A \ufffd B"
    assert texts(events, "error") == ["The model server reported an error: Bad \ufffd thing"]
    assert "the provider failed" not in caplog.text


# --- an event that never ends ---


async def test_an_event_that_never_ends_is_cut_off(
    start_app: StartApp, fake_upstream: FakeUpstream
) -> None:
    """Data lines without the blank line that ends an event: held in memory, they
    would pile up for as long as the server sends them."""
    line = b"data: " + b"x" * 1018 + b"\n"  # 1 KB
    fake_upstream.reply([chunk(content="So far"), *[line * 64] * 160])  # 10 MB
    client = await start_openai(start_app, fake_upstream, reasoning_hold=0)
    watched = await read_watched(client, await post_prompt(client))

    assert "".join(texts(watched.events, "answer_chunk")) == "So far"
    assert texts(watched.events, "error") == ["The model server sent an event longer than 4 MiB."]
    assert fake_upstream.requests and await fake_upstream.wait_disconnected(within=1)
    assert watched.slowest_healthz < HEALTHZ_WITHIN, watched.slowest_healthz


# --- a retry hint that is no number ---


async def test_an_infinite_retry_hint_does_not_crash_the_stream(
    start_app: StartApp, fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """float("inf") parses; rounding it up for the message raised OverflowError."""
    fake_upstream.reply(
        error_body("Slow down."), status=429, headers={"Retry-After": "inf"},
        content_type="application/json",
    )  # fmt: skip
    client = await start_openai(start_app, fake_upstream)
    _, events, _ = await read_stream(client, await post_prompt(client))

    assert texts(events, "error") == ["The model server answered 429 Too Many Requests: Slow down."]
    assert "the provider failed" not in caplog.text


# --- JSON nested too deep to parse ---

DEEP = b"[" * 100_000 + b"]" * 100_000


DEEP_REPLIES = {
    "list-of-models": (
        {"body": b'{"data": ' + DEEP + b"}", "content_type": "application/json"},
        "",
        "lists none.",
    ),
    "error-body": (
        {"body": DEEP, "status": 400, "content_type": "application/json"},
        "m",
        "The model server answered 400 Bad Request.",
    ),
    "chunk": (
        {"body": [chunk(content="So far"), b"data: " + DEEP + b"\n\n"]},
        "m",
        "The model server sent a chunk that is not a JSON object: [[[[",
    ),
}


@pytest.mark.parametrize(("reply", "model", "says"), DEEP_REPLIES.values(), ids=DEEP_REPLIES.keys())
async def test_json_nested_too_deep_does_not_crash_the_stream(
    start_app: StartApp,
    fake_upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    reply: dict[str, Any],
    model: str,
    says: str,
) -> None:
    """json.loads raises RecursionError, not ValueError, on it."""
    fake_upstream.reply(**reply)
    client = await start_openai(start_app, fake_upstream, model=model)
    _, events, _ = await read_stream(client, await post_prompt(client))

    (error,) = texts(events, "error")
    assert says in error
    assert "the provider failed" not in caplog.text

"""The app in front of a hostile model server (the fake upstream, on loopback).

Each test is an attack a model server could make on the app: the stream must
end with a readable message, nothing secret may reach the page or the log, and
the app must keep answering everyone else (``/healthz``) meanwhile.
"""

from __future__ import annotations

import asyncio
import gzip
import html
import math
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from aiohttp.test_utils import TestClient

from providers.openai import OpenAISettings
from tests.conftest import StartApp, post_prompt, read_stream
from tests.fake_upstream import DONE, FakeUpstream, chunk
from tests.sse_client import SSEEvent

#: The slowest /healthz answer allowed while an attack runs.
HEALTHZ_WITHIN = 0.5
#: How often /healthz is asked while an attack runs.
HEALTHZ_EVERY = 0.05
#: A fast server's writes: this many small chunks (about 60 KB) at a time.
FRAMES_PER_WRITE = 400

T = TypeVar("T")


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


async def slowest_healthz_during(client: TestClient, work: Awaitable[T]) -> tuple[T, float]:
    """Run ``work`` while asking /healthz again and again; return its result and
    the longest a /healthz answer took (the app shares one event loop with
    the fake upstream, so a stalled loop shows here)."""
    task = asyncio.ensure_future(work)
    slowest = 0.0
    while not task.done():
        asked = time.monotonic()
        response = await client.get("/healthz")
        assert response.status == 200
        slowest = max(slowest, time.monotonic() - asked)
        await asyncio.sleep(HEALTHZ_EVERY)
    return await task, slowest


# --- A: white space that keeps the <think> splitter undecided ---


async def test_a_flood_of_white_space_does_not_stall_the_app(
    start_app: StartApp, fake_upstream: FakeUpstream
) -> None:
    """40,000 pieces of white space cost linear time: everyone else is still served."""
    spaces = flood(chunk(content=" " * 8), 40_000)
    fake_upstream.reply([*spaces, chunk(content="Done."), chunk(finish_reason="stop"), DONE])
    client = await start_openai(start_app, fake_upstream)
    uid = await post_prompt(client)
    (_, events, _), slowest = await slowest_healthz_during(client, read_stream(client, uid))

    assert "".join(texts(events, "answer_chunk")).endswith("Done.")
    assert slowest < HEALTHZ_WITHIN, f"/healthz took {slowest:.2f} s"


async def test_a_flood_of_held_text_does_not_stall_the_app(
    start_app: StartApp, fake_upstream: FakeUpstream
) -> None:
    """Untagged text is held until a </think> or the end: 40,000 pieces of it
    are searched for the tag once each, not again with every new piece."""
    words = flood(chunk(content="Held on. "), 40_000)
    fake_upstream.reply([*words, chunk(finish_reason="stop"), DONE])
    client = await start_openai(start_app, fake_upstream, reasoning_hold=math.inf)
    uid = await post_prompt(client)
    (_, events, _), slowest = await slowest_healthz_during(client, read_stream(client, uid))

    assert "".join(texts(events, "answer_chunk")) == "Held on. " * 40_000
    assert slowest < HEALTHZ_WITHIN, f"/healthz took {slowest:.2f} s"


# --- B: a compressed stream, although the app asks for the identity encoding ---


async def test_a_gzip_bomb_is_refused_unread(
    start_app: StartApp, fake_upstream: FakeUpstream
) -> None:
    """150 KB of gzip that would inflate to 39 MB of chunks: never inflated."""
    inflated = chunk(content="Boom! ") * 200_000
    fake_upstream.reply(gzip.compress(inflated), headers={"Content-Encoding": "gzip"})
    client = await start_openai(start_app, fake_upstream)
    uid = await post_prompt(client)
    (_, events, _), slowest = await slowest_healthz_during(client, read_stream(client, uid))

    assert texts(events, "error") == [
        "The model server sent a compressed (gzip) stream, which this app does not accept: "
        "it asks for an uncompressed one. Is a proxy in between compressing it?"
    ]
    assert not texts(events, "answer_chunk")
    assert slowest < HEALTHZ_WITHIN, f"/healthz took {slowest:.2f} s"


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

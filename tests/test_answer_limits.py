"""A model that says too much: the answer is capped, the render never stalls the
server, and a finished answer's memory is freed at once."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from collections.abc import AsyncGenerator

from providers.events import Answer, ChatRequest, ProviderEvent, Reasoning
from tests.conftest import Hang, ScriptedProvider, post_prompt, read_stream
from tests.waiting import eventually, healthz

BOUND_S = 10.0


async def test_an_answer_past_the_limit_ends_with_a_note_and_releases_the_model(start_app):
    provider = ScriptedProvider([Answer("x" * 1000) for _ in range(30)] + [Hang()])
    client = await start_app(provider=provider, max_answer_chars=10_000)
    async with asyncio.timeout(BOUND_S):
        _, events, _ = await read_stream(client, await post_prompt(client))
        await provider.closed.wait()  # the upstream is released

    assert [event.event for event in events][-2:] == ["final_answer", "close"]
    streamed = "".join(event.data for event in events if event.event == "answer_chunk")
    assert streamed == "x" * 10_000
    assert "reached this server&#39;s limit of 10,000 characters" in events[-2].data


async def test_reasoning_past_the_limit_ends_the_answer_too(start_app):
    provider = ScriptedProvider([Reasoning("r" * 1000) for _ in range(30)] + [Hang()])
    client = await start_app(provider=provider, max_answer_chars=5_000)
    async with asyncio.timeout(BOUND_S):
        _, events, _ = await read_stream(client, await post_prompt(client))
    assert events[-2].event == "final_answer"
    assert events[-2].data.count("r") >= 5_000


async def test_a_slow_render_does_not_stall_other_requests(start_app):
    # 100,000 `[` take markdown-it over a second to render: done on the event
    # loop, every other request would wait for it. This test shares the
    # server's loop, so a stalled loop shows as one slow turn of its own.
    provider = ScriptedProvider([Answer("[" * 1000) for _ in range(100)])
    client = await start_app(provider=provider)
    uid = await post_prompt(client)
    slowest = 0.0
    reading = asyncio.create_task(read_stream(client, uid))
    async with asyncio.timeout(BOUND_S * 2):
        while not reading.done():
            started = time.monotonic()
            await client.get("/healthz")
            await asyncio.sleep(0.02)
            slowest = max(slowest, time.monotonic() - started)
    _, events, _ = reading.result()
    assert events[-2].event == "final_answer"
    assert slowest < 0.5


async def streams_kept(client) -> bool:
    return (await healthz(client))["streams_kept"] == 0


class FreshTextProvider:
    """Streams ``pieces`` new strings of ``size`` characters: nothing else holds them."""

    name = "fresh"
    model = "fresh"

    def __init__(self, pieces: int, size: int) -> None:
        self.pieces, self.size = pieces, size

    async def models(self) -> list[str]:
        return []

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ProviderEvent, None]:
        for index in range(self.pieces):
            yield Answer(chr(ord("a") + index) * self.size)


async def test_a_finished_answer_is_freed_without_waiting_for_the_cycle_collector(start_app):
    # The raised GC thresholds make full collections rare: anything a
    # finished stream keeps in a reference cycle stays for minutes.
    provider = FreshTextProvider(pieces=8, size=500_000)
    client = await start_app(provider=provider, max_answer_chars=10_000_000)
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        # Read the stream without keeping it: the test client would keep a body.
        uid = await post_prompt(client)
        async with client.session.get(
            client.make_url("/response-stream"), params={"uid": uid}
        ) as response:
            received, tail = 0, b""
            async for data in response.content.iter_chunked(64 * 1024):
                received, tail = received + len(data), (tail + data)[-200:]
        assert received > 8_000_000 and b"event: close" in tail
        # The store lets the stream go (grace 0).
        await eventually(lambda: streams_kept(client), within=BOUND_S)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        gc.enable()
    # What stays is the answer the conversation keeps (4 MB, one string), not
    # its pieces, its stream's frames or its rendered HTML (as much again each).
    answer = provider.pieces * provider.size
    assert answer < held < answer + 1_000_000

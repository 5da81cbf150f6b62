"""Shared fixtures: the app on a real loopback port, and a provider tests can script."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from providers.events import ChatRequest, Provider, ProviderEvent
from server import Config, make_app
from tests.snippet import uid_from_snippet
from tests.sse_client import SSEEvent, parse_stream

# The scriptable fake OpenAI-compatible server: the `fake_upstream` fixture.
pytest_plugins = ["tests.fake_upstream", "tests.redis_server"]


@dataclass(frozen=True)
class Pause:
    """In a script: wait this long before the next event."""

    seconds: float


@dataclass(frozen=True)
class Hang:
    """In a script: wait until the stream is closed (the browser left)."""


@dataclass(frozen=True)
class Crash:
    """In a script: raise, as a provider with a bug would."""

    error: Exception


@dataclass
class ScriptedProvider:
    """A real provider whose events a test writes out in advance.

    ``started`` counts the streams begun and ``closed`` is set when the last
    stream's iterator was closed, which is how tests see that the server let
    go of a generation.
    """

    script: list[Any]
    name: str = "scripted"
    model: str = "scripted-model"
    started: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    #: The models it lists, for the page's picker; and the requests it was sent.
    listed: list[str] = field(default_factory=list)
    requests: list[ChatRequest] = field(default_factory=list)

    async def models(self) -> list[str]:
        return self.listed

    async def stream(self, request: ChatRequest) -> AsyncIterator[ProviderEvent]:
        self.requests.append(request)
        self.started += 1
        self.closed.clear()
        try:
            for step in self.script:
                if isinstance(step, Pause):
                    await asyncio.sleep(step.seconds)
                elif isinstance(step, Hang):
                    await asyncio.Event().wait()
                elif isinstance(step, Crash):
                    raise step.error
                else:
                    yield step
        finally:
            self.closed.set()


TEST_DEFAULTS = {
    # The relay's tests read an answer as its chunks joined: plain, escaped text.
    # Markdown rendered while it streams has its own tests (test_live_markdown.py,
    # and the browser tests, which run the app's real defaults).
    "plain_stream": True,
    "demo_delay": 0.0,
    "answer_window": 0.0,
    "thought_interval": 0.0,
    "grace_period": 0.0,
    "max_streams_per_client": 1000,
    "max_pending_per_client": 1000,
    "max_requests_per_client": 10_000,
    "prompts_per_minute": 1000,
}

StartApp = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def start_app(aiohttp_client: Any) -> StartApp:
    """Start the app on 127.0.0.1 with a test config; returns an HTTP client for it.

    ``start_app(provider=…, uid_ttl=…)``: ``provider`` is a provider object
    (such as a ScriptedProvider) or a provider's name ("demo", "openai");
    other keyword arguments override ``Config`` fields. Unless a test says otherwise, the
    demo provider runs instantly, every event goes out at once (no pacing), a
    departed browser's generation stops at once, and the per-client limits
    are out of the way.
    """

    async def start(provider: Provider | str | None = None, **overrides: Any) -> TestClient:
        if isinstance(provider, str):  # a provider's name: the app makes it from the config
            provider, overrides = None, {**overrides, "provider": provider}
        config = Config(**{**TEST_DEFAULTS, **overrides})
        return await aiohttp_client(make_app(config, provider=provider))

    return start


async def post_prompt(client: TestClient, prompt: str = "Hello") -> str:
    """POST a prompt and return the uid from the snippet."""
    response = await client.post("/process_prompt", data={"prompt": prompt})
    assert response.status == 200, await response.text()
    return uid_from_snippet(await response.text())


async def read_stream(client: TestClient, uid: str) -> tuple[str, list[SSEEvent], list[str]]:
    """GET the stream to its end: the raw text, the events and the comments."""
    response = await client.get("/response-stream", params={"uid": uid})
    assert response.status == 200
    text = await response.text()
    events, comments = parse_stream(text)
    return text, events, comments

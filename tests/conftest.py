"""Shared fixtures: the app on a real loopback port, and a provider tests can script."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from providers.events import Provider, ProviderEvent
from server import Config, make_app
from tests.sse_client import SSEEvent, parse_stream


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

    async def stream(self, prompt: str) -> AsyncIterator[ProviderEvent]:
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


StartApp = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def start_app(aiohttp_client: Any) -> StartApp:
    """Start the app on 127.0.0.1 with a test config; returns an HTTP client for it.

    ``start_app(provider=…, uid_ttl=…)``: keyword arguments other than
    ``provider`` override ``Config`` fields. The demo provider runs instantly.
    """

    async def start(provider: Provider | None = None, **overrides: Any) -> TestClient:
        config = Config(**{"demo_delay": 0.0, **overrides})
        return await aiohttp_client(make_app(config, provider=provider))

    return start


async def post_prompt(client: TestClient, prompt: str = "Hello") -> str:
    """POST a prompt and return the uid from the snippet."""
    response = await client.post("/process_prompt", data={"prompt": prompt})
    assert response.status == 200, await response.text()
    snippet = await response.text()
    return snippet.split("/response-stream?uid=", 1)[1].split('"', 1)[0]


async def read_stream(client: TestClient, uid: str) -> tuple[str, list[SSEEvent], list[str]]:
    """GET the stream to its end: the raw text, the events and the comments."""
    response = await client.get("/response-stream", params={"uid": uid})
    assert response.status == 200
    text = await response.text()
    events, comments = parse_stream(text)
    return text, events, comments

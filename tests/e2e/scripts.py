"""Small helpers to write a model's behaviour for the browser tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from providers.events import ChatRequest, ProviderEvent
from tests.conftest import ScriptedProvider

# Longer than the app's pacing (the thought line changes at most every 0.25 s,
# answer text is gathered for 0.04 s), so each step reaches the page alone.
THOUGHT_PAUSE_S = 0.3
CHUNK_PAUSE_S = 0.1
# Chromium reconnects a stream that ended without `close` after about 3 s
# (1 s when the server sends `retry: 1000`): 5 s of silence shows it did not.
NO_RECONNECT_WATCH_S = 5.0


def paced(steps: Iterable[Any], pause: Any) -> list[Any]:
    """The steps with ``pause`` after each, so the page shows them one by one.

    ``pause`` is a script's pause step: conftest's ``Pause`` for a
    ScriptedProvider, fake_upstream's ``Pause`` for the fake model server. It
    must be longer than the app's pacing (``THOUGHT_PAUSE_S``, ``CHUNK_PAUSE_S``),
    or the server rightly sends several steps as one.
    """
    script: list[Any] = []
    for step in steps:
        script += [step, pause]
    return script


@dataclass
class ByPrompt:
    """A provider that answers each prompt with its own ScriptedProvider.

    One app has one provider; this lets a test tell two streams apart and see
    which of them the server ended.
    """

    scripts: dict[str, ScriptedProvider]
    name: str = "by-prompt"
    model: str = "scripted-model"

    async def models(self) -> list[str]:
        return []

    def stream(self, request: ChatRequest) -> AsyncIterator[ProviderEvent]:
        return self.scripts[request.prompt].stream(request)


@dataclass
class InOrder:
    """A provider that answers the n-th request with the n-th ScriptedProvider:
    a prompt answered again (Regenerate, Retry, Edit) gets a different answer."""

    scripts: list[ScriptedProvider]
    name: str = "in-order"
    model: str = "scripted-model"
    calls: int = 0

    async def models(self) -> list[str]:
        return []

    def stream(self, request: ChatRequest) -> AsyncIterator[ProviderEvent]:
        self.calls += 1
        return self.scripts[self.calls - 1].stream(request)

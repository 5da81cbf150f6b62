"""A scriptable fake OpenAI-compatible model server, for tests, on 127.0.0.1.

It is a real aiohttp web server on a real loopback socket: the code under test
connects, sends its request and reads the bytes exactly as it would from
llama.cpp or api.openai.com. Nothing is mocked.

Use it through the ``fake_upstream`` fixture (register it with
``pytest_plugins = ["tests.fake_upstream"]`` in ``tests/conftest.py``)::

    from tests.fake_upstream import DONE, chunk

    async def test_hello(fake_upstream):
        fake_upstream.reply(
            [chunk(role="assistant", content=""), chunk(content="Hi!"),
             chunk(finish_reason="stop"), DONE],
            split="bytes",
        )
        settings = OpenAISettings(base_url=fake_upstream.base_url, model="m")
        ...                                       # stream through the provider
        assert fake_upstream.requests[0].json["stream"] is True

What can be scripted (``reply(...)``, one queued ``Reply`` per request; when
the queue is empty ``fallback`` answers, by default a 500 that says so):

- ``body``: one ``bytes`` blob, or a list of frames (``bytes``) and ``Pause``\\ s;
- ``status``, ``content_type`` (``text/event-stream`` by default) and extra
  ``headers``; a body that is not an event stream is sent whole, with a
  ``Content-Length``, like a server's JSON or HTML error page;
- ``split``: how each frame is written: ``"whole"``, ``"bytes"`` (one byte per
  write, each drained), ``"random"`` (random cuts from a seeded RNG, ``seed``);
- ``delay`` between writes, ``headers_delay`` before the status line;
- ``stall``: after the body, hang up to this many seconds before ending it
  (for timeouts, and "the model is thinking" silences);
- ``abort``: end by dropping the connection instead of ending the body.

Every wait ends early when the client goes away (the test server cancels the
handler), so nothing outlives its test.

What it records: ``requests``, one ``RecordedRequest`` per request (method,
path, headers, parsed JSON body, the client's address), and the moment a client left before its
response was complete: ``await fake_upstream.wait_disconnected(within)``
returns that moment on the event loop's clock. ``await
fake_upstream.wait_request(within)`` waits for a request to arrive. Both fail
with ``TimeoutError`` after ``within`` seconds.

Frame builders: ``chunk(...)`` (a ``chat.completion.chunk`` from delta keys),
``usage_chunk(...)``, ``frame(data, event=...)``, ``comment(...)``, ``DONE``,
and ``error_body(...)`` for OpenAI-shaped HTTP error bodies.

For the client side: the ``client_session`` fixture (an ``aiohttp.ClientSession``
made as the app makes its own), and ``collect(provider)``, which runs a stream
to its end and gathers it into a ``StreamResult`` (joined reasoning and
answer, the failure, …) after checking the event contract.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import pytest
from aiohttp import web

from providers.events import (
    Answer,
    ChatRequest,
    Failure,
    Finished,
    Provider,
    ProviderEvent,
    Reasoning,
    Status,
    Usage,
)
from providers.openai import make_session
from tests.chat import chat

SSE_CONTENT_TYPE = "text/event-stream"
SplitMode = Literal["whole", "bytes", "random"]
SPLIT_MODES: tuple[SplitMode, ...] = ("whole", "bytes", "random")
#: Random writes are at most this fraction of a frame, so even a large frame
#: arrives in a handful of reads.
RANDOM_PIECES_PER_FRAME = 8

#: Loop turns a client in the same event loop needs to read one write (see
#: ``_let_the_client_read``).
LOOP_TURNS_PER_READ = 2

DONE = b"data: [DONE]\n\n"
_UNSET: Any = object()


# --- frames ---


def frame(data: str | Mapping[str, Any] | Sequence[Any], event: str | None = None) -> bytes:
    """One SSE event: ``event:`` (optional) and one ``data:`` line, then a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


def chunk(
    *,
    finish_reason: str | None = None,
    usage: Any = _UNSET,
    extra: Mapping[str, Any] | None = None,
    **delta: Any,
) -> bytes:
    """A ``chat.completion.chunk`` frame whose delta holds exactly the given keys.

    ``chunk(content=None, reasoning_content="Hm")`` sends ``"content": null``;
    keys not given are absent. ``usage`` and ``extra`` add top-level keys.
    """
    body: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "fake-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    if usage is not _UNSET:
        body["usage"] = usage
    body.update(extra or {})
    return frame(body)


def usage_chunk(prompt_tokens: int, completion_tokens: int) -> bytes:
    """The extra chunk ``stream_options.include_usage`` asks for: no choices, just usage."""
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return frame(
        {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [], "usage": usage}
    )


def comment(text: str = "keep-alive") -> bytes:
    """An SSE comment, as servers send to keep a quiet connection open."""
    return f": {text}\n\n".encode()


def error_body(message: str, type_: str = "server_error", code: Any = None) -> bytes:
    """An HTTP error body in OpenAI's shape, pretty-printed as OpenAI does."""
    error = {"message": message, "type": type_, "param": None, "code": code}
    return json.dumps({"error": error}, indent=2).encode()


# --- the script ---


@dataclass(frozen=True)
class Pause:
    """A silence between two frames, in seconds."""

    seconds: float


@dataclass(frozen=True)
class Reply:
    """One scripted response (see the module docstring)."""

    body: bytes | Sequence[bytes | Pause] = ()
    status: int = 200
    content_type: str = SSE_CONTENT_TYPE
    headers: Mapping[str, str] = field(default_factory=dict)
    split: SplitMode = "whole"
    seed: int = 0
    delay: float = 0.0
    headers_delay: float = 0.0
    stall: float = 0.0
    abort: bool = False

    def frames(self) -> list[bytes | Pause]:
        return [self.body] if isinstance(self.body, bytes) else list(self.body)

    def writes(self) -> Iterator[bytes | Pause]:
        """The body cut into writes according to ``split``."""
        rng = random.Random(self.seed)
        for item in self.frames():
            if isinstance(item, Pause) or self.split == "whole":
                yield item
            elif self.split == "bytes":
                yield from (item[i : i + 1] for i in range(len(item)))
            else:
                yield from _random_pieces(item, rng)


def _random_pieces(data: bytes, rng: random.Random) -> Iterator[bytes]:
    longest = max(1, len(data) // RANDOM_PIECES_PER_FRAME * 2)
    start = 0
    while start < len(data):
        end = start + rng.randint(1, longest)
        yield data[start:end]
        start = end


NOTHING_SCRIPTED = Reply(
    body=error_body("fake_upstream: no reply was scripted for this request"),
    status=500,
    content_type="application/json",
)


@dataclass
class RecordedRequest:
    """What a client sent."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    #: The client's (host, port): two requests with one peer shared a connection.
    peer: tuple[str, int] | None


# --- the server ---


class FakeUpstream:
    """The fake server's script and records; ``app()`` is what the test server runs."""

    def __init__(self) -> None:
        self.base_url = ""  # set once the server listens: http://127.0.0.1:PORT/v1
        self.requests: list[RecordedRequest] = []
        self.fallback = NOTHING_SCRIPTED
        #: False: each response closes its connection, so the client keeps no idle
        #: connection here (and this server no task waiting on one).
        self.keep_alive = True
        self.gone_at: float | None = None
        self._replies: deque[Reply] = deque()
        self._gone = asyncio.Event()
        self._arrived = asyncio.Event()

    def reply(self, body: bytes | Sequence[bytes | Pause] = (), **options: Any) -> Reply:
        """Queue the response to the next request; ``options`` are ``Reply``'s fields."""
        scripted = Reply(body=body, **options)
        self._replies.append(scripted)
        return scripted

    async def wait_request(self, within: float) -> RecordedRequest:
        """Wait until a request has arrived (``within`` seconds at most); return the latest."""
        async with asyncio.timeout(within):
            await self._arrived.wait()
        return self.requests[-1]

    async def wait_disconnected(self, within: float) -> float:
        """Wait until a client leaves before its response is complete; return when it did.

        Fails with ``TimeoutError`` if no client left ``within`` seconds.
        """
        async with asyncio.timeout(within):
            await self._gone.wait()
        assert self.gone_at is not None
        return self.gone_at

    def app(self) -> web.Application:
        app = web.Application()
        # Any path: a client that forgot /v1 reaches us too, and gets the script.
        app.router.add_route("*", "/{path:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await _record(request))
        self._arrived.set()
        scripted = self._replies.popleft() if self._replies else self.fallback
        try:
            await asyncio.sleep(scripted.headers_delay)
            response = (
                web.StreamResponse(
                    status=scripted.status,
                    headers={"Content-Type": scripted.content_type, **scripted.headers},
                )
                if scripted.content_type.startswith(SSE_CONTENT_TYPE)
                else _whole(scripted)
            )
            if not self.keep_alive:
                response.force_close()
            if isinstance(response, web.Response):
                return response
            return await self._stream(request, scripted, response)
        except (asyncio.CancelledError, ConnectionResetError):
            self._note_gone()
            raise

    async def _stream(
        self, request: web.Request, scripted: Reply, response: web.StreamResponse
    ) -> web.StreamResponse:
        await response.prepare(request)
        for write in scripted.writes():
            if isinstance(write, Pause):
                await asyncio.sleep(write.seconds)
                continue
            await response.write(write)
            await asyncio.sleep(scripted.delay)
            await _let_the_client_read()
        await asyncio.sleep(scripted.stall)
        if scripted.abort:
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write_eof()
        return response

    def _note_gone(self) -> None:
        if not self._gone.is_set():
            self.gone_at = asyncio.get_running_loop().time()
            self._gone.set()


async def _let_the_client_read() -> None:
    """Give a client in this event loop its turn, so one write arrives as one read.

    The bytes are in the client's socket after a write; one loop turn lets its
    protocol take them, the next lets the reading task run. Without this, a
    client in the same loop would read several writes at once.
    """
    for _ in range(LOOP_TURNS_PER_READ):
        await asyncio.sleep(0)


async def _record(request: web.Request) -> RecordedRequest:
    text = await request.text()
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return RecordedRequest(
        request.method, request.path, dict(request.headers), body, tuple(peer) if peer else None
    )


def _whole(scripted: Reply) -> web.Response:
    body = b"".join(item for item in scripted.frames() if isinstance(item, bytes))
    response = web.Response(status=scripted.status, body=body, headers=dict(scripted.headers))
    response.content_type = scripted.content_type
    return response


@pytest.fixture
async def fake_upstream(aiohttp_server: Any) -> FakeUpstream:
    """A fresh fake model server on 127.0.0.1; see the module docstring."""
    upstream = FakeUpstream()
    server = await aiohttp_server(upstream.app())
    upstream.base_url = str(server.make_url("/v1"))
    return upstream


@pytest.fixture
async def client_session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session made as the app makes its own, for providers under test."""
    async with make_session() as session:
        yield session


# --- reading a provider's events ---


@dataclass
class StreamResult:
    """Everything one ``stream()`` yielded, with the usual questions answered."""

    events: list[ProviderEvent]
    seconds: float

    def texts(self, kind: type[Reasoning | Answer]) -> str:
        return "".join(event.text for event in self.events if isinstance(event, kind))

    @property
    def reasoning(self) -> str:
        return self.texts(Reasoning)

    @property
    def answer(self) -> str:
        return self.texts(Answer)

    def only(self, kind: type[Any]) -> Any:
        """The one event of ``kind``, or None; more than one is a bug."""
        found = [event for event in self.events if isinstance(event, kind)]
        assert len(found) <= 1, f"more than one {kind.__name__}: {found}"
        return found[0] if found else None

    @property
    def failure(self) -> str | None:
        failure = self.only(Failure)
        return failure.message if failure else None

    @property
    def hint(self) -> str | None:
        """The failure's hint for the operator's log."""
        failure = self.only(Failure)
        return failure.hint if failure else None

    @property
    def finished(self) -> str | None:
        finished = self.only(Finished)
        return finished.reason if finished else None

    @property
    def usage(self) -> Usage | None:
        return self.only(Usage)

    @property
    def shown_text(self) -> str:
        """Every string a person could see, for checks such as "no secret leaks"."""
        return "\n".join(
            getattr(event, name)
            for event in self.events
            for name in ("text", "message", "reason")
            if isinstance(getattr(event, name, None), str)
        )


async def collect(provider: Provider, prompt: str | ChatRequest = "Hello?") -> StreamResult:
    """Run ``provider.stream(prompt)`` to its end and check the event contract on the way."""
    started = time.monotonic()
    request = chat(prompt) if isinstance(prompt, str) else prompt
    events = [event async for event in provider.stream(request)]
    result = StreamResult(events, time.monotonic() - started)
    assert events and isinstance(events[0], Status), "a stream starts with a Status"
    ends = [i for i, event in enumerate(events) if isinstance(event, Failure | Finished)]
    assert ends in ([], [len(events) - 1]), f"Failure/Finished must come last, once: {events}"
    return result


async def events_until(
    stream: AsyncIterator[ProviderEvent], wanted: type[Any] | Status
) -> list[ProviderEvent]:
    """Read ``stream`` up to and including the first event equal to (or of type) ``wanted``."""
    seen = []
    async for event in stream:
        seen.append(event)
        if event == wanted or (isinstance(wanted, type) and isinstance(event, wanted)):
            return seen
    raise AssertionError(f"the stream ended before {wanted!r}: {seen}")

"""OpenAIProvider against a fake upstream on a real loopback socket.

Each dialect test replays what that server really sends (its chunk shapes,
reasoning fields, keep-alive comments and error bodies, as its source code,
documentation and bug reports show them) and checks the exact reasoning and
answer text that come out. Byte-stream cases run three times: frames written
whole, one byte per write, and cut at random places.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import math
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from providers.events import (
    Answer,
    ChatRequest,
    Connected,
    Failure,
    Finished,
    Message,
    Reasoning,
    Status,
    Usage,
)
from providers.openai import (
    BROKEN,
    INTERRUPTED,
    NOT_A_CHUNK,
    WAITING_STATUS,
    OpenAIProvider,
    OpenAISettings,
    make_session,
)
from tests.chat import chat
from tests.fake_upstream import (
    DONE,
    SPLIT_MODES,
    FakeUpstream,
    Pause,
    StreamResult,
    chunk,
    collect,
    comment,
    error_body,
    events_until,
    frame,
    usage_chunk,
)

# For the fake_upstream and client_session fixtures, until tests/conftest.py
# registers the plugin (then this line is harmless).
pytest_plugins = ["tests.fake_upstream"]

API_KEY = "sk-test-7Hq2SECRETvalue9Zx"
MASKED_KEY = "sk-test-****************9Zx"
#: Long enough for any loopback write, short enough to keep the suite quick.
SHORT = 0.3
#: How soon the upstream request must be gone once its stream is closed or cancelled.
CANCEL_WITHIN = 1.0


@pytest.fixture(params=SPLIT_MODES)
def split(request: pytest.FixtureRequest) -> str:
    return request.param


Run = Callable[..., Any]


@pytest.fixture
def run(fake_upstream: FakeUpstream, client_session: aiohttp.ClientSession) -> Run:
    """Script one reply, stream one prompt through a provider, check the key stays secret."""

    async def go(
        body: Any = (),
        *,
        settings: dict[str, Any] | None = None,
        request: ChatRequest | str = "Hello?",
        **reply: Any,
    ):
        fake_upstream.reply(body, **reply)
        provider = make_provider(fake_upstream, client_session, **(settings or {}))
        result = await collect(provider, request)
        assert API_KEY not in result.shown_text
        assert "****" not in result.shown_text
        return result

    return go


def make_provider(
    upstream: FakeUpstream, client_session: aiohttp.ClientSession, **overrides: Any
) -> OpenAIProvider:
    options: dict[str, Any] = {
        "base_url": upstream.base_url,
        "model": "test-model",
        "api_key": API_KEY,
        "first_token_timeout": 5.0,
        "idle_timeout": 5.0,
        **overrides,
    }
    return OpenAIProvider(client_session, OpenAISettings(**options))


def assert_success(
    result: StreamResult, reasoning: str, answer: str, reason: str | None = "stop"
) -> None:
    assert result.failure is None, result.failure
    assert result.reasoning == reasoning
    assert result.answer == answer
    assert result.finished == reason


def assert_failure(result: StreamResult, answer: str, *fragments: str) -> None:
    assert result.answer == answer
    assert result.failure is not None, result.events
    for fragment in fragments:
        assert fragment in result.failure


# --- the request ---


async def test_request_is_an_openai_streaming_chat_completion(
    fake_upstream: FakeUpstream, run: Run
) -> None:
    await run(
        [chunk(content="ok", finish_reason="stop"), DONE],
        settings={"temperature": 0.2, "max_tokens": 64},
        request=chat("Hello?", "Hi", "Hi! How can I help?", system="Be brief."),
    )
    (request,) = fake_upstream.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.headers["Accept"] == "text/event-stream"
    assert request.json == {
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hi! How can I help?"},
            {"role": "user", "content": "Hello?"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.2,
        "max_tokens": 64,
    }


async def test_a_request_chooses_its_own_model_and_temperature(
    fake_upstream: FakeUpstream, run: Run
) -> None:
    request = ChatRequest((Message("user", "Hi"),), model="other-model", temperature=1.5)
    await run([chunk(content="ok", finish_reason="stop"), DONE], settings={"temperature": 0.2},
              request=request)  # fmt: skip
    sent = fake_upstream.requests[0].json
    assert (sent["model"], sent["temperature"]) == ("other-model", 1.5)


async def test_request_without_key_or_options(fake_upstream: FakeUpstream, run: Run) -> None:
    await run(
        [chunk(content="ok", finish_reason="stop"), DONE],
        settings={"api_key": None, "system_prompt": None, "base_url": fake_upstream.base_url + "/"},
    )
    (request,) = fake_upstream.requests
    assert request.path == "/v1/chat/completions"
    assert "Authorization" not in request.headers
    assert request.json["messages"] == [{"role": "user", "content": "Hello?"}]
    assert "temperature" not in request.json
    assert "max_tokens" not in request.json


async def test_a_finished_stream_leaves_its_connection_for_the_next_prompt(
    fake_upstream: FakeUpstream, client_session: aiohttp.ClientSession
) -> None:
    """Kept alive: the second prompt goes out on the first one's connection."""
    provider = make_provider(fake_upstream, client_session)
    for _ in range(2):
        fake_upstream.reply([chunk(content="ok", finish_reason="stop"), DONE])
        assert (await collect(provider)).failure is None
    first, second = fake_upstream.requests
    assert "Connection" not in first.headers
    assert first.peer == second.peer


async def test_hang_up_drops_the_connection_before_the_stream_is_closed(
    fake_upstream: FakeUpstream, client_session: aiohttp.ClientSession
) -> None:
    """``Connected.hang_up`` ends the request at the model server at once, from
    outside the generator, which is still open; closing it later is as before."""
    provider = make_provider(fake_upstream, client_session)
    fake_upstream.reply([chunk(content="Thinking")], stall=30)
    stream = provider.stream(chat("Hello?"))
    connected = (await events_until(stream, Connected))[-1]
    await events_until(stream, Answer)

    connected.hang_up()
    await fake_upstream.wait_disconnected(within=2)  # the generator was not closed
    connected.hang_up()  # twice is harmless
    await stream.aclose()


async def test_a_hang_up_after_the_answer_leaves_the_pooled_connection_alone(
    fake_upstream: FakeUpstream, client_session: aiohttp.ClientSession
) -> None:
    """A finished stream's connection is back in the pool and carries the next
    prompt: the first stream's hang-up, called late, must not drop it."""
    provider = make_provider(fake_upstream, client_session)
    fake_upstream.reply([chunk(content="first", finish_reason="stop"), DONE])
    fake_upstream.reply([chunk(content="sec"), Pause(0.3), chunk(content="ond"), DONE])
    first = provider.stream(chat("Hello?"))
    connected = (await events_until(first, Connected))[-1]
    assert [event async for event in first][-1] == Finished("stop")

    second = provider.stream(chat("Hello again?"))
    await events_until(second, Connected)  # the connection carries this request now
    connected.hang_up()
    rest = [event async for event in second]

    assert "".join(event.text for event in rest if isinstance(event, Answer)) == "second"
    assert not any(isinstance(event, Failure) for event in rest)
    assert fake_upstream.requests[0].peer == fake_upstream.requests[1].peer
    assert fake_upstream.gone_at is None


async def test_after_done_a_body_that_does_not_end_is_dropped_not_waited_for(
    fake_upstream: FakeUpstream, client_session: aiohttp.ClientSession
) -> None:
    """The end of the body is waited for BODY_END_WAIT_S at most (a connection read
    to its end goes back to the pool); a server that holds it gets its connection
    closed, and the answer is not held up."""
    provider = make_provider(fake_upstream, client_session)
    fake_upstream.reply([chunk(content="ok", finish_reason="stop"), DONE], stall=10)
    started = time.monotonic()
    result = await collect(provider)
    assert (result.failure, result.answer) == (None, "ok")
    assert time.monotonic() - started < 2
    await fake_upstream.wait_disconnected(within=2)  # closed, not kept for the next prompt


class RawModelServer:
    """A model server on 127.0.0.1 written on bare sockets, for what aiohttp's server
    would not do; ``async with`` gives its base URL. Subclasses serve a connection."""

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    @staticmethod
    async def read_request(reader: asyncio.StreamReader) -> dict[bytes, bytes]:
        """Read one request (a POST with a Content-Length); its header fields, lower case."""
        head = await reader.readuntil(b"\r\n\r\n")
        fields = dict(line.split(b":", 1) for line in head.lower().split(b"\r\n")[1:] if line)
        await reader.readexactly(int(fields[b"content-length"]))
        return {name: value.strip() for name, value in fields.items()}


class DropsReusedRequests(RawModelServer):
    """A model server on 127.0.0.1 that answers the first request on each connection
    with a short stream and keeps the connection alive (unless the request said
    ``Connection: close``), then closes it without a word when a second request
    comes on it, as llama-server does with a request sent on the connection a
    stream ended on. ``drop_all``: closes every connection at its first request
    instead."""

    ANSWER = chunk(content="ok", finish_reason="stop") + DONE

    def __init__(self, drop_all: bool = False) -> None:
        self.drop_all = drop_all
        #: (connection number, request number on it, answered) per request seen.
        self.requests: list[tuple[int, int, bool]] = []
        #: Per request seen, whether it said ``Connection: close``.
        self.asked_to_close: list[bool] = []
        self._connections = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = self._connections = self._connections + 1
        try:
            for number in range(1, 10):
                fields = await self.read_request(reader)
                self.asked_to_close.append(fields.get(b"connection") == b"close")
                answered = number == 1 and not self.drop_all
                self.requests.append((connection, number, answered))
                if not answered:
                    return
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(self.ANSWER), self.ANSWER)
                )
                await writer.drain()
                if self.asked_to_close[-1]:
                    return  # as HTTP/1.1 says: the last request on this connection
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_a_request_a_reused_connection_drops_is_sent_again_on_a_new_one(
    client_session: aiohttp.ClientSession,
) -> None:
    upstream = DropsReusedRequests()
    async with upstream as base_url:
        provider = OpenAIProvider(client_session, OpenAISettings(base_url=base_url, model="m"))
        for _ in range(3):
            result = await collect(provider)
            assert (result.failure, result.answer) == (None, "ok")
    # The second prompt went out on the first one's connection, was dropped, and
    # was sent again on a new connection; from then on, each prompt asks for a
    # connection of its own (the third is not sent twice).
    assert upstream.requests == [(1, 1, True), (1, 2, False), (2, 1, True), (3, 1, True)]
    assert upstream.asked_to_close == [False, False, True, True]


async def test_a_request_a_new_connection_drops_is_not_sent_again(
    client_session: aiohttp.ClientSession,
) -> None:
    upstream = DropsReusedRequests(drop_all=True)
    async with upstream as base_url:
        provider = OpenAIProvider(client_session, OpenAISettings(base_url=base_url, model="m"))
        result = await collect(provider)
    assert result.failure is not None
    assert result.failure.endswith("dropped the request (ServerDisconnectedError).")
    assert upstream.requests == [(1, 1, False)]


class RedirectsEverything(RawModelServer):
    """A model server on 127.0.0.1 that answers every request with a 307 to
    ``target`` and keeps each connection alive (even when asked to close it)."""

    def __init__(self, target: str) -> None:
        self.target = target.encode()
        self.requests = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self.read_request(reader)
                self.requests += 1
                writer.write(
                    b"HTTP/1.1 307 Temporary Redirect\r\nLocation: %s\r\n"
                    b"Content-Length: 0\r\n\r\n" % self.target
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def behind_a_redirect(
    session: aiohttp.ClientSession, target_url: str
) -> AsyncIterator[tuple[OpenAIProvider, RedirectsEverything]]:
    """A provider whose model server redirects every request to ``target_url``."""
    upstream = RedirectsEverything(target_url)
    async with upstream as base_url:
        settings = OpenAISettings(base_url=base_url, model="m", idle_timeout=1.0)
        yield OpenAIProvider(session, settings), upstream


async def test_a_redirect_to_an_unreachable_server_is_not_sent_again(
    client_session: aiohttp.ClientSession, refusing_port: int
) -> None:
    """The redirect's first leg went out on a reused connection, but its second
    could not connect at all: that is no dropped request, and not sent again
    (it was, in a loop, until the headers' deadline)."""
    target_url = f"http://127.0.0.1:{refusing_port}/v1/chat/completions"
    async with behind_a_redirect(client_session, target_url) as (provider, upstream):
        for prompt in (1, 2):
            result = await collect(provider)
            assert result.failure == (
                f"Could not reach the model server at 127.0.0.1:{refusing_port}: "
                "Connection refused."
            )
            assert upstream.requests == prompt  # once each


async def test_a_request_a_redirect_target_drops_is_not_sent_again(
    client_session: aiohttp.ClientSession,
) -> None:
    """The redirect's first leg went out on a reused connection, its second on a
    new one, which the server dropped: the server got it, and it is not sent again
    (it was, in a loop, until the headers' deadline)."""
    target = DropsReusedRequests(drop_all=True)
    async with (
        target as target_url,
        behind_a_redirect(client_session, f"{target_url}/chat/completions") as (provider, upstream),
    ):
        for prompt in (1, 2):
            result = await collect(provider)
            assert result.failure is not None
            assert result.failure.endswith("dropped the request (ServerDisconnectedError).")
            assert (upstream.requests, len(target.requests)) == (prompt, prompt)


async def test_settings_repr_hides_the_key() -> None:
    settings = OpenAISettings(base_url="http://127.0.0.1:1/v1", model="m", api_key=API_KEY)
    assert API_KEY not in repr(settings)


# --- dialects ---


async def test_openai(run: Run, split: str) -> None:
    result = await run(
        [
            chunk(
                role="assistant", content="", refusal=None, usage=None, extra={"obfuscation": "x1"}
            ),
            chunk(content="Hello", usage=None, extra={"obfuscation": "Qz"}),
            chunk(content=", world!", usage=None),
            chunk(finish_reason="stop", usage=None),
            usage_chunk(9, 4),
            DONE,
        ],
        split=split,
        content_type="text/event-stream; charset=utf-8",
    )
    assert_success(result, "", "Hello, world!")
    assert result.usage == Usage(prompt_tokens=9, completion_tokens=4)
    kinds = [type(event).__name__ for event in result.events]
    assert kinds[:3] == ["Status", "Connected", "Status"]
    assert kinds[-2:] == ["Usage", "Finished"]


async def test_azure_empty_choices_first(run: Run, split: str) -> None:
    filters = {"hate": {"filtered": False, "severity": "safe"}}
    result = await run(
        [
            frame({"id": "", "choices": [], "prompt_filter_results": [{"prompt_index": 0}]}),
            chunk(role="assistant", content=""),
            chunk(content="Azure says hi.", extra={"content_filter_results": filters}),
            chunk(finish_reason="stop"),
            DONE,
        ],
        split=split,
    )
    assert_success(result, "", "Azure says hi.")


async def test_deepseek_reasoning_content_with_nulls_and_keep_alive(run: Run, split: str) -> None:
    result = await run(
        [
            comment("keep-alive"),
            comment("keep-alive"),
            chunk(role="assistant", content=None, reasoning_content=""),
            chunk(content=None, reasoning_content="Two plus two"),
            chunk(content=None, reasoning_content=" is four."),
            chunk(content="The answer", reasoning_content=None),
            chunk(content=" is 4.", reasoning_content=None),
            chunk(content="", reasoning_content=None, finish_reason="stop"),
            usage_chunk(12, 30),
            DONE,
        ],
        split=split,
    )
    assert_success(result, "Two plus two is four.", "The answer is 4.")
    assert result.usage == Usage(12, 30)


async def test_vllm_reasoning_field_and_blank_content(run: Run, split: str) -> None:
    result = await run(
        [
            chunk(role="assistant", content=""),
            chunk(reasoning="Let me think.\n"),
            chunk(reasoning="Done thinking."),
            chunk(content="\n\n"),
            chunk(content="Paris is the capital."),
            chunk(content="", finish_reason="stop"),
            usage_chunk(20, 11),
            DONE,
        ],
        split=split,
    )
    assert_success(result, "Let me think.\nDone thinking.", "Paris is the capital.")


async def test_vllm_error_then_done_is_a_failure(run: Run, split: str) -> None:
    error = {"message": "Engine died: out of memory", "type": "InternalServerError", "code": 500}
    result = await run(
        [chunk(content="Part"), frame({"error": error}), DONE],
        split=split,
    )
    assert_failure(result, "Part", "Engine died: out of memory")
    assert result.finished is None


async def test_old_vllm_flat_error_mid_stream(run: Run, split: str) -> None:
    flat = {"object": "error", "message": "Request was aborted", "code": 400}
    result = await run([chunk(content="Half"), frame(flat), DONE], split=split)
    assert_failure(result, "Half", "Request was aborted")


async def test_llama_cpp_with_timings(run: Run, split: str) -> None:
    timings = {"prompt_n": 5, "prompt_ms": 3.1, "predicted_n": 2, "predicted_per_second": 80.0}
    result = await run(
        [
            chunk(role="assistant", content=None, extra={"system_fingerprint": "b6510-abc"}),
            chunk(content="Hi"),
            chunk(content=" there"),
            chunk(finish_reason="stop", extra={"timings": timings}),
            frame({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}),
            DONE,
        ],
        split=split,
    )
    assert_success(result, "", "Hi there")
    assert result.usage == Usage(5, 2)


async def test_old_llama_cpp_error_line_then_done(run: Run, split: str) -> None:
    error = json.dumps({"code": 500, "message": "slot unavailable", "type": "server_error"})
    result = await run(
        [chunk(content="Once upon"), f"error: {error}\n\n".encode(), DONE],
        split=split,
    )
    assert_failure(result, "Once upon", "slot unavailable")


async def test_llama_cpp_error_without_done(run: Run, split: str) -> None:
    error = {"code": 400, "message": "context size exceeded", "type": "exceed_context_size_error"}
    result = await run([chunk(content="Long "), frame({"error": error})], split=split)
    assert_failure(result, "Long ", "context size exceeded")


async def test_ollama_role_on_every_delta(run: Run, split: str) -> None:
    extra = {"system_fingerprint": "fp_ollama"}
    result = await run(
        [
            chunk(role="assistant", content="", reasoning="Hmm, ", extra=extra),
            chunk(role="assistant", content="", reasoning="a greeting.", extra=extra),
            chunk(role="assistant", content="Hello!", extra=extra),
            chunk(role="assistant", content="", finish_reason="stop", extra=extra),
            usage_chunk(7, 9),
            DONE,
        ],
        split=split,
    )
    assert_success(result, "Hmm, a greeting.", "Hello!")


async def test_lm_studio_wrong_path_is_json_not_a_stream(
    fake_upstream: FakeUpstream, run: Run
) -> None:
    body = json.dumps({"error": "Unexpected endpoint or method. (POST /chat/completions)"})
    result = await run(
        body.encode(),
        content_type="application/json",
        settings={"base_url": fake_upstream.base_url.removesuffix("/v1")},
    )
    assert_failure(result, "", "Unexpected endpoint or method")
    assert "/v1" in result.hint  # for the operator, who set the base URL
    assert fake_upstream.requests[0].path == "/chat/completions"


async def test_a_whole_completion_instead_of_a_stream_is_reported_not_shown(run: Run) -> None:
    """A server that ignores `stream: true` answers with one JSON completion.
    Its text is not passed off as a stream: the person is told what came back."""
    completion = {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}}],
    }
    result = await run(json.dumps(completion).encode(), content_type="application/json")
    assert_failure(result, "", "answered with application/json, not an event stream.")
    assert "Hello!" not in result.failure
    assert "/v1" not in result.failure  # the base URL has it: no hint about the path


async def test_openrouter_comments_and_mirrored_reasoning_details(run: Run, split: str) -> None:
    def thinking(text: str) -> bytes:
        details = [{"type": "reasoning.text", "text": text, "format": "unknown", "index": 0}]
        return chunk(
            role="assistant", content="", reasoning=text, reasoning_details=details,
            extra={"provider": "SomeHost"},
        )  # fmt: skip

    result = await run(
        [
            comment("OPENROUTER PROCESSING"),
            comment("OPENROUTER PROCESSING"),
            thinking("Think "),
            thinking("once."),
            b":\n\n",
            chunk(role="assistant", content="Answer.", extra={"provider": "SomeHost"}),
            chunk(
                role="assistant",
                content="",
                finish_reason="stop",
                extra={"native_finish_reason": "end_turn"},
            ),
            usage_chunk(3, 4),
            DONE,
        ],
        split=split,
    )
    assert_success(result, "Think once.", "Answer.")


async def test_reasoning_details_alone(run: Run, split: str) -> None:
    details = [
        {"type": "reasoning.summary", "summary": "Summed up. "},
        {"type": "reasoning.encrypted", "data": "gAAAA-opaque"},
        {"type": "reasoning.text", "text": "Plain text."},
    ]
    result = await run(
        [chunk(reasoning=None, reasoning_details=details), chunk(content="Yes."), DONE],
        split=split,
    )
    assert_success(result, "Summed up. Plain text.", "Yes.", reason=None)


async def test_openrouter_error_alongside_choices(run: Run, split: str) -> None:
    failing = frame(
        {
            "id": "gen-1",
            "error": {"code": 502, "message": "Provider disconnected unexpectedly"},
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
        }
    )
    result = await run([chunk(content="So far"), failing, DONE], split=split)
    assert_failure(result, "So far", "Provider disconnected unexpectedly")


async def test_finish_reason_error_without_message(run: Run, split: str) -> None:
    result = await run([chunk(content="A"), chunk(finish_reason="error"), DONE], split=split)
    assert_failure(result, "A", "reported an error")


async def test_groq_x_groq_and_raw_think_tags(run: Run, split: str) -> None:
    result = await run(
        [
            chunk(role="assistant", content="", extra={"x_groq": {"id": "req_01"}}),
            chunk(content="<think>\nQuick sum.\n</think>"),
            chunk(content="\n\n2 + 2 = 4"),
            chunk(finish_reason="stop", extra={"x_groq": {"usage": {"queue_time": 0.01}}}),
            DONE,
        ],
        split=split,
    )
    assert_success(result, "\nQuick sum.\n", "2 + 2 = 4")


async def test_xai_usage_on_every_chunk(run: Run, split: str) -> None:
    def usage(completion_tokens: int) -> dict[str, int]:
        return {"prompt_tokens": 10, "completion_tokens": completion_tokens}

    result = await run(
        [
            chunk(content="One", usage=usage(1)),
            chunk(content=" two", usage=usage(2)),
            chunk(finish_reason="stop", usage=usage(3)),
            DONE,
        ],
        split=split,
    )
    assert_success(result, "", "One two")
    assert result.usage == Usage(10, 3)


async def test_anthropic_style_error_event(run: Run, split: str) -> None:
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    result = await run([chunk(content="Hi"), frame(overloaded, event="error")], split=split)
    assert_failure(result, "Hi", "Overloaded")


async def test_string_error_mid_stream(run: Run, split: str) -> None:
    result = await run([chunk(content="x"), frame({"error": "model crashed"})], split=split)
    assert_failure(result, "x", "model crashed")


# --- framing ---


async def test_framing_quirks(run: Run, split: str) -> None:
    """BOM, CRLF, lone CR, no space after the colon, id/retry, multi-line data, blank lines."""
    first = json.dumps({"choices": [{"delta": {"content": "é😀"}}]}, ensure_ascii=False)
    second = r'{"choices": [{"delta": {"content": " \ud83d\ude00 ok"}}]}'  # a surrogate pair
    finish = json.dumps({"choices": [{"delta": {}, "finish_reason": "stop"}]}, indent=1)
    multi_line = "".join(f"data:{line}\r" for line in finish.splitlines())
    result = await run(
        [
            "\ufeffretry: 3000\r\n\r\n".encode(),
            f"id: 1\r\ndata:{first}\r\n\r\n".encode(),
            f"\n\ndata: {second}\rfoo: bar\r\r".encode(),
            f"{multi_line}\r".encode(),
            b"data:[DONE]\r\n\r\n",
        ],
        split=split,
    )
    assert_success(result, "", "é😀 😀 ok")


NOT_OBJECTS = {
    "torn-json": b'data: {"choices": [{"delta": {"content": "lost"}}\n\n',
    "plain-text": b"data: Hello there\n\n",
    "list": b'data: [{"choices": []}]\n\n',
    "string": b'data: "Hello"\n\n',
    "number": b"data: 42\n\n",
    "null": b"data: null\n\n",
}


@pytest.mark.parametrize("bad", NOT_OBJECTS.values(), ids=NOT_OBJECTS.keys())
async def test_a_chunk_that_is_not_a_json_object_ends_the_stream(run: Run, bad: bytes) -> None:
    """Skipped, its text would vanish from the answer and nobody would know."""
    result = await run([chunk(content="Before"), bad, chunk(content=" after"), DONE])
    start = bad.decode().removeprefix("data: ").strip()
    assert_failure(result, "Before", f"{NOT_A_CHUNK}: {start}")


async def test_a_chunk_that_is_not_json_is_cleaned_before_it_is_shown(run: Run) -> None:
    bad = f"data: <html>\ndata: key {API_KEY} then {'x' * 500}\n\n".encode()
    result = await run([bad, DONE])
    assert result.failure is not None
    assert result.failure.startswith(f"{NOT_A_CHUNK}: <html> key [redacted] then xxx")
    assert len(result.failure) < len(NOT_A_CHUNK) + 310 and result.failure.endswith("…")


async def test_an_empty_data_line_is_ignored(run: Run, split: str) -> None:
    result = await run(
        [chunk(content="A"), b"data:\n\n", b"data: \n\n", chunk(content="B"), DONE], split=split
    )
    assert_success(result, "", "AB", reason=None)


async def test_a_lone_surrogate_becomes_a_replacement_character(run: Run, split: str) -> None:
    """JSON can spell half a surrogate pair; a string holding one cannot be encoded as UTF-8."""
    result = await run(
        [
            b'data: {"choices": [{"delta": {"reasoning_content": "Hm \\ud83d"}}]}\n\n',
            b'data: {"choices": [{"delta": {"content": "A \\udc00 B"}}]}\n\n',
            b'data: {"choices": [{"delta": {}, "finish_reason": "stop\\ud800"}]}\n\n',
            b'data: {"error": {"message": "Bad \\ud83d thing"}}\n\n',
        ],
        split=split,
    )
    assert result.reasoning == "Hm \ufffd"
    assert_failure(result, "A \ufffd B", "Bad \ufffd thing")
    result.shown_text.encode()  # no lone surrogate anywhere


async def test_a_finish_reason_is_cleaned_like_upstream_text(run: Run) -> None:
    echo = f"stop {API_KEY.upper()} " + "x" * 400
    result = await run([chunk(content="Hi", finish_reason=echo), DONE])
    assert result.finished is not None
    assert result.finished.startswith("stop [redacted] xxx") and len(result.finished) == 300


async def test_no_done_after_finish_is_success(run: Run, split: str) -> None:
    result = await run([chunk(content="Complete."), chunk(finish_reason="stop")], split=split)
    assert_success(result, "", "Complete.")


async def test_done_without_finish_reason_is_success(run: Run, split: str) -> None:
    result = await run([chunk(content="Fine."), DONE], split=split)
    assert_success(result, "", "Fine.", reason=None)


async def test_length_keeps_the_answer(run: Run, split: str) -> None:
    result = await run([chunk(content="Cut sho"), chunk(finish_reason="length"), DONE], split=split)
    assert_success(result, "", "Cut sho", reason="length")


async def test_end_without_finish_is_interrupted(run: Run, split: str) -> None:
    result = await run([chunk(content="Half an ans"), chunk(content="wer")], split=split)
    assert_failure(result, "Half an answer", INTERRUPTED)


async def test_end_in_the_middle_of_an_event_is_interrupted(run: Run, split: str) -> None:
    torn = chunk(content=" never seen", finish_reason="stop")[:-3]
    result = await run([chunk(content="Kept"), torn], split=split)
    assert_failure(result, "Kept", INTERRUPTED)


async def test_dropped_connection_keeps_the_partial_answer(run: Run, split: str) -> None:
    result = await run([chunk(content="Partial")], split=split, abort=True)
    assert_failure(result, "Partial")
    assert result.failure in (BROKEN, INTERRUPTED)


@pytest.mark.parametrize("split_mode", ["whole", "random"])
async def test_a_600_kb_line_is_fine(run: Run, split_mode: str) -> None:
    big = "lorem ipsum " * 50_000  # 600,000 characters on one data line
    result = await run([chunk(content=big), chunk(finish_reason="stop"), DONE], split=split_mode)
    assert_success(result, "", big)


async def test_a_line_over_the_cap_is_a_failure(run: Run) -> None:
    result = await run([chunk(content="x" * (5 * 1024 * 1024))])
    assert_failure(result, "", "longer than 4 MiB")


async def test_an_event_over_the_cap_is_a_failure(run: Run) -> None:
    line = b"data: " + b"x" * 1018 + b"\n"  # 1 KB, and never a blank line
    result = await run([chunk(content="So far"), *[line * 64] * 80])  # 5 MB
    assert_failure(result, "So far", "The model server sent an event longer than 4 MiB.")


# --- inline <think> tags ---


async def test_think_tags_split_one_piece_per_chunk(run: Run, split: str) -> None:
    pieces = [
        "<",
        "t",
        "hi",
        "n",
        "k",
        ">",
        "I should ",
        "greet",
        ".<",
        "/th",
        "ink",
        ">",
        "\n",
        "\n",
        "Hi",
        "!",
    ]
    result = await run(
        [chunk(content=piece) for piece in pieces] + [chunk(finish_reason="stop"), DONE],
        split=split,
    )
    assert_success(result, "I should greet.", "Hi!")


async def test_think_without_close_is_all_reasoning(run: Run, split: str) -> None:
    result = await run(
        [chunk(content="  <think>Still going"), chunk(finish_reason="length"), DONE], split=split
    )
    assert_success(result, "Still going", "", reason="length")


async def test_orphan_close_tag_from_a_prefilled_template(run: Run, split: str) -> None:
    result = await run(
        [
            chunk(content="Okay, the user wants"),
            chunk(content=" a joke.</th"),
            chunk(content="ink>\n\nWhy did"),
            chunk(content=" the chicken…"),
            chunk(finish_reason="stop"),
            DONE,
        ],
        split=split,
        settings={"reasoning_hold": math.inf},
    )
    assert_success(result, "Okay, the user wants a joke.", "Why did the chicken…")


async def test_untagged_answer_is_released_after_the_hold(
    fake_upstream: FakeUpstream, client_session: aiohttp.ClientSession
) -> None:
    """Held text is answer ``reasoning_hold`` after it came, even while the model is slow."""
    hold = 0.1
    fake_upstream.reply(
        [chunk(content="Hello"), Pause(3 * SHORT), chunk(content=" a </think> b"), DONE]
    )
    provider = make_provider(fake_upstream, client_session, reasoning_hold=hold)
    stream = provider.stream(chat("Hi"))
    await events_until(stream, Status(WAITING_STATUS))
    waiting_since = time.monotonic()
    first_answer = (await events_until(stream, Answer))[-1]
    assert first_answer.text == "Hello"
    assert time.monotonic() - waiting_since < hold + SHORT
    # It says when it came, a hold earlier: the stats count from then.
    assert waiting_since <= first_answer.sent_at <= time.monotonic() - hold
    rest = [event async for event in stream]
    assert Answer(" a </think> b") in rest  # after the hold, a closing tag is just text
    assert not any(isinstance(event, Reasoning) for event in rest)


async def test_hold_zero_turns_orphan_detection_off(run: Run, split: str) -> None:
    result = await run(
        [chunk(content="x</think>y"), chunk(finish_reason="stop")],
        split=split,
        settings={"reasoning_hold": 0},
    )
    assert_success(result, "", "x</think>y")


async def test_server_reasoning_turns_tag_handling_off(run: Run, split: str) -> None:
    result = await run(
        [chunk(reasoning_content="Why not."), chunk(content="Use <think> tags."), DONE],
        split=split,
    )
    assert_success(result, "Why not.", "Use <think> tags.", reason=None)


# --- HTTP errors ---

HTML_502 = (
    b"<html><head><title>502 Bad Gateway</title></head><body><h1>cloudflare</h1></body></html>"
)


def _openai_shape(message: str) -> bytes:
    return error_body(message, "invalid_request_error", "some_code")


def _flat_vllm_shape(message: str) -> bytes:
    return json.dumps(
        {"object": "error", "message": message, "type": "BadRequestError", "code": 400}
    ).encode()


def _string_shape(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


BODY_SHAPES = {
    "openai": _openai_shape,
    "flat-vllm": _flat_vllm_shape,
    "string": _string_shape,
}
STATUS_REASONS = {
    400: "Bad Request",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@pytest.mark.parametrize("shape", BODY_SHAPES)
@pytest.mark.parametrize("status", STATUS_REASONS)
async def test_http_error_shows_status_and_message(run: Run, status: int, shape: str) -> None:
    message = f"Upstream says no ({status})."
    result = await run(BODY_SHAPES[shape](message), status=status, content_type="application/json")
    assert (
        result.failure == f"The model server answered {status} {STATUS_REASONS[status]}: {message}"
    )


@pytest.mark.parametrize("status", [*STATUS_REASONS, 401, 403])
async def test_html_error_page_is_never_shown(run: Run, status: int) -> None:
    result = await run(HTML_502, status=status, content_type="text/html")
    assert result.failure is not None
    assert "<" not in result.failure
    assert "cloudflare" not in result.failure
    assert str(status) in result.failure


@pytest.mark.parametrize("shape", BODY_SHAPES)
@pytest.mark.parametrize("status", [401, 403])
async def test_refused_key_message_hides_the_upstream_text(
    run: Run, status: int, shape: str
) -> None:
    echoed = f"Incorrect API key provided: {MASKED_KEY}. You can find your API key at …"
    result = await run(BODY_SHAPES[shape](echoed), status=status, content_type="application/json")
    assert_failure(result, "", "refused this app's API key", str(status))
    assert result.hint == "Check OPENAI_API_KEY."  # the operator's to fix, not the visitor's
    assert "OPENAI" not in result.failure
    assert "Incorrect" not in result.failure


async def test_missing_key_says_to_set_one(run: Run) -> None:
    result = await run(
        _openai_shape("Missing bearer"), status=401, content_type="application/json",
        settings={"api_key": None},
    )  # fmt: skip
    assert_failure(result, "", "wants an API key")
    assert result.hint == "Set OPENAI_API_KEY."


@pytest.mark.parametrize(
    ("headers", "hint"),
    [
        ({"Retry-After": "20"}, "Try again in 20 s."),
        ({"retry-after-ms": "1500", "Retry-After": "20"}, "Try again in 2 s."),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, "Try again in 1 s."),
    ],
    ids=["seconds", "milliseconds-first", "date-in-the-past"],
)
async def test_retry_after_becomes_a_hint(run: Run, headers: dict[str, str], hint: str) -> None:
    body = _openai_shape("Rate limit reached for requests. Please try again in 18.642s.")
    result = await run(body, status=429, headers=headers, content_type="application/json")
    assert_failure(result, "", "429 Too Many Requests", "Rate limit reached")
    assert result.failure.endswith(hint)


@pytest.mark.parametrize(
    ("header", "value"),
    [("Retry-After", "inf"), ("Retry-After", "-inf"), ("Retry-After", "nan"),
     ("Retry-After", "1e999"), ("Retry-After", "86401"),
     ("retry-after-ms", "inf"), ("retry-after-ms", "86401000")],
)  # fmt: skip
async def test_a_retry_hint_that_is_no_wait_is_left_out(run: Run, header: str, value: str) -> None:
    """Infinite, not a number, or more than a day: no hint (and no crash)."""
    result = await run(
        _openai_shape("Slow down."), status=429, headers={header: value},
        content_type="application/json",
    )  # fmt: skip
    assert result.failure == "The model server answered 429 Too Many Requests: Slow down."


async def test_long_upstream_messages_are_cut_and_keys_redacted(run: Run) -> None:
    message = f"Bad input from key {API_KEY} (also known as {MASKED_KEY}): " + "detail " * 100
    result = await run(_openai_shape(message), status=400, content_type="application/json")
    assert result.failure is not None
    assert len(result.failure) < 400
    assert result.failure.endswith("…")
    assert "[redacted]" in result.failure


KEY_ECHOES = {
    "upper-case": API_KEY.upper(),
    "lower-case": API_KEY.lower(),
    "swapped-case": API_KEY.swapcase(),
    "split-by-a-space": f"{API_KEY[:13]} {API_KEY[13:]}",
    "split-by-a-line-break": f"{API_KEY[:9]}\n{API_KEY[9:]}",
    "first-12": API_KEY[:12],
    "last-8": API_KEY[-8:],
    "inside-a-word": f'{{"key":"{API_KEY.upper()}"}}',
}


def assert_no_run_of_the_key(text: str) -> None:
    """No 8 characters in a row of the key, in any case."""
    key, seen = API_KEY.casefold(), text.casefold()
    runs = {key[i : i + 8] for i in range(len(key) - 7)}
    assert not [run for run in runs if run in seen], text


@pytest.mark.parametrize("echo", KEY_ECHOES.values(), ids=KEY_ECHOES.keys())
async def test_a_key_echoed_in_any_form_is_redacted(run: Run, echo: str) -> None:
    message = f"Invalid key {echo} for model test-model."
    for result in (
        await run(_openai_shape(message), status=400, content_type="application/json"),
        await run([chunk(content="Part"), frame({"error": {"message": message}})]),
    ):
        assert result.failure is not None and "[redacted]" in result.failure
        assert "Invalid key" in result.failure and "for model test-model." in result.failure
        assert_no_run_of_the_key(result.shown_text)


async def test_a_masked_key_cut_where_a_long_message_is_cut_is_not_shown(run: Run) -> None:
    """Only a long message's start is looked at. A masked key cut there, with
    too few stars left to look masked, must not come into view when an
    earlier word is redacted and the text grows shorter."""
    long_masked = "a***" + "b" * 396  # 400 characters, redacted to 10
    filler = "ww " + "w " * 93  # 189 characters: the key starts 10 characters before the cut
    message = f"{long_masked} {filler}{MASKED_KEY}"
    assert message[:600].endswith("sk-test-**")  # what is left of the key at the cut
    result = await run(_openai_shape(message), status=400, content_type="application/json")
    assert result.failure is not None
    assert "[redacted]" in result.failure
    assert "sk-test-" not in result.failure


async def test_plain_text_error_body_gives_just_the_status(run: Run) -> None:
    result = await run(b"404 page not found", status=404, content_type="text/plain")
    assert result.failure == "The model server answered 404 Not Found."


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b"404 page not found", "text/plain"),  # Ollama
     (b'{"detail":"Not Found"}', "application/json")],  # vLLM (FastAPI)
    ids=["ollama", "vllm"],
)  # fmt: skip
async def test_a_base_url_without_v1_gets_a_hint_on_404(
    fake_upstream: FakeUpstream, run: Run, body: bytes, content_type: str
) -> None:
    result = await run(
        body, status=404, content_type=content_type,
        settings={"base_url": fake_upstream.base_url.removesuffix("/v1")},
    )  # fmt: skip
    assert result.failure == "The model server answered 404 Not Found."
    assert result.hint == (
        "Check the base URL: most servers want it to end in /v1 (as in http://127.0.0.1:8080/v1)."
    )


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1", b"404 page not found"),  # has /v1: the path is not the problem
     ("/v1beta/openai", b"404 page not found"),  # Gemini's: a version of its own
     ("", _openai_shape("The model 'gpt-9' does not exist"))],  # a reason is given
    ids=["v1", "v1beta", "with-detail"],
)  # fmt: skip
async def test_a_404_gets_no_base_url_hint_when_the_base_url_is_not_the_cause(
    fake_upstream: FakeUpstream, run: Run, path: str, body: bytes
) -> None:
    base_url = fake_upstream.base_url.removesuffix("/v1") + path
    result = await run(body, status=404, content_type="text/plain", settings={"base_url": base_url})
    assert result.failure is not None and "404 Not Found" in result.failure
    assert "Check the base URL" not in result.failure


# --- compressed answers ---


def gzipped_stream() -> bytes:
    return gzip.compress(chunk(content="Squeezed") + chunk(finish_reason="stop") + DONE)


async def test_a_compressed_stream_is_refused_unread(fake_upstream: FakeUpstream, run: Run) -> None:
    result = await run(gzipped_stream(), headers={"Content-Encoding": "gzip"})
    assert_failure(result, "", "sent a compressed (gzip) stream, which this app does not accept")
    assert fake_upstream.requests[0].headers["Accept-Encoding"] == "identity"


async def test_a_compressed_error_is_refused_unread(run: Run) -> None:
    body = gzip.compress(_openai_shape("Never read."))
    result = await run(
        body, status=500, content_type="application/json", headers={"Content-Encoding": "gzip"}
    )
    assert result.failure == (
        "The model server answered 500 Internal Server Error, compressed (gzip), "
        "which this app does not accept."
    )


async def test_a_compressed_list_of_models_is_refused_unread(
    fake_upstream: FakeUpstream, client_session: aiohttp.ClientSession
) -> None:
    models = gzip.compress(b'{"data": [{"id": "only-one"}]}')
    fake_upstream.reply(
        models, content_type="application/json", headers={"Content-Encoding": "gzip"}
    )
    provider = make_provider(fake_upstream, client_session, model="")
    assert [event async for event in provider.stream(chat("Hi"))] == [
        Failure(
            "No model is set, and asking for one failed. The model server sent a compressed "
            "(gzip) list of models, which this app does not accept.",
            hint="The app asks for an uncompressed one: is a proxy in between compressing it? "
            "Or name one with --model or OPENAI_MODEL.",
        )
    ]


async def test_the_session_made_for_the_app_never_decompresses(fake_upstream: FakeUpstream) -> None:
    compressed = gzipped_stream()
    fake_upstream.reply(compressed, headers={"Content-Encoding": "gzip"})
    async with make_session() as session, session.get(fake_upstream.base_url) as response:
        assert await response.read() == compressed


# --- reaching the server ---


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port with a socket bound but not listening: connecting is refused."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


async def test_connection_refused(
    client_session: aiohttp.ClientSession, refusing_port: int
) -> None:
    settings = OpenAISettings(base_url=f"http://127.0.0.1:{refusing_port}/v1", model="m")
    result = await collect(OpenAIProvider(client_session, settings))
    assert result.failure == (
        f"Could not reach the model server at 127.0.0.1:{refusing_port}: Connection refused."
    )


async def test_unknown_host(client_session: aiohttp.ClientSession) -> None:
    settings = OpenAISettings(base_url="http://no-such-host.invalid/v1", model="m")
    result = await collect(OpenAIProvider(client_session, settings))
    assert result.failure is not None
    assert result.failure.startswith(
        "Could not reach the model server at no-such-host.invalid:80: "
    )


@pytest.fixture
def self_signed(tmp_path: Path) -> ssl.SSLContext:
    """A server TLS context with a throwaway self-signed certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def test_untrusted_certificate(
    client_session: aiohttp.ClientSession, aiohttp_server: Any, self_signed: ssl.SSLContext
) -> None:
    server = await aiohttp_server(web.Application(), ssl=self_signed)
    settings = OpenAISettings(base_url=f"https://127.0.0.1:{server.port}/v1", model="m")
    result = await collect(OpenAIProvider(client_session, settings))
    assert result.failure == (
        f"Could not reach the model server at 127.0.0.1:{server.port}: "
        "the TLS handshake failed (self-signed certificate)."
    )


async def test_invalid_base_url(client_session: aiohttp.ClientSession) -> None:
    settings = OpenAISettings(base_url="ftp://127.0.0.1/v1", model="m")
    result = await collect(OpenAIProvider(client_session, settings))
    assert result.failure is not None
    assert "not a valid http(s) URL" in result.failure


# --- a user and password in the base URL ---

USER, PASSWORD = "me", "hunter2"


def with_credentials(base_url: str) -> str:
    return str(URL(base_url).with_user(USER).with_password(PASSWORD))


@pytest.mark.parametrize("model", ["test-model", ""], ids=["model-set", "model-listed"])
async def test_credentials_in_the_base_url_go_as_basic_auth(
    fake_upstream: FakeUpstream, run: Run, model: str
) -> None:
    if not model:
        fake_upstream.reply(b'{"data": [{"id": "test-model"}]}', content_type="application/json")
    result = await run(
        [chunk(content="ok", finish_reason="stop"), DONE],
        settings={
            "base_url": with_credentials(fake_upstream.base_url),
            "api_key": None,
            "model": model,
        },
    )
    assert_success(result, "", "ok")
    basic = f"Basic {base64.b64encode(f'{USER}:{PASSWORD}'.encode()).decode()}"
    assert [request.headers["Authorization"] for request in fake_upstream.requests] == [basic] * (
        1 if model else 2
    )


async def test_credentials_and_a_key_together_are_refused_readably(
    fake_upstream: FakeUpstream, client_session: aiohttp.ClientSession
) -> None:
    """aiohttp refuses to send both; without this check every stream crashed."""
    provider = make_provider(
        fake_upstream, client_session, base_url=with_credentials(fake_upstream.base_url)
    )
    events = [event async for event in provider.stream(chat("Hi"))]
    assert events == [
        Failure(
            "This app has two kinds of credentials for the model server, and can send only one.",
            hint="The base URL has a user name and password, and OPENAI_API_KEY is set too: "
            "remove one.",
        )
    ]
    assert not fake_upstream.requests


JSON, TEXT = "application/json", "text/plain"
CREDENTIALED_FAILURES = {
    "not-http": ("ftp://me:hunter2@127.0.0.1/v1?key=sk-in-url", {}, "not a valid http(s) URL"),
    "no-answer": (None, {"headers_delay": 10}, "did not answer within"),
    "no-models": (None, {"body": b'{"data": []}', "content_type": JSON}, "lists none"),
    "not-found": (None, {"body": b"Not here", "status": 404, "content_type": TEXT}, "404"),
}


@pytest.mark.parametrize(
    ("base_url", "reply", "says"), CREDENTIALED_FAILURES.values(), ids=CREDENTIALED_FAILURES.keys()
)
async def test_credentials_in_the_base_url_never_reach_a_message(
    fake_upstream: FakeUpstream,
    client_session: aiohttp.ClientSession,
    base_url: str | None,
    reply: dict[str, Any],
    says: str,
) -> None:
    fake_upstream.reply(**reply)
    provider = make_provider(
        fake_upstream,
        client_session,
        base_url=base_url or with_credentials(fake_upstream.base_url),
        api_key=None,
        model="" if "lists none" in says else "test-model",
        first_token_timeout=SHORT,
    )
    events = [event async for event in provider.stream(chat("Hi"))]
    shown = StreamResult(events, 0).shown_text
    assert says in shown
    assert PASSWORD not in shown and f"{USER}:" not in shown and "sk-in-url" not in shown


async def test_credentials_in_an_unreachable_base_url_never_reach_a_message(
    client_session: aiohttp.ClientSession, refusing_port: int
) -> None:
    base_url = f"http://{USER}:{PASSWORD}@127.0.0.1:{refusing_port}/v1"
    result = await collect(OpenAIProvider(client_session, OpenAISettings(base_url, model="m")))
    assert result.failure == (
        f"Could not reach the model server at 127.0.0.1:{refusing_port}: Connection refused."
    )


# --- time limits ---


async def test_headers_that_never_come(run: Run) -> None:
    result = await run(
        [chunk(content="late")], headers_delay=10, settings={"first_token_timeout": SHORT}
    )
    assert_failure(result, "", f"did not answer within {SHORT:g} s")
    assert result.seconds < SHORT + 1


async def test_first_token_timeout_ignores_comments(run: Run) -> None:
    keep_alive = [comment(), Pause(SHORT / 4)] * 12
    result = await run(
        [*keep_alive, chunk(content="too late"), DONE],
        settings={"first_token_timeout": SHORT, "idle_timeout": 2 * SHORT},
    )
    assert_failure(result, "", f"did not start answering within {SHORT:g} s")
    assert SHORT <= result.seconds < 2 * SHORT


async def test_idle_stall_ends_with_a_failure(run: Run, split: str) -> None:
    result = await run(
        [chunk(reasoning_content="Hmm"), chunk(content="Stal")],
        stall=10,
        split=split,
        settings={"idle_timeout": SHORT},
    )
    assert result.reasoning == "Hmm"
    assert_failure(result, "Stal", f"went silent for {SHORT:g} s")
    assert result.seconds < SHORT + 1


async def test_silence_is_timed_from_the_last_read_however_long_the_stream(run: Run) -> None:
    # Six tokens SHORT / 3 apart: the stream outlives its first deadline, then goes
    # silent after the last token (at 2 SHORT), and fails SHORT later, not sooner.
    steady = [part for n in range(6) for part in (Pause(SHORT / 3), chunk(content=f"{n} "))]
    result = await run(steady, stall=10, settings={"idle_timeout": SHORT})
    assert_failure(result, "0 1 2 3 4 5 ", f"went silent for {SHORT:g} s")
    assert 3 * SHORT * 0.95 <= result.seconds < 3 * SHORT + 1


async def test_comments_keep_an_idle_stream_alive(run: Run) -> None:
    keep_alive = [comment(), Pause(SHORT / 3)] * 6  # twice the idle limit, in comments
    result = await run(
        [chunk(content="a"), *keep_alive, chunk(content="b", finish_reason="stop"), DONE],
        settings={"idle_timeout": SHORT},
    )
    assert_success(result, "", "ab")
    assert result.seconds > 2 * SHORT * 0.9


async def test_a_stall_after_finish_is_still_a_success(run: Run) -> None:
    result = await run(
        [chunk(content="Done."), chunk(finish_reason="stop")],
        stall=10,
        settings={"idle_timeout": SHORT},
    )
    assert_success(result, "", "Done.")


# --- leaving early ---


async def test_aclose_while_the_model_is_silent_cancels_upstream(
    fake_upstream: FakeUpstream, client_session: aiohttp.ClientSession
) -> None:
    fake_upstream.reply([], stall=30)
    stream = make_provider(fake_upstream, client_session).stream(chat("Think hard"))
    await events_until(stream, Status(WAITING_STATUS))
    closed_at = asyncio.get_running_loop().time()
    await stream.aclose()
    gone_at = await fake_upstream.wait_disconnected(CANCEL_WITHIN)
    assert gone_at - closed_at < CANCEL_WITHIN


async def test_aclose_while_streaming_cancels_upstream(
    fake_upstream: FakeUpstream, client_session: aiohttp.ClientSession
) -> None:
    fake_upstream.reply([chunk(content=f"word{i} ") for i in range(500)], delay=0.01)
    stream = make_provider(fake_upstream, client_session, reasoning_hold=0).stream(
        chat("Talk a lot")
    )
    await events_until(stream, Answer)
    closed_at = asyncio.get_running_loop().time()
    await stream.aclose()
    gone_at = await fake_upstream.wait_disconnected(CANCEL_WITHIN)
    assert gone_at - closed_at < CANCEL_WITHIN


CANCEL_POINTS = {
    "waiting-for-headers": ({"headers_delay": 30}, Status("Connecting to test-model…")),
    "inside-a-read": ({"body": [chunk(content="Hm")], "stall": 30}, Answer("Hm")),
}


@pytest.mark.parametrize(("reply", "last_seen"), CANCEL_POINTS.values(), ids=CANCEL_POINTS.keys())
async def test_cancelling_the_reading_task_cancels_upstream(
    fake_upstream: FakeUpstream,
    client_session: aiohttp.ClientSession,
    reply: dict[str, Any],
    last_seen: object,
) -> None:
    """The server's handler may be cancelled while the provider awaits the network."""
    fake_upstream.reply(**reply)
    stream = make_provider(fake_upstream, client_session, reasoning_hold=0).stream(
        chat("Think hard")
    )
    reached = asyncio.Event()

    async def consume() -> None:
        async for event in stream:
            if event == last_seen:
                reached.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(CANCEL_WITHIN):
        await reached.wait()
    await fake_upstream.wait_request(CANCEL_WITHIN)
    closed_at = asyncio.get_running_loop().time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gone_at = await fake_upstream.wait_disconnected(CANCEL_WITHIN)
    assert gone_at - closed_at < CANCEL_WITHIN

"""Stream an answer from any OpenAI-compatible chat server.

One request, ``POST {base_url}/chat/completions`` with ``"stream": true``, works
against OpenAI, Azure OpenAI, DeepSeek, vLLM, llama.cpp's ``llama-server``,
Ollama's ``/v1``, LM Studio, OpenRouter, Groq, xAI and friends. They all answer
with Server-Sent Events whose data is a JSON "chunk"; they differ in the
details, and this module absorbs the differences so the rest of the app only
sees the domain events of ``providers.events``.

How a stream is read:

- Bytes come from ``response.content.readany()`` and go through the pure
  parser in ``providers.upstream_sse`` (never ``readline``: aiohttp caps a line
  there, and a reasoning model can send a 600 KB one).
- Each chunk's ``choices[0].delta`` gives reasoning and answer text. Reasoning
  is ``reasoning_content`` (DeepSeek, older vLLM, llama.cpp, LM Studio), else
  ``reasoning`` (vLLM, Ollama, OpenRouter, Groq), else the text items of
  ``reasoning_details`` (OpenRouter's mirror of ``reasoning``): one of them,
  never two. JSON ``null`` and missing keys mean "nothing".
- Content may carry inline ``<think>…</think>``; ``providers.think_tags`` splits
  it, holding back from the answer text whose kind is not known yet so that
  reasoning is never given out as answer. Meanwhile that text is given out as
  ``Undecided``, to be shown at once. Its rules are in that module's docstring.
- ``usage`` may be on any chunk (xAI sends it on all of them); the last one
  seen is reported once, at the end. ``finish_reason`` ends the answer; what
  follows it (the usage chunk, ``[DONE]``) is optional. A stream that ends
  with neither a ``finish_reason`` nor ``[DONE]`` was interrupted.
- Unknown keys (``obfuscation``, ``x_groq``, ``timings``, ``provider``…) and
  chunks with an empty ``choices`` list (Azure's first, the usage chunk) are
  fine, and so is an empty ``data:`` line. Data that is not a JSON object ends
  the stream with a failure: skipped, its text would vanish from the answer.
- Text is valid Unicode: a lone surrogate the JSON spells (``"\\ud83d"``)
  becomes U+FFFD, since a string holding one cannot be encoded as UTF-8.
- The request asks for the identity encoding, and a compressed body is
  refused unread: a few hundred KB of gzip can inflate to gigabytes. Requests
  say ``auto_decompress=False``, and ``make_session()`` makes the app's
  session that way too.

Failures end the stream with one short ``Failure`` that is safe to show: no
HTML, no API key (a 401's message may echo a masked key, so it is never shown;
in other messages any word with a run of stars, or sharing ``KEY_RUN_CHARS``
characters in a row with the key in any case, is redacted), upstream messages
cut to ``MAX_MESSAGE_CHARS``. A listed model whose name would need such
cleaning is left out of the list. Errors inside a 200 stream come
in many shapes, all handled: ``{"error": …}`` chunks (also when ``[DONE]``
follows them, as vLLM does, and alongside non-empty ``choices``, as OpenRouter
does), ``event: error``, llama.cpp's old ``error:`` line and
``finish_reason: "error"``.

Time limits (``OpenAISettings``): ``connect_timeout`` to open the connection;
``first_token_timeout`` from the request to the first reasoning or answer
text (keep-alive comments do not count, queued requests do); ``idle_timeout``
for silence between two reads (any bytes, comments included, count as life).

Leaving early: closing the generator (``aclose()``), or cancelling the task that
iterates it, closes the upstream response before it returns. A half-read
response is closed, not drained, so the connection drops and the model server
stops generating. ``Connected.hang_up`` drops it sooner: it shuts the socket
at once, before the generator's turn to be closed comes.

Connections are kept alive and reused: a prompt to a hosted API skips a TLS
handshake, and one to a local server a new connection. A finished stream
hands its connection back to the pool; one left early is closed. A server
may close a kept-alive connection just as a request goes out on it
(llama-server drops every request sent on the connection a stream came on:
"Server disconnected"): a request that a *reused*
connection drops before any answer is sent again, on the next connection, and
for the next ten minutes each request asks for a connection of its own; a new
connection's drop is final (see ``_send``).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import enum
import functools
import json
import math
import os
import re
import socket
import ssl
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, NamedTuple

import aiohttp
from aiohttp import hdrs
from yarl import URL

from providers.events import (
    ChatRequest,
    Connected,
    Failure,
    Finished,
    ProviderEvent,
    Reasoning,
    Status,
    Usage,
)
from providers.think_tags import ThinkTagSplitter
from providers.upstream_sse import (
    ERROR_EVENT,
    EventTooLong,
    LineTooLong,
    SSEEvent,
    SSEParser,
)
from settings import MODEL_SERVER, http_url, not_negative, positive, setting, text_or_none

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MODELS_TIMEOUT_S = 5.0  # for GET /models, when no model is configured
MAX_MODELS_LISTED = 10  # in the message that asks the person to choose
MODELS_CACHE_S = 60.0  # how long the page's list of models is kept
#: After ``[DONE]``, how long the body's end is waited for (see ``_read_to_end``).
BODY_END_WAIT_S = 0.05
#: After a reused connection drops a request, how long each request asks for a
#: connection of its own (see ``OpenAIProvider._send``).
OWN_CONNECTIONS_S = 600.0
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer clearly and concisely."

#: How much of an error body is read: enough for any JSON error, not a whole page.
MAX_ERROR_BODY_BYTES = 64 * 1024
#: Upstream messages are cut to this length before they are shown.
MAX_MESSAGE_CHARS = 300
#: The longest retry hint (``Retry-After``) passed on to the person: a day.
MAX_RETRY_HINT_S = 24 * 3600

SSE_CONTENT_TYPE = "text/event-stream"
DONE_MARKER = "[DONE]"
FINISH_REASON_ERROR = "error"
#: Statuses that mean "your key was refused"; their messages may echo the key.
KEY_REFUSED_STATUSES = frozenset({401, 403})

WAITING_STATUS = "Waiting for the first token…"
INTERRUPTED = "The model server closed the stream before the answer was complete."
BROKEN = "The connection to the model server broke before the answer was complete."
STREAM_ERROR = "The model server reported an error"
NOT_A_CHUNK = "The model server sent a chunk that is not a JSON object"

# A masked key as servers echo it ("sk-ab12**********wxyz"): any word with a run of stars.
_MASK = "***"
#: A word that shares this many characters in a row with the API key, in any
#: case, is redacted: the key echoed upper-cased, cut short or split in two.
KEY_RUN_CHARS = 8
_REDACTED = "[redacted]"
_WHITESPACE = re.compile(r"\s+")
_WORD = re.compile(r"\S+")
# Half of a UTF-16 surrogate pair: JSON can spell one alone ("\ud83d"), and a
# string holding one cannot be encoded as UTF-8.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
#: How much of an upstream message is looked at: more than can be shown, so
#: that redacting a word never pulls an unexamined one into view.
_LOOKED_AT_CHARS = 2 * MAX_MESSAGE_CHARS


@dataclass(frozen=True)
class OpenAISettings:
    """Where the model server is and how patient to be with it (times in seconds).

    Each field is also a command-line flag and, for some, an environment
    variable (``settings.setting``): ``--base-url`` or ``OPENAI_BASE_URL``.
    """

    base_url: str = setting(
        DEFAULT_BASE_URL,
        "the OpenAI-compatible API, e.g. http://localhost:11434/v1 for Ollama",
        group=MODEL_SERVER, env="OPENAI_BASE_URL", convert=http_url, metavar="URL",
    )  # fmt: skip
    model: str = setting(
        "", "the model to ask; default: the only one the server lists",
        group=MODEL_SERVER, env="OPENAI_MODEL",
    )  # fmt: skip
    api_key: str | None = setting(
        None, "sent as `Authorization: Bearer …`",
        group=MODEL_SERVER, env="OPENAI_API_KEY", convert=text_or_none, flag=False,
    )  # fmt: skip
    #: None: each conversation has its own, from the page (DEFAULT_SYSTEM_PROMPT
    #: at first); set, it is fixed for every conversation ("" for none).
    system_prompt: str | None = setting(
        None, "the system message, fixed for every conversation (empty for none); "
        "default: each conversation's own, set in the page",
        group=MODEL_SERVER, env="OPENAI_SYSTEM_PROMPT", metavar="TEXT",
    )  # fmt: skip
    temperature: float | None = setting(
        None, "sampling temperature; default: the server's",
        group=MODEL_SERVER, env="OPENAI_TEMPERATURE", convert=not_negative, metavar="NUMBER",
    )  # fmt: skip
    max_tokens: int | None = setting(
        None, "longest answer, in tokens; default: the server's",
        group=MODEL_SERVER, env="OPENAI_MAX_TOKENS", convert=positive(int), metavar="N",
    )  # fmt: skip
    connect_timeout: float = setting(
        10.0, "seconds to wait for a connection to the model server",
        group=MODEL_SERVER, convert=positive(float),
    )  # fmt: skip
    first_token_timeout: float = setting(
        120.0, "seconds to wait for the first reasoning or answer text",
        group=MODEL_SERVER, convert=positive(float),
    )  # fmt: skip
    idle_timeout: float = setting(
        60.0, "seconds of silence from the model server (comments count as life) before giving up",
        group=MODEL_SERVER, convert=positive(float),
    )  # fmt: skip
    #: How long untagged content is held back in case a ``</think>`` follows
    #: (see ``providers.think_tags``): 0 turns that off, ``math.inf`` waits
    #: for as long as it takes, but for no more than ``MAX_HELD_CHARS`` of text.
    reasoning_hold: float = setting(
        1.0, "seconds untagged text is held back from the answer (shown as a thought "
        "meanwhile) in case a </think> follows (0 = off; see providers/think_tags.py)",
        group=MODEL_SERVER, convert=not_negative,
    )  # fmt: skip


def make_session() -> aiohttp.ClientSession:
    """The app's shared ``ClientSession`` for the model server, made inside the running loop.

    It never decompresses: requests ask for the identity encoding, and a
    compressed answer is refused unread (a few hundred KB of gzip can inflate
    to gigabytes). The provider also says so on each request, in case its
    session was made another way.
    """
    return aiohttp.ClientSession(
        connector=make_connector(), auto_decompress=False, trace_configs=[_reuse_trace()]
    )


def make_connector() -> aiohttp.TCPConnector:
    """A connector for the app's shared ``ClientSession``, made inside the running loop.

    aiohttp allows 100 connections by default and makes the 101st request wait
    for a free one; a stream holds its connection for minutes, so that cap would
    silently queue people. ``limit=0`` lifts it: the model server decides how
    many requests it serves at once.
    """
    return aiohttp.TCPConnector(limit=0)


class _Attempt:
    """One try at sending a request: whether it went out on a kept-alive
    connection (aiohttp tells a request's trace when it reuses one)."""

    __slots__ = ("reused",)

    def __init__(self) -> None:
        self.reused = False


def _reuse_trace() -> aiohttp.TraceConfig:
    """A trace that marks a request's ``_Attempt`` when its connection is a reused one."""

    async def on_reuse(_session: object, context: Any, _params: object) -> None:
        if isinstance(context.trace_request_ctx, _Attempt):
            context.trace_request_ctx.reused = True

    async def on_redirect(_session: object, context: Any, _params: object) -> None:
        # A redirect's next leg has a connection of its own: the flag is the last leg's.
        if isinstance(context.trace_request_ctx, _Attempt):
            context.trace_request_ctx.reused = False

    trace = aiohttp.TraceConfig()
    trace.on_connection_reuseconn.append(on_reuse)
    trace.on_request_redirect.append(on_redirect)
    return trace


class OpenAIProvider:
    """Streams one answer per prompt from an OpenAI-compatible server."""

    name = "openai"

    def __init__(self, session: aiohttp.ClientSession, settings: OpenAISettings) -> None:
        self._session = session
        self._settings = settings
        self.model = settings.model
        self.url = f"{settings.base_url.rstrip('/')}/chat/completions"
        self.models_url = f"{settings.base_url.rstrip('/')}/models"
        self._listed: list[str] = []
        self._listed_at = -math.inf
        #: Until when each request asks for a connection of its own (``Connection:
        #: close``): set when a reused connection drops a request (see ``_send``).
        self._own_connections_until = -math.inf

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ProviderEvent, None]:
        """Yield the events for one request (see ``providers.events`` for the contract)."""
        try:
            self._check_credentials()
            model = request.model or await self._resolve_model()
        except _CannotStart as failure:
            yield Failure(str(failure), failure.hint)
            return
        yield Status(f"Connecting to {model}…")
        clock = _Clock(self._settings)
        try:
            response = await self._send(self._request_body(request, model), clock)
        except _CannotStart as failure:
            yield Failure(str(failure), failure.hint)
            return
        try:
            problem = await self._problem_with(response)
            if problem is not None:
                yield Failure(*problem)
                return
            yield Connected(hang_up=functools.partial(_hang_up, response))
            yield Status(WAITING_STATUS)
            translator = _Translator(self._settings)
            alarm = _Alarm(clock, translator)
            try:
                while not translator.ended:
                    for event in await self._next_events(response, translator, clock, alarm):
                        yield event
            finally:
                alarm.off()
            if translator.done:
                await _read_to_end(response)
        finally:
            # Closed, not drained: dropping the connection of a half-read
            # response is how the model server learns to stop generating.
            response.close()

    def _check_credentials(self) -> None:
        """A user and password in the base URL go as Basic auth, the key as Bearer:
        one request cannot carry both (aiohttp refuses to try)."""
        if self._settings.api_key and _has_credentials(self._settings.base_url):
            raise _CannotStart(
                "This app has two kinds of credentials for the model server, and can send "
                "only one.",
                hint="The base URL has a user name and password, and OPENAI_API_KEY is set "
                "too: remove one.",
            )

    # --- the model ---

    async def models(self) -> list[str]:
        """What the model server lists, asked at most once per ``MODELS_CACHE_S``
        (none while it cannot be reached)."""
        if time.monotonic() - self._listed_at > MODELS_CACHE_S:
            try:
                self._listed = await self._list_models() or []
            except _CannotStart:
                self._listed = []
            self._listed_at = time.monotonic()  # once answered: a cancelled ask counts not
        return self._listed

    async def check(self) -> tuple[bool, str]:
        """Ask the model server once, for the start-up log: whether all is well, and
        what was found. Never raises: a server that starts later is fine."""
        try:
            models = await self._list_models()
        except _CannotStart as problem:
            return False, str(problem)
        if models is None:
            return False, (
                f"could not reach the model server at {self._where()}; answers fail until it is up"
            )
        if self.model:
            if models and self.model not in models:
                return False, (
                    f"the model server does not list {self.model!r}; it lists: {_listing(models)}"
                )
            return True, f"the model server is up; it answers with {self.model}"
        if not models:
            return False, "the model server lists no model: name one with --model or OPENAI_MODEL"
        if len(models) == 1:
            return True, f"the model server is up; it serves {models[0]}"
        return True, f"the model server offers {len(models)} models, one per conversation: " + (
            _listing(models)
        )

    async def _resolve_model(self) -> str:
        """The configured model, else the only one the server lists (llama.cpp,
        vLLM and LM Studio usually serve one); asked once, when first needed,
        so the model server may start after the app."""
        if self.model:
            return self.model
        models = await self._list_models()
        if models is None:
            raise _CannotStart(
                f"Could not reach the model server at {self._where()} to ask which model to use.",
                hint="Is it running? Or name a model with --model or OPENAI_MODEL.",
            )
        if len(models) == 1:
            self.model = models[0]
            return self.model
        if models:
            raise _CannotStart(
                f"Choose a model in the page's settings; the server offers: {_listing(models)}"
            )
        raise _CannotStart(
            f"No model is set, and the model server at {self._where()} lists none.",
            hint="Start the app with --model NAME or OPENAI_MODEL=NAME.",
        )

    async def _list_models(self) -> list[str] | None:
        """The ids from ``GET {base_url}/models``: None when the server cannot be
        reached, empty when it answers with no usable list; ``_CannotStart``
        when it answers with an error (a wrong base URL, a missing key)."""
        headers = {}
        if self._settings.api_key:
            headers["Authorization"] = f"Bearer {self._settings.api_key}"
        try:
            async with (
                asyncio.timeout(MODELS_TIMEOUT_S),
                self._session.get(
                    self.models_url, headers=headers, auto_decompress=False
                ) as response,
            ):
                problem = self._compressed(response, "list of models")
                if problem is None and response.status != HTTPStatus.OK:
                    problem = await self._http_error(response)
                if problem is not None:
                    raise _CannotStart(
                        f"No model is set, and asking for one failed. {problem.message}",
                        hint=_hints(problem.hint, "Or name one with --model or OPENAI_MODEL."),
                    )
                listing = _json_object(await self._read_capped(response))
        except (aiohttp.ClientConnectionError, OSError, TimeoutError):
            return None
        except aiohttp.ClientError:
            return []
        entries = listing.get("data") if listing is not None else None
        if not isinstance(entries, list):
            return []
        ids = [e["id"] for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)]
        # A name is shown on the page as it is: one that would need cleaning
        # (an echo of the key, a masked key, a page of text) is not a model.
        return [name for name in ids if name and self._clean(name) == name]

    # --- the request ---

    def _request_body(self, request: ChatRequest, model: str) -> dict[str, Any]:
        settings = self._settings
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "stream": True,
            # Without this, servers send no token counts in a stream.
            "stream_options": {"include_usage": True},
        }
        temperature = (
            request.temperature if request.temperature is not None else settings.temperature
        )
        if temperature is not None:
            body["temperature"] = temperature
        if settings.max_tokens is not None:
            body["max_tokens"] = settings.max_tokens
        return body

    def _request_headers(self) -> dict[str, str]:
        headers = {
            "Accept": SSE_CONTENT_TYPE,
            # A compressing proxy may buffer the stream until it has a block to
            # compress; the identity encoding keeps tokens flowing. (And a
            # compressed answer is refused: see `_compressed`.)
            "Accept-Encoding": "identity",
        }
        if time.monotonic() < self._own_connections_until:
            headers["Connection"] = "close"
        if self._settings.api_key:
            headers["Authorization"] = f"Bearer {self._settings.api_key}"
        return headers

    async def _send(self, body: dict[str, Any], clock: _Clock) -> aiohttp.ClientResponse:
        """Send the request and wait for the response headers, or raise ``_CannotStart``.

        A kept-alive connection that the server closed as the request went out
        on it fails with no answer at all: the request is sent again, on the
        pool's next connection or a new one. Each such failure closes a pooled
        connection, and the headers' deadline bounds them all. A new connection
        that fails the same way is a real failure: the server got the request.

        A server that drops one request so may drop them all (llama-server drops
        every request sent on the connection a stream came on): for the next
        ``OWN_CONNECTIONS_S`` each request asks for a connection of its own, as
        if keep-alive were off, so none is pooled again. (aiohttp still hands out
        a connection pooled before that, if there is one: each such is tried,
        and dropped, once.)
        """
        settings = self._settings
        connect = aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout, sock_connect=settings.connect_timeout
        )
        try:
            async with clock.timeout(clock.headers_deadline()):
                while True:
                    attempt = _Attempt()
                    try:
                        return await self._session.post(
                            self.url,
                            json=body,
                            headers=self._request_headers(),
                            timeout=connect,
                            auto_decompress=False,  # see `_compressed`
                            trace_request_ctx=attempt,
                        )
                    except aiohttp.ClientConnectorError:
                        raise  # no connection at all (a ClientOSError too): never sent again
                    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                        if not attempt.reused:
                            raise
                        self._own_connections_until = time.monotonic() + OWN_CONNECTIONS_S
        except aiohttp.ConnectionTimeoutError:
            raise _CannotStart(
                f"Could not reach the model server at {self._where()}: "
                f"no connection within {settings.connect_timeout:g} s."
            ) from None
        except TimeoutError:
            raise _CannotStart(
                f"The model server at {self._where()} did not answer within "
                f"{clock.headers_patience():g} s."
            ) from None
        except aiohttp.ClientConnectorError as error:
            raise _CannotStart(
                f"Could not reach the model server at {error.host}:{error.port}: "
                f"{_os_reason(error.os_error)}."
            ) from None
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError):
            raise _CannotStart(
                f"The model server URL is not a valid http(s) URL: {_public(settings.base_url)}."
            ) from None
        except (aiohttp.ClientError, OSError) as error:
            raise _CannotStart(
                f"The model server at {self._where()} dropped the request ({type(error).__name__})."
            ) from None

    def _where(self) -> str:
        """Where the model server is, for messages: host and port, never a user or password."""
        url = URL(self.url)
        return f"{url.host}:{url.port}"

    # --- the response ---

    async def _problem_with(self, response: aiohttp.ClientResponse) -> _Problem | None:
        """A message if the response is not the event stream we asked for."""
        compressed = self._compressed(response, "stream")
        if compressed is not None:
            return compressed
        if response.status != 200:
            return await self._http_error(response)
        if response.content_type != SSE_CONTENT_TYPE:
            return await self._not_a_stream(response)
        return None

    def _compressed(self, response: aiohttp.ClientResponse, what: str) -> _Problem | None:
        """A message if the body (``what`` it should be) is compressed, which this app never reads.

        We ask for ``Accept-Encoding: identity``; a server or proxy that
        compresses anyway could send a few hundred KB that inflate to
        gigabytes, so the body is refused unread.
        """
        encoding = response.headers.get(hdrs.CONTENT_ENCODING, "").strip()
        if encoding.lower() in ("", "identity"):
            return None
        compressed = f"compressed ({self._clean(encoding)})"
        if response.status != HTTPStatus.OK:
            status = f"{response.status} {response.reason or ''}".rstrip()
            return _Problem(
                f"The model server answered {status}, {compressed}, which this app does not accept."
            )
        return _Problem(
            f"The model server sent a {compressed} {what}, which this app does not accept.",
            "The app asks for an uncompressed one: is a proxy in between compressing it?",
        )

    async def _http_error(self, response: aiohttp.ClientResponse) -> _Problem:
        status = f"{response.status} {response.reason or ''}".rstrip()
        if response.status in KEY_REFUSED_STATUSES:
            if self._settings.api_key:
                return _Problem(
                    f"The model server refused this app's API key ({status}).",
                    "Check OPENAI_API_KEY.",
                )
            return _Problem(f"The model server wants an API key ({status}).", "Set OPENAI_API_KEY.")
        detail = _error_detail(_json_object(await self._read_capped(response)))
        if detail and detail.strip().lower() == (response.reason or "").lower():
            detail = None  # {"detail": "Not Found"} says no more than the status
        message = f"The model server answered {status}"
        message += f": {_sentence(self._clean(detail))}" if detail else "."
        wait = _retry_after_seconds(response.headers)
        if wait is not None and wait <= MAX_RETRY_HINT_S:  # a longer one is not believed
            message += f" Try again in {max(1, math.ceil(wait))} s."
        if response.status == HTTPStatus.NOT_FOUND and not detail:
            return _Problem(message, self._base_url_hint())  # a bare 404: most likely the path
        return _Problem(message)

    async def _not_a_stream(self, response: aiohttp.ClientResponse) -> _Problem:
        detail = _error_detail(_json_object(await self._read_capped(response)))
        kind = response.content_type or "no content type"
        message = f"The model server answered with {kind}, not an event stream"
        message += f" ({self._clean(detail)})." if detail else "."
        return _Problem(message, self._base_url_hint())

    def _base_url_hint(self) -> str | None:
        """For answers that mean "no such path": the usual cause, when it applies
        (a base URL with a version in its path, /v1 or Gemini's /v1beta/openai,
        has its version)."""
        if _VERSION_SEGMENT.search(URL(self._settings.base_url).path):
            return None
        return "Check the base URL: most servers want it to end in /v1 (as in http://127.0.0.1:8080/v1)."

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes:
        """Read at most ``MAX_ERROR_BODY_BYTES`` of a body, giving up after an idle timeout."""
        body = bytearray()
        try:
            async with asyncio.timeout(self._settings.idle_timeout):
                while len(body) < MAX_ERROR_BODY_BYTES:
                    data = await response.content.read(MAX_ERROR_BODY_BYTES - len(body))
                    if not data:
                        break
                    body += data
        except (TimeoutError, aiohttp.ClientError):
            pass  # an error message is still owed; what arrived is what we have
        return bytes(body)

    def _clean(self, text: str) -> str:
        return _clean(text, self._settings.api_key)

    async def _next_events(
        self,
        response: aiohttp.ClientResponse,
        translator: _Translator,
        clock: _Clock,
        alarm: _Alarm,
    ) -> list[ProviderEvent]:
        """Wait for the next read, or for the earliest deadline, and translate what happened."""
        try:
            with alarm:
                data = await response.content.readany()  # what arrived; b"" at the end
        except TimeoutError:
            if alarm.limit is _Limit.HOLD:
                return translator.poll(clock.now())
            return translator.end(clock.expired_message(alarm.limit))
        except (aiohttp.ClientError, OSError):
            return translator.end(BROKEN)
        if not data:
            return translator.end(INTERRUPTED)
        return translator.feed(data, clock.read())


async def _read_to_end(response: aiohttp.ClientResponse) -> None:
    """Read what follows ``[DONE]`` (normally only the end of the chunked body) for
    at most ``BODY_END_WAIT_S``: a body read to its end gives its connection back
    to the pool, and ``response.close()`` drops one that was not."""
    try:
        async with asyncio.timeout(BODY_END_WAIT_S):
            while await response.content.readany():
                pass
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass


def _hang_up(response: aiohttp.ClientResponse) -> None:
    """``Connected.hang_up``: shut the socket of the connection ``response`` still
    holds, so that the model server sees the request end now. (The transport
    stays open until ``response.close()``; its next read finds the end.) Once
    the response has let go of its connection (read to the end, the connection
    is back in the pool and may carry another prompt), ``response.connection``
    is None and nothing is touched."""
    connection = response.connection
    transport = connection.transport if connection is not None else None
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):  # already shut or closed by the other end
            sock.shutdown(socket.SHUT_RDWR)


class _Problem(NamedTuple):
    """What went wrong: ``message`` for the person, ``hint`` for the operator's log."""

    message: str
    hint: str | None = None


def _hints(*hints: str | None) -> str | None:
    return " ".join(hint for hint in hints if hint) or None


class _CannotStart(Exception):
    """The request failed before a response arrived; the message is safe to show,
    ``hint`` is for the operator's log."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


# --- time ---


class _Limit(enum.Enum):
    IDLE = "silence between two reads"
    FIRST_TOKEN = "wait for the first reasoning or answer text"
    HOLD = "held content becomes answer (not a failure)"


class _Clock:
    """The deadlines of one stream, on ``time.monotonic()``: the clock of an
    ``Answer``'s ``sent_at`` and of the server's stats."""

    def __init__(self, settings: OpenAISettings) -> None:
        self._settings = settings
        self.started = time.monotonic()
        self._last_read = self.started

    def now(self) -> float:
        return time.monotonic()

    def timeout(self, deadline: float) -> asyncio.Timeout:
        """An ``asyncio.timeout`` that expires at ``deadline``."""
        return asyncio.timeout(deadline - self.now())

    def read(self) -> float:
        """Note that bytes arrived (any bytes are life); return the time."""
        self._last_read = self.now()
        return self._last_read

    def headers_patience(self) -> float:
        # Headers are the first read: both the idle and the first-token limits apply.
        return min(self._settings.idle_timeout, self._settings.first_token_timeout)

    def headers_deadline(self) -> float:
        return self.started + self.headers_patience()

    def next_deadline(self, translator: _Translator) -> tuple[float, _Limit]:
        settings = self._settings
        deadlines = [(self._last_read + settings.idle_timeout, _Limit.IDLE)]
        if not translator.has_text:
            deadlines.append((self.started + settings.first_token_timeout, _Limit.FIRST_TOKEN))
        if translator.hold_deadline is not None:
            deadlines.append((translator.hold_deadline, _Limit.HOLD))
        return min(deadlines, key=lambda deadline: deadline[0])

    def expired_message(self, limit: _Limit) -> str:
        if limit is _Limit.FIRST_TOKEN:
            return (
                f"The model did not start answering within "
                f"{self._settings.first_token_timeout:g} s."
            )
        return f"The model server went silent for {self._settings.idle_timeout:g} s."


class _Alarm:
    """The time limits of one stream's reads (``_Clock.next_deadline``), with one
    timer for the stream instead of one per read.

    A read moves the deadline on without touching the timer; when the timer goes
    off, it looks at the deadline again and, if it has moved, sets itself for the
    new one. ``with alarm:`` around a read raises TimeoutError, as
    ``asyncio.timeout`` would, once a deadline has really passed (``limit`` says
    which); a deadline that comes sooner (held text's) sets the timer sooner.
    """

    def __init__(self, clock: _Clock, translator: _Translator) -> None:
        self._clock, self._translator = clock, translator
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None  # the task reading, while it reads
        self._cancelling = 0
        self._rang = False
        self.limit = _Limit.IDLE  # the deadline that passed, once one has

    def __enter__(self) -> None:
        deadline, _ = self._clock.next_deadline(self._translator)
        if self._timer is None or deadline < self._timer.when():
            self.off()
            self._timer = self._loop.call_at(deadline, self._ring)  # (the same clock)
        self._task = asyncio.current_task()
        assert self._task is not None
        self._cancelling = self._task.cancelling()
        self._rang = False

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        task, self._task = self._task, None
        assert task is not None
        if self._rang:
            self._rang = False
            # As asyncio.timeout: our cancellation, and nobody else's (a Stop).
            if task.uncancel() <= self._cancelling and kind is asyncio.CancelledError:
                raise TimeoutError

    def _ring(self) -> None:
        self._timer = None
        deadline, self.limit = self._clock.next_deadline(self._translator)
        if deadline > self._loop.time():
            self._timer = self._loop.call_at(deadline, self._ring)
        elif self._task is not None:
            self._rang = True
            self._task.cancel()
        # (Not reading: the next read finds the deadline passed and rings at once.)

    def off(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


# --- from chunks to domain events ---


class _Translator:
    """Turns the bytes of an event stream into domain events. No I/O; the caller passes time."""

    def __init__(self, settings: OpenAISettings) -> None:
        self._api_key = settings.api_key
        self._parser = SSEParser()
        self._splitter = ThinkTagSplitter(settings.reasoning_hold)
        self._finish_reason: str | None = None
        #: Whether ``[DONE]`` came: the server said all it had to say.
        self.done = False
        self._usage: Usage | None = None
        #: Whether any reasoning or answer text arrived (the first-token limit).
        self.has_text = False
        #: Whether the stream is over; the last event given out said how.
        self.ended = False

    @property
    def hold_deadline(self) -> float | None:
        return self._splitter.hold_deadline

    def feed(self, data: bytes, now: float) -> list[ProviderEvent]:
        """Take the bytes of one read."""
        try:
            sse_events = self._parser.feed(data)
        except (LineTooLong, EventTooLong) as error:
            what = "a line" if isinstance(error, LineTooLong) else "an event"
            return self._fail(
                f"The model server sent {what} longer than "
                f"{self._parser.max_line_bytes // (1024 * 1024)} MiB."
            )
        events: list[ProviderEvent] = []
        for sse_event in sse_events:
            events += self._take(sse_event, now)
            if self.ended:
                break
        return events

    def poll(self, now: float) -> list[ProviderEvent]:
        """Let held content go once its time is up."""
        return list(self._splitter.poll(now))

    def end(self, interruption: str) -> list[ProviderEvent]:
        """The stream stopped (end of body, timeout, broken connection).

        A ``finish_reason`` or ``[DONE]`` already said the answer is complete,
        so whatever stopped the stream after that does not make it a failure.
        """
        if self._finish_reason is not None or self.done:
            return self._close(None)
        return self._close(Failure(interruption))

    def _fail(self, message: str) -> list[ProviderEvent]:
        return self._close(Failure(message))

    def _close(self, failure: Failure | None) -> list[ProviderEvent]:
        if self.ended:
            return []
        self.ended = True
        events: list[ProviderEvent] = list(self._splitter.finish())
        if self._usage is not None:
            events.append(self._usage)
        if failure is not None:
            events.append(failure)
        elif self._finish_reason is not None:
            events.append(Finished(self._finish_reason))
        return events

    def _take(self, sse_event: SSEEvent, now: float) -> list[ProviderEvent]:
        if sse_event.event == ERROR_EVENT:
            detail = _error_detail(_json_object(sse_event.data)) or sse_event.data
            return self._fail_with(detail)
        if sse_event.data.startswith(DONE_MARKER):
            self.done = True
            return self._close(None)
        if not sse_event.data.strip():
            return []  # an empty `data:` line says nothing
        chunk = _json_object(sse_event.data)
        if chunk is None:
            # Skipping it would drop its text from the answer without a word.
            return self._fail(f"{NOT_A_CHUNK}: {_clean(sse_event.data, self._api_key)}")
        if chunk.get("error") or chunk.get("object") == "error":
            return self._fail_with(_error_detail(chunk))
        self._usage = _usage(chunk) or self._usage
        choice = _first_choice(chunk)
        if choice is None:
            return []
        events = self._take_delta(choice.get("delta"), now)
        finish_reason = choice.get("finish_reason")
        if finish_reason == FINISH_REASON_ERROR:
            return events + self._fail_with(None)
        if isinstance(finish_reason, str):
            # The page keeps it (data-finish): cleaned like any upstream text.
            self._finish_reason = _clean(finish_reason, self._api_key)
        return events

    def _take_delta(self, delta: Any, now: float) -> list[ProviderEvent]:
        if not isinstance(delta, dict):
            return []
        events: list[ProviderEvent] = []
        reasoning = _reasoning_text(delta)
        if reasoning:
            self.has_text = True
            events += self._splitter.server_reasoning()
            events.append(Reasoning(_valid_text(reasoning)))
        content = delta.get("content")
        if isinstance(content, str) and content:
            self.has_text = True
            events += self._splitter.feed(_valid_text(content), now)
        return events

    def _fail_with(self, detail: str | None) -> list[ProviderEvent]:
        if detail and detail.strip():
            return self._fail(f"{STREAM_ERROR}: {_clean(detail, self._api_key)}")
        return self._fail(f"{STREAM_ERROR} while answering.")


# --- reading JSON ---

_VERSION_SEGMENT = re.compile(r"/v\d")  # /v1, /v1beta, /v4: an API version in a path


def _listing(models: list[str]) -> str:
    more = "…" if len(models) > MAX_MODELS_LISTED else ""
    return ", ".join(models[:MAX_MODELS_LISTED]) + more


def _sentence(text: str) -> str:
    """``text`` ending like a sentence, so that another may follow it."""
    return text if text.endswith((".", "!", "?", "…")) else text + "."


def _json_object(text: str | bytes) -> dict[str, Any] | None:
    """The JSON object in ``text``, or None for anything else (HTML, plain text, a list…)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # also UnicodeDecodeError; JSON nested thousands deep
        return None
    return value if isinstance(value, dict) else None


def _error_detail(payload: dict[str, Any] | None) -> str | None:
    """The message in an error body of any common shape, or None.

    ``{"error": {"message": …}}`` (OpenAI and most), ``{"error": "…"}`` (LM
    Studio, Ollama's native API), ``{"object": "error", "message": …}`` (older vLLM),
    ``{"detail": "…"}`` (FastAPI-based servers such as vLLM, for a path they lack).
    """
    if payload is None:
        return None
    error = payload.get("error")
    if isinstance(error, dict):
        message = error.get("message")
    elif isinstance(error, str):
        message = error
    else:
        message = payload.get("message") or payload.get("detail")
    return message if isinstance(message, str) and message.strip() else None


def _first_choice(chunk: dict[str, Any]) -> dict[str, Any] | None:
    choices = chunk.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None


def _reasoning_text(delta: dict[str, Any]) -> str:
    """The reasoning in a delta, from the first field that has some (never two)."""
    for key in ("reasoning_content", "reasoning"):
        value = delta.get(key)
        if isinstance(value, str) and value:
            return value
    details = delta.get("reasoning_details")
    if isinstance(details, list):
        return "".join(_reasoning_detail_text(item) for item in details)
    return ""


#: The text-bearing ``reasoning_details`` types and the key of their text;
#: ``reasoning.encrypted`` carries none.
_REASONING_DETAIL_TEXT_KEYS = {"reasoning.text": "text", "reasoning.summary": "summary"}


def _reasoning_detail_text(item: Any) -> str:
    if not isinstance(item, dict):
        return ""
    kind = item.get("type")
    key = _REASONING_DETAIL_TEXT_KEYS.get(kind) if isinstance(kind, str) else None
    text = item.get(key) if key else None
    return text if isinstance(text, str) else ""


def _usage(chunk: dict[str, Any]) -> Usage | None:
    usage = chunk.get("usage")
    if not isinstance(usage, dict):
        return None
    return Usage(
        prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
    )


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- words for people ---


def _clean(text: str, api_key: str | None) -> str:
    """Make an upstream message safe to show: one line, short, and without any
    word that has a run of stars (a masked key) or shares ``KEY_RUN_CHARS``
    characters in a row with the API key, in any case.

    It takes linear time, however long the message: only its start is looked
    at, one word at a time. (A pattern such as ``\\S*\\*{3,}\\S*`` retries
    from every character of a long word: about a minute for 64 KB.)
    """
    text = _WHITESPACE.sub(" ", _valid_text(text)).strip()
    shortened = len(text) > _LOOKED_AT_CHARS
    if shortened:
        text = _whole_words(text[:_LOOKED_AT_CHARS])
    key = api_key.casefold() if api_key else ""
    run = min(KEY_RUN_CHARS, len(key))  # a shorter key must be there whole
    key_runs = _runs(key, run) if key else frozenset()

    def redact(word: re.Match[str]) -> str:
        if _MASK in word[0] or (key and not key_runs.isdisjoint(_runs(word[0].casefold(), run))):
            return _REDACTED
        return word[0]

    text = _WORD.sub(redact, text)
    if shortened or len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1].rstrip() + "…"
    return text


def _runs(text: str, length: int) -> frozenset[str]:
    """Every ``length`` characters in a row in ``text``."""
    return frozenset(text[i : i + length] for i in range(len(text) - length + 1))


def _whole_words(start: str) -> str:
    """The start of a message without its last word, which may have been cut
    (a secret cut in two must not pass for a harmless word). A start that is
    one word stays: only its first half can be shown."""
    return start.rsplit(" ", 1)[0]


def _valid_text(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD, so that it can be
    encoded as UTF-8. (``json.loads`` joins a pair written in one string.)"""
    return _LONE_SURROGATE.sub("\ufffd", text)


def _has_credentials(url: str) -> bool:
    """Whether ``url`` carries a user name or password (``http://me:pw@host/v1``)."""
    try:
        parsed = URL(url)
    except ValueError:
        return False
    return parsed.user is not None or parsed.password is not None


def _public(url: str) -> str:
    """``url`` fit to show: without user, password, query or fragment (which may carry a key)."""
    try:
        return repr(str(URL(url).with_user(None).with_query(None).with_fragment(None)))
    except ValueError:
        return "(not a URL)"


def _os_reason(error: OSError) -> str:
    """Why a connection failed, in words: "Connection refused", not "[Errno 111] …"."""
    if isinstance(error, ssl.SSLError):  # its errno is an OpenSSL code, not an OS one
        detail = getattr(error, "verify_message", None) or error.reason or "handshake error"
        return f"the TLS handshake failed ({detail})"
    if error.errno is not None and error.errno > 0:
        return os.strerror(error.errno)
    return error.strerror or type(error).__name__


def _finite_number(text: str | None) -> float | None:
    """The number in ``text``, or None: "inf" and "nan" are floats, but no wait."""
    try:
        number = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The server's retry hint: ``retry-after-ms``, else ``Retry-After`` (seconds or a date)."""
    milliseconds = _finite_number(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _finite_number(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" in an HTTP date means UTC, parsed as naive
        when = when.replace(tzinfo=UTC)
    return (when - datetime.now(UTC)).total_seconds()

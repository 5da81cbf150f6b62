"""Stream a model's thoughts and answer into the browser with HTMX and Server-Sent Events.

Run it with ``python server.py`` (``--help`` lists every option). With no
configuration it answers from the offline demo provider.

Routes
    GET  /                      the page: a prompt form that posts with htmx
    POST /process_prompt        the bridge: stores the prompt under a new uid and
                                returns the snippet that opens the event stream
    GET  /response-stream?uid=  the event stream for that uid (text/event-stream)
    GET  /healthz               JSON: status, streams in flight, uids pending
    GET  /static/…, /vendor/…   our CSS and JS; htmx itself when installed with npm

Events on /response-stream, each with an ``id:``, in this order:
    thought        the reasoning so far (its latest part), or a status line;
                   the page replaces the previous thought with it
    answer_chunk   the next piece of the answer; the page appends it
    final_answer   the whole answer as HTML; it replaces #{uid}-final-container
    error          what went wrong (sent instead of final_answer)
    close          always last, with an empty data line; the page disconnects
plus a ``: ping`` comment every ``--ping-interval`` seconds. Every payload is
HTML-escaped text: model output is never trusted as markup.

Limits (each one a flag, see ``--help``)
    a prompt is at most --max-prompt-chars characters and a POST body at most
    --max-body-bytes; at most --max-pending prompts wait for their stream, each
    for at most --uid-ttl seconds; a uid streams once.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import html
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from markupsafe import Markup

from providers.demo import DemoProvider
from providers.events import (
    Answer,
    Failure,
    Finished,
    Provider,
    ProviderEvent,
    Reasoning,
    Status,
    Usage,
)

log = logging.getLogger("stream")

HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
NODE_MODULES = HERE / "node_modules"

# --- configuration -------------------------------------------------------------------

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
PING_INTERVAL_S = 15.0  # keeps proxies from closing a quiet stream; finds departed clients
UID_TTL_S = 60.0  # how long a prompt waits for its stream to be opened
MAX_PENDING = 1000  # prompts waiting for their stream, at most
MAX_PROMPT_CHARS = 8000
MAX_BODY_BYTES = 64 * 1024
DEMO_DELAY_S = 0.03  # the demo provider's pause per word: about a fast model's pace


@dataclass(frozen=True)
class Config:
    """Everything the app can be told. ``parse_config`` fills it from flags and env."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    provider: str = "demo"
    base_url: str = DEFAULT_OPENAI_BASE_URL
    api_key: str | None = field(default=None, repr=False)  # never printed, never logged
    model: str | None = None
    demo_delay: float = DEMO_DELAY_S
    ping_interval: float = PING_INTERVAL_S
    uid_ttl: float = UID_TTL_S
    max_pending: int = MAX_PENDING
    max_prompt_chars: int = MAX_PROMPT_CHARS
    max_body_bytes: int = MAX_BODY_BYTES


def _positive(kind: type) -> Any:
    """An argparse type that accepts only numbers above zero."""

    def convert(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above zero, not {text}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its error messages
    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Stream a model's thoughts and answer into the browser (HTMX + SSE).",
        epilog="A flag beats its environment variable, which beats the default. "
        "OPENAI_API_KEY is read from the environment only, so it never shows in `ps`.",
    )
    add = parser.add_argument
    add("--host", help=f"address to listen on (env HOST; default {DEFAULT_HOST})")
    add("--port", type=int, help=f"port to listen on (env PORT; default {DEFAULT_PORT})")
    add(
        "--provider",
        choices=["demo", "openai"],
        help="where answers come from: the offline demo, or an OpenAI-compatible server "
        "(default: openai when a base URL or key is set, else demo)",
    )
    add(
        "--base-url",
        help="the OpenAI-compatible API, e.g. http://localhost:11434/v1 for Ollama "
        f"(env OPENAI_BASE_URL; default {DEFAULT_OPENAI_BASE_URL})",
    )
    add("--model", help="the model to ask (env OPENAI_MODEL)")
    add(
        "--demo-delay",
        type=float,
        default=DEMO_DELAY_S,
        help="seconds the demo provider waits per word (default %(default)s; 0 = instant)",
    )
    add(
        "--ping-interval",
        type=_positive(float),
        default=PING_INTERVAL_S,
        help="seconds between ': ping' comments on a stream (default %(default)s)",
    )
    add(
        "--uid-ttl",
        type=_positive(float),
        default=UID_TTL_S,
        help="seconds a prompt waits for its stream before it expires (default %(default)s)",
    )
    add(
        "--max-pending",
        type=_positive(int),
        default=MAX_PENDING,
        help="prompts that may wait for their stream at once (default %(default)s)",
    )
    add(
        "--max-prompt-chars",
        type=_positive(int),
        default=MAX_PROMPT_CHARS,
        help="longest prompt accepted, in characters (default %(default)s)",
    )
    add(
        "--max-body-bytes",
        type=_positive(int),
        default=MAX_BODY_BYTES,
        help="largest POST body accepted, in bytes (default %(default)s)",
    )
    return parser


def parse_config(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    """Read flags, then environment variables, then defaults, in that order of precedence."""
    parser = build_parser()
    args = parser.parse_args(argv)

    port = args.port
    if port is None:
        try:
            port = int(environ.get("PORT", DEFAULT_PORT))
        except ValueError:
            parser.error(f"PORT must be a number, not {environ['PORT']!r}")

    base_url = args.base_url or environ.get("OPENAI_BASE_URL")
    api_key = environ.get("OPENAI_API_KEY") or None
    provider = args.provider or ("openai" if base_url or api_key else "demo")
    return Config(
        host=args.host or environ.get("HOST", DEFAULT_HOST),
        port=port,
        provider=provider,
        base_url=base_url or DEFAULT_OPENAI_BASE_URL,
        api_key=api_key,
        model=args.model or environ.get("OPENAI_MODEL") or None,
        demo_delay=max(args.demo_delay, 0.0),
        ping_interval=args.ping_interval,
        uid_ttl=args.uid_ttl,
        max_pending=args.max_pending,
        max_prompt_chars=args.max_prompt_chars,
        max_body_bytes=args.max_body_bytes,
    )


# --- SSE framing ---------------------------------------------------------------------

# The line breaks of the SSE format. str.splitlines() would also split on
# characters such as U+2028 that the browser keeps inside a line.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def format_event(event: str, data: str, event_id: int) -> bytes:
    """One SSE event, as bytes on the wire.

    Every line of ``data`` gets its own ``data: `` line (with the space: the
    browser strips exactly one, so a leading space in the text survives), and
    empty data still gets an empty ``data: `` line: an event without one is
    never dispatched.
    """
    lines = [f"event: {event}", f"id: {event_id}"]
    lines += ["data: " + line for line in _LINE_BREAK.split(data)]
    return ("\n".join(lines) + "\n\n").encode()


PING = b": ping\n\n"  # a comment: the page ignores it, proxies and TCP see traffic


def escape_text(text: str) -> str:
    """Model text as HTML that shows exactly that text.

    A carriage return is written as a character reference: as a raw character
    the browser's SSE parser would take it for a line break and turn it into
    a newline.
    """
    return html.escape(text).replace("\r", "&#13;")


# --- the store of prompts and streams --------------------------------------------------


class NotClaimable(Exception):
    """The uid cannot be streamed; the message says why, for the person."""


UNKNOWN_UID = (
    "This answer is unknown or has expired: it may have been shown already, or waited "
    "too long. Please submit the prompt again."
)
ALREADY_STREAMING = (
    "This answer is already being streamed to another window. Please submit the prompt again."
)


@dataclass
class Entry:
    prompt: str
    created: float
    streaming: bool = False


class Store:
    """Prompts waiting for their stream, and streams in flight, by uid.

    A uid is claimed once: the first GET for it streams the answer, any other
    GET is refused. The entry goes away when its stream ends, or when nobody
    claims it within ``ttl`` seconds. All changes happen under one asyncio lock.
    """

    def __init__(self, ttl: float, max_pending: int) -> None:
        self.ttl = ttl
        self.max_pending = max_pending
        self._entries: dict[str, Entry] = {}
        self._lock = asyncio.Lock()

    @staticmethod
    def new_uid() -> str:
        # 128 random bits. The letter in front keeps `#{uid}-final-container` a
        # valid CSS selector: an id starting with a digit is not one.
        return "u" + secrets.token_hex(16)

    @property
    def pending(self) -> int:
        return sum(not entry.streaming for entry in self._entries.values())

    @property
    def streaming(self) -> int:
        return sum(entry.streaming for entry in self._entries.values())

    async def add(self, prompt: str) -> str | None:
        """Store a prompt; its new uid, or None when too many are waiting."""
        async with self._lock:
            if self.pending >= self.max_pending:
                return None
            uid = self.new_uid()
            self._entries[uid] = Entry(prompt, created=time.monotonic())
            return uid

    async def claim(self, uid: str) -> str:
        """Mark the uid as streaming and return its prompt, or raise NotClaimable."""
        async with self._lock:
            entry = self._entries.get(uid)
            if entry is None or self._expired(entry):
                raise NotClaimable(UNKNOWN_UID)
            if entry.streaming:
                raise NotClaimable(ALREADY_STREAMING)
            entry.streaming = True
            return entry.prompt

    async def release(self, uid: str) -> None:
        async with self._lock:
            self._entries.pop(uid, None)

    async def sweep(self) -> int:
        """Forget prompts nobody streamed in time; how many were forgotten."""
        async with self._lock:
            expired = [uid for uid, entry in self._entries.items() if self._expired(entry)]
            for uid in expired:
                del self._entries[uid]
            return len(expired)

    def _expired(self, entry: Entry) -> bool:
        return not entry.streaming and time.monotonic() - entry.created > self.ttl


# --- app state -----------------------------------------------------------------------

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
PROVIDER = web.AppKey("provider", Provider)
VENDOR = web.AppKey("vendor", dict)


def make_provider(config: Config) -> Provider:
    if config.provider == "demo":
        return DemoProvider(delay=config.demo_delay)
    raise ValueError(f"unknown provider {config.provider!r}")


async def provider_ctx(app: web.Application) -> AsyncIterator[None]:
    app[PROVIDER] = make_provider(app[CONFIG])
    yield


async def sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
    """Expire unclaimed prompts in the background, for the app's whole life."""
    store = app[STORE]
    # Check a few times per TTL, so an entry outlives its TTL by a fraction of it.
    interval = store.ttl / 4

    async def sweep_forever() -> None:
        while True:
            await asyncio.sleep(interval)
            await store.sweep()

    task = asyncio.create_task(sweep_forever())
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


# --- htmx, served from node_modules or a CDN ---------------------------------------------


@dataclass(frozen=True)
class VendorScript:
    """A pinned third-party script: the local copy `npm ci` puts in node_modules,
    or the same bytes from a CDN, checked by the browser against ``integrity``."""

    filename: str
    package_path: str
    cdn_url: str
    integrity: str

    @property
    def local_file(self) -> Path:
        return NODE_MODULES / self.package_path

    def matches_local_file(self) -> bool:
        digest = hashlib.sha384(self.local_file.read_bytes()).digest()
        return "sha384-" + base64.b64encode(digest).decode() == self.integrity


# Pinned: htmx 4 removed `sse-swap`, which this page is built on. Keep these in
# step with package.json.
VENDOR_SCRIPTS = (
    VendorScript(
        "htmx.min.js",
        "htmx.org/dist/htmx.min.js",
        "https://cdn.jsdelivr.net/npm/htmx.org@2.0.11/dist/htmx.min.js",
        "sha384-2OatzQy1H+Zd/IIrjr1TcuDGqLXeHhbooAyJY1KdQMKnr4LZ22k31GBLdYKHmVjg",
    ),
    VendorScript(
        "sse.min.js",
        "htmx-ext-sse/dist/sse.min.js",
        "https://cdn.jsdelivr.net/npm/htmx-ext-sse@2.2.4/dist/sse.min.js",
        "sha384-A986SAtodyH8eg8x8irJnYUk7i9inVQqYigD6qZ9evobksGNIXfeFvDwLSHcp31N",
    ),
)


def find_vendor_scripts() -> dict[str, str]:
    """The URL the page loads each script from: ours when installed, else the CDN's."""
    urls = {}
    for script in VENDOR_SCRIPTS:
        if script.local_file.is_file() and script.matches_local_file():
            urls[script.filename] = "/vendor/" + script.filename
        else:
            if script.local_file.is_file():
                log.warning("%s is not the pinned version; run `npm ci`", script.local_file)
            urls[script.filename] = script.cdn_url
    return urls


async def vendor_file(request: web.Request) -> web.FileResponse:
    name = request.match_info["filename"]
    if request.app[VENDOR].get(name) != "/vendor/" + name:
        raise web.HTTPNotFound(text="Not installed here: run `npm ci`.")
    script = next(script for script in VENDOR_SCRIPTS if script.filename == name)
    return web.FileResponse(script.local_file)


# --- the page and the bridge -----------------------------------------------------------

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class Refusal(Exception):
    """A request we turn down, with an HTTP status and a message for the person."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@aiohttp_jinja2.template("index.html")
async def index(request: web.Request) -> dict[str, Any]:
    config = request.app[CONFIG]
    provider = request.app[PROVIDER]
    return {
        "provider": provider,
        "config": config,
        "scripts": {script.filename: script for script in VENDOR_SCRIPTS},
        "script_urls": request.app[VENDOR],
    }


async def read_prompt(request: web.Request) -> str:
    """The prompt from the form, or a Refusal that says what is wrong with it."""
    limit = request.app[CONFIG].max_prompt_chars
    if request.content_type not in FORM_TYPES:
        raise Refusal(415, "Send the prompt as a form field named 'prompt'.")
    try:
        form = await request.post()
    except web.HTTPRequestEntityTooLarge:
        raise Refusal(
            413, f"The request is too large. Prompts are limited to {limit:,} characters."
        ) from None
    except ValueError:
        raise Refusal(400, "The form could not be read. Please submit it again.") from None
    prompt = form.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise Refusal(422, "Please type a prompt first.")
    if len(prompt) > limit:
        raise Refusal(
            413, f"The prompt is {len(prompt):,} characters long; the limit is {limit:,}."
        )
    return prompt


async def process_prompt(request: web.Request) -> web.Response:
    """The bridge: store the prompt, answer at once with the snippet that streams it."""
    try:
        prompt = await read_prompt(request)
    except Refusal as refusal:
        return refuse(request, refusal)
    uid = await request.app[STORE].add(prompt)
    if uid is None:
        busy = Refusal(
            503,
            "Too many prompts are waiting right now. Please try again in a few seconds.",
            {"Retry-After": "5"},
        )
        return refuse(request, busy)
    return aiohttp_jinja2.render_template("stream.html", request, {"uid": uid})


def refuse(request: web.Request, refusal: Refusal) -> web.Response:
    # An HTML fragment, so htmx can show it where the answer would have gone.
    response = aiohttp_jinja2.render_template(
        "refusal.html", request, {"message": refusal.message}, status=refusal.status
    )
    response.headers.update(refusal.headers)
    return response


async def healthz(request: web.Request) -> web.Response:
    store = request.app[STORE]
    return web.json_response(
        {
            "status": "ok",
            "provider": request.app[PROVIDER].name,
            "streams_in_flight": store.streaming,
            "uids_pending": store.pending,
        }
    )


# --- the event stream ----------------------------------------------------------------

THOUGHT_TAIL_CHARS = 400  # the thought line shows the latest part of long reasoning


class EventStream:
    """Writes numbered SSE events and pings to one browser."""

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response
        self.last_id = 0

    async def send(self, event: str, data: str) -> None:
        self.last_id += 1
        await self.response.write(format_event(event, data, self.last_id))

    async def ping_forever(self, interval: float, owner: asyncio.Task[Any]) -> None:
        """Ping every ``interval`` seconds; if the browser is gone, stop the owner."""
        try:
            while True:
                await asyncio.sleep(interval)
                await self.response.write(PING)
        except ConnectionError:
            owner.cancel()


async def open_event_stream(request: web.Request) -> EventStream:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            # Tells nginx not to buffer the stream (it would hold tokens back).
            "X-Accel-Buffering": "no",
        }
    )
    # Never compressed: a compressor buffers, and the tokens would arrive in lumps.
    await response.prepare(request)
    return EventStream(response)


@dataclass
class Transcript:
    """What one stream has produced so far, for the final answer and the log line."""

    started: float = field(default_factory=time.monotonic)
    reasoning: str = ""
    answer: str = ""
    first_token_at: float | None = None
    reasoning_done_at: float | None = None
    usage: Usage | None = None
    finish_reason: str | None = None

    def mark_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()

    def thought(self) -> str:
        """The latest part of the reasoning, cut at a space."""
        if len(self.reasoning) <= THOUGHT_TAIL_CHARS:
            return self.reasoning
        tail = self.reasoning[-THOUGHT_TAIL_CHARS:]
        return "…" + tail[tail.find(" ") + 1 :]

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        stats: dict[str, Any] = {"duration": now - self.started}
        if self.first_token_at is not None:
            stats["ttft"] = self.first_token_at - self.started
        if self.usage and self.usage.completion_tokens:
            stats["tokens"] = self.usage.completion_tokens
            generating = now - (self.first_token_at or self.started)
            if generating > 0:
                stats["tokens_per_s"] = self.usage.completion_tokens / generating
        return stats


async def response_stream(request: web.Request) -> web.StreamResponse:
    """Stream one prompt's answer. Every answer ends with `close`, whatever happens."""
    stream = await open_event_stream(request)
    uid = request.query.get("uid", "")
    try:
        prompt = await request.app[STORE].claim(uid)
    except NotClaimable as refused:
        # A 200 with error + close: any other status makes the page retry forever.
        await stream.send("error", escape_text(str(refused)))
        await stream.send("close", "")
        return stream.response
    await relay(request, stream, uid, prompt)
    return stream.response


async def relay(request: web.Request, stream: EventStream, uid: str, prompt: str) -> None:
    """Relay a provider's events to the browser: the one owner of this stream.

    Its `finally` is the only place the stream's resources are let go: the ping
    task, the provider's iterator (and with it any upstream response, so the
    model stops generating) and the store entry.
    """
    app = request.app
    provider = app[PROVIDER]
    transcript = Transcript()
    outcome = "client left"
    pinger = asyncio.create_task(
        stream.ping_forever(app[CONFIG].ping_interval, owner=asyncio.current_task())
    )
    try:
        async with aclosing(provider.stream(prompt)) as events:
            outcome = await send_events(request, stream, uid, events, transcript)
    except ConnectionError:
        pass  # the browser left mid-write; nothing more to send
    except Exception:
        log.exception("stream %s: the provider failed", uid[:9])
        outcome = "crashed"
        await send_quietly(stream, "error", escape_text(CRASHED))
    finally:
        pinger.cancel()
        await app[STORE].release(uid)
        if outcome != "client left":
            await send_quietly(stream, "close", "")
        log_stream(uid, provider, outcome, transcript)


CRASHED = "Something went wrong on the server while streaming this answer. Please try again."


async def send_quietly(stream: EventStream, event: str, data: str) -> None:
    """Send if the browser is still there; at the end of a stream it may not be."""
    with suppress(ConnectionError):
        await stream.send(event, data)


async def send_events(
    request: web.Request,
    stream: EventStream,
    uid: str,
    events: AsyncIterator[ProviderEvent],
    transcript: Transcript,
) -> str:
    """Turn provider events into SSE events; the outcome, for the log."""
    async for event in events:
        match event:
            case Status(text):
                await stream.send("thought", escape_text(text))
            case Reasoning(text) if text:
                transcript.mark_token()
                transcript.reasoning += text
                await stream.send("thought", escape_text(transcript.thought()))
            case Answer(text) if text:
                transcript.mark_token()
                if transcript.reasoning_done_at is None:
                    transcript.reasoning_done_at = time.monotonic()
                transcript.answer += text
                await stream.send("answer_chunk", escape_text(text))
            case Usage():
                transcript.usage = event
            case Finished(reason):
                transcript.finish_reason = reason
            case Failure(message):
                await stream.send("thought", "Stopped by an error.")
                await stream.send("error", escape_text(message))
                return "failed"
    final = render_final_answer(request, uid, transcript)
    await stream.send("thought", "Done.")
    await stream.send("final_answer", final)
    return "done"


FINISH_NOTES = {
    "length": "The answer was cut short: the model reached its token limit.",
    "content_filter": "The answer was cut short by the model server's content filter.",
}


def render_final_answer(request: web.Request, uid: str, transcript: Transcript) -> str:
    reasoning_seconds = None
    if transcript.reasoning and transcript.first_token_at is not None:
        end = transcript.reasoning_done_at or time.monotonic()
        reasoning_seconds = end - transcript.first_token_at
    return aiohttp_jinja2.render_string(
        "final_answer.html",
        request,
        {
            "uid": uid,
            "transcript": transcript,
            "reasoning_seconds": reasoning_seconds,
            "note": FINISH_NOTES.get(transcript.finish_reason or ""),
            "stats": transcript.stats(),
            "model": request.app[PROVIDER].model,
        },
    )


def log_stream(uid: str, provider: Provider, outcome: str, transcript: Transcript) -> None:
    stats = transcript.stats()
    log.info(
        "stream %s provider=%s outcome=%s duration=%.2fs ttft=%s tokens=%s",
        uid[:9],  # enough to follow one stream in the log, not enough to claim it
        provider.name,
        outcome,
        stats["duration"],
        f"{stats['ttft']:.2f}s" if "ttft" in stats else "-",
        stats.get("tokens", "-"),
    )


# --- the app -------------------------------------------------------------------------


def text_filter(text: str) -> Markup:
    """Jinja filter: model text, escaped the same way as the streamed chunks."""
    return Markup(escape_text(text))


def make_app(config: Config, provider: Provider | None = None) -> web.Application:
    """The whole app. Tests may pass their own ``provider``; else ``config`` picks one."""
    app = web.Application(client_max_size=config.max_body_bytes)
    app[CONFIG] = config
    app[STORE] = Store(ttl=config.uid_ttl, max_pending=config.max_pending)
    app[VENDOR] = find_vendor_scripts()
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["text"] = text_filter
    if provider is None:
        app.cleanup_ctx.append(provider_ctx)
    else:
        app[PROVIDER] = provider
    app.cleanup_ctx.append(sweeper_ctx)
    app.router.add_get("/", index)
    app.router.add_post("/process_prompt", process_prompt)
    app.router.add_get("/response-stream", response_stream)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/vendor/{filename}", vendor_file)
    app.router.add_static("/static/", STATIC_DIR)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(argv if argv is not None else sys.argv[1:], os.environ)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    log.info("answers come from the %s provider", config.provider)
    # handler_cancellation: when a browser leaves, its handler is cancelled at
    # once, and with it the upstream request, even while the model is silent.
    web.run_app(make_app(config), host=config.host, port=config.port, handler_cancellation=True)


if __name__ == "__main__":
    main()

"""Stream a model's thoughts and answer into the browser with HTMX and Server-Sent Events.

Run it with ``python server.py`` (``--help`` lists every option). With no
configuration it answers from the offline demo provider.

Routes
    GET  /                      a new chat: a prompt form that posts with htmx
    GET  /c/{id}                a conversation's own page: its whole thread
    GET  /c/{id}/export         the conversation as a Markdown file
    POST /process_prompt        the bridge: stores the prompt as a turn under a new
                                uid and returns the snippet that opens its stream
    GET  /response-stream?uid=  the event stream for that uid (text/event-stream)
    POST /stop?uid=             the Stop button: the answer so far becomes final
    GET  /healthz               JSON: status, provider, streams in flight, uids
                                pending, listeners, streams kept (for a resume),
                                conversations kept
    GET  /static/…, /vendor/…   our CSS and JS; htmx itself when installed with npm

Events on /response-stream, each with an ``id:``, in this order:
    thought        the reasoning so far (its latest part), a status line, or
                   text not yet known to be answer (it may be reasoning);
                   the page replaces the previous thought with it
    answer_chunk   the next piece of the answer, as HTML: Markdown rendered while
                   it streams (live_markdown.py); the page appends it
    final_answer   the whole answer as HTML; it replaces #{uid}-final-container
    error          what went wrong; a failed answer's text so far comes first, as
                   a final_answer labelled "The answer so far"
    close          always last, with an empty data line; the page disconnects
plus ``retry: 1000`` first and a ``: ping`` comment when the stream is quiet.
Model output is never trusted as markup: every payload is escaped text or HTML
that markdown-it made from it (with raw HTML off).
Each event is born in one function, in "the five events" below.

How a stream lives
    The first GET for a uid starts a *producer* task that runs the provider and
    appends SSE events to the stream's log; each GET is a *listener* that
    writes the log out. A browser that reconnects with Last-Event-ID resumes
    after that event. When the last listener leaves, the generation goes on
    for --grace-period seconds, then is cancelled and the upstream released.
    All of it lives in one process's memory (``Store``); with --redis-url it
    lives in Redis instead, shared by several worker processes
    (redis_store.py, workers.py), and nothing above changes.

Reading this file
    From the top down to the banner, the code follows a prompt's path: SSE
    framing, the five events, the stream log and the store, the page and the
    bridge, producing, listening, the app. Below the banner is what keeps a
    public server safe and fast: limits, reading the form, a conversation's
    settings, export, pacing, slow clients, open files, access, security
    headers, Markdown, the vendored htmx, health, shutdown, configuration, the
    garbage collector and ``main``. Safe to skip on a first reading.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import gc
import hashlib
import html
import ipaddress
import logging
import math
import os
import re
import resource
import secrets
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import aiohttp_jinja2
import jinja2
from aiohttp import web
from markdown_it import MarkdownIt
from markupsafe import Markup
from yarl import URL

import settings
from conversations import (
    RECENT_COOKIE,
    ChatSettings,
    Conversation,
    Conversations,
    Turn,
    export_markdown,
    history,
    is_id,
    recent_ids,
    with_recent,
)
from live_markdown import LiveMarkdown, highlight_css, make_markdown
from providers.demo import DemoProvider
from providers.events import (
    Answer,
    ChatRequest,
    Connected,
    Failure,
    Finished,
    Provider,
    ProviderEvent,
    Reasoning,
    Status,
    Undecided,
    Usage,
)
from providers.openai import (
    DEFAULT_SYSTEM_PROMPT,
    OpenAIProvider,
    OpenAISettings,
    make_session,
)
from settings import (
    ACCESS,
    LIMITS,
    SCALE,
    SERVER,
    TUNING,
    host_names,
    not_negative,
    port_number,
    positive,
    read_settings,
    redis_address,
    setting,
    text_or_none,
)

log = logging.getLogger("stream")

HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
NODE_MODULES = HERE / "node_modules"

# The app's state: what a handler finds in `request.app[KEY]`, one typed key each.
CONFIG: web.AppKey[Config] = web.AppKey("config")
STORE: web.AppKey[Store] = web.AppKey("store")
PROVIDER: web.AppKey[Provider] = web.AppKey("provider")
# (Below the banner, three more keys: VENDOR, SECURITY_HEADERS and HOSTS.)


# --- SSE framing --------------------------------------------------------------------------

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
    text = "\n".join(lines) + "\n\n"
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate, which UTF-8 cannot carry
        return valid_unicode(text).encode()


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_unicode(text: str) -> str:
    """``text`` with each lone surrogate (half of a UTF-16 pair, from a broken JSON
    escape or a UTF-7 form) replaced by U+FFFD, the replacement character."""
    return _LONE_SURROGATE.sub("\ufffd", text)


PING = b": ping\n\n"  # a comment: the page ignores it, proxies and TCP see traffic
# Sent first on every stream: a browser whose connection drops comes back after
# one second (not three), with Last-Event-ID, and the stream resumes.
RETRY_FIELD = b"retry: 1000\n\n"


def escape_text(text: str) -> str:
    """Model text as HTML that shows exactly that text.

    A carriage return is written as a character reference: as a raw character
    the browser's SSE parser would take it for a line break and turn it into
    a newline.
    """
    return html.escape(text).replace("\r", "&#13;")


# --- the five events ----------------------------------------------------------------------
# Each event of the contract is made here and nowhere else; templates/stream.html
# has the page's listener for each (`sse-swap="<name>"`).


class Event(NamedTuple):
    """An SSE event before it gets its id: its name, and its data (HTML)."""

    name: str
    data: str


def thought_event(text: str) -> Event:
    """The reasoning so far (its latest part), a status line, or text whose kind is
    not known yet; it replaces the last."""
    return Event("thought", escape_text(text))


def answer_chunk_event(html: str) -> Event:
    """The next piece of the answer, as HTML (``LiveMarkdown`` or ``PlainAnswer``
    made it from the model's text); the page appends it."""
    return Event("answer_chunk", html)


def final_answer_event(rendered: str) -> Event:
    """The whole answer, rendered (templates/final_answer.html); it replaces the box."""
    return Event("final_answer", rendered)


def error_event(message: str) -> Event:
    """What went wrong, in words for the person; sent instead of final_answer."""
    return Event("error", escape_text(message))


def close_event() -> Event:
    """Always last. Its data line is empty but present: without one the browser never
    dispatches the event, so `sse-close` never fires; the stream ends, and the browser
    reconnects every second (with close's id: nothing is replayed) for as long as the
    page is open."""
    return Event("close", "")


# --- the stream log and the store ---------------------------------------------------------


class Refusal(Exception):
    """A request we turn down, with an HTTP status and a message for the person."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


#: Refusals after which the connection is closed: a body that never finished
#: arriving, or a client past its requests at once.
CLOSING_STATUSES = frozenset({408, 429})


class NotClaimable(Exception):
    """The uid cannot be streamed; the message says why, for the person."""


UNKNOWN_UID = (
    "This answer is unknown or has expired: it may have been shown already, or waited "
    "too long. Please submit the prompt again."
)
CONVERSATION_GONE = (
    "This conversation has expired or was removed to make room: the server keeps "
    "conversations for a while only. Send again to start a new chat with this prompt."
)
STILL_STREAMING = (
    "An answer is still being written in this conversation. Wait for it, or stop it (Esc)."
)
ONLY_THE_LAST = "Only the last prompt of a conversation can be edited or answered again."
TOO_MANY_TURNS = (
    "This conversation has reached {limit} turns, the most kept. Please start a new chat."
)
UNOPENED = "This answer was never opened: the page that asked for it went away."
ALREADY_STREAMING = (
    "This answer is being (or was just) streamed to another window. Please submit the prompt again."
)
# A browser has one connection to a stream; a reconnect may overlap the one it
# replaces, whose end the server has not noticed yet. More are not a browser.
MAX_LISTENERS_PER_STREAM = 3


class Stream:
    """One prompt's answer: the log of its events, the task producing them, who listens.

    The producer appends events to ``frames``; each listener (an open
    /response-stream request) writes the log out from where its browser is. A
    browser that comes back with ``Last-Event-ID: n`` gets what follows event
    n, so a dropped connection loses nothing and repeats nothing.
    """

    def __init__(self, uid: str, request: ChatRequest, client: str, turn: Turn, cid: str) -> None:
        self.uid = uid
        self.request = request  # the conversation so far, ending with the prompt
        self.turn = turn  # where the answer is kept when it ends
        self.cid = cid  # the conversation it is a turn of
        self.client = client
        self.created = time.monotonic()
        self.frames: list[bytes | None] = []  # frames[n] is the event with id n + 1
        self.closed = False  # the log ends with `close`
        self.ended_at: float | None = None  # when `close` was appended
        self.producer: asyncio.Task[None] | None = None
        self.hang_up: Callable[[], None] | None = None  # Connected.hang_up, while it generates
        self.listeners = 0
        self.caught_up: list[Listener] = []  # listeners waiting for the next frame
        self.stop_reason: str | None = None  # set when we end the generation on purpose
        self.timer: asyncio.TimerHandle | None = None  # ends it when nobody comes back
        self.last_event_at = self.created  # for the pinger: quiet streams need a ping
        self._latest: dict[str, int] = {}  # event name -> the frame a newer one replaces
        self._waiters: list[asyncio.Future[None]] = []  # of the tasks waiting for a change
        # What the events so far show, for a page rendered mid-stream (Relay keeps it).
        self.transcript: Transcript | None = None
        self.shown_thought = WAITING
        self.shown_answer: PageAnswer | None = None  # the answer as the chunks so far show it

    @property
    def generating(self) -> bool:
        return self.producer is not None and not self.closed

    def append(self, event: Event, *, replaces_previous: bool = False) -> None:
        """Add the next event. The listeners waiting for it get it from the
        producer's next ``hand_off``, if the producer appended it; else they wake.

        ``replaces_previous``: the page shows only the newest event of this
        name, so a browser that comes back needs no older one. The log forgets
        it, and stays as small as the answer.
        """
        if self.closed:
            return  # nothing follows `close`
        frames = self.frames
        frames.append(format_event(event.name, event.data, len(frames) + 1))
        if replaces_previous:
            older = self._latest.get(event.name)
            if older is not None:
                frames[older] = None
            self._latest[event.name] = len(frames) - 1
        self.last_event_at = time.monotonic()
        if asyncio.current_task() is not self.producer:
            self.wake()

    def end(self) -> None:
        """Append `close`: the log is complete, and nothing can follow."""
        self.append(close_event())
        self.closed = True
        self.ended_at = time.monotonic()
        self.wake()

    def frames_after(self, event_id: int) -> bytes:
        return b"".join(frame for frame in self.frames[event_id:] if frame is not None)

    async def hand_off(self) -> None:
        """The producer, after each provider event: write the frames it appended to
        every listener that waits for them (``caught_up``), from its own task.

        Waking each listener's task to write them would cost one more trip through
        the event loop per event. A listener whose socket still holds unsent
        bytes, or is gone, is woken instead: it writes (or fails) with its time limit.
        """
        end = len(self.frames)
        woken = False
        for listener in self.caught_up:
            if listener.position == end:
                continue
            data = self.frames_after(listener.position)
            if not writes_at_once(listener.transport, data):
                woken = True
                continue
            try:
                await listener.response.write(data)  # cannot wait: see writes_at_once
            except ConnectionError:
                woken = True
                continue
            listener.position, listener.last_write = end, time.monotonic()
        if woken:
            self.wake()

    def changed(self) -> asyncio.Future[None]:
        """What to await for the next event, or for the pinger's wake-up. (A bare
        future: an asyncio.Event per stream held a deque of about 0.7 KB.)"""
        waiter = asyncio.get_running_loop().create_future()
        # (Waiters of listeners that left, cancelled, go now: not with the next event.)
        self._waiters = [*(other for other in self._waiters if not other.done()), waiter]
        return waiter

    def wake(self) -> None:
        """Wake every listener: for a new event, or from the pinger, so that a quiet
        one sends a ping."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():  # (its task may have been cancelled meanwhile)
                waiter.set_result(None)

    def stop(self, reason: str) -> None:
        """End the generation on purpose; the producer says why in the stream."""
        if self.producer is not None and not self.closed and self.stop_reason is None:
            self.stop_reason = reason
            self.producer.cancel()


#: What a claim calls to start a new stream's producer (``produce``, in the handler).
StartProducer = Callable[[Stream], Coroutine[Any, Any, None]]


class Store:
    """Every stream, by uid, from the POST that makes it until it is over; and
    every conversation (conversations.py), whose turns keep the answers.

    A stream is *pending* until its first GET claims it and starts the
    producer. A second GET is refused unless it resumes (``Last-Event-ID``).
    When the last listener leaves, the generation goes on for ``grace``
    seconds in case the browser comes back, then stops. The entry goes away
    ``grace`` seconds after its last listener left (even one that wrote
    `close`: the connection may have dropped before the browser read it), or
    when a pending prompt waited longer than ``ttl``. Coroutines change
    entries holding ``lock``; the grace timer's callback runs between two
    awaits, so it never sees one half-changed.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.limits = Limits(config)
        self.conversations = Conversations(
            config.max_conversations, config.max_kept_chars, config.conversation_ttl
        )
        self.lock = asyncio.Lock()
        self._streams: dict[str, Stream] = {}

    @staticmethod
    def new_uid() -> str:
        # 128 random bits. The letter in front keeps `#{uid}-final-container` a
        # valid CSS selector: an id starting with a digit is not one.
        return "u" + secrets.token_hex(16)

    def streams(self) -> list[Stream]:
        return list(self._streams.values())

    def status(self) -> str:
        """Whether this process can serve now: "ok", or why not (here it always can)."""
        return "ok"

    async def counts(self) -> dict[str, int]:
        streams = self._streams.values()
        return {
            "streams_in_flight": sum(stream.generating for stream in streams),
            "uids_pending": sum(stream.producer is None for stream in streams),
            "listeners": sum(stream.listeners for stream in streams),
            "streams_kept": len(self._streams),
            "conversations": len(self.conversations),
        }

    async def add_turn(
        self, form: PromptForm, settings: ChatSettings, client: str
    ) -> tuple[Conversation, Turn, bool]:
        """Store a prompt as a new turn (of a new conversation if the form names none),
        with its stream; a Refusal if a limit or the conversation's state forbids it.
        Also whether the conversation is new."""
        async with self.lock:
            conversation = None
            if form.conversation:
                conversation = self.conversations.get(form.conversation)
                if conversation is None:
                    raise Refusal(404, CONVERSATION_GONE)
                self._let_go_of_unopened(conversation)
                if conversation.streaming:
                    raise Refusal(409, STILL_STREAMING)
            earlier = self.earlier_turns(conversation, form)
            for uid in self.limits.check_room(self.room(client), self.stale):
                unopened = self._streams[uid]
                self._forget(unopened)
                unopened.turn.end("expired", None, UNOPENED)

            new = conversation is None
            if conversation is None:
                conversation = self.conversations.new(settings)
            turn, request = self.next_turn(conversation, earlier, form, settings)
            self.conversations.set_turns(conversation, [*earlier, turn])
            conversation.settings = settings
            self._streams[turn.uid] = Stream(turn.uid, request, client, turn, conversation.cid)
            self.conversations.make_room()
            return conversation, turn, new

    def earlier_turns(self, conversation: Conversation | None, form: PromptForm) -> list[Turn]:
        """The turns the new one follows: all, or all but the last one it replaces."""
        earlier = conversation.turns if conversation is not None else []
        if form.replace:  # edit the last prompt, or answer it again
            if not earlier or earlier[-1].uid != form.replace:
                raise Refusal(409, ONLY_THE_LAST)
            return earlier[:-1]
        if len(earlier) >= self.config.max_turns:
            raise Refusal(409, TOO_MANY_TURNS.format(limit=self.config.max_turns))
        return earlier

    def next_turn(
        self,
        conversation: Conversation,
        earlier: list[Turn],
        form: PromptForm,
        settings: ChatSettings,
    ) -> tuple[Turn, ChatRequest]:
        """The new turn, and what the model is asked: the history, then the prompt."""
        prompt = conversation.turns[-1].prompt if form.again else form.prompt
        messages, left_out = history(
            earlier, settings.system_prompt, prompt, self.config.history_chars
        )
        turn = Turn(self.new_uid(), prompt, settings, left_out=left_out)
        return turn, ChatRequest(messages, settings.model, settings.temperature)

    def stream(self, uid: str) -> Stream | None:
        """The stream, if this process has it."""
        return self._streams.get(uid)

    async def streams_elsewhere(self, uid: str) -> bool:
        """Whether the stream runs in another process (never, with this store)."""
        return False

    async def conversation(self, cid: str) -> Conversation | None:
        """The conversation, now the most recently used; None if unknown or gone."""
        return self.conversations.get(cid) if is_id(cid) else None

    async def recent(self, cids: list[str]) -> list[Conversation]:
        """The conversations among ``cids`` that are still kept and have a turn."""
        found = (self.conversations.peek(cid) for cid in cids)
        return [conversation for conversation in found if conversation and conversation.turns]

    async def settings_of(self, cid: str) -> ChatSettings | None:
        """The settings a conversation asks with, if it is known."""
        conversation = self.conversations.peek(cid)
        return conversation.settings if conversation is not None else None

    async def count_prompt(self, client: str) -> None:
        """Count a prompt against its client's rate (a Refusal past it)."""
        self.limits.count_prompt(client)

    def _let_go_of_unopened(self, conversation: Conversation) -> None:
        # A turn whose page never opened its stream (closed at once, the network
        # gone) would hold its conversation for --uid-ttl: it gives way instead.
        for turn in conversation.turns:
            stream = self._streams.get(turn.uid)
            if (
                stream is not None
                and stream.producer is None
                and time.monotonic() - stream.created >= GIVE_WAY_S
            ):
                self._forget(stream)
                stream.turn.end("expired", None, UNOPENED)

    def room(self, client: str) -> Room:
        """What the stream limits count, for a prompt from ``client``."""
        now = time.monotonic()
        waiting = mine = pending = counted = 0
        for stream in self._streams.values():
            if stream.closed:
                continue
            unopened = stream.producer is None
            counts = not unopened or now - stream.created < PENDING_COUNTS_S
            pending += unopened
            counted += counts
            if stream.client == client:
                waiting += unopened
                mine += counts
        return Room(waiting, mine, pending, counted)

    def stale(self) -> list[Unopened]:
        """The prompts nobody opened for GIVE_WAY_S, oldest first."""
        now = time.monotonic()
        unopened = [
            stream
            for stream in self._streams.values()
            if stream.producer is None and now - stream.created >= GIVE_WAY_S
        ]
        unopened.sort(key=lambda stream: stream.created)
        return [Unopened(s.uid, now - s.created < PENDING_COUNTS_S) for s in unopened]

    async def claim(
        self,
        uid: str,
        last_event_id: int | None,
        start: StartProducer,
    ) -> tuple[Stream, int]:
        """A listener joins: the stream and the event id to write from, or NotClaimable.
        The first listener of a new stream starts its producer, ``start(stream)``:
        one claim at a time, so two GETs never both start one."""
        async with self.lock:
            stream, position = self._claim(uid, last_event_id)
            if stream.producer is None:
                stream.producer = asyncio.create_task(start(stream))
            return stream, position

    def _claim(self, uid: str, last_event_id: int | None) -> tuple[Stream, int]:
        stream = self._streams.get(uid)
        if stream is None or self._expired(stream) or self._resume_too_late(stream):
            raise NotClaimable(UNKNOWN_UID)
        if stream.producer is None:
            late = None
            if time.monotonic() - stream.created >= PENDING_COUNTS_S:  # it stopped counting
                late = self.limits.started_late(self.room(stream.client))
            if late is not None:  # it stopped counting while unopened, and there is no room now
                self._forget(stream)
                stream.turn.end("refused", None, late)
                raise NotClaimable(late)
            position = 0
        elif last_event_id is not None and 0 <= last_event_id <= len(stream.frames):
            position = last_event_id  # the browser came back: resume after its last event
        else:
            raise NotClaimable(ALREADY_STREAMING)
        if stream.listeners >= MAX_LISTENERS_PER_STREAM:
            raise NotClaimable(ALREADY_STREAMING)
        stream.listeners += 1
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        return stream, position

    async def detach(self, stream: Stream) -> None:
        """A listener left, having written `close` or not."""
        async with self.lock:
            stream.listeners -= 1
            if stream.listeners == 0:
                # Even after `close` was written, the connection may have dropped
                # before the browser read it: keep the log for a reconnect.
                self._wait_for_return(stream)

    async def keep_answer(self, stream: Stream) -> None:
        """The turn holds its answer now: kept where the conversation is. (Here it is
        the conversation's own Turn object; redis_store.py writes it to Redis.)"""

    async def finished(self, stream: Stream) -> None:
        """The producer is done; with nobody listening, keep the log a while for a resume.
        Its turn now holds the answer: past their bounds, conversations make room."""
        async with self.lock:
            if self._streams.get(stream.uid) is stream and stream.listeners == 0:
                self._wait_for_return(stream)
            self.conversations.answered(stream.cid, stream.turn)
            self.conversations.make_room()

    def _wait_for_return(self, stream: Stream) -> None:
        # Nobody listens. Give the browser `grace` seconds to reconnect, then
        # stop the generation (releasing the model) and forget the stream.
        if self.config.grace_period == 0:
            self._give_up(stream)
        elif stream.timer is None:
            loop = asyncio.get_running_loop()
            stream.timer = loop.call_later(self.config.grace_period, self._give_up, stream)

    def _give_up(self, stream: Stream) -> None:
        stream.timer = None
        if stream.listeners == 0:
            self._forget(stream)
            if stream.producer is not None:
                stream.producer.cancel()  # its `finally` releases the upstream request
            if stream.hang_up is not None:
                # The model server stops now: the producer's `finally` would
                # drop its connection only when the producer's turn comes, after
                # every stream that left at the same moment has been cleaned up.
                # (Cancelled first: its next step is the cancellation, even if
                # the hang-up's end of stream arrives before it.)
                stream.hang_up()

    def _forget(self, stream: Stream) -> None:
        if self._streams.get(stream.uid) is stream:
            del self._streams[stream.uid]

    async def stop(self, uid: str, reason: str) -> None:
        async with self.lock:
            stream = self._streams.get(uid)
            if stream is not None:
                stream.stop(reason)

    async def sweep(self) -> int:
        """Forget prompts nobody streamed in time, idle rate counters and idle
        conversations."""
        async with self.lock:
            expired = [stream for stream in self._streams.values() if self._expired(stream)]
            for stream in expired:
                self._forget(stream)
                stream.turn.end("expired", None, UNOPENED)
            self.limits.forget_idle_clients()
            self.conversations.forget_idle()
            return len(expired)

    def _expired(self, stream: Stream) -> bool:
        return stream.producer is None and time.monotonic() - stream.created > self.config.uid_ttl

    def _resume_too_late(self, stream: Stream) -> bool:
        # A finished log is kept for one grace period, for a browser that lost
        # `close`; reconnecting again and again must not keep it for ever.
        ended = stream.ended_at
        return ended is not None and time.monotonic() - ended > self.config.grace_period


# --- the page and the bridge --------------------------------------------------------------


async def index(request: web.Request) -> web.Response:
    """A new chat: the page with an empty thread. The conversation is made by its
    first prompt, and the page's URL becomes the conversation's (HX-Push-Url)."""
    return await render_page(request, None)


async def conversation_page(request: web.Request) -> web.Response:
    """A conversation's own URL: the whole thread, rendered here; a turn still
    streaming resumes where this page leaves it."""
    cid = request.match_info["cid"]
    conversation = await request.app[STORE].conversation(cid)
    if conversation is None:
        return aiohttp_jinja2.render_template(
            "gone.html", request, {"message": CONVERSATION_GONE}, status=404
        )
    return await render_page(request, conversation)


async def render_page(request: web.Request, conversation: Conversation | None) -> web.Response:
    app = request.app
    config = app[CONFIG]
    turns = (
        [await render_turn(app, conversation, turn) for turn in conversation.turns]
        if conversation
        else []
    )
    recent = await app[STORE].recent(recent_ids(request.cookies.get(RECENT_COOKIE)))
    response = aiohttp_jinja2.render_template(
        "index.html",
        request,
        {
            "provider": app[PROVIDER],
            "model_server": public_url(config.openai.base_url),
            "scripts": {script.filename: script for script in VENDOR_SCRIPTS},
            "script_urls": app[VENDOR],
            "conversation": conversation,
            "turns": turns,
            "recent": recent,
            "choices": await page_choices(app, conversation),
            "max_prompt_chars": config.max_prompt_chars,
            "max_system_prompt_chars": config.max_system_prompt_chars,
        },
    )
    # Never from a cache (Back after a link included): the thread as it is now.
    response.headers["Cache-Control"] = "no-store"
    return response


async def process_prompt(request: web.Request) -> web.Response:
    """The bridge: store the prompt as a turn, answer at once with the snippet that
    streams it. A refusal goes next to the prompt box, and the thread stays."""
    store = request.app[STORE]
    client = client_address(request)
    try:
        await store.count_prompt(client)  # first: reading the body is work
        form = await read_prompt(request)
        kept = await store.settings_of(form.conversation)
        settings = await chat_settings(request.app, form, kept)
        conversation, turn, new = await store.add_turn(form, settings, client)
    except Refusal as refusal:
        return refuse(request, refusal)
    response = aiohttp_jinja2.render_template(
        "turn.html",
        request,
        {"turn": turn, "cid": conversation.cid, "new_conversation": new, **fresh_stream()},
    )
    if new:  # the page's URL becomes the conversation's, and this browser remembers it
        response.headers["HX-Push-Url"] = f"/c/{conversation.cid}"
        remember(request, response, conversation.cid)
    if form.replace:  # the new answer takes the old one's place
        response.headers["HX-Retarget"] = f"#turn-{form.replace}"
        response.headers["HX-Reswap"] = "outerHTML"
    return response


def remember(request: web.Request, response: web.Response, cid: str) -> None:
    """Put the conversation first in this browser's recent list (a cookie of ids)."""
    response.set_cookie(
        RECENT_COOKIE,
        with_recent(request.cookies.get(RECENT_COOKIE), cid),
        max_age=int(request.app[CONFIG].conversation_ttl),
        path="/",
        httponly=True,
        samesite="Lax",
    )


async def render_turn(app: web.Application, conversation: Conversation, turn: Turn) -> Markup:
    """One turn of a rendered page: its finished answer, or its stream, resuming
    after the events whose effect the page already shows."""
    template = aiohttp_jinja2.get_env(app).get_template("turn.html")
    store = app[STORE]
    stream = store.stream(turn.uid)
    if stream is None and not turn.done and await store.streams_elsewhere(turn.uid):
        # Another process writes it: this page shows it from its first event.
        return Markup(template.render(turn=turn, cid=conversation.cid, **fresh_stream(after=0)))
    if turn.done or stream is None:
        transcript = turn.transcript or Transcript()
        final = await render_answer(app, turn.uid, transcript, turn.extras, turn.error)
        return Markup(template.render(turn=turn, cid=conversation.cid, final=Markup(final)))
    return Markup(
        template.render(
            turn=turn,
            cid=conversation.cid,
            after=len(stream.frames),  # the stream resumes after these
            shown_thought=stream.shown_thought,
            shown_answer=Markup(stream.shown_answer.html if stream.shown_answer else ""),
        )
    )


def fresh_stream(after: int | None = None) -> dict[str, Any]:
    """A turn's stream, from its first event."""
    return {"after": after, "shown_thought": WAITING, "shown_answer": ""}


def refuse(request: web.Request, refusal: Refusal) -> web.Response:
    # An HTML fragment. htmx shows it next to the prompt box, not in the thread:
    # a refusal never replaces or removes a turn.
    new_chat = refusal.message == CONVERSATION_GONE  # the next prompt starts one
    response = aiohttp_jinja2.render_template(
        "refusal.html",
        request,
        {"message": refusal.message, "new_chat": new_chat},
        status=refusal.status,
    )
    response.headers.update(refusal.headers)
    response.headers.update({"HX-Retarget": "#prompt-error", "HX-Reswap": "innerHTML"})
    if refusal.status in CLOSING_STATUSES:
        response.force_close()  # the connection itself is the problem: do not keep it
    return response


async def stop_stream(request: web.Request) -> web.Response:
    """The Stop button: end the generation now; the partial answer becomes the final one."""
    await request.app[STORE].stop(request.query.get("uid", ""), STOPPED)
    return web.Response(status=204)  # nothing to swap: the stream itself shows the end


# --- producing: provider events become SSE events -----------------------------------------

THOUGHT_TAIL_CHARS = 400  # the thought line shows the latest part of long reasoning
CRASHED = "Something went wrong on the server while streaming this answer. Please try again."
RESTARTING = "The server is restarting. Please submit the prompt again in a moment."
TOO_LONG = "The answer took longer than the server allows ({limit:.0f} s), so it was stopped."
WRITING = "Writing…"  # the thought line of a model that does not show its reasoning
WAITING = "Waiting for the model…"  # the thought line before the first event
LEFT_UNFINISHED = "This answer was left unfinished: nobody was reading it any more."
STOPPED = "stopped"  # the reason a person's Stop button gives
CAPPED = "too big"  # the model's text reached --max-answer-chars
RESTARTING_REASON = "restarting"
STORE_LOST_REASON = "store lost"  # the shared store (redis_store.py) became unreachable
#: What the page says when the server ends an answer on purpose, by the reason.
STOPPED_BY_SERVER = {
    RESTARTING_REASON: RESTARTING,
    STORE_LOST_REASON: "The server lost its connection to its shared store while writing "
    "this answer. Please submit the prompt again in a moment.",
}
FINISH_NOTES = {
    "length": "The answer was cut short: the model reached its token limit.",
    "content_filter": "The answer was cut short by the model server's content filter.",
    STOPPED: "You stopped the answer here.",
    CAPPED: "The answer was stopped here: it reached this server's limit of {max_chars:,} "
    "characters.",
}
# Rendering Markdown is pure Python: a long answer (or a hostile one, such as
# 100,000 `[`) can take seconds, so longer ones render in a thread, and every
# other stream goes on meanwhile.
INLINE_RENDER_CHARS = 20_000


def latest_part(text: str) -> str:
    """What the thought line shows of a long text: its end, cut at a space."""
    if len(text) <= THOUGHT_TAIL_CHARS:
        return text
    tail = text[-THOUGHT_TAIL_CHARS:]
    return "…" + tail[tail.find(" ") + 1 :]


@dataclass(slots=True)  # one per stream, kept with its turn: no per-object dict
class Transcript:
    """What one stream has produced so far, for the final answer and the log line."""

    started: float = field(default_factory=time.monotonic)
    # Pieces, joined when needed: `text += piece` would copy the whole text
    # for every token, and a long answer would cost time quadratic in its length.
    reasoning_pieces: list[str] = field(default_factory=list)
    answer_pieces: list[str] = field(default_factory=list)
    reasoning_chars: int = 0
    answer_chars: int = 0
    first_token_at: float | None = None
    reasoning_done_at: float | None = None
    usage: Usage | None = None
    finish_reason: str | None = None

    @property
    def reasoning(self) -> str:
        return "".join(self.reasoning_pieces)

    @property
    def answer(self) -> str:
        return "".join(self.answer_pieces)

    def add_reasoning(self, text: str) -> None:
        if text:
            self.reasoning_pieces.append(text)
            self.reasoning_chars += len(text)

    def add_answer(self, text: str) -> None:
        if text:
            self.answer_pieces.append(text)
            self.answer_chars += len(text)

    def compact(self) -> None:
        """Join the pieces into one text each: a kept answer needs no pieces."""
        self.reasoning_pieces = [self.reasoning] if self.reasoning_pieces else []
        self.answer_pieces = [self.answer] if self.answer_pieces else []

    def mark_token(self, sent_at: float | None = None) -> None:
        """Text from the model: the first starts the stats' clock, from when it
        came (held text comes out later: ``sent_at`` says when it came)."""
        if self.first_token_at is None:
            self.first_token_at = time.monotonic() if sent_at is None else sent_at

    def thought(self) -> str:
        """The latest part of the reasoning, cut at a space."""
        return latest_part(self.reasoning)

    def reasoning_seconds(self) -> float | None:
        if not self.reasoning_pieces or self.first_token_at is None:
            return None
        return (self.reasoning_done_at or time.monotonic()) - self.first_token_at

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


class PageAnswer(Protocol):
    """What turns the answer's text into ``answer_chunk`` data, and knows what the page shows."""

    def feed(self, text: str) -> str: ...  # the chunk for the next text ("": none yet)
    def finish(self) -> str: ...  # the chunk that completes the answer
    def final_html(self) -> str | None: ...  # the answer's rendered Markdown, if the page has it
    @property
    def html(self) -> str: ...  # the answer as the chunks so far show it


class PlainAnswer:
    """The answer as plain text (``--plain-stream``): each chunk is the new text,
    escaped; the page renders the Markdown once, with the final answer."""

    def __init__(self) -> None:
        self._chunks: list[str] = []

    def feed(self, text: str) -> str:
        self._chunks.append(escape_text(text))
        return self._chunks[-1]

    def finish(self) -> str:
        return ""

    def final_html(self) -> None:
        return None  # the page has text: the final answer renders the Markdown

    @property
    def html(self) -> str:
        return "".join(self._chunks)


class Relay:
    """Turns one provider's events into the stream's SSE events, at a pace the page can take.

    Answer text goes out as soon as it arrives, then at most once per
    ``answer_window`` (a 1,000 tokens/s model would otherwise cost the page
    1,000 swaps a second). The thought line is refreshed at most every
    ``thought_interval`` (``Throttle``, below the banner), the first time at once.

    Text whose kind is not known yet (``Undecided``: it may be reasoning)
    shows in the thought line as it comes, never in the answer box, which
    cannot take text back. When it turns out to be answer, the answer box gets
    it and the thought line says ``WRITING``; when it turns out to be
    reasoning, the thought line goes on with it. If the provider ends before
    its kind is known (Stop, a time limit), it is answer (``undecided_is_answer``).
    """

    def __init__(
        self, stream: Stream, transcript: Transcript, config: Config, shown_answer: PageAnswer
    ) -> None:
        self.stream = stream
        self.transcript = stream.transcript = transcript
        self.shown_answer = stream.shown_answer = shown_answer
        self.error: str | None = None  # what the person was told went wrong
        self.hint: str | None = None  # what the operator is told to check
        self._answer_sent = 0  # of the transcript's answer pieces
        self.max_chars = config.max_answer_chars
        self.answer = Throttle(config.answer_window)
        self.thought = Throttle(config.thought_interval)
        # Text whose kind is not known yet: all of it (the answer, if the provider
        # ends first), when it came, and its end (for the thought line).
        self._undecided: list[str] = []
        self._undecided_since: float | None = None
        self._undecided_tail = ""

    def take(self, event: ProviderEvent) -> str | None:
        """Take one provider event; if it ends the stream, the outcome: "failed",
        or CAPPED when the text reached --max-answer-chars."""
        transcript = self.transcript
        match event:
            case Status(text):
                self.thought.discard()  # the status is newer than any pending reasoning
                self.show_thought(text)
            case Connected(hang_up):
                self.stream.hang_up = hang_up  # for Store._give_up
            case Undecided(text) if text:
                self._show_undecided(text)
            case Reasoning(text, sent_at) if text:
                self._settle_undecided()
                transcript.mark_token(sent_at)
                room = self.max_chars - transcript.reasoning_chars
                transcript.add_reasoning(text[:room])
                self.thought.poke(self._send_thought)
                if len(text) > room:
                    return self.cap()
            case Answer(text, sent_at) if text:
                self._settle_undecided()
                transcript.mark_token(sent_at)
                if transcript.reasoning_done_at is None:
                    transcript.reasoning_done_at = time.monotonic()
                    if transcript.reasoning_pieces:
                        # The reasoning's last words, before the answer.
                        self.thought.flush(self._send_thought)
                    else:
                        self.thought.discard()  # no undecided text may come back over it
                        self.show_thought(WRITING)
                room = self.max_chars - transcript.answer_chars
                transcript.add_answer(text[:room])
                self.answer.poke(self._send_answer)
                if len(text) > room:
                    return self.cap()
            case Usage():
                transcript.usage = event
            case Finished(reason):
                transcript.finish_reason = reason
            case Failure(message, hint):
                self.error, self.hint = message, hint  # produce() says it, after the answer so far
                return "failed"
        return None

    def cap(self) -> str:
        """The model's text reached --max-answer-chars: what came so far is the answer."""
        self.transcript.finish_reason = CAPPED
        return CAPPED

    def show_thought(self, text: str) -> None:
        """The one place a thought is sent; the page shows only the newest."""
        self.stream.append(thought_event(text), replaces_previous=True)
        self.stream.shown_thought = text

    def _show_undecided(self, text: str) -> None:
        """Text that may be reasoning or answer: the thought line shows it (the
        first at once), so that nobody waits for the hold to see the model's words."""
        if not self._undecided:
            self._undecided_since = time.monotonic()
        self._undecided.append(text)
        # The end apart, so that each thought does not join the whole text again;
        # one character more than a thought shows, so that latest_part() sees the cut.
        self._undecided_tail = (self._undecided_tail + text)[-(THOUGHT_TAIL_CHARS + 1) :]
        self.thought.poke(self._send_thought)

    def _settle_undecided(self) -> None:
        """Reasoning or answer came: it holds the undecided text again, with its kind."""
        if self._undecided:
            self._undecided.clear()
            self._undecided_tail = ""

    def undecided_is_answer(self) -> None:
        """The provider ended before the kind of the text it showed was known (a
        Stop, a time limit): that text is answer, as held text at the end of a
        stream is (providers/think_tags.py), and the person who saw it keeps it."""
        if self._undecided:
            self.take(Answer("".join(self._undecided), self._undecided_since))

    def _send_thought(self) -> None:
        """The thought line as it stands: the latest reasoning, or else the
        latest text whose kind is not known yet."""
        self.show_thought(self.transcript.thought() or latest_part(self._undecided_tail))

    def _send_answer(self) -> None:
        pieces = self.transcript.answer_pieces
        text = "".join(pieces[self._answer_sent :])
        self._answer_sent = len(pieces)
        self._show_answer(self.shown_answer.feed(text))

    def _show_answer(self, html: str) -> None:
        if html:  # (a chunk may show nothing yet: the start of a table row, say)
            self.stream.append(answer_chunk_event(html))

    def fail(self, message: str, answer_so_far: str | None) -> None:
        """The stream failed: the answer so far, rendered (if there was any), then why."""
        self.error = message
        self.flush()
        self.show_thought("")  # the status line and the error say it all
        if answer_so_far is not None:
            self.stream.append(final_answer_event(answer_so_far))
        self.stream.append(error_event(message))

    def finish(self, rendered_answer: str) -> None:
        self.flush()
        self.show_thought("")  # the reasoning is kept in the final answer
        self.stream.append(final_answer_event(rendered_answer))

    def flush(self) -> None:
        """Send what waits; the answer's last block is complete now."""
        self.thought.flush(self._send_thought)
        self.answer.flush(self._send_answer)
        self._show_answer(self.shown_answer.finish())

    def discard(self) -> None:
        """Cancel the pending sends: nothing may follow `close`."""
        self.thought.discard()
        self.answer.discard()


async def produce(app: web.Application, stream: Stream) -> None:
    """Run the provider for one stream: the one owner of the generation.

    Its `finally` is the only place the generation is let go: the provider's
    generator is closed (and with it any upstream response, so the model stops
    generating), the turn keeps the answer, the log is closed with `close`,
    the outcome is logged.
    """
    config = app[CONFIG]
    transcript = Transcript()
    shown: PageAnswer = (
        PlainAnswer()
        if config.plain_stream
        else LiveMarkdown(app[MARKDOWN], f"{stream.uid}-answer-stream")
    )
    relay = Relay(stream, transcript, config, shown)
    outcome = "abandoned"  # cancelled because nobody was listening
    view: dict[str, Any] | None = None

    async def final(view: Mapping[str, Any], failed: bool = False) -> str:
        """The final answer's HTML. Its Markdown is the blocks the page has (the
        whole answer, rendered as it streamed) unless only a new rendering is right."""
        relay.flush()
        await stream.hand_off()  # the answer's last chunks, before its rendering
        shown = relay.shown_answer.final_html()
        return await render_answer(app, stream.uid, transcript, view, None, failed, shown)

    async def fail(message: str) -> None:
        so_far = None
        if transcript.answer_chars or transcript.reasoning_chars:  # keep it, rendered
            so_far = await final(answer_view(app, stream, transcript), failed=True)
        relay.fail(message, so_far)

    try:
        async with asyncio.timeout(config.max_duration):
            try:
                async with aclosing(app[PROVIDER].stream(stream.request)) as events:
                    async for event in events:
                        ending = relay.take(event)
                        await stream.hand_off()  # its frames, to the listeners waiting
                        if ending is not None:
                            outcome = ending  # leaving the loop closes the provider
                            break
                    else:
                        outcome = "done"
            finally:
                relay.undecided_is_answer()  # however the provider ended
        if outcome in ("done", CAPPED):
            view = answer_view(app, stream, transcript)
            relay.finish(await final(view))
        elif outcome == "failed":
            await fail(relay.error or CRASHED)
    except TimeoutError:
        outcome = "too long"
        await fail(TOO_LONG.format(limit=config.max_duration))
    except asyncio.CancelledError:
        if stream.stop_reason is None:
            raise  # abandoned: nobody is there to tell
        outcome = stream.stop_reason
        this_task().uncancel()  # we asked for this cancellation; it is handled
        if stream.stop_reason == STOPPED:
            transcript.finish_reason = STOPPED
            view = answer_view(app, stream, transcript)
            relay.finish(await final(view))
        else:
            await fail(STOPPED_BY_SERVER.get(stream.stop_reason, RESTARTING))
    except Exception:
        log.exception("stream %s: the provider failed", stream.uid[:9])
        outcome = "crashed"
        await fail(CRASHED)
    finally:
        stream.hang_up = None  # the provider is closed: nothing of it is left to drop
        relay.discard()
        ended_well = outcome in ("done", STOPPED, CAPPED)
        error = relay.error or (None if ended_well else LEFT_UNFINISHED)
        transcript.compact()
        stream.turn.end(outcome, transcript, error, view or answer_view(app, stream, transcript))
        await stream.hand_off()  # the final answer (or error), before it is kept
        try:
            await app[STORE].keep_answer(stream)  # before `close`: the next prompt builds on it
        finally:
            stream.end()  # `close`, always last
        stream.shown_answer = None  # a page now shows the final answer
        log_stream(app, stream, outcome, transcript, _joined(relay.error, relay.hint))
        await app[STORE].finished(stream)


def this_task() -> asyncio.Task[Any]:
    task = asyncio.current_task()
    assert task is not None, "called outside a task"
    return task


def _joined(*parts: str | None) -> str | None:
    return " ".join(part for part in parts if part) or None


#: What a final answer shows besides the text when nothing more is known (a turn
#: that ended before its stream began).
NO_VIEW: dict[str, Any] = {"reasoning_seconds": None, "note": None, "stats": {}, "model": ""}


def answer_view(app: web.Application, stream: Stream, transcript: Transcript) -> dict[str, Any]:
    """What the final answer shows besides the text: note, stats, model."""
    note = FINISH_NOTES.get(transcript.finish_reason or "")
    return {
        "reasoning_seconds": transcript.reasoning_seconds(),
        "note": note and note.format(max_chars=app[CONFIG].max_answer_chars),
        "stats": transcript.stats(),
        "model": stream.request.model or app[PROVIDER].model,
    }


async def render_answer(
    app: web.Application,
    uid: str,
    transcript: Transcript,
    view: Mapping[str, Any],
    error: str | None = None,
    failed: bool = False,
    answer_html: str | None = None,
) -> str:
    """templates/final_answer.html: the answer as Markdown, its reasoning and stats;
    for a failed answer, what came before it failed (and, on a page, why).
    ``answer_html``: the answer's Markdown already rendered (by LiveMarkdown)."""
    render = functools.partial(
        aiohttp_jinja2.get_env(app).get_template("final_answer.html").render,
        uid=uid,
        transcript=transcript,
        error=error,
        failed=failed or error is not None,
        answer_html=None if answer_html is None else Markup(answer_html),
        **{**NO_VIEW, **view},
    )
    if answer_html is not None or (
        transcript.answer_chars + transcript.reasoning_chars <= INLINE_RENDER_CHARS
    ):
        return render()
    return await asyncio.to_thread(render)


def log_stream(
    app: web.Application, stream: Stream, outcome: str, transcript: Transcript, reason: str | None
) -> None:
    """One line per stream; a failed one says why, for the operator."""
    stats = transcript.stats()
    prompt = f" prompt={stream.request.prompt!r}" if app[CONFIG].log_prompts else ""
    why = f" reason={printable(reason)!r}" if reason else ""
    log.info(
        "stream %s provider=%s outcome=%s duration=%.2fs ttft=%s tokens=%s%s%s",
        stream.uid[:9],  # enough to follow one stream in the log, far too little to claim it
        app[PROVIDER].name,
        outcome,
        stats["duration"],
        f"{stats['ttft']:.2f}s" if "ttft" in stats else "-",
        stats.get("tokens", "-"),
        why,
        prompt,
    )


# --- listening: the GET /response-stream handler ------------------------------------------


async def response_stream(request: web.Request) -> web.StreamResponse:
    """Stream one prompt's answer to one browser. Every answer ends with `close`."""
    config = request.app[CONFIG]
    store = request.app[STORE]
    response = await open_event_stream(request)
    try:
        # The first GET for a uid starts generating: produce() runs until `close`.
        stream, position = await store.claim(
            request.query.get("uid", ""),
            last_event_id(request),
            start=functools.partial(produce, request.app),
        )
    except NotClaimable as refused:
        # A 200 with error + close: any other status makes the page retry forever.
        await response.write_eof(
            format_event(*error_event(str(refused)), 1) + format_event(*close_event(), 2)
        )
        return response

    try:
        await write(response, RETRY_FIELD, config.write_timeout, request.transport)
        await listen(stream, response, position, config, request.transport)
    except (ConnectionError, ClientTooSlow):
        if request.transport is not None:
            request.transport.abort()  # closed at once: its unread data is dropped, not sent
    finally:
        await store.detach(stream)
    return response


async def open_event_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            # Tells nginx not to buffer the stream (it would hold tokens back).
            "X-Accel-Buffering": "no",
        }
    )
    # Not compressed (enable_compression is never called here): a compressor
    # buffers, and the tokens would arrive in lumps.
    await response.prepare(request)
    response.headers.clear()  # sent: a stream held for minutes need not keep them (0.5 KB)
    return response


MAX_ID_DIGITS = 18  # ids are counts of events: a longer number is no id of ours


def last_event_id(request: web.Request) -> int | None:
    """The id of the last event the browser got, when it reconnects by itself; else
    the last one a page rendered mid-stream showed (``?after=``)."""
    header = request.headers.get("Last-Event-ID")
    text = header if header is not None else request.query.get("after", "")
    # int() of a 4,300-digit text raises: a text that long is refused before.
    if not (text.isdecimal() and len(text) <= MAX_ID_DIGITS):
        return None
    event_id = int(text)
    # Ids start at 1; `after=0` is a page rendered before the first event.
    return event_id if event_id or header is None else None


class Listener:
    """One browser's connection to a stream: how far into the log it has been written."""

    __slots__ = ("last_write", "position", "response", "transport")

    def __init__(
        self, response: web.StreamResponse, transport: asyncio.Transport | None, position: int
    ) -> None:
        self.response = response
        self.transport = transport
        self.position = position  # the frames up to here are written
        self.last_write = time.monotonic()  # the clock of Stream.last_event_at and the pinger


async def listen(
    stream: Stream,
    response: web.StreamResponse,
    position: int,
    config: Config,
    transport: asyncio.Transport | None = None,
) -> None:
    """Write the stream's events after ``position`` as they come, until `close`,
    and a ping when it is quiet (ping_forever wakes quiet listeners)."""
    listener = Listener(response, transport, position)
    while True:
        if listener.position < len(stream.frames):
            end = len(stream.frames)
            last = stream.closed  # these frames end with `close`: the response ends with them
            data = stream.frames_after(listener.position)
            await write(response, data, config.write_timeout, transport, last=last)
            listener.position, listener.last_write = end, time.monotonic()
            continue  # more may have come while writing
        if stream.closed:
            return
        if time.monotonic() - listener.last_write >= config.ping_interval:
            await write(response, PING, config.write_timeout, transport)
            listener.last_write = time.monotonic()
            continue  # events may have come while the ping was written
        # Caught up: while it waits, the producer writes the next frames itself
        # (Stream.hand_off). No timer per wait: that was one more timer per event.
        stream.caught_up.append(listener)
        try:
            await stream.changed()
        finally:
            stream.caught_up.remove(listener)


# --- the app ------------------------------------------------------------------------------


async def provider_ctx(app: web.Application) -> AsyncIterator[None]:
    """The provider named in the config, with the HTTP client session it needs."""
    config = app[CONFIG]
    if config.provider == "demo":
        app[PROVIDER] = DemoProvider(delay=config.demo_delay)
        yield
        return
    # One client session for the app's life, closed with it.
    async with make_session() as session:
        app[PROVIDER] = OpenAIProvider(session, config.openai)
        yield


async def background_ctx(app: web.Application) -> AsyncIterator[None]:
    """The app's two background loops, for its whole life: wake quiet listeners
    so they send their pings, and expire unclaimed prompts."""
    store = app[STORE]

    async def ping_forever() -> None:
        # One timer for the whole app, not one per event per listener: every
        # quarter of the ping interval, wake the listeners of quiet streams,
        # which then ping. Waking the busy ones too would stall the loop for
        # thousands of wake-ups that write nothing.
        ping_interval = app[CONFIG].ping_interval
        while True:
            await asyncio.sleep(ping_interval / 4)
            quiet_since = time.monotonic() - ping_interval
            for stream in store.streams():
                if stream.listeners and stream.last_event_at <= quiet_since:
                    stream.wake()

    async def sweep_forever() -> None:
        # A few times per TTL, so an entry outlives its TTL by a fraction of it.
        while True:
            await asyncio.sleep(app[CONFIG].uid_ttl / 4)
            await store.sweep()

    tasks = [asyncio.create_task(ping_forever()), asyncio.create_task(sweep_forever())]
    yield
    for task in tasks:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


def make_app(config: Config, provider: Provider | None = None) -> web.Application:
    """The whole app. Tests may pass their own ``provider``; else ``config`` picks one."""
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[guard],
        handler_args={
            # aiohttp closes a connection that has not sent a whole request
            # within this time, from its first byte on (the body has its own).
            "keepalive_timeout": config.request_timeout,
            # After an answer sent before the body ended (a 408), the rest of
            # the body is read (so the answer is not lost) for this long, then
            # the connection is closed: not the 10 s aiohttp would give it.
            "lingering_time": 1.0,
            "access_log_class": AccessLogger,
        },
    )
    app[CONFIG] = config
    app[HOSTS] = allowed_hosts(config)
    if config.redis_url:  # shared by several processes: redis_store.py
        from redis_store import RedisStore

        app[STORE] = shared = RedisStore(config)
        app.cleanup_ctx.append(shared.running)
    else:
        app[STORE] = Store(config)
    app[VENDOR] = script_urls = find_vendor_scripts()
    app[SECURITY_HEADERS] = security_headers_for(script_urls)  # built once, sent always
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    app[MARKDOWN] = markdown = make_markdown()
    app[HIGHLIGHT_CSS] = highlight_css()
    env.filters["text"] = text_filter
    env.filters["markdown"] = markdown_filter(markdown)
    env.globals["plain_stream"] = config.plain_stream
    if provider is None:
        app.cleanup_ctx.append(provider_ctx)
    else:
        app[PROVIDER] = provider
    app.cleanup_ctx.append(background_ctx)
    app.on_startup.append(quiet_accept_errors)
    app.on_response_prepare.append(add_security_headers)
    app.on_shutdown.append(end_streams)
    app.router.add_get("/", index)
    app.router.add_get("/c/{cid}", conversation_page)
    app.router.add_get("/c/{cid}/export", export_conversation)
    app.router.add_post("/process_prompt", process_prompt)
    # No HEAD (add_get allows it by default): a HEAD would claim the stream and
    # start the answer, and the browser's GET would then find it taken.
    app.router.add_get("/response-stream", response_stream, allow_head=False)
    app.router.add_post("/stop", stop_stream)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/highlight.css", code_colours)
    app.router.add_get("/vendor/{filename}", vendor_file)
    app.router.add_static("/static/", STATIC_DIR)
    return app


# ==========================================================================================
#  The lesson ends here: above, a prompt's path from the form to `close`.
#  Below, what keeps a public server safe and fast: limits, reading the form, a
#  conversation's settings, export, pacing, slow clients, open files, access, security
#  headers, Markdown, the vendored htmx, health, shutdown, configuration, the garbage
#  collector and `main`. Safe to skip on a first reading.
# ==========================================================================================


# --- limits -------------------------------------------------------------------------------

RATE_WINDOW_S = 60.0  # prompts_per_minute counts the prompts of the last minute
# A prompt counts against the stream limits while it streams, or while it waits
# for its stream only this long: the page opens it within milliseconds, and
# prompts posted and never opened must not lock everyone else out for --uid-ttl.
PENDING_COUNTS_S = 5.0
# When everyone's limit is reached, a prompt nobody opened for this long makes
# room for a new one (its page, if there was one, says it expired): a flood of
# prompts that are never opened cannot keep others out even for those 5 s.
GIVE_WAY_S = 0.5
# Wrong passwords: this many per client are free, then each one more doubles
# the wait before the next try (1 s, 2 s, 4 s… at most a minute).
FREE_PASSWORD_TRIES = 5
MAX_PASSWORD_WAIT_S = 60.0
PASSWORD_MEMORY_S = 600.0  # a client's wrong tries are forgotten after this long
TRY_LATER = "Please try again in a few seconds."
SERVER_FULL = "The server is answering as many prompts as it can. " + TRY_LATER
TOO_MANY_WAITING = "Too many prompts are waiting right now. " + TRY_LATER
MINE_STREAMING = "You already have {count} answers streaming; wait for one to finish."
RETRY = {"Retry-After": "5"}


@dataclass(frozen=True)
class Room:
    """What the stream limits count when a client adds a prompt: its own, and everyone's.
    An answer *counts* while it streams, or while its prompt waits to be opened for at
    most PENDING_COUNTS_S."""

    waiting: int  # the client's prompts not opened yet
    mine: int  # the client's answers that count
    pending: int  # everyone's prompts not opened yet
    counted: int  # everyone's answers that count


@dataclass(frozen=True)
class Unopened:
    """A prompt nobody opened for GIVE_WAY_S: past a limit, it makes room for a new one."""

    uid: str
    counted: bool  # still within PENDING_COUNTS_S: it counts against --max-streams


class Limits:
    """What one client, and everyone together, may do at once (each limit a flag).

    It counts each client's prompts of the last minute, requests in flight and
    wrong passwords; ``forget_idle_clients`` drops what no longer matters.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._recent: dict[str, deque[float]] = {}  # each client's prompts in the last minute
        self._in_flight: dict[str, int] = {}  # each client's requests being handled
        self._wrong_passwords: dict[str, tuple[int, float]] = {}  # client -> (count, last)

    def count_prompt(self, client: str) -> None:
        """Count a prompt against the client's rate, before any work is done for it."""
        now = time.monotonic()
        recent = self._recent.setdefault(client, deque())
        while recent and now - recent[0] > RATE_WINDOW_S:
            recent.popleft()
        if len(recent) >= self.config.prompts_per_minute:
            wait = math.ceil(RATE_WINDOW_S - (now - recent[0]))
            raise Refusal(
                429,
                f"That is {len(recent)} prompts in a minute, the most allowed. "
                f"Please wait {wait} s.",
                {"Retry-After": str(wait)},
            )
        recent.append(now)

    def check_room(self, room: Room, stale: Callable[[], list[Unopened]]) -> list[str]:
        """Raise a Refusal if one more prompt would pass a stream limit (``room``
        counts what is there already).

        Past a limit for everyone, the oldest prompts nobody opened within
        GIVE_WAY_S make room instead (``stale()``: those prompts, oldest first):
        their uids are returned, for the caller to forget.
        """
        config = self.config
        if room.waiting >= config.max_pending_per_client:
            raise Refusal(
                429,
                f"You have {room.waiting} prompts waiting for their answer to be opened. "
                + TRY_LATER,
                RETRY,
            )
        if room.mine >= config.max_streams_per_client:
            raise Refusal(429, MINE_STREAMING.format(count=room.mine), RETRY)

        making_room: list[Unopened] = []

        def give_way(counted_only: bool, refusal: Refusal) -> None:
            for unopened in stale():
                if unopened not in making_room and (unopened.counted or not counted_only):
                    making_room.append(unopened)
                    return
            raise refusal

        if room.pending >= config.max_pending:
            give_way(False, Refusal(503, TOO_MANY_WAITING, RETRY))
        if room.counted - sum(unopened.counted for unopened in making_room) >= config.max_streams:
            give_way(True, Refusal(503, SERVER_FULL, RETRY))
        return [unopened.uid for unopened in making_room]

    def started_late(self, room: Room) -> str | None:
        """A prompt opened after it stopped counting counts again from now on: why it
        may not start, if that would pass a stream limit (``room`` counts the
        others); else None."""
        if room.counted >= self.config.max_streams:
            return SERVER_FULL
        if room.mine >= self.config.max_streams_per_client:
            return MINE_STREAMING.format(count=room.mine)
        return None

    def enter(self, client: str) -> None:
        """A request from ``client`` starts; refused past its requests at once."""
        in_flight = self._in_flight.get(client, 0)
        if in_flight >= self.config.max_requests_per_client:
            raise Refusal(
                429, f"Your address has {in_flight} requests open here already. " + TRY_LATER, RETRY
            )
        self._in_flight[client] = in_flight + 1

    def leave(self, client: str) -> None:
        in_flight = self._in_flight.pop(client) - 1
        if in_flight:
            self._in_flight[client] = in_flight

    def password_wait(self, client: str) -> float:
        """Seconds ``client`` must wait before its next password try counts (0: none)."""
        count, last = self._wrong_passwords.get(client, (0, 0.0))
        if count < FREE_PASSWORD_TRIES:
            return 0.0
        wait = min(2.0 ** (count - FREE_PASSWORD_TRIES), MAX_PASSWORD_WAIT_S)
        return max(0.0, last + wait - time.monotonic())

    def password_tried(self, client: str, right: bool) -> None:
        if right:
            self._wrong_passwords.pop(client, None)
        else:
            count, _ = self._wrong_passwords.get(client, (0, 0.0))
            self._wrong_passwords[client] = (count + 1, time.monotonic())

    def forget_idle_clients(self) -> None:
        """Drop the counters of clients with no prompt in the last minute, and wrong
        passwords tried long ago, so that memory stays flat."""
        now = time.monotonic()
        for client, recent in list(self._recent.items()):
            if not recent or now - recent[-1] > RATE_WINDOW_S:
                del self._recent[client]
        for client, (_, last) in list(self._wrong_passwords.items()):
            if now - last > PASSWORD_MEMORY_S:
                del self._wrong_passwords[client]

    def clients_counted(self) -> int:
        return len(self._recent)


# --- reading the form ---------------------------------------------------------------------

# What the page's form sends. Multipart is refused: the page never sends it, and
# parsing hundreds of empty parts costs far more than the prompt is worth.
FORM_TYPE = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class PromptForm:
    """What the page's form sends: the prompt, and which conversation it is part of."""

    prompt: str  # empty only to answer the last prompt again (`again`)
    conversation: str  # its id; empty for a new conversation
    replace: str  # the uid of the last turn, to edit it or answer it again; or empty
    again: bool  # Regenerate or Retry: the replaced turn's prompt, answered again
    # The settings, each None when not sent: then the conversation's own.
    model: str | None
    system_prompt: str | None
    temperature: str | None


async def read_prompt(request: web.Request) -> PromptForm:
    """The form, or a Refusal that says what is wrong with it."""
    config = request.app[CONFIG]
    limit = config.max_prompt_chars
    if request.content_type != FORM_TYPE:
        raise Refusal(415, "Send the prompt as a form field named 'prompt'.")
    try:
        async with asyncio.timeout(config.request_timeout):  # a body sent slowly on purpose
            form = await request.post()
    except TimeoutError:
        raise Refusal(408, "The prompt took too long to arrive. Please submit it again.") from None
    except web.HTTPRequestEntityTooLarge:
        raise Refusal(
            413, f"The request is too large. Prompts are limited to {limit:,} characters."
        ) from None
    except Exception:  # a malformed body fails in many ways: bad charset, encoding, parts
        raise Refusal(400, "The form could not be read. Please submit it again.") from None
    fields = {name: value for name, value in form.items() if isinstance(value, str)}
    prompt = valid_unicode(fields.get("prompt", ""))
    conversation, replace = fields.get("conversation", ""), fields.get("replace", "")
    again = bool(replace) and fields.get("again") == "1"
    if conversation and not is_id(conversation):
        raise Refusal(404, CONVERSATION_GONE)
    if not prompt.strip() and not again:
        raise Refusal(422, "Please type a prompt first.")
    limits = [
        ("prompt", prompt, limit),
        ("system prompt", fields.get("system_prompt", ""), config.max_system_prompt_chars),
    ]
    for name, text, most in limits:
        if len(text) > most:
            raise Refusal(
                413, f"The {name} is {len(text):,} characters long; the limit is {most:,}."
            )
    model, system_prompt, temperature = (fields.get(name) for name in SETTING_FIELDS)
    return PromptForm(
        prompt="" if again else prompt,
        conversation=conversation,
        replace=replace,
        again=again,
        model=None if model is None else model.strip(),
        system_prompt=None if system_prompt is None else valid_unicode(system_prompt),
        temperature=None if temperature is None else temperature.strip(),
    )


SETTING_FIELDS = ("model", "system_prompt", "temperature")  # the form's, in PromptForm's order


# --- a conversation's settings: model, system prompt, temperature -------------------------

TEMPERATURES = (0.0, 2.0)  # what OpenAI-compatible servers accept
MODELS_WAIT_S = 2.0  # a page never waits longer for the model server's list


async def chat_settings(
    app: web.Application, form: PromptForm, current: ChatSettings | None
) -> ChatSettings:
    """The settings a prompt is sent with: the operator's where a flag fixes one,
    else the page's, checked (a Refusal says what is wrong); a setting the form
    did not send stays the conversation's ``current`` one."""
    if current is not None:
        form = dataclasses.replace(
            form,
            model=sent_or(form.model, current.model or ""),
            system_prompt=sent_or(form.system_prompt, current.system_prompt or ""),
            temperature=sent_or(form.temperature, shown_number(current.temperature)),
        )
    fixed = app[CONFIG].openai
    if fixed.model:
        if form.model and form.model != fixed.model:
            raise Refusal(422, f"This server only asks the model {fixed.model}.")
        model = fixed.model
    elif form.model:
        if form.model not in await offered_models(app):
            raise Refusal(422, f"The model server does not offer a model called {form.model!r}.")
        model = form.model
    else:
        model = None  # the provider's own choice

    temperature = fixed.temperature
    if temperature is None and form.temperature:
        try:
            temperature = float(form.temperature)
        except ValueError:
            temperature = math.nan
        low, high = TEMPERATURES
        if not low <= temperature <= high:  # also refuses nan
            raise Refusal(422, f"The temperature must be a number from {low:g} to {high:g}.")

    if fixed.system_prompt is not None:
        system_prompt = fixed.system_prompt or None
    elif form.system_prompt is None:
        system_prompt = DEFAULT_SYSTEM_PROMPT
    else:
        system_prompt = form.system_prompt.strip() or None
    return ChatSettings(model, system_prompt, temperature)


def sent_or(sent: str | None, kept: str) -> str:
    return kept if sent is None else sent


def shown_number(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


async def offered_models(app: web.Application) -> list[str]:
    """The models the model server lists (cached by the provider); none if it is slow."""
    try:
        async with asyncio.timeout(MODELS_WAIT_S):
            return await app[PROVIDER].models()
    except TimeoutError:
        return []


async def page_choices(app: web.Application, conversation: Conversation | None) -> dict[str, Any]:
    """What the page's settings show: the current values, what may be chosen, what is fixed."""
    fixed = app[CONFIG].openai
    current = conversation.settings if conversation else ChatSettings()
    if fixed.system_prompt is not None:
        system_prompt = fixed.system_prompt
    elif conversation is not None:
        system_prompt = current.system_prompt or ""
    else:
        system_prompt = DEFAULT_SYSTEM_PROMPT
    temperature = fixed.temperature if fixed.temperature is not None else current.temperature
    models = [] if fixed.model else await offered_models(app)
    temperature_text = shown_number(temperature)
    return {
        "models": models,
        "model": fixed.model or current.model or app[PROVIDER].model or next(iter(models), ""),
        "model_fixed": bool(fixed.model),
        "system_prompt": system_prompt,
        "system_prompt_fixed": fixed.system_prompt is not None,
        "temperature": temperature_text,
        "temperature_fixed": fixed.temperature is not None,
        "temperatures": TEMPERATURES,
    }


# --- export --------------------------------------------------------------------------------


async def export_conversation(request: web.Request) -> web.Response:
    """The conversation as a Markdown file: prompts, answers, model and time."""
    cid = request.match_info["cid"]
    conversation = await request.app[STORE].conversation(cid)
    if conversation is None:
        return aiohttp_jinja2.render_template(
            "gone.html", request, {"message": CONVERSATION_GONE}, status=404
        )
    data = export_markdown(conversation).encode()
    limit = request.app[CONFIG].max_export_bytes
    if len(data) > limit:
        message = (
            f"This conversation is too large to export ({len(data):,} bytes; "
            f"the limit is {limit:,})."
        )
        back = f"/c/{conversation.cid}"
        return aiohttp_jinja2.render_template(
            "gone.html", request, {"message": message, "back": back}, status=413
        )
    day = time.strftime("%Y-%m-%d", time.gmtime(conversation.created))
    return web.Response(
        body=data,
        content_type="text/markdown",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="conversation-{day}.md"'},
    )


# --- pacing -------------------------------------------------------------------------------


class Throttle:
    """Calls ``send`` at most once per ``interval`` seconds.

    Poked when it has been quiet, it sends at once (the first token is never
    held back); poked again within the interval, it sends once at the end of
    it, with whatever piled up. An interval of 0 sends on every poke.

    ``send`` is given with each call, not kept: only a scheduled send holds
    it, so a finished stream's Relay and its Throttles hold no cycle, and
    reference counting frees them (and the answer) at once.
    """

    __slots__ = ("_last", "_loop", "_pending", "_timer", "interval")  # two per stream

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._pending = False
        self._last = -math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def poke(self, send: Callable[[], None]) -> None:
        self._pending = True
        if self._timer is None:
            wait = self._last + self.interval - self._loop.time()
            if wait <= 0:
                self.flush(send)
            else:
                self._timer = self._loop.call_later(wait, self.flush, send)

    def flush(self, send: Callable[[], None]) -> None:
        """Send now if anything is waiting."""
        self.discard()
        if self._pending:
            self._pending = False
            self._last = self._loop.time()
            send()

    def discard(self) -> None:
        """Forget the scheduled send (the caller sends something newer itself)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


# --- slow clients -------------------------------------------------------------------------


class ClientTooSlow(Exception):
    """The browser stopped reading: a write waited longer than the write timeout."""


#: A write this small into an empty socket buffer cannot wait: aiohttp waits
#: only while the buffer is over its high-water mark (64 KiB).
UNTIMED_WRITE_BYTES = 16 * 1024


def writes_at_once(transport: asyncio.Transport | None, data: bytes) -> bool:
    """Whether writing ``data`` returns at once: the socket's buffer is empty and
    the data small, so aiohttp hands it to the kernel and does not wait."""
    return (
        transport is not None
        and len(data) <= UNTIMED_WRITE_BYTES
        and not transport.is_closing()
        and transport.get_write_buffer_size() == 0
    )


async def write(
    response: web.StreamResponse,
    data: bytes,
    patience: float,
    transport: asyncio.Transport | None = None,
    last: bool = False,
) -> None:
    """``response.write(data)``, giving up (ClientTooSlow) after ``patience`` seconds.
    ``last``: the response ends with ``data`` (one packet with the chunked body's end)."""
    send = response.write_eof if last else response.write
    # The common case needs no timer. (A timer per write was ~10% of the CPU per token.)
    if writes_at_once(transport, data):
        await send(data)
        return
    # A browser that reads nothing would make the write wait, and its data
    # pile up in memory, forever: give up after `patience` seconds instead.
    try:
        async with asyncio.timeout(patience):
            await send(data)
    except TimeoutError:
        raise ClientTooSlow from None


# --- open files ----------------------------------------------------------------------------

ACCEPT_ERROR_LOG_INTERVAL_S = 60.0
OPEN_FILES_WHEN_UNLIMITED = 65_536  # a soft limit to ask for when the hard one has none


def raise_open_file_limit() -> tuple[int, int]:
    """Raise this process's soft limit of open files to its hard limit: each
    stream holds two sockets, and Linux's usual soft limit is 1,024. Returns
    the limit before and after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = OPEN_FILES_WHEN_UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return soft, target
    return soft, soft


async def quiet_accept_errors(app: web.Application) -> None:
    """Log a failed accept() at most once a minute.

    Out of open files, asyncio fails each accept() and logs every failure:
    under a flood of connections that grew the log by megabytes a second.
    """
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    last_logged = -math.inf

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        nonlocal last_logged
        if isinstance(context.get("exception"), OSError) and "accept" in context.get("message", ""):
            now = time.monotonic()
            if now - last_logged >= ACCEPT_ERROR_LOG_INTERVAL_S:
                last_logged = now
                log.error(
                    "cannot accept connections: %s (said at most once a minute)",
                    context["exception"],
                )
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


# --- access: who may use the app ----------------------------------------------------------

HOSTS: web.AppKey[frozenset[str]] = web.AppKey("hosts")  # the host names it answers to
OPEN_PATHS = frozenset({"/healthz"})  # for health checks, which carry no password
REALM = 'Basic realm="HTMX AI Stream", charset="UTF-8"'
UNKNOWN_HOST = (
    "This server does not answer to that host name. Its operator can allow it with --allowed-hosts."
)


@web.middleware
async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
    """Who may ask what: a host name this app answers to, a client within its
    requests at once, the password (if one is set), and no POSTs from other sites."""
    if request.path in OPEN_PATHS:
        response: web.StreamResponse = await handler(request)
        return response
    if not host_allowed(request.host, request.app[HOSTS]):
        return refuse(request, Refusal(400, UNKNOWN_HOST))
    client = client_address(request)
    limits = request.app[STORE].limits
    try:
        limits.enter(client)
    except Refusal as refusal:
        return refuse(request, refusal)
    try:
        refused = password_refusal(request, client)
        if refused is not None:
            return refused
        if request.method == "POST" and cross_site(request):
            return refuse(request, Refusal(403, "Prompts can only be sent from this app's page."))
        response = await handler(request)
        return response
    except Refusal as refusal:  # from any handler: the shared store unreachable, say
        return refuse(request, refusal)
    finally:
        limits.leave(client)


def host_allowed(host: str, allowed: frozenset[str]) -> bool:
    """Whether the Host header names this app.

    A page on another site can point its own host name at 127.0.0.1 and have
    the browser send requests here under that name (DNS rebinding): refusing
    names we do not know stops it. An IP address is never such a name.
    """
    if "*" in allowed:
        return True
    try:
        name = URL(f"//{host}").host
    except ValueError:
        return False
    if not name:
        return False
    name = name.rstrip(".").lower()
    if name in allowed:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def allowed_hosts(config: Config) -> frozenset[str]:
    """The host names the app answers to, besides IP addresses (see host_allowed)."""
    return frozenset({"localhost", config.host.lower(), *config.allowed_hosts})


def client_address(request: web.Request) -> str:
    """The client's IP, for the per-client limits.

    Behind a reverse proxy every request comes from the proxy; with
    --trust-proxy the last X-Forwarded-For entry (the one our proxy added) is
    the client, if it is an IP address. Without the flag the header is
    ignored: anyone can write one.
    """
    if request.app[CONFIG].trust_proxy:
        forwarded = request.headers.get("X-Forwarded-For", "").split(",")[-1].strip()
        try:
            return str(ipaddress.ip_address(forwarded))
        except ValueError:
            pass  # not an address: the proxy's own is the best we know
    return request.remote or "unknown"


def password_refusal(request: web.Request, client: str) -> web.Response | None:
    """None if the request may go on; else a 401 that asks for the password, or a
    429 while the client waits after too many wrong ones."""
    password = request.app[CONFIG].password
    if not password:
        return None
    limits = request.app[STORE].limits
    wait = limits.password_wait(client)
    if wait:
        seconds = math.ceil(wait)
        return web.Response(
            status=429,
            text=f"Too many wrong passwords from your address. Please wait {seconds} s.",
            headers={"Retry-After": str(seconds)},
        )
    if password_matches(request, password):
        limits.password_tried(client, right=True)
        return None
    if "Authorization" in request.headers:
        limits.password_tried(client, right=False)
    # The browser asks for the password and sends it with every request after
    # that, the page's event streams included.
    return web.Response(
        status=401,
        text="This app needs a password (with any user name).",
        headers={"WWW-Authenticate": REALM},
    )


def password_matches(request: web.Request, password: str) -> bool:
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        _, _, given = base64.b64decode(encoded, validate=True).decode().partition(":")
    except ValueError:
        return False
    return secrets.compare_digest(given.encode(), password.encode())


def cross_site(request: web.Request) -> bool:
    """A POST sent by another site's page (a browser always says where it comes from).

    Only host names are compared (Origin's and the Host header's): behind a
    TLS proxy the browser says https while this server sees http, and the
    proxy may drop the port from Host. An Origin that is not a URL is foreign.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    try:
        return URL(origin).host != URL(f"//{request.host}").host
    except ValueError:
        return True


# Control characters, line and paragraph separators, and the bidirectional
# overrides that can make a log line read backwards.
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` fit for one log line: a control character (a line break from
    ``%0A`` in a path, say) is written as an escape, so nobody can forge a line."""
    return _CONTROL_CHARACTER.sub(lambda match: ascii(match.group())[1:-1], text)


class AccessLogger(web.AbstractAccessLogger):
    """aiohttp's access log line, without the query string (a stream's URL
    carries its uid, and a log line must not hand anyone the answer) or a
    conversation's id, and with every value made printable."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, elapsed: float) -> None:
        path = _CONVERSATION_ID.sub("/c/…", request.path)  # an id is a capability too
        self.logger.info(
            '%s "%s %s" %s %.3fs', printable(request.remote or "-"), printable(request.method),
            printable(path), response.status, elapsed,
        )  # fmt: skip
        forget_what_was_sent(response)  # the log is the last use aiohttp makes of it


def forget_what_was_sent(response: web.StreamResponse) -> None:
    """Let go of a sent response's body, headers and cookies.

    aiohttp keeps a connection's last response until the next request on that
    connection is answered. The page opens a prompt's stream right after its
    POST, often on the same connection: the POST's answer (the turn's HTML, 2 KB,
    and its headers and cookie, 3.5 KB in all) stayed in memory as long as the
    stream, once for every stream held.
    """
    if isinstance(response, web.Response):
        response.body = None
    response.headers.clear()
    response.cookies.clear()


_CONVERSATION_ID = re.compile(r"^/c/[^/]*")


# --- security headers ---------------------------------------------------------------------


SECURITY_HEADERS: web.AppKey[dict[str, str]] = web.AppKey("security_headers")


def security_headers_for(script_urls: Mapping[str, str]) -> dict[str, str]:
    """The headers every response carries; the page meets its own Content-Security-Policy."""
    cdn = sorted({url.split("/npm/")[0] for url in script_urls.values() if "://" in url})
    policy = [
        "default-src 'self'",
        "script-src " + " ".join(["'self'", *cdn]),
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
    return {
        "Content-Security-Policy": "; ".join(policy),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    }


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in request.app[SECURITY_HEADERS].items():
        response.headers.setdefault(name, value)


# --- Markdown ------------------------------------------------------------------------------
# The rendering itself, while the answer streams and at its end: live_markdown.py.

MARKDOWN: web.AppKey[MarkdownIt] = web.AppKey("markdown")


def text_filter(text: str) -> Markup:
    """Jinja filter: model text, escaped the same way as the streamed chunks."""
    return Markup(escape_text(text))


def markdown_filter(markdown: MarkdownIt) -> Callable[[str], Markup]:
    """Jinja filter: the whole answer rendered, for the final answer."""
    return lambda text: Markup(markdown.render(text))


async def code_colours(request: web.Request) -> web.Response:
    """GET /highlight.css: the colours of highlighted code (Pygments' classes)."""
    return web.Response(
        text=request.app[HIGHLIGHT_CSS],
        content_type="text/css",
        headers={"Cache-Control": "max-age=3600"},
    )


HIGHLIGHT_CSS: web.AppKey[str] = web.AppKey("highlight_css")


# --- htmx, served from node_modules or a CDN ----------------------------------------------


VENDOR: web.AppKey[dict[str, str]] = web.AppKey("vendor")  # script file name -> its URL


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

    @property
    def local_url(self) -> str:
        return "/vendor/" + self.filename

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
            urls[script.filename] = script.local_url
        else:
            if script.local_file.is_file():
                log.warning("%s is not the pinned version; run `npm ci`", script.local_file)
            urls[script.filename] = script.cdn_url
    return urls


def log_htmx_source(script_urls: dict[str, str]) -> None:
    """Say at start where the page gets htmx from."""
    local = all(script_urls[script.filename] == script.local_url for script in VENDOR_SCRIPTS)
    log.info(
        "htmx is served %s", "by this app" if local else "from a CDN (`npm ci` serves it here)"
    )


async def vendor_file(request: web.Request) -> web.FileResponse:
    name = request.match_info["filename"]
    for script in VENDOR_SCRIPTS:
        if script.filename == name and request.app[VENDOR][name] == script.local_url:
            return web.FileResponse(script.local_file)
    raise web.HTTPNotFound(text="Not installed here: run `npm ci`.")


# --- health -------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """For a load balancer: a 503 when this process cannot serve (its shared store lost)."""
    store = request.app[STORE]
    status = store.status()
    return web.json_response(
        {"status": status, "provider": request.app[PROVIDER].name, **await store.counts()},
        status=200 if status == "ok" else 503,
    )


# --- shutdown -----------------------------------------------------------------------------

SHUTDOWN_TIMEOUT_S = 5.0  # how long shutdown waits for streams to say goodbye


async def end_streams(app: web.Application) -> None:
    """On SIGTERM or Ctrl-C: tell every browser, release every upstream request."""
    streams = app[STORE].streams()
    for stream in streams:
        stream.stop(RESTARTING_REASON)
    producers = [stream.producer for stream in streams if stream.producer is not None]
    if producers:
        await asyncio.wait(producers, timeout=SHUTDOWN_TIMEOUT_S)


# --- configuration ------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Everything the app can be told. Each field is a flag (``--field-name``), some
    also an environment variable (``settings.setting``); ``parse_config`` fills it."""

    host: str = setting("127.0.0.1", "address to listen on", group=SERVER, env="HOST")
    port: int = setting(8080, "port to listen on", group=SERVER, env="PORT", convert=port_number)
    provider: str = setting(
        "demo", "where answers come from: demo (offline) or openai (any OpenAI-compatible "
        "server); default: openai when a base URL or key is set, else demo",
        group=SERVER, choices=("demo", "openai"),
    )  # fmt: skip
    demo_delay: float = setting(
        0.03, "seconds the demo provider waits per word (0 = instant)",
        group=SERVER, convert=not_negative,
    )  # fmt: skip
    openai: OpenAISettings = field(default_factory=OpenAISettings)  # its own flags

    # Limits.
    max_prompt_chars: int = setting(
        8000, "longest prompt accepted, in characters", group=LIMITS, convert=positive(int)
    )
    max_system_prompt_chars: int = setting(
        4000, "longest system prompt a conversation may set, in characters",
        group=LIMITS, convert=positive(int),
    )  # fmt: skip
    max_body_bytes: int = setting(
        64 * 1024, "largest POST body accepted, in bytes", group=LIMITS, convert=positive(int)
    )
    prompts_per_minute: int = setting(
        30, "prompts one client IP may send per minute", group=LIMITS, convert=positive(int)
    )
    max_streams_per_client: int = setting(
        4, "answers waiting or streaming at once for one client IP",
        group=LIMITS, convert=positive(int),
    )  # fmt: skip
    max_streams: int = setting(
        200, "answers waiting or streaming at once, for everyone",
        group=LIMITS, convert=positive(int),
    )  # fmt: skip
    max_pending: int = setting(
        1000, "prompts that may wait for their stream at once", group=LIMITS, convert=positive(int)
    )
    max_pending_per_client: int = setting(
        8, "prompts one client IP may have waiting for their stream",
        group=LIMITS, convert=positive(int),
    )  # fmt: skip
    max_requests_per_client: int = setting(
        24, "requests one client IP may have in flight at once (an open stream is one)",
        group=LIMITS, convert=positive(int),
    )  # fmt: skip
    request_timeout: float = setting(
        10.0, "seconds a client may take to send a request's headers, and again its body",
        group=LIMITS, convert=positive(float),
    )  # fmt: skip
    max_conversations: int = setting(
        1000, "conversations kept; past it the least recently used is forgotten",
        group=LIMITS, convert=positive(int),
    )  # fmt: skip
    max_turns: int = setting(
        50, "turns one conversation may have", group=LIMITS, convert=positive(int)
    )
    history_chars: int = setting(
        24_000, "characters of a conversation sent with a new prompt; older turns are "
        "left out, and the page says so",
        group=LIMITS, convert=positive(int),
    )  # fmt: skip
    conversation_ttl: float = setting(
        86_400.0, "seconds a conversation is kept without use",
        group=LIMITS, convert=positive(float),
    )  # fmt: skip
    max_kept_chars: int = setting(
        50_000_000, "characters of all conversations kept together (prompts, answers, "
        "reasoning); past it the least recently used are forgotten",
        group=LIMITS, convert=positive(int),
    )  # fmt: skip
    max_export_bytes: int = setting(
        4_000_000, "largest conversation export, in bytes", group=LIMITS, convert=positive(int)
    )
    max_answer_chars: int = setting(
        100_000, "longest answer (and reasoning) kept, in characters; then the answer ends "
        "with a note and the model server is released",
        group=LIMITS, convert=positive(int),
    )  # fmt: skip
    uid_ttl: float = setting(
        60.0, "seconds a prompt waits for its stream before it expires",
        group=LIMITS, convert=positive(float),
    )  # fmt: skip
    max_duration: float = setting(
        600.0, "longest a single answer may take, in seconds", group=LIMITS, convert=positive(float)
    )
    write_timeout: float = setting(
        10.0, "seconds a browser may read nothing before its stream is dropped",
        group=LIMITS, convert=positive(float),
    )  # fmt: skip

    # Access.
    allowed_hosts: tuple[str, ...] = setting(
        (), "comma-separated host names this app answers to, besides localhost, IP "
        "addresses and --host (* for any); others get a 400 (DNS rebinding)",
        group=ACCESS, env="ALLOWED_HOSTS", convert=host_names, metavar="NAMES",
    )  # fmt: skip
    password: str | None = setting(
        None, "asks every visitor for this password",
        group=ACCESS, env="APP_PASSWORD", convert=text_or_none, flag=False,
    )  # fmt: skip
    trust_proxy: bool = setting(
        False, "take the client IP from X-Forwarded-For (only behind your own reverse proxy)",
        group=ACCESS,
    )  # fmt: skip
    log_prompts: bool = setting(
        False, "write each prompt's text in its stream's log line", group=ACCESS
    )

    # Tuning.
    grace_period: float = setting(
        5.0, "seconds a generation goes on after its browser left, waiting for it to "
        "reconnect (0 = stop at once)",
        group=TUNING, convert=not_negative,
    )  # fmt: skip
    ping_interval: float = setting(
        15.0, "seconds between ': ping' comments on a quiet stream (proxies close silent ones)",
        group=TUNING, convert=positive(float),
    )  # fmt: skip
    plain_stream: bool = setting(
        False, "stream the answer as plain text and render its Markdown once, at the end "
        "(the simplest answer_chunk to look at)",
        group=TUNING,
    )  # fmt: skip
    answer_window: float = setting(
        0.04, "seconds answer text may wait to be sent together with what follows "
        "(0 = every piece at once)",
        group=TUNING, convert=not_negative,
    )  # fmt: skip
    thought_interval: float = setting(
        0.25, "least seconds between two updates of the thought line",
        group=TUNING, convert=not_negative,
    )  # fmt: skip

    # Several processes: redis_store.py, workers.py.
    redis_url: str | None = setting(
        None, "keep streams, conversations and limits in this Redis (redis://HOST:PORT/DB), "
        "shared by every worker and machine; a password goes in REDIS_URL, never on the "
        "command line; default: in this process's memory",
        group=SCALE, env="REDIS_URL", convert=redis_address, metavar="URL", secret=True,
    )  # fmt: skip
    redis_prefix: str = setting(
        "htmx-sse", "the start of every Redis key this app writes, so apps can share a Redis",
        group=SCALE, env="REDIS_PREFIX", metavar="TEXT",
    )  # fmt: skip
    workers: int = setting(
        1, "worker processes on this machine, run by gunicorn (more than one needs "
        "--redis-url)",
        group=SCALE, env="WEB_CONCURRENCY", convert=positive(int),
    )  # fmt: skip


EXAMPLES = """\
A flag beats its environment variable, which beats the default. OPENAI_API_KEY
and APP_PASSWORD (which protects the whole app) are read from the environment
only, so they never show in `ps`.

examples:
  python server.py
      the offline demo provider on http://127.0.0.1:8080
  OPENAI_BASE_URL=http://localhost:11434/v1 OPENAI_MODEL=qwen3 python server.py --port 8000
      a model served by Ollama, on port 8000
"""


def build_parser() -> settings.Parser:
    return settings.build_parser(
        Config,
        OpenAISettings,
        prog="server.py",
        description="Stream a model's thoughts and answer into the browser (HTMX + SSE).",
        epilog=EXAMPLES,
    )


def parse_config(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    """Read flags, then environment variables, then defaults, in that order of precedence."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    values = read_settings(Config, args, environ, parser)
    openai = read_settings(OpenAISettings, args, environ, parser)
    if "provider" not in values:
        configured = "base_url" in openai or openai.get("api_key")
        values["provider"] = "openai" if configured else "demo"
    config = Config(openai=OpenAISettings(**openai), **values)
    for problem in config_problems(config):
        parser.error(problem)
    return config


def config_problems(config: Config) -> list[str]:
    """Values that are each valid but do not go together."""
    problems = []
    base_url = URL(config.openai.base_url)
    if (base_url.user or base_url.password) and config.openai.api_key:
        problems.append(
            "the model server's URL carries a user name and password, and OPENAI_API_KEY "
            "is set too: a request can carry only one of them, so remove one"
        )
    if config.workers > 1 and not config.redis_url:
        problems.append(
            f"--workers {config.workers} needs a shared store (--redis-url or REDIS_URL): "
            "each worker would keep its own streams and conversations, and a browser's next "
            "request may reach a worker that knows nothing of them"
        )
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", config.redis_prefix):
        problems.append("--redis-prefix must be 1 to 64 letters, digits, '_', '.' or '-'")
    for each, everyone in [
        ("max_streams_per_client", "max_streams"),
        ("max_pending_per_client", "max_pending"),
    ]:
        if getattr(config, each) >= getattr(config, everyone):
            problems.append(
                f"--{each.replace('_', '-')} must be below --{everyone.replace('_', '-')}: "
                "else one client could take them all and lock everyone else out"
            )
    return problems


def public_url(text: str) -> str:
    """A URL fit to show or log: without user, password or query (which may carry a key)."""
    try:
        return str(URL(text).with_user(None).with_query(None).with_fragment(None))
    except ValueError:
        return "(not a valid URL)"


def answers_from(config: Config) -> str:
    """Where answers come from, for the start-up log (never a key or password)."""
    if config.provider != "openai":
        return f"the {config.provider} provider"
    openai = config.openai
    model = openai.model or "the one it lists (asked at the first prompt)"
    return f"the model server at {public_url(openai.base_url)}, model {model}"


async def check_model_server(app: web.Application) -> None:
    """At start, ask the model server once and say what was found: a warning, never
    a refusal to start (the model server may come up later)."""
    provider = app[PROVIDER]
    if isinstance(provider, OpenAIProvider):
        well, said = await provider.check()
        (log.info if well else log.warning)("model server: %s", said)


# --- the garbage collector ----------------------------------------------------------------

# The cyclic collector's passes scan live objects: with thousands of streams
# open, each full pass stopped the loop for 0.2-0.7 s. Collect less often, but
# not so rarely that cyclic garbage piles up: measured (bench/README.md),
# (50_000, 20, 100) gave the best latency at 5,000 held streams but let memory
# climb from 48 to 100 MiB over 10,000 prompts; these thresholds give p99
# 40-60 ms there and keep memory as flat as Python's defaults do.
GC_THRESHOLDS = (10_000, 10, 100)


# --- main ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(argv if argv is not None else sys.argv[1:], os.environ)
    # With several workers, each line says whose it is (the worker's process id).
    worker = " [%(process)d]" if config.workers > 1 else ""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s{worker} %(message)s")
    # No line says which source line wrote it, so logging need not walk the stack to
    # find out for every line (the logging HOWTO's "Optimization"): half a line's cost.
    logging._srcfile = None
    log.info("answers come from %s", answers_from(config))
    before, after = raise_open_file_limit()
    if after != before:
        log.info("open files: at most %d (the soft limit was %d)", after, before)
    else:
        log.info("open files: at most %d", after)
    if config.password:
        log.info("a password (APP_PASSWORD) protects the app")
    if config.redis_url:  # the shared store must answer now, or we do not start
        from redis_store import check_reachable

        problem = asyncio.run(check_reachable(config.redis_url))
        if problem:
            sys.exit(problem)
        log.info("streams and conversations are kept in Redis at %s", public_url(config.redis_url))
    if config.workers > 1:
        from workers import run_workers

        log_htmx_source(find_vendor_scripts())
        run_workers(config)  # gunicorn forks the workers; each runs make_app(config)
        return
    app = make_app(config)
    log_htmx_source(app[VENDOR])
    app.on_startup.append(check_model_server)
    gc.freeze()  # the modules and the app live as long as the process: never scan them again
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        web.run_app(
            app,
            host=config.host,
            port=config.port,
            # A browser that leaves has its handler cancelled at once (not at the next ping).
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )
    except OSError as error:  # the port is taken, or the address is not this machine's
        sys.exit(f"Cannot listen on {config.host}:{config.port}: {error.strerror or error}")


if __name__ == "__main__":
    # `python server.py` runs this file as __main__: redis_store.py's `import server`
    # must find this module, not load a second copy of it.
    sys.modules["server"] = sys.modules["__main__"]
    main()

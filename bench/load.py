"""The benchmark's load client: asyncio and aiohttp, in the benchmark's own process.

It speaks to a *relay* the way the page does (``POST /process_prompt`` for a
uid, then ``GET /response-stream?uid=`` for the events) or, for the latency
floor, straight to the fake *upstream* (``POST /v1/chat/completions``).

Reading is kept as cheap as possible, because the client shares two cores
with the relay it measures: each network read is stamped with
``time.monotonic_ns()`` and cut into raw SSE blocks, and nothing else happens
until the scenario is over. Only then are the blocks parsed, unescaped,
checked token by token (bench/protocol.py) and turned into latencies.

The app sends the answer rendered as it streams (live_markdown.py): each
``answer_chunk`` is HTML that the page appends or swaps in. Such an answer is
checked as the page would show it: the chunks build the page
(tests/answer_dom.py), which must be exactly the final rendering of the answer
the upstream sent (``tests/sse_client.shows_answer``); for the numbered tokens,
the page's text must also be tokens 0, 1, 2, … as above. With
``--plain-stream`` (and from the FastAPI peer) the chunks are the text itself.

The client's own garbage collector is paused while a scenario runs
(``collector_paused``). Its full collections stopped this process for up to
a third of a second with thousands of streams held, and every read stamped
late by such a pause counted as relay latency: at 5,000 held streams the
relay's p99 read 135 ms with the client collecting, 40-48 ms without.

Every wait here is bounded: a stream that does not end in time is cut and
counted as failed, never waited for.
"""

from __future__ import annotations

import asyncio
import gc
import html
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import aiohttp

from bench.protocol import (
    Directive,
    answer_is_exact,
    markdown_answer,
    read_stamps,
    since_stamp,
    token_text,
)
from tests.answer_dom import AnswerModel
from tests.snippet import STREAM_URL, uid_from_snippet
from tests.sse_client import SSEEvent, shows_answer

BLOCK_END = b"\n\n"  # both servers under test end events with a bare LF pair
CONNECT_LIMIT_S = 10.0
NANOS = 1_000_000_000
#: How many streams may be opening (POST, then GET up to its headers) at once
#: while streams are being held: more would overflow the relay's accept queue
#: (aiohttp listens with a backlog of 128) and stall on SYN retries.
OPENING_AT_ONCE = 64
_TAG = re.compile(r"<[^>]*>")  # in rendered chunks; the answer's own "<" comes escaped


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection in this process meanwhile (see above): it
    collects once before, so each scenario starts clean, and once after."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        gc.collect()


@dataclass(frozen=True)
class Target:
    """Something to send prompts to: a relay (the app, its peer) or the bare upstream."""

    name: str
    base: str
    direct: bool = False  # True: the fake upstream itself, for the latency floor


class Refused(Exception):
    """The target turned the prompt down (a limit, an error page)."""


@dataclass
class Received:
    """One stream as the client saw it: raw SSE blocks, each with its read's time."""

    directive: Directive
    direct: bool
    posted_ns: int = 0
    uid: str | None = None  # the relay's, from the POST's snippet
    opened_ns: int | None = None  # when the GET's response headers arrived (held streams)
    blocks: list[tuple[int, bytes]] = field(default_factory=list)
    dropped_ns: int | None = None  # when the client let go on purpose
    stopped_ns: int | None = None  # when the client sent POST /stop for it
    failure: str | None = None  # what went wrong on the client's side

    def events(self) -> list[tuple[int, str, str]]:
        """(read time, event name, data) of every dispatched event, in order."""
        events = []
        for received_ns, block in self.blocks:
            name, data = "message", []
            for line in block.decode().split("\n"):
                field_name, _, value = line.partition(":")
                if field_name == "data":
                    data.append(value.removeprefix(" "))
                elif field_name == "event":
                    name = value.removeprefix(" ")
            if data:  # a block without data (retry:, a comment) dispatches nothing
                events.append((received_ns, name, "\n".join(data)))
        return events

    def answer_data(self) -> list[str]:
        """The data of every ``answer_chunk``, as sent (a relay's stream only)."""
        return [data for _, name, data in self.events() if name == "answer_chunk"]

    def rendered(self) -> bool:
        """Whether the answer came rendered (HTML blocks), not as its text: the
        first chunk of a rendered answer is a tag, of a plain one never (escaped)."""
        data = [] if self.direct else self.answer_data()
        return bool(data) and data[0].startswith("<")

    def chunks(self) -> list[tuple[int, str]]:
        """(read time, answer text) of every piece of the answer, unescaped; of a
        rendered answer, the text its chunk shows (a changed block shows it again)."""
        if self.direct:
            return [(ns, text) for ns, name, data in self.events() if (text := _content(data))]
        rendered = self.rendered()
        return [
            (ns, html.unescape(_TAG.sub("", data) if rendered else data))
            for ns, name, data in self.events()
            if name == "answer_chunk"
        ]

    def ended(self) -> bool:
        """The stream said it was over: ``close`` from a relay, ``[DONE]`` from upstream."""
        events = self.events()
        if self.direct:
            return bool(events) and events[-1][2] == "[DONE]"
        return bool(events) and events[-1][1] == "close"

    def errors(self) -> list[str]:
        return [data for _, name, data in self.events() if name == "error"]

    def exact(self, whole: bool = True) -> bool:
        """The answer is exact: every token once, in order (``whole``: all of them);
        a rendered one builds a page that is exactly that answer's final rendering."""
        count = self.directive.tokens if whole else None
        if self.direct or not self.rendered():
            answer = "".join(text for _, text in self.chunks())
            if self.directive.markdown:
                expected = markdown_answer()
                return answer == expected if whole else expected.startswith(answer)
            return answer_is_exact(answer, count)
        if self.directive.markdown:
            # A page of part of it is no final rendering: only whole answers here.
            return whole and self._builds(markdown_answer())
        page = AnswerModel()
        try:
            for data in self.answer_data():
                page.apply(data)
        except (AssertionError, IndexError, StopIteration, ValueError):
            return False  # chunks a browser could not apply as the app meant them
        # The numbered answer is one paragraph: its text without the first space.
        answer = " " + html.unescape(_TAG.sub("", page.html())).strip()
        return answer_is_exact(answer, count) and self._builds(answer)

    def _builds(self, answer: str) -> bool:
        """Whether the rendered chunks build exactly ``answer``'s final rendering."""
        events = [SSEEvent("answer_chunk", data, None) for data in self.answer_data()]
        try:
            return shows_answer(events, answer)
        except (AssertionError, IndexError, StopIteration, ValueError):
            return False

    def answer_bytes(self) -> int:
        """The bytes of all ``answer_chunk`` data together, UTF-8, as sent."""
        return sum(len(data.encode()) for data in self.answer_data())

    def latencies_ns(self, since_ns: int = 0, until_ns: int | None = None) -> list[int]:
        """Relay latency of each stamped token read between the two times (when it
        was first shown: a rendered block that changes is sent again)."""
        until_ns = until_ns if until_ns is not None else 2**63
        seen: set[int] = set()
        latencies = []
        for received_ns, text in self.chunks():
            for index, stamp in read_stamps(text):
                if index in seen:
                    continue
                seen.add(index)
                if since_ns <= received_ns <= until_ns:
                    latencies.append(since_stamp(received_ns, stamp))
        return latencies

    def first_text_ns(self) -> int | None:
        """From the upstream sending the first token to the first event that shows
        it: a ``thought`` (text not yet known to be answer) or an ``answer_chunk``."""
        stamps = read_stamps("".join(text for _, text in self.chunks()))
        if not stamps or stamps[0][0] != 0:
            return None  # no stamped first token to time
        index, sent_ns = stamps[0]
        # Stripped: a thought does not show the white space before the first word.
        first = token_text(index, sent_ns).strip()
        for received_ns, name, data in self.events():
            if name in ("thought", "answer_chunk") and first in html.unescape(data):
                return since_stamp(received_ns, sent_ns)
        return None

    def first_event_ns(self) -> int | None:
        """From sending the prompt to the first event (a relay's first thought)."""
        events = self.events()
        return events[0][0] - self.posted_ns if events else None

    def ok(self) -> bool:
        return self.failure is None and not self.errors() and self.ended() and self.exact()

    def problem(self) -> str | None:
        """Why ``ok`` is false, in a few words (None if it is true)."""
        if self.failure is not None:
            return self.failure
        if self.errors():
            return f"error: {self.errors()[0][:80]}"
        if not self.ended():
            return "no close"
        return None if self.exact() else "not exact"


def _content(data: str) -> str:
    if data == "[DONE]":
        return ""
    choices = json.loads(data).get("choices") or [{}]
    return choices[0].get("delta", {}).get("content") or ""


def new_session() -> aiohttp.ClientSession:
    """One pool of keep-alive connections, unlimited (a held stream holds one)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_LIMIT_S),
    )


async def open_stream(
    session: aiohttp.ClientSession, target: Target, received: Received
) -> aiohttp.ClientResponse:
    """Send the prompt and open its event stream; the response's headers have arrived."""
    prompt = received.directive.prompt()
    received.posted_ns = time.monotonic_ns()
    if target.direct:
        body = {"model": "bench", "stream": True, "messages": [{"role": "user", "content": prompt}]}
        return await session.post(f"{target.base}/v1/chat/completions", json=body)
    async with session.post(f"{target.base}/process_prompt", data={"prompt": prompt}) as posted:
        snippet = await posted.text()
        if posted.status != 200 or STREAM_URL not in snippet:
            raise Refused(f"{posted.status}: {snippet[:120]}")
    received.uid = uid_from_snippet(snippet)
    return await session.get(f"{target.base}/response-stream", params={"uid": received.uid})


async def read_first_event(response: aiohttp.ClientResponse, received: Received) -> int:
    """Read blocks (kept as ``read_blocks`` keeps them) up to the first one with an
    ``id:``; that event's id."""
    while True:
        block = await response.content.readuntil(BLOCK_END)
        if not block.endswith(BLOCK_END):
            raise Refused(f"the stream ended before its first event: {block[:120]!r}")
        received.blocks.append((time.monotonic_ns(), block[: -len(BLOCK_END)]))
        for line in block.split(b"\n"):
            if line.startswith(b"id:"):
                return int(line[3:])


async def stop(session: aiohttp.ClientSession, target: Target, received: Received) -> None:
    """The Stop button: ``POST /stop?uid=`` for the stream, its sending time noted."""
    received.stopped_ns = time.monotonic_ns()
    async with session.post(f"{target.base}/stop", params={"uid": received.uid or ""}) as done:
        if done.status != 204:
            raise Refused(f"stop: {done.status}")


async def read_blocks(response: aiohttp.ClientResponse, received: Received) -> None:
    """Keep the raw blocks of a stream, each with the time of the read it came in."""
    pending = b""
    async for data in response.content.iter_any():
        now = time.monotonic_ns()
        pending += data
        if BLOCK_END in pending:
            *blocks, pending = pending.split(BLOCK_END)
            received.blocks += [(now, block) for block in blocks]


async def run_stream(
    session: aiohttp.ClientSession,
    target: Target,
    directive: Directive,
    limit_s: float,
    start_after_s: float = 0.0,
) -> Received:
    """One whole stream, from the prompt to the end of the response."""
    await asyncio.sleep(start_after_s)
    received = Received(directive, target.direct)
    try:
        async with asyncio.timeout(limit_s):
            response = await open_stream(session, target, received)
            async with response:
                await read_blocks(response, received)
    except TimeoutError:
        received.failure = f"no end after {limit_s:g} s"
    except (aiohttp.ClientError, OSError, Refused) as problem:
        received.failure = f"{type(problem).__name__}: {problem}"
    return received


async def run_many(
    target: Target, directives: Sequence[Directive], limit_s: float, spread_s: float = 0.0
) -> tuple[list[Received], float]:
    """All the streams, each to its end; what arrived, and the seconds it took.

    ``spread_s``: the starts are spread evenly over that many seconds, as
    people who do not all press Enter in the same millisecond.
    """
    step = spread_s / max(1, len(directives))
    async with new_session() as session:
        started = time.perf_counter()
        received = await asyncio.gather(
            *(
                run_stream(session, target, directive, limit_s, n * step)
                for n, directive in enumerate(directives)
            )
        )
        return list(received), time.perf_counter() - started


async def burst_of_gets(target: Target, directives: Sequence[Directive]) -> list[Received]:
    """Every prompt posted first, one after another; then all their first GETs at
    once, each read to its end (``CONNECT_LIMIT_S`` at most)."""
    received = [Received(directive, target.direct) for directive in directives]
    async with new_session() as session:
        for each in received:
            prompt = each.directive.prompt()
            async with session.post(
                f"{target.base}/process_prompt", data={"prompt": prompt}
            ) as posted:
                snippet = await posted.text()
            if posted.status != 200 or STREAM_URL not in snippet:
                raise Refused(f"{posted.status}: {snippet[:120]}")
            each.uid = uid_from_snippet(snippet)

        async def get(each: Received) -> None:
            each.posted_ns = time.monotonic_ns()
            try:
                async with asyncio.timeout(CONNECT_LIMIT_S):
                    url = f"{target.base}/response-stream"
                    async with session.get(url, params={"uid": each.uid or ""}) as response:
                        await read_blocks(response, each)
            except TimeoutError:
                each.failure = f"no end after {CONNECT_LIMIT_S:g} s"
            except (aiohttp.ClientError, OSError) as problem:
                each.failure = f"{type(problem).__name__}: {problem}"

        await asyncio.gather(*(get(each) for each in received))
    return received


async def run_pair(
    session: aiohttp.ClientSession,
    producer: Target,
    follower: Target,
    directive: Directive,
    limit_s: float,
    start_after_s: float = 0.0,
) -> tuple[Received, Received]:
    """One answer read twice, as two browsers: through ``producer`` (the POST and
    the first GET: that process produces the answer) and through ``follower``, with
    ``Last-Event-ID`` of the first event the producer's reader got, as a browser
    that reconnects to another process on the same Redis."""
    await asyncio.sleep(start_after_s)
    first = Received(directive, producer.direct)
    second = Received(directive, follower.direct)
    try:
        async with asyncio.timeout(limit_s):
            response = await open_stream(session, producer, first)
            async with response:
                event_id = await read_first_event(response, first)
                following = await session.get(
                    f"{follower.base}/response-stream",
                    params={"uid": first.uid or ""},
                    headers={"Last-Event-ID": str(event_id)},
                )
                async with following:
                    await asyncio.gather(
                        read_blocks(response, first), read_blocks(following, second)
                    )
    except TimeoutError:
        first.failure = second.failure = f"no end after {limit_s:g} s"
    except (aiohttp.ClientError, OSError, Refused) as problem:
        first.failure = second.failure = f"{type(problem).__name__}: {problem}"
    return first, second


async def run_pairs(
    producer: Target,
    follower: Target,
    directives: Sequence[Directive],
    limit_s: float,
    spread_s: float = 0.0,
) -> list[tuple[Received, Received]]:
    """``run_pair`` for every directive, the starts spread as in ``run_many``."""
    step = spread_s / max(1, len(directives))
    async with new_session() as session:
        return list(
            await asyncio.gather(
                *(
                    run_pair(session, producer, follower, directive, limit_s, n * step)
                    for n, directive in enumerate(directives)
                )
            )
        )


async def round_trips(
    target: Target, workers: int, seconds: float, directive: Directive, limit_s: float
) -> tuple[int, int]:
    """``workers`` loops of prompt → stream → close for ``seconds``; (exact, failed)
    counts, checked once the loops are over (checking costs the client CPU)."""
    done: list[Received] = []
    deadline = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            done.append(await run_stream(session, target, directive, limit_s))

    async with new_session() as session:
        await asyncio.gather(*(worker(session) for _ in range(workers)))
    exact = sum(received.ok() for received in done)
    return exact, len(done) - exact


class HeldStreams:
    """Many streams opened and kept open until ``drop_all``, as browsers that stay.

    Opening is paced (``at_once`` streams opening at a time, ``OPENING_AT_ONCE``
    unless told) and bounded by ``open_limit_s`` per stream; a stream that cannot
    be opened in time is counted, not retried.
    """

    def __init__(self, target: Target, open_limit_s: float, at_once: int = OPENING_AT_ONCE) -> None:
        self.target = target
        self.open_limit_s = open_limit_s
        self.streams: list[Received] = []
        # Each open stream's response, what it received, and the task reading it.
        self._open: list[tuple[aiohttp.ClientResponse, Received, asyncio.Task[None]]] = []
        self._opening = asyncio.Semaphore(at_once)
        self._session = new_session()

    async def open(self, directives: Sequence[Directive], deadline: float) -> None:
        """Open every stream (until ``deadline`` on the monotonic clock); don't wait for ends."""
        await asyncio.gather(*(self._open_one(d, deadline) for d in directives))

    async def _open_one(self, directive: Directive, deadline: float) -> None:
        received = Received(directive, self.target.direct)
        self.streams.append(received)
        async with self._opening:
            patience = min(self.open_limit_s, deadline - time.monotonic())
            try:
                async with asyncio.timeout(max(0.0, patience)):
                    response = await open_stream(self._session, self.target, received)
            except TimeoutError:
                received.failure = "not opened in time"
                return
            except (aiohttp.ClientError, OSError, Refused) as problem:
                received.failure = f"{type(problem).__name__}: {problem}"
                return
        received.opened_ns = time.monotonic_ns()
        reader = asyncio.create_task(self._read(response, received))
        self._open.append((response, received, reader))

    async def _read(self, response: aiohttp.ClientResponse, received: Received) -> None:
        try:
            await read_blocks(response, received)
        except (aiohttp.ClientError, OSError) as problem:
            if received.dropped_ns is None:
                received.failure = f"{type(problem).__name__}: {problem}"

    def with_token_since(self, since_ns: int) -> list[Received]:
        """The streams still alive that got answer text after ``since_ns``."""
        return [
            stream
            for stream in self.streams
            if stream.failure is None
            and stream.blocks
            and stream.blocks[-1][0] >= since_ns
            and not stream.errors()
            and any(ns >= since_ns for ns, _ in stream.chunks())
        ]

    async def stop_each(self, stopper: Target, spread_s: float) -> None:
        """A ``POST /stop`` for every open stream, sent to ``stopper``, the stops
        spread evenly over ``spread_s``; each stop's failure is the stream's."""
        opened = [received for _, received, _ in self._open]
        step = spread_s / max(1, len(opened))

        async def stop_one(received: Received, after_s: float) -> None:
            await asyncio.sleep(after_s)
            try:
                async with asyncio.timeout(self.open_limit_s):
                    await stop(self._session, stopper, received)
            except TimeoutError:
                received.failure = "stop not answered in time"
            except (aiohttp.ClientError, OSError, Refused) as problem:
                received.failure = f"{type(problem).__name__}: {problem}"

        await asyncio.gather(*(stop_one(each, n * step) for n, each in enumerate(opened)))

    async def ends(self, limit_s: float) -> None:
        """Wait until every open stream has ended by itself (``limit_s`` at most)."""
        readers = [reader for _, _, reader in self._open]
        if readers:
            await asyncio.wait(readers, timeout=limit_s)

    async def drop_all(self) -> None:
        """Every client leaves at once: each connection is closed, its time noted."""
        for response, received, _ in self._open:
            received.dropped_ns = time.monotonic_ns()
            response.close()
        readers = [reader for _, _, reader in self._open]
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await self._session.close()


async def wait_until(check: Callable[[], Awaitable[bool]], limit_s: float, poll_s: float) -> bool:
    """Poll ``check`` until it is true or ``limit_s`` has passed; whether it became true."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(poll_s)
    return await check()

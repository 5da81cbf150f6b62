"""The benchmark's scenarios: each drives one target and returns its figures.

A *target* is something the load client talks to (bench/load.py): the app,
a yardstick peer (aiohttp + aiohttp-sse, FastAPI + sse-starlette), or the bare
fake upstream (the latency floor). A scenario takes a target and its process
and returns a plain dict of figures; bench/run.py runs the scenarios, takes
the median of the runs and prints the table.

CPU time is each process's CPU-time clock (user + system, all threads, and its
workers': ``cpu_seconds``), to the nanosecond: /proc's figure comes in 10 ms
ticks, which is 20 us a token over 100 streams held for 5 s. Memory is
``VmRSS`` from /proc (bench/procs.py).

Every scenario checks every answer it reads (bench/protocol.py): ``checked``
is how many answers were read, ``exact`` how many were exactly what the
upstream sent, with nothing lost or repeated.

A scenario given the app's Redis (``store``, a bench/procs.RedisServer) also
reports Redis's own CPU time (per token in S1, S2 and held streams, per round
trip in S4), and held streams its memory (``INFO memory``).
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import json
import statistics
import time
import urllib.request
from collections.abc import Callable, Sequence

from bench.load import (
    NANOS,
    OPENING_AT_ONCE,
    HeldStreams,
    Received,
    Target,
    burst_of_gets,
    round_trips,
    run_many,
    run_pairs,
    wait_until,
)
from bench.procs import Process, RedisServer
from bench.protocol import Directive, markdown_answer, markdown_tokens
from live_markdown import make_markdown

MS = 1_000_000  # nanoseconds
#: One whole stream of S1 or S2 may take this long before it counts as failed.
STREAM_LIMIT_S = 60.0
#: A held stream (S3, upstream release) must be open after this many seconds.
OPEN_LIMIT_S = 10.0
#: Long enough that a held stream never ends by itself during the scenario.
ENDLESS_TOKENS = 100_000
#: A held stream counts as held when it got answer text this recently: at one
#: token a second a healthy stream always has.
HELD_RECENT_S = 2.0
#: How long to wait for every held stream to show its first token.
FIRST_TOKEN_LIMIT_S = 15.0
#: How long the upstream may take to see every dropped request closed before
#: the rest count as never released.
RELEASE_LIMIT_S = 5.0
POLL_S = 0.05
#: Reasons kept for the answers that were not exact, per scenario run.
MAX_PROBLEMS = 5
#: The answers of a burst of first GETs: short, the GETs are what is measured.
BURST_TOKENS = 5
#: The opening pace of held streams is counted over this many seconds, at the
#: start and at the end of the opening.
PACE_WINDOW_S = 10.0


_LIBC = ctypes.CDLL(None, use_errno=True)


def process_cpu_ns(pid: int) -> int:
    """CPU time (user + system, all threads) of a process so far, in nanoseconds:
    its CPU-time clock (``clock_getcpuclockid``), not /proc's 10 ms ticks, which
    are too coarse for a few hundred tokens; 0 for a process that ended."""
    clock = ctypes.c_int()
    if _LIBC.clock_getcpuclockid(pid, ctypes.byref(clock)) != 0:
        return 0
    try:
        return time.clock_gettime_ns(clock.value)
    except OSError:
        return 0


def cpu_seconds(process: Process) -> float:
    """The CPU time so far of a server the benchmark runs, and of its live workers
    (gunicorn's, with ``--workers N``), to the nanosecond."""
    return sum(process_cpu_ns(pid) for pid in [process.pid, *process.workers()]) / NANOS


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile (0.99 → p99) of ``values``; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def milliseconds(values_ns: Sequence[int], fraction: float) -> float | None:
    value = percentile(values_ns, fraction)
    return None if value is None else value / MS


def checked(received: Sequence[Received]) -> dict:
    """How many answers were read and how many were exact; why the others were not
    (each reason once, a few at most: every run's are in ``--json``)."""
    exact = [stream.ok() for stream in received]
    problems = {stream.problem() for stream, ok in zip(received, exact, strict=True) if not ok}
    return {
        "checked": len(received),
        "exact": sum(exact),
        "not_exact": sorted(problem for problem in problems if problem)[:MAX_PROBLEMS],
    }


def directives(prefix: str, count: int, **orders: object) -> list[Directive]:
    return [Directive(id=f"{prefix}-{n}", **orders) for n in range(count)]  # type: ignore[arg-type]


# --- S1: throughput -----------------------------------------------------------------------


async def throughput(
    target: Target,
    process: Process,
    streams: int,
    tokens: int,
    store: RedisServer | None = None,
) -> dict:
    """``streams`` prompts at once, ``tokens`` each, sent as fast as the upstream can.
    The relay's CPU is its process's, and its workers' (bench/procs.py); Redis's
    is apart."""
    before = cpu_seconds(process)
    store_before = cpu_seconds(store) if store else 0.0
    received, seconds = await run_many(
        target, directives("s1", streams, tokens=tokens), STREAM_LIMIT_S
    )
    cpu = cpu_seconds(process) - before
    total = streams * tokens
    figures = {
        "tokens_per_s": total / seconds,
        "cpu_us_per_token": cpu / total * 1e6,
        "cpu_share": cpu / seconds,  # 1.0 = one core busy all the time
        **checked(received),
    }
    if store:
        figures["store_cpu_us_per_token"] = (cpu_seconds(store) - store_before) / total * 1e6
    return figures


# --- S2: relay latency --------------------------------------------------------------------


async def latency(
    target: Target,
    process: Process,
    streams: int,
    tokens: int,
    delay: float,
    spread_s: float,
    store: RedisServer | None = None,
) -> dict:
    """Paced streams with stamped tokens: upstream send → client read, per token;
    and the CPU time of ``process`` (the relay; for the floor, the fake upstream)
    per token (``cpu_us_per_token``), and the app's Redis's apart.

    The starts are spread over ``spread_s``: a hundred prompts sent in the
    same millisecond would also end in the same millisecond, and the p99
    would measure that one burst of setup and final answers, not the relay.
    """
    orders = directives("s2", streams, tokens=tokens, delay=delay, stamp=True)
    before = cpu_seconds(process)
    store_before = cpu_seconds(store) if store else 0.0
    received, _ = await run_many(target, orders, STREAM_LIMIT_S, spread_s)
    cpu = cpu_seconds(process) - before
    latencies = [ns for stream in received for ns in stream.latencies_ns()]
    first_events = [ns for stream in received if (ns := stream.first_event_ns()) is not None]
    figures = {
        "p50_ms": milliseconds(latencies, 0.50),
        "p99_ms": milliseconds(latencies, 0.99),
        "first_event_p99_ms": milliseconds(first_events, 0.99),
        "cpu_us_per_token": cpu / (streams * tokens) * 1e6,
        **checked(received),
    }
    if store:
        store_cpu = cpu_seconds(store) - store_before
        figures["store_cpu_us_per_token"] = store_cpu / (streams * tokens) * 1e6
    return figures


async def latency_elsewhere(
    producer: Target,
    follower: Target,
    streams: int,
    tokens: int,
    delay: float,
    spread_s: float,
) -> dict:
    """S2's streams, each read twice: by the browser on ``producer`` (which makes
    the answer) and by a second one on ``follower``, another process on the same
    Redis, which joins with ``Last-Event-ID`` once the first event has arrived and
    reads the answer from its Redis log.

    The follower's latency counts the tokens sent after its first read (its stream
    open, the log being followed), not those it caught up on; the producer's
    listener, for comparison, every token. Both answers must be exact.
    """
    orders = directives("s2x", streams, tokens=tokens, delay=delay, stamp=True)
    pairs = await run_pairs(producer, follower, orders, STREAM_LIMIT_S, spread_s)
    local = [ns for first, _ in pairs for ns in first.latencies_ns()]
    across = [
        ns
        for _, second in pairs
        if second.blocks
        for ns in second.latencies_ns(second.blocks[0][0])
    ]
    received = [stream for pair in pairs for stream in pair]
    return {
        "p50_ms": milliseconds(across, 0.50),
        "p99_ms": milliseconds(across, 0.99),
        "producer_p50_ms": milliseconds(local, 0.50),
        "producer_p99_ms": milliseconds(local, 0.99),
        **checked(received),
    }


async def gets_at_once(target: Target, streams: int) -> dict:
    """``streams`` prompts posted, then their first GETs all at once (the browsers of
    a busy moment): how many were refused (an ``error`` event and ``close`` in
    place of the answer), and the slowest first event (from sending the GET).
    The answers not refused are checked."""
    received = await burst_of_gets(target, directives("burst", streams, tokens=BURST_TOKENS))
    first_events = [ns for stream in received if (ns := stream.first_event_ns()) is not None]
    answered = [stream for stream in received if not stream.errors()]
    return {
        "streams": streams,
        "refused": len(received) - len(answered),
        "first_event_max_ms": milliseconds(first_events, 1.0),
        **checked(answered),
    }


# --- first answer text with the app's default settings -------------------------------------


async def first_text(
    target: Target, streams: int, tokens: int, delay: float, spread_s: float
) -> dict:
    """Untagged answers through an app with its default reasoning hold: from the
    upstream sending the first token to the client reading the first event that
    shows it (a thought while its kind is not known yet, or an answer chunk).

    Each stream lasts longer than the hold (``tokens * delay``), as a real
    answer does, so text held back until the hold ends would show in the figure.
    """
    orders = directives("first", streams, tokens=tokens, delay=delay, stamp=True)
    received, _ = await run_many(target, orders, STREAM_LIMIT_S, spread_s)
    delays = [ns for stream in received if (ns := stream.first_text_ns()) is not None]
    return {
        "p50_ms": milliseconds(delays, 0.50),
        "max_ms": milliseconds(delays, 1.0),
        "timed": len(delays),
        **checked(received),
    }


# --- S3: held streams, and upstream release -----------------------------------------------


async def hold(
    target: Target,
    process: Process,
    streams: int,
    hold_s: float,
    ramp_s: float,
    upstream: Process,
    at_once: int = OPENING_AT_ONCE,
    store: RedisServer | None = None,
) -> dict:
    """Open ``streams`` streams at one token a second and keep them for ``hold_s``.

    Opening (``at_once`` streams at a time) may take ``ramp_s`` at most; a
    stream not open by then is not held. Memory per stream is the relay's
    resident memory while holding (its workers' too), less what it used before
    the first stream, divided by the streams held; with a ``store``, the same
    of Redis's ``used_memory``.
    Latency is every token read during the hold. CPU per token
    (``cpu_us_per_token``) is the relay's CPU time over the hold window divided
    by the tokens read in it (each held stream's new tokens, about held x
    ``hold_s``: what a token costs at this scale); with a ``store``, Redis's
    apart. The CPU shares of the fake upstream and of this client show whether
    the machine, not the relay, was the limit. Then everyone leaves at once,
    which also gives the upstream-release figure at this size.
    """
    upstream_target = Target(upstream.name, upstream.base, direct=True)
    await reset_upstream(upstream_target)
    memory_before = process.rss_bytes()
    store_memory_before = store.used_memory() if store else 0
    held = HeldStreams(target, OPEN_LIMIT_S, at_once)
    orders = directives(f"s3-{streams}", streams, tokens=ENDLESS_TOKENS, delay=1.0, stamp=True)
    opening_started = time.monotonic()
    await held.open(orders, deadline=opening_started + ramp_s)
    opening_s = time.monotonic() - opening_started
    # Let every stream that opened show a token before the window starts.
    await asyncio.sleep(HELD_RECENT_S)
    window_start = time.monotonic_ns()
    watched = [process, upstream, *([store] if store else [])]
    cpu_before = [cpu_seconds(each) for each in watched] + [time.process_time()]
    await asyncio.sleep(hold_s)
    window_end = time.monotonic_ns()
    cpu_after = [cpu_seconds(each) for each in watched] + [time.process_time()]
    relay_cpu, upstream_cpu, *store_cpu, client_cpu = (
        (after - before) / hold_s for before, after in zip(cpu_before, cpu_after, strict=True)
    )  # shares of a core over the window
    memory = process.rss_bytes() - memory_before
    store_memory = store.used_memory() - store_memory_before if store else 0
    open_files = process.open_files()
    alive = held.with_token_since(window_end - int(HELD_RECENT_S * NANOS))
    latencies = [ns for stream in alive for ns in stream.latencies_ns(window_start, window_end)]
    tokens_read = max(1, len(latencies))  # one latency per token read in the window
    await held.drop_all()
    freed = await released(upstream_target, held.streams)
    failures = sorted({stream.failure for stream in held.streams if stream.failure})
    figures = {
        "streams": streams,
        "held": len(alive),
        "opened": sum(stream.failure is None for stream in held.streams),
        "opening_s": opening_s,
        "kb_per_stream": memory / max(1, len(alive)) / 1024,
        "p50_ms": milliseconds(latencies, 0.50),
        "p99_ms": milliseconds(latencies, 0.99),
        "cpu_share": relay_cpu,
        "tokens_in_window": len(latencies),
        "cpu_us_per_token": relay_cpu * hold_s / tokens_read * 1e6,
        "upstream_cpu_share": upstream_cpu,
        "client_cpu_share": client_cpu,
        "release_p99_ms": freed["p99_ms"],
        "not_released": freed["missing"],
        "open_files": open_files,
        **opening_pace(held.streams, opening_started),
        "failures": failures[:5],
        "checked": len(alive),
        "exact": sum(stream.exact(whole=False) for stream in alive),
    }
    if store:
        figures["store_kb_per_stream"] = store_memory / max(1, len(alive)) / 1024
        figures["store_cpu_share"] = store_cpu[0]
        figures["store_cpu_us_per_token"] = store_cpu[0] * hold_s / tokens_read * 1e6
    return figures


def opening_pace(streams: Sequence[Received], started: float) -> dict:
    """Streams opened per second in the first and in the last ``PACE_WINDOW_S`` of
    the opening (the whole opening, if shorter); refused ones (an HTTP error,
    ``Refused``), and those that ended with an ``error`` event (held streams never
    end by themselves)."""
    opened_s = sorted(
        stream.opened_ns / NANOS - started for stream in streams if stream.opened_ns is not None
    )
    last = opened_s[-1] if opened_s else 0.0
    window = max(min(PACE_WINDOW_S, last), POLL_S)
    return {
        "opened_per_s_first": sum(at <= window for at in opened_s) / window,
        "opened_per_s_last": sum(at >= last - window for at in opened_s) / window,
        "refused": sum((stream.failure or "").startswith("Refused") for stream in streams),
        "errored": sum(bool(stream.errors()) for stream in streams),
    }


async def release(
    target: Target, streams: int, delay: float, upstream: Target, at_once: int = OPENING_AT_ONCE
) -> dict:
    """``streams`` streams, each read until it shows answer text; then all clients leave.

    The figure is, per request, the upstream's "my client closed" time less
    the load client's "I closed" time: how long the relay kept the model
    generating for nobody.
    """
    await reset_upstream(upstream)
    held, answering = await answering_streams(target, "rel", streams, delay, at_once)
    await held.drop_all()
    figures = await released(upstream, answering)
    return {
        **figures,
        "checked": len(answering),
        "exact": sum(stream.exact(whole=False) for stream in answering),
        "failed": streams - len(answering),
    }


async def answering_streams(
    target: Target, prefix: str, streams: int, delay: float, at_once: int
) -> tuple[HeldStreams, list[Received]]:
    """``streams`` endless streams held open, ``delay`` s a token; once each shows
    answer text (or a bound passed), the held streams and those showing text."""
    held = HeldStreams(target, OPEN_LIMIT_S, at_once)
    orders = directives(f"{prefix}-{streams}", streams, tokens=ENDLESS_TOKENS, delay=delay)
    await held.open(orders, deadline=time.monotonic() + OPEN_LIMIT_S + streams / 100)

    async def all_answering() -> bool:
        return all(stream.failure or stream.chunks() for stream in held.streams)

    await wait_until(all_answering, FIRST_TOKEN_LIMIT_S, POLL_S)
    answering = [stream for stream in held.streams if stream.failure is None and stream.chunks()]
    return held, answering


async def stopped_elsewhere(
    producer: Target,
    stopper: Target,
    streams: int,
    delay: float,
    upstream: Target,
    spread_s: float,
    at_once: int = OPENING_AT_ONCE,
) -> dict:
    """The Stop button, pressed on another process: ``streams`` endless answers
    made and read through ``producer``; once each shows text, ``POST /stop`` for
    each goes to ``stopper`` (another process on the same Redis; or the producer
    itself, for comparison), the stops spread over ``spread_s``.

    The figure is, per answer, the upstream's "my client closed" time less the
    time the stop was sent. Each stopped answer must end with ``close``, no
    ``error``, and its text be tokens 0, 1, 2, … with nothing lost or repeated.
    """
    await reset_upstream(upstream)
    held, answering = await answering_streams(producer, "stop", streams, delay, at_once)
    await held.stop_each(stopper, spread_s)
    figures = await released(upstream, answering, since=lambda stream: stream.stopped_ns)
    await held.ends(RELEASE_LIMIT_S)
    await held.drop_all()
    ended = [stream for stream in answering if stream.failure is None and stream.ended()]
    return {
        **figures,
        "checked": len(answering),
        "exact": sum(not stream.errors() and stream.exact(whole=False) for stream in ended),
        "failed": streams - len(answering),
    }


def dropped_at(stream: Received) -> int | None:
    return stream.dropped_ns


async def released(
    upstream: Target,
    dropped: Sequence[Received],
    since: Callable[[Received], int | None] = dropped_at,
) -> dict:
    """Wait for the upstream to see each request closed; the delays from ``since``
    (when the client dropped it, unless told)."""
    left = {stream.directive.id: at for stream in dropped if (at := since(stream)) is not None}
    wanted = set(left)
    records: dict[str, int] = {}

    async def all_released() -> bool:
        records.update(await upstream_stats(upstream))
        return wanted <= records.keys()

    await wait_until(all_released, RELEASE_LIMIT_S, POLL_S)
    delays = [records[name] - at for name, at in left.items() if name in records]
    return {
        "p50_ms": milliseconds(delays, 0.50),
        "p99_ms": milliseconds(delays, 0.99),
        "max_ms": milliseconds(delays, 1.0),
        "missing": len(wanted - records.keys()),
    }


async def upstream_stats(upstream: Target) -> dict[str, int]:
    def fetch() -> dict[str, int]:
        with urllib.request.urlopen(f"{upstream.base}/bench/stats", timeout=5) as response:
            return json.load(response)["released_ns"]

    return await asyncio.to_thread(fetch)


async def reset_upstream(upstream: Target) -> None:
    def post() -> None:
        request = urllib.request.Request(f"{upstream.base}/bench/reset", method="POST")
        with urllib.request.urlopen(request, timeout=5):
            pass

    await asyncio.to_thread(post)


# --- S4: prompt round trips ---------------------------------------------------------------


async def prompt_round_trips(
    target: Target,
    process: Process,
    workers: int,
    seconds: float,
    store: RedisServer | None = None,
) -> dict:
    """POST + GET + one token + close, in ``workers`` loops, for ``seconds``; and the
    CPU time of ``process`` (the relay; for the floor, the fake upstream) per round
    trip (``cpu_ms_per_round_trip``), and the app's Redis's apart."""
    started = time.perf_counter()
    before = cpu_seconds(process)
    store_before = cpu_seconds(store) if store else 0.0
    exact, failed = await round_trips(
        target, workers, seconds, Directive(id="s4", tokens=1), STREAM_LIMIT_S
    )
    cpu = cpu_seconds(process) - before
    elapsed = time.perf_counter() - started
    trips = max(1, exact + failed)
    figures = {
        "round_trips_per_s": exact / elapsed,
        "cpu_ms_per_round_trip": cpu / trips * 1e3,
        "checked": exact + failed,
        "exact": exact,
    }
    if store:
        figures["store_cpu_ms_per_round_trip"] = (cpu_seconds(store) - store_before) / trips * 1e3
    return figures


# --- the Markdown answer, rendered while it streams ----------------------------------------


@functools.cache
def final_rendering_bytes() -> int:
    """The bytes of the Markdown answer's final rendering: the Markdown HTML alone
    (``make_markdown().render``), not the final_answer event's other parts."""
    return len(make_markdown().render(markdown_answer()).encode())


def markdown_limit_s(delay: float) -> float:
    """How long one stream of the Markdown answer may take before it counts as failed."""
    return STREAM_LIMIT_S + delay * len(markdown_tokens())


async def markdown_answers(
    targets: dict[str, tuple[Target, Process, bool]], streams: int, delay: float, spread_s: float
) -> dict[str, dict]:
    """The Markdown answer, ``streams`` at once, ``delay`` seconds a token, on every
    target *at the same time* (name → target, its process, whether its answers come
    rendered): one moment of the machine for all, the same load for each.

    Per target: its CPU per token (``cpu_seconds``, from its first prompt to
    its last stream's end) and, per answer, the bytes of its ``answer_chunk`` data
    over those of the final rendering. An answer counts as exact only if it came
    the way its target was started (rendered or plain) and was exact (bench/load.py).
    """
    orders = directives("md", streams, markdown=True, delay=delay)

    async def one(target: Target, process: Process) -> tuple[list[Received], float, float]:
        before = cpu_seconds(process)
        received, seconds = await run_many(target, orders, markdown_limit_s(delay), spread_s)
        return received, seconds, cpu_seconds(process) - before

    results = await asyncio.gather(
        *(one(target, process) for target, process, _ in targets.values())
    )
    return {
        name: markdown_figures(received, seconds, cpu, rendered)
        for (name, (_, _, rendered)), (received, seconds, cpu) in zip(
            targets.items(), results, strict=True
        )
    }


def markdown_figures(received: list[Received], seconds: float, cpu: float, rendered: bool) -> dict:
    final = final_rendering_bytes()
    answer_bytes = [stream.answer_bytes() for stream in received]
    # The same data with its SSE framing (event and id lines, one data line per
    # line of HTML), for context: what the page's connection really carries.
    event_bytes = [
        sum(
            len(block) + 2 for _, block in stream.blocks if block.startswith(b"event: answer_chunk")
        )
        for stream in received
    ]
    tokens = len(received) * len(markdown_tokens())
    return {
        "tokens_per_s": tokens / seconds,
        "cpu_us_per_token": cpu / tokens * 1e6,
        "cpu_share": cpu / seconds,
        "final_bytes": final,
        "answer_bytes": statistics.median(answer_bytes) if received else None,
        "bytes_ratio": statistics.median(answer_bytes) / final if received else None,
        "bytes_ratio_max": max(answer_bytes) / final if received else None,
        "event_bytes_ratio": statistics.median(event_bytes) / final if received else None,
        "chunks": statistics.median(len(s.answer_data()) for s in received) if received else None,
        "checked": len(received),
        "exact": sum(stream.ok() and stream.rendered() == rendered for stream in received),
    }

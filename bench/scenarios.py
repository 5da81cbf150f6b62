"""The benchmark's scenarios: each drives one target and returns its figures.

A *target* is something the load client talks to (bench/load.py): the app,
its FastAPI peer, or the bare fake upstream (the latency floor). A scenario
takes a target and its process (for CPU time and memory from /proc) and
returns a plain dict of figures; bench/run.py runs the scenarios, takes the
median of the runs and prints the table.

Every scenario checks every answer it reads (bench/protocol.py): ``checked``
is how many answers were read, ``exact`` how many were exactly what the
upstream sent, with nothing lost or repeated.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import statistics
import time
import urllib.request
from collections.abc import Sequence

from bench.load import NANOS, HeldStreams, Received, Target, round_trips, run_many, wait_until
from bench.procs import Process, cpu_seconds
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


def checked(received: Sequence[Received]) -> dict[str, int]:
    return {"checked": len(received), "exact": sum(stream.ok() for stream in received)}


def directives(prefix: str, count: int, **orders: object) -> list[Directive]:
    return [Directive(id=f"{prefix}-{n}", **orders) for n in range(count)]  # type: ignore[arg-type]


# --- S1: throughput -----------------------------------------------------------------------


async def throughput(target: Target, process: Process, streams: int, tokens: int) -> dict:
    """``streams`` prompts at once, ``tokens`` each, sent as fast as the upstream can."""
    before = process.cpu_seconds()
    received, seconds = await run_many(
        target, directives("s1", streams, tokens=tokens), STREAM_LIMIT_S
    )
    cpu = process.cpu_seconds() - before
    total = streams * tokens
    return {
        "tokens_per_s": total / seconds,
        "cpu_us_per_token": cpu / total * 1e6,
        "cpu_share": cpu / seconds,  # 1.0 = one core busy all the time
        **checked(received),
    }


# --- S2: relay latency --------------------------------------------------------------------


async def latency(target: Target, streams: int, tokens: int, delay: float, spread_s: float) -> dict:
    """Paced streams with stamped tokens: upstream send → client read, per token.

    The starts are spread over ``spread_s``: a hundred prompts sent in the
    same millisecond would also end in the same millisecond, and the p99
    would measure that one burst of setup and final answers, not the relay.
    """
    orders = directives("s2", streams, tokens=tokens, delay=delay, stamp=True)
    received, _ = await run_many(target, orders, STREAM_LIMIT_S, spread_s)
    latencies = [ns for stream in received for ns in stream.latencies_ns()]
    first_events = [ns for stream in received if (ns := stream.first_event_ns()) is not None]
    return {
        "p50_ms": milliseconds(latencies, 0.50),
        "p99_ms": milliseconds(latencies, 0.99),
        "first_event_p99_ms": milliseconds(first_events, 0.99),
        **checked(received),
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
    target: Target, process: Process, streams: int, hold_s: float, ramp_s: float, upstream: Process
) -> dict:
    """Open ``streams`` streams at one token a second and keep them for ``hold_s``.

    Opening may take ``ramp_s`` at most; a stream not open by then is not
    held. Memory per stream is the relay's resident memory while holding,
    less what it used before the first stream, divided by the streams held.
    Latency is every token read during the hold. The CPU shares of the fake
    upstream and of this client show whether the machine, not the relay,
    was the limit. Then everyone leaves at once, which also gives the
    upstream-release figure at this size.
    """
    upstream_target = Target(upstream.name, upstream.base, direct=True)
    await reset_upstream(upstream_target)
    memory_before = process.rss_bytes()
    held = HeldStreams(target, OPEN_LIMIT_S)
    orders = directives(f"s3-{streams}", streams, tokens=ENDLESS_TOKENS, delay=1.0, stamp=True)
    opening_started = time.monotonic()
    await held.open(orders, deadline=opening_started + ramp_s)
    opening_s = time.monotonic() - opening_started
    # Let every stream that opened show a token before the window starts.
    await asyncio.sleep(HELD_RECENT_S)
    window_start = time.monotonic_ns()
    cpu_before = [process.cpu_seconds(), upstream.cpu_seconds(), cpu_seconds(os.getpid())]
    await asyncio.sleep(hold_s)
    window_end = time.monotonic_ns()
    cpu_after = [process.cpu_seconds(), upstream.cpu_seconds(), cpu_seconds(os.getpid())]
    relay_cpu, upstream_cpu, client_cpu = (
        (after - before) / hold_s for before, after in zip(cpu_before, cpu_after, strict=True)
    )
    memory = process.rss_bytes() - memory_before
    alive = held.with_token_since(window_end - int(HELD_RECENT_S * NANOS))
    latencies = [ns for stream in alive for ns in stream.latencies_ns(window_start, window_end)]
    await held.drop_all()
    freed = await released(upstream_target, held.streams)
    failures = sorted({stream.failure for stream in held.streams if stream.failure})
    return {
        "streams": streams,
        "held": len(alive),
        "opened": sum(stream.failure is None for stream in held.streams),
        "opening_s": opening_s,
        "kb_per_stream": memory / max(1, len(alive)) / 1024,
        "p50_ms": milliseconds(latencies, 0.50),
        "p99_ms": milliseconds(latencies, 0.99),
        "cpu_share": relay_cpu,
        "upstream_cpu_share": upstream_cpu,
        "client_cpu_share": client_cpu,
        "release_p99_ms": freed["p99_ms"],
        "not_released": freed["missing"],
        "failures": failures[:5],
        "checked": len(alive),
        "exact": sum(stream.exact(whole=False) for stream in alive),
    }


async def release(target: Target, streams: int, delay: float, upstream: Target) -> dict:
    """``streams`` streams, each read until it shows answer text; then all clients leave.

    The figure is, per request, the upstream's "my client closed" time less
    the load client's "I closed" time: how long the relay kept the model
    generating for nobody.
    """
    await reset_upstream(upstream)
    held = HeldStreams(target, OPEN_LIMIT_S)
    orders = directives(f"rel-{streams}", streams, tokens=ENDLESS_TOKENS, delay=delay)
    await held.open(orders, deadline=time.monotonic() + OPEN_LIMIT_S + streams / 100)

    async def all_answering() -> bool:
        return all(stream.failure or stream.chunks() for stream in held.streams)

    await wait_until(all_answering, FIRST_TOKEN_LIMIT_S, POLL_S)
    answering = [stream for stream in held.streams if stream.failure is None and stream.chunks()]
    await held.drop_all()
    figures = await released(upstream, answering)
    return {
        **figures,
        "checked": len(answering),
        "exact": sum(stream.exact(whole=False) for stream in answering),
        "failed": streams - len(answering),
    }


async def released(upstream: Target, dropped: Sequence[Received]) -> dict:
    """Wait for the upstream to see each dropped request closed; the delays."""
    dropped = [stream for stream in dropped if stream.dropped_ns is not None]
    wanted = {stream.directive.id for stream in dropped}
    records: dict[str, int] = {}

    async def all_released() -> bool:
        records.update(await upstream_stats(upstream))
        return wanted <= records.keys()

    await wait_until(all_released, RELEASE_LIMIT_S, POLL_S)
    delays = [
        records[stream.directive.id] - stream.dropped_ns
        for stream in dropped
        if stream.directive.id in records
    ]
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


async def prompt_round_trips(target: Target, workers: int, seconds: float) -> dict:
    """POST + GET + one token + close, in ``workers`` loops, for ``seconds``."""
    started = time.perf_counter()
    exact, failed = await round_trips(
        target, workers, seconds, Directive(id="s4", tokens=1), STREAM_LIMIT_S
    )
    elapsed = time.perf_counter() - started
    return {"round_trips_per_s": exact / elapsed, "checked": exact + failed, "exact": exact}


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

    Per target: its CPU per token (its own /proc figure, from its first prompt to
    its last stream's end) and, per answer, the bytes of its ``answer_chunk`` data
    over those of the final rendering. An answer counts as exact only if it came
    the way its target was started (rendered or plain) and was exact (bench/load.py).
    """
    orders = directives("md", streams, markdown=True, delay=delay)

    async def one(target: Target, process: Process) -> tuple[list[Received], float, float]:
        before = process.cpu_seconds()
        received, seconds = await run_many(target, orders, markdown_limit_s(delay), spread_s)
        return received, seconds, process.cpu_seconds() - before

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

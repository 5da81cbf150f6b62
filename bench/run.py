"""The relay benchmark: one command, every process on 127.0.0.1, one table.

    python bench/run.py            # the full run, about 13.5 minutes (the bench/README.md table)
    python bench/run.py --quick    # a smaller run, once each: about 4 minutes
    python bench/run.py --json out.json   # also keep every figure of every run
    python bench/run.py --logs DIR        # and keep the servers' logs
    python bench/run.py --only markdown   # one section alone (its rows of the table)

It starts, each in its own process: the fake OpenAI-compatible model server
(bench/upstream.py), the app (``server.py --provider openai``) with its limits
raised, the same app with ``--answer-window 0``, and two minimal relays for
comparison (``PEERS``, bench/peers.py): aiohttp + aiohttp-sse, the app's own
stack (bench/peer_aiohttp.py), and FastAPI + sse-starlette
(bench/peer_fastapi.py). The load client (bench/load.py) runs in this
process. The scenarios (bench/scenarios.py):

- S1 throughput: 50 prompts at once, 500 tokens each, no delay; tokens/s and
  the relay's CPU time per token.
- S2 latency: 100 prompts at once (started over 1 s), 200 tokens 20 ms apart; upstream send →
  client read per token, p50/p99, and the time to the first event; with
  coalescing off, with the default window, and straight from the upstream
  (the floor: what the machine and the client cost without any relay); each
  relay's CPU time per token (the app's with coalescing off against the
  aiohttp-sse peer's).
- First answer text: a handful of untagged answers through the app with its
  default reasoning hold (a fresh process); upstream send of the first token →
  the client reading the first event that shows it.
- S3 held streams: 100 to 10,000 streams at one token a second, held open;
  how many stay alive, CPU per token and memory per stream at each size (the
  scale: flat is the goal), latency (a fresh app each size; each peer at
  1,000, on a fresh process too).
- S4 prompt round trips: POST + GET + one token + close, 20 loops at once;
  round trips/s and CPU per round trip.
- Upstream release: many streams, then every client leaves at once; how
  long until the upstream sees each request closed (grace period 0), against
  the floor (the client leaving the upstream itself).
- Browser: swaps per second on the real page for a 1,000 tokens/s model.
- Markdown: a realistic 4,000-token Markdown answer (bench/markdown_answer.md)
  through fresh apps: the bytes of its rendered ``answer_chunk`` data against
  its final rendering (default window at a model's pace, and window 0), and
  the app's CPU per token rendering while it streams against the same app with
  ``--plain-stream``, both at once (same moment, same load), at a model's pace
  and at full speed.
- Redis (``--only redis``): the app on a Redis of its own, one worker and
  ``--workers 2``, beside the in-memory app: S1, S2, S4, the release, Stop
  on another process, first GETs at once, held streams (one worker at 1,000
  and 5,000, two at 10,000, a fresh Redis each).

S1, S2, S4 and release run ``runs`` times, the targets taking turns within
each run (so a slow moment of the machine hits all of them), and the table
shows the medians. Every answer read is checked token by token.

Everything stops by itself: each scenario is bounded, the whole run has a
time limit, and the servers die with this process (bench/procs.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import browser, scenarios, table  # noqa: E402
from bench.load import OPENING_AT_ONCE, Target, collector_paused, run_many  # noqa: E402
from bench.procs import (  # noqa: E402
    READY_LIMIT_S,
    READY_POLL_S,
    OtherLoad,
    Process,
    RedisServer,
    free_port,
    raise_open_file_limit,
)
from bench.protocol import Directive, markdown_answer, markdown_tokens  # noqa: E402

#: The app with every limit out of the way: the benchmark is one client IP
#: sending thousands of prompts a minute. Grace 0: a stream whose browser
#: left is let go at once (the upstream-release figure).
LIMITS_LIFTED = [
    "--provider", "openai", "--model", "bench",
    # Every per-client limit lifted (each must stay below its global one):
    # the load comes from one address.
    "--max-streams", "1000000", "--max-streams-per-client", "999999",
    "--prompts-per-minute", "1000000000", "--max-pending", "1000000",
    "--max-pending-per-client", "999999", "--max-requests-per-client", "1000000",
    "--grace-period", "0",
    # The Markdown answer is 15,000 characters; endless held streams grow too.
    "--max-answer-chars", "10000000",
]  # fmt: skip
#: Reasoning hold 0, for every app but the first-text one: the fake model's
#: answers are untagged, and the default hold keeps the first second of each
#: out of the answer box in case a </think> follows (a product choice, not a
#: relay cost).
APP_FLAGS = [*LIMITS_LIFTED, "--reasoning-hold", "0"]
DEFAULT_WINDOW = None  # the app's own --answer-window default
WARM_UP_STREAMS = 20  # first requests compile templates, fill caches: not measured
WARM_UP_TOKENS = 20
BROWSER_TOKENS_PER_S = 1000
#: S2's prompts start over this many seconds, not all in one millisecond.
S2_SPREAD_S = 1.0
MD_WARM_UP_STREAMS = 4
#: The two yardstick relays (bench/peers.py), by their names in the figures: the
#: module each runs.
PEERS = {"aiohttp": "bench.peer_aiohttp", "peer": "bench.peer_fastapi"}
#: The sections ``--only`` can pick, in the order of a whole run.
SECTIONS = ("s1", "s2", "first-text", "s4", "release", "browser", "markdown", "s3", "redis")
#: Held streams on a Redis app open this many at a time (64 elsewhere): from 32
#: first GETs at once, one worker's claims take every connection of its Redis
#: pool and wait for a second one, and the GETs are refused after 5 s (see
#: bench/README.md, "Redis"). The in-memory app's rows beside them open alike.
REDIS_OPENING_AT_ONCE = 16
#: Conversations kept, for the Redis held streams: past --max-conversations each
#: prompt reads every streaming conversation's keys (bench/README.md, "Redis").
MANY_CONVERSATIONS = ["--max-conversations", "1000000"]
#: The first GETs of a burst, all at once on one process.
BURST_GETS = 64
#: Lines the Redis apps' logs are searched for, by the name of the figure.
STORE_WARNINGS = {
    # Said by a worker that found no heartbeat of the worker producing an answer.
    "ended_as_orphans": "its worker stopped; ended it",
    # A request or background loop found every connection of the Redis pool taken.
    "no_connection": "No connection available",
    # An answer's end could not be written into its conversation.
    "not_kept": "its answer could not be kept",
}
#: Before looking for Redis keys without an expiry: the app's last writes land.
STORE_SETTLE_S = 1.0
#: The Stop button: its answers' pace, and how many stops, spread over how long.
STOP_DELAY = 0.5
STOP_STREAMS = 100
STOP_SPREAD_S = 1.0


@dataclass(frozen=True)
class Plan:
    """How big each scenario is, and how often it runs."""

    runs: int
    s1_streams: int
    s1_tokens: int
    s2_streams: int
    s2_tokens: int
    s2_delay: float
    s3_sizes: tuple[int, ...]  # held streams on the app, a fresh one each size
    s3_peer_size: int  # held streams on each peer too (a fresh one each), at this size
    s3_ramp_s: float  # opening the held streams may take this long, at most
    s3_hold_s: float
    s4_workers: int
    s4_seconds: float
    release_sizes: tuple[int, ...]
    release_delay: float
    browser_seconds: float
    first_text_streams: int
    first_text_tokens: int
    first_text_delay: float  # tokens x delay: longer than the app's reasoning hold
    md_streams: int  # the Markdown answer, this many at once on each app
    md_delay: float  # seconds per token: a model's pace (4,036 tokens: 81 s at 20 ms)
    md_w0_streams: int  # for the bytes with --answer-window 0, at full speed
    redis_release_size: int  # upstream release through Redis, this many streams
    redis_s3_1w_sizes: tuple[int, ...]  # held streams on one worker on Redis, fresh each
    redis_s3_size: int  # held streams on --workers 2 with Redis
    redis_s3_ramp_s: float  # opening held streams on Redis may take this long, at most
    limit_s: float  # the whole run, at most


FULL = Plan(
    runs=3,
    s1_streams=50,
    s1_tokens=500,
    s2_streams=100,
    s2_tokens=200,
    s2_delay=0.02,
    # The scale (100, 1,000, 5,000: flat per-stream costs are the goal), and
    # 10,000, past this machine's open-file limit for one process (README).
    s3_sizes=(100, 1000, 5000, 10000),
    s3_peer_size=1000,
    s3_ramp_s=40.0,
    s3_hold_s=5.0,
    s4_workers=20,
    s4_seconds=3.0,
    release_sizes=(100, 1000),
    release_delay=0.5,
    browser_seconds=3.0,
    first_text_streams=8,
    first_text_tokens=15,
    first_text_delay=0.1,
    md_streams=20,
    md_delay=0.02,
    md_w0_streams=5,
    redis_release_size=1000,
    redis_s3_1w_sizes=(1000, 5000),
    redis_s3_size=10000,
    redis_s3_ramp_s=120.0,
    limit_s=1800.0,
)
#: The same scenarios, smaller and once each: about 4 minutes (2 for --only redis).
QUICK = replace(
    FULL,
    runs=1,
    s2_tokens=100,
    s3_sizes=(100, 1000, 2000),
    s3_ramp_s=15.0,
    s3_hold_s=2.0,
    s4_seconds=2.0,
    browser_seconds=2.0,
    md_delay=0.01,  # 100 tokens/s (a fast hosted model): the answer in 40 s
    redis_s3_1w_sizes=(1000, 2000),
    redis_s3_size=1000,
    redis_s3_ramp_s=20.0,
    limit_s=600.0,
)


class Servers:
    """The processes of one benchmark run, stopped together."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: list[Process] = []
        self.upstream = self._start("upstream", ["-m", "bench.upstream"])
        self.upstream_target = Target("floor", self.upstream.base, direct=True)

    def _start(self, name: str, args: list[str], path: str = "/healthz") -> Process:
        port = free_port()
        process = Process(name, [*args, "--port", str(port)], port, self.log_dir)
        self.running.append(process)
        process.wait_ready(path)
        return process

    def app(
        self,
        name: str,
        window: float | None = DEFAULT_WINDOW,
        hold: bool = False,
        plain: bool = False,
        store: RedisServer | None = None,
        prefix: str | None = None,
        workers: int = 1,
        more: Sequence[str] = (),
        tree: Path = ROOT,
    ) -> Process:
        """The app; ``hold``: with its default reasoning hold (see ``APP_FLAGS``);
        ``plain``: the answer streamed as text (``--plain-stream``), not rendered;
        ``store``: on that Redis, its keys under ``prefix`` (the name unless told),
        with ``workers`` worker processes; ``more``: other flags; ``tree``: the
        checkout whose server.py runs (bench/compare.py runs another version)."""
        window_flags = [] if window is None else ["--answer-window", str(window)]
        flags = LIMITS_LIFTED if hold else APP_FLAGS
        base_url = ["--base-url", f"{self.upstream.base}/v1"]
        plain_flag = ["--plain-stream"] if plain else []
        shared = []
        if store is not None:
            shared = ["--redis-url", store.url, "--redis-prefix", prefix or name]
            shared += ["--workers", str(workers)]
        args = [*flags, *base_url, *window_flags, *plain_flag, *shared, *more]
        process = self._start(name, [str(tree / "server.py"), *args])
        wait_for_workers(process, workers)
        return process

    def redis(self, name: str) -> RedisServer:
        """A redis-server of this run's own, on a free loopback port."""
        store = RedisServer(name, free_port(), self.log_dir)
        self.running.append(store)
        store.wait_ready()
        return store

    def peer(self, name: str, kind: str) -> Process:
        """A yardstick relay, named ``name``: ``kind`` is its key in ``PEERS``."""
        args = ["-m", PEERS[kind], "--base-url", f"{self.upstream.base}/v1"]
        return self._start(name, args)

    def stop(self, process: Process) -> None:
        process.stop()
        self.running.remove(process)

    def stop_all(self) -> None:
        for process in reversed(self.running):
            process.stop()
        self.running.clear()


def wait_for_workers(process: Process, workers: int) -> None:
    """With ``--workers N``, until gunicorn has forked all N (its first already answers)."""
    if workers == 1:
        return
    deadline = time.monotonic() + READY_LIMIT_S
    while len(process.workers()) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{process.name}: {workers} workers did not start")
        time.sleep(READY_POLL_S)


def store_warnings(apps: Iterable[Process]) -> dict[str, int]:
    """Each of ``STORE_WARNINGS``: how many lines of these apps' logs say it."""
    apps = list(apps)
    return {name: sum(app.log_lines(text) for app in apps) for name, text in STORE_WARNINGS.items()}


def target(process: Process) -> Target:
    return Target(process.name, process.base)


async def warm_up(process: Process) -> None:
    orders = [Directive(id="warm", tokens=WARM_UP_TOKENS) for _ in range(WARM_UP_STREAMS)]
    await run_many(target(process), orders, scenarios.STREAM_LIMIT_S)


async def warm_up_markdown(process: Process) -> None:
    """A few Markdown answers at full speed: the renderer's and Pygments' lexers load."""
    orders = [Directive(id="warm-md", markdown=True) for _ in range(MD_WARM_UP_STREAMS)]
    await run_many(target(process), orders, scenarios.STREAM_LIMIT_S)


async def interleaved(
    runs: int, names: Sequence[str], scenario: Callable[[str], Awaitable[dict]]
) -> dict[str, list[dict]]:
    """Run ``scenario`` for each name, ``runs`` times, taking turns; every run's figures."""
    results: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(runs):
        for name in names:
            with collector_paused():
                results[name].append(await scenario(name))
    return results


def median(runs: list[dict]) -> dict:
    """The median of each figure over the runs; answers checked, exact and timed, summed."""
    merged: dict = {}
    for key, value in runs[0].items():
        values = [run[key] for run in runs]
        if key in ("checked", "exact", "timed"):
            merged[key] = sum(values)
        elif isinstance(value, int | float) and None not in values:
            merged[key] = statistics.median(values)
        else:
            merged[key] = value
    return merged


class Bench:
    """One benchmark run: its servers, its figures, and how busy the machine was."""

    def __init__(self, plan: Plan, servers: Servers, only: Sequence[str] = SECTIONS) -> None:
        self.plan = plan
        self.servers = servers
        self.only = only
        self.figures: dict = {"plan": asdict(plan), "other_load": {}}
        self.processes: dict[str, Process] = {}
        self.targets: dict[str, Target] = {"floor": servers.upstream_target}
        self.store: RedisServer | None = None  # the Redis of the Redis rows, while they run
        self.redis_apps: dict[str, Process] = {}
        self._started = time.monotonic()

    async def run(self) -> dict:
        only = self.only
        if {"s1", "s2", "s4", "release", "browser", "redis"} & set(only):
            await self.start_relays()
        if "s1" in only:
            await self.section("s1", ["app", "app-w0", "aiohttp", "peer"], self.s1)
        if "s2" in only:
            await self.section("s2", ["floor", "app-w0", "app", "aiohttp", "peer"], self.s2)
        if "first-text" in only:
            await self.first_text()
        if "s4" in only:
            await self.section("s4", ["floor", "app", "aiohttp", "peer"], self.s4)
        for size in self.plan.release_sizes if "release" in only else ():
            names = ["floor", "app", "aiohttp", "peer"]
            await self.section(f"release-{size}", names, self.release(size))
        if "browser" in only:
            await self.browser()
        if "redis" in only:
            await self.redis()
        for process in self.processes.values():
            self.servers.stop(process)
        if "markdown" in only:
            await self.markdown()
        for size in self.plan.s3_sizes if "s3" in only else ():
            await self.s3(size)
            if size == self.plan.s3_peer_size:  # beside the app's, at the same moment
                for name in PEERS:
                    await self.s3(size, name)
        if "redis" in only:
            for size in self.plan.redis_s3_1w_sizes:
                await self.redis_held(size, workers=1)
            await self.redis_held(self.plan.redis_s3_size, workers=2)
        return self.figures

    async def start_relays(self) -> None:
        self.processes = {
            "app": self.servers.app("app"),
            "app-w0": self.servers.app("app-w0", window=0),
            **{name: self.servers.peer(name, name) for name in PEERS},
        }
        for name, process in self.processes.items():
            self.targets[name] = target(process)
            await warm_up(process)

    async def section(
        self, key: str, names: Sequence[str], scenario: Callable[[str], Awaitable[dict]]
    ) -> None:
        """Run a scenario on each target, interleaved; keep every run and the medians."""
        self.progress(key)
        load = OtherLoad()
        runs = await interleaved(self.plan.runs, names, scenario)
        self.figures["other_load"][key] = load.share()
        self.figures[key] = {name: median(results) for name, results in runs.items()}
        self.figures[key + "-runs"] = runs

    async def s1(self, name: str) -> dict:
        plan = self.plan
        process = self.processes[name]
        return await scenarios.throughput(
            self.targets[name], process, plan.s1_streams, plan.s1_tokens
        )

    def process(self, name: str) -> Process:
        """The process behind a target: for the floor, the fake upstream."""
        if name == "floor":
            return self.servers.upstream
        return self.processes.get(name) or self.redis_apps[name]

    async def s2(self, name: str) -> dict:
        plan = self.plan
        return await scenarios.latency(
            self.targets[name], self.process(name),
            plan.s2_streams, plan.s2_tokens, plan.s2_delay, S2_SPREAD_S,
        )  # fmt: skip

    async def first_text(self) -> None:
        """The app as shipped, its reasoning hold on, on a fresh process of its own."""
        process = self.servers.app("app-hold", hold=True)
        try:
            await warm_up(process)
            self.targets["app-hold"] = target(process)
            await self.section("first-text", ["app-hold"], self.first_text_run)
        finally:
            self.servers.stop(process)

    async def first_text_run(self, name: str) -> dict:
        plan = self.plan
        return await scenarios.first_text(
            self.targets[name],
            plan.first_text_streams,
            plan.first_text_tokens,
            plan.first_text_delay,
            S2_SPREAD_S,
        )

    async def s4(self, name: str) -> dict:
        plan = self.plan
        return await scenarios.prompt_round_trips(
            self.targets[name], self.process(name), plan.s4_workers, plan.s4_seconds
        )

    def release(self, size: int) -> Callable[[str], Awaitable[dict]]:
        async def scenario(name: str) -> dict:
            return await scenarios.release(
                self.targets[name], size, self.plan.release_delay, self.servers.upstream_target
            )

        return scenario

    async def browser(self) -> None:
        self.progress("browser")
        apps = {name: self.processes[name].base for name in ("app", "app-w0")}
        pages = await browser.swap_rates(apps, BROWSER_TOKENS_PER_S, self.plan.browser_seconds)
        self.figures["other_load"]["browser"] = pages.pop("other_load")
        self.figures["browser"] = {"tokens_per_s": BROWSER_TOKENS_PER_S, **pages}

    async def markdown(self) -> None:
        """The Markdown answer on fresh apps: rendered (default window, and window
        0) and ``--plain-stream``. Each run: the rendered and the plain app at a
        model's pace at the same time, then at full speed taking turns, then window
        0 at full speed (each token goes to the renderer alone whatever the
        pace: the relay takes the upstream's events one by one). Each run's CPU
        ratio, rendered over plain, is taken within the run; the table shows the
        medians."""
        self.progress("markdown")
        plan, servers = self.plan, self.servers
        apps = {
            "md": servers.app("app-md"),
            "md-plain": servers.app("app-md-plain", plain=True),
            "md-w0": servers.app("app-md-w0", window=0),
        }
        rendered = {"md": True, "md-plain": False, "md-w0": True}
        runs: dict[str, list[dict]] = {"paced": [], "fast": [], "w0": []}

        def targets(*names: str) -> dict[str, tuple[Target, Process, bool]]:
            return {name: (target(apps[name]), apps[name], rendered[name]) for name in names}

        try:
            for process in apps.values():
                await warm_up(process)
                await warm_up_markdown(process)
            load = OtherLoad()
            for _ in range(plan.runs):
                with collector_paused():
                    paced = await scenarios.markdown_answers(
                        targets("md", "md-plain"), plan.md_streams, plan.md_delay, S2_SPREAD_S
                    )
                # Full speed, taking turns (at once, each would slow the other's
                # reads down and change what a read holds): A, B, B, A, so that a
                # machine getting busier or quieter meanwhile weighs on both alike.
                turns: dict[str, list[dict]] = {"md": [], "md-plain": []}
                for name in ("md", "md-plain", "md-plain", "md"):
                    with collector_paused():
                        turns[name] += (
                            await scenarios.markdown_answers(
                                targets(name), plan.md_streams, 0.0, 0.0
                            )
                        ).values()
                # Of two turns the median is the mean; their answers are summed.
                fast = {name: median(figures) for name, figures in turns.items()}
                with collector_paused():
                    w0 = await scenarios.markdown_answers(
                        targets("md-w0"), plan.md_w0_streams, 0.0, 0.0
                    )
                for figures in (paced, fast):
                    figures["md"]["cpu_vs_plain"] = (
                        figures["md"]["cpu_us_per_token"] / figures["md-plain"]["cpu_us_per_token"]
                    )
                runs["paced"].append(paced)
                runs["fast"].append(fast)
                runs["w0"].append(w0)
            self.figures["other_load"]["markdown"] = load.share()
        finally:
            for process in apps.values():
                servers.stop(process)
        self.figures["markdown"] = {
            "tokens": len(markdown_tokens()),
            "chars": len(markdown_answer()),
            **{
                kind: {name: median([run[name] for run in every]) for name in every[0]}
                for kind, every in runs.items()
            },
        }
        for kind, every in runs.items():  # the target: the largest ratio of any run
            for name, figures in self.figures["markdown"][kind].items():
                figures["bytes_ratio_max"] = max(run[name]["bytes_ratio_max"] for run in every)
        self.figures["markdown-runs"] = runs

    async def s3(self, size: int, name: str = "app") -> None:
        """Held streams, on a fresh process: the app, or a peer (``PEERS``); its
        memory before is its own alone. Figures: ``s3-SIZE``, ``s3-PEER-SIZE``."""
        key = f"s3-{size}" if name == "app" else f"s3-{name}-{size}"
        self.progress(key)
        servers = self.servers
        fresh = servers.app(f"app-{key}") if name == "app" else servers.peer(key, name)
        try:
            await warm_up(fresh)
            await self.hold(key, fresh, size, self.plan.s3_ramp_s)
        finally:
            servers.stop(fresh)

    async def hold(
        self,
        key: str,
        process: Process,
        size: int,
        ramp_s: float,
        at_once: int = OPENING_AT_ONCE,
        store: RedisServer | None = None,
    ) -> None:
        """``size`` streams held on ``process`` (scenarios.hold), figures under ``key``."""
        load = OtherLoad()
        with collector_paused():
            self.figures[key] = await scenarios.hold(
                target(process), process, size, self.plan.s3_hold_s, ramp_s,
                self.servers.upstream, at_once, store,
            )  # fmt: skip
        self.figures["other_load"][key] = load.share()

    async def redis(self) -> None:
        """The app on a shared Redis, each scenario taking turns with the in-memory
        app of this run: S1 on one worker and on ``--workers 2``; S2 on one worker,
        and across two processes (A makes the answer, B reads it from Redis); S4
        on one worker; upstream release (with its floor); Stop pressed on B for
        answers made on A; a burst of first GETs."""
        servers, size = self.servers, self.plan.redis_release_size
        store = servers.redis("redis")
        self.store = store
        self.redis_apps = {
            "redis-1w": servers.app("redis-1w", store=store),
            "redis-1w-w0": servers.app("redis-1w-w0", window=0, store=store),
            "redis-2w": servers.app("redis-2w", store=store, workers=2),
            "redis-a": servers.app("redis-a", window=0, store=store, prefix="redis-ab"),
            "redis-b": servers.app("redis-b", window=0, store=store, prefix="redis-ab"),
        }
        try:
            for name, process in self.redis_apps.items():
                self.targets[name] = target(process)
                await warm_up(process)
            await warm_up(self.redis_apps["redis-2w"])  # its second worker too, most likely
            await self.section("redis-s1", ["app", "redis-1w", "redis-2w"], self.redis_s1)
            await self.section("redis-s2", ["app-w0", "redis-1w-w0", "redis-ab"], self.redis_s2)
            await self.section("redis-s4", ["app", "redis-1w"], self.redis_s4)
            names = ["floor", "app", "redis-1w", "redis-2w"]
            await self.section(f"redis-release-{size}", names, self.redis_release)
            await self.section("redis-stop", ["app", "redis-ab"], self.redis_stop)
            await self.section("redis-burst", ["app", "redis-1w"], self.redis_burst)
            await asyncio.sleep(STORE_SETTLE_S)
            self.figures["redis-keys"] = store.keys_without_expiry()
            self.figures["redis-log"] = store_warnings(self.redis_apps.values())
        finally:
            for process in reversed(self.redis_apps.values()):
                servers.stop(process)
            servers.stop(store)

    async def redis_s1(self, name: str) -> dict:
        """S1; on a Redis app, Redis's CPU too."""
        plan = self.plan
        on_redis = name in self.redis_apps
        process = self.redis_apps[name] if on_redis else self.processes[name]
        return await scenarios.throughput(
            self.targets[name], process, plan.s1_streams, plan.s1_tokens,
            self.store if on_redis else None,
        )  # fmt: skip

    async def redis_s2(self, name: str) -> dict:
        """S2; ``redis-ab``: made on A, read on A and on B. On a Redis app, Redis's
        CPU too."""
        plan = self.plan
        streams, tokens, delay = plan.s2_streams, plan.s2_tokens, plan.s2_delay
        if name == "redis-ab":
            a, b = self.targets["redis-a"], self.targets["redis-b"]
            return await scenarios.latency_elsewhere(a, b, streams, tokens, delay, S2_SPREAD_S)
        store = self.store if name in self.redis_apps else None
        return await scenarios.latency(
            self.targets[name], self.process(name), streams, tokens, delay, S2_SPREAD_S, store
        )

    async def redis_s4(self, name: str) -> dict:
        """S4; on a Redis app, Redis's CPU too."""
        plan = self.plan
        store = self.store if name in self.redis_apps else None
        return await scenarios.prompt_round_trips(
            self.targets[name], self.process(name), plan.s4_workers, plan.s4_seconds, store
        )

    async def redis_release(self, name: str) -> dict:
        plan = self.plan
        return await scenarios.release(
            self.targets[name], plan.redis_release_size, plan.release_delay,
            self.servers.upstream_target, REDIS_OPENING_AT_ONCE,
        )  # fmt: skip

    async def redis_stop(self, name: str) -> dict:
        """Stop pressed on the process making the answer; ``redis-ab``: made on A,
        stopped on B."""
        if name == "redis-ab":
            producer, stopper = self.targets["redis-a"], self.targets["redis-b"]
        else:
            producer = stopper = self.targets[name]
        return await scenarios.stopped_elsewhere(
            producer, stopper, STOP_STREAMS, STOP_DELAY, self.servers.upstream_target,
            STOP_SPREAD_S, REDIS_OPENING_AT_ONCE,
        )  # fmt: skip

    async def redis_burst(self, name: str) -> dict:
        return await scenarios.gets_at_once(self.targets[name], BURST_GETS)

    async def redis_held(self, size: int, workers: int) -> None:
        """Held streams on ``workers`` workers with a fresh Redis: the memory before
        is the app's and Redis's alone. Conversations kept: ``MANY_CONVERSATIONS``.
        Figures: ``redis-s3-SIZE`` (``--workers 2``), ``redis-1w-s3-SIZE``."""
        key = f"redis-s3-{size}" if workers == 2 else f"redis-{workers}w-s3-{size}"
        self.progress(key)
        servers = self.servers
        store = servers.redis(f"store-{key}")
        fresh = servers.app(f"app-{key}", store=store, workers=workers, more=MANY_CONVERSATIONS)
        try:
            await warm_up(fresh)
            ramp_s = self.plan.redis_s3_ramp_s
            await self.hold(key, fresh, size, ramp_s, REDIS_OPENING_AT_ONCE, store)
            await asyncio.sleep(STORE_SETTLE_S)
            self.figures[key]["keys_without_expiry"] = store.keys_without_expiry()
            self.figures[key]["log"] = store_warnings([fresh])
        finally:
            servers.stop(fresh)
            servers.stop(store)

    def progress(self, key: str) -> None:
        print(f"{time.monotonic() - self._started:6.1f} s  {key}", file=sys.stderr, flush=True)


async def bench(plan: Plan, log_dir: Path, only: Sequence[str]) -> dict:
    servers = Servers(log_dir)
    try:
        return await Bench(plan, servers, only).run()
    finally:
        servers.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    parser.add_argument("--json", type=Path, help="also write every figure of every run here")
    parser.add_argument("--logs", type=Path, help="keep the servers' logs in this folder")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only this section (again for more); its rows of the table",
    )
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    raise_open_file_limit()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as scratch:
        log_dir = args.logs or Path(scratch)
        log_dir.mkdir(parents=True, exist_ok=True)
        figures = asyncio.run(
            asyncio.wait_for(bench(plan, log_dir, args.only or SECTIONS), plan.limit_s)
        )
    figures["seconds"] = time.monotonic() - started
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    print(table.render(table.rows(figures)))
    exact, checked = table.answers_checked(figures)
    print(
        f"\n{'quick' if args.quick else 'full'} run: {plan.runs} run(s) per figure (median), "
        f"{figures['seconds']:.0f} s; {exact:,} of {checked:,} answers exact. "
        "busy else: the share of the machine's cores that other processes used meanwhile."
    )
    return 0 if exact == checked else 1


if __name__ == "__main__":
    sys.exit(main())

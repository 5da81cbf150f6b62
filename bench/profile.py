"""Where the app's CPU goes: py-spy on the app under S1, S3 and S4, summed up.

    pip install py-spy
    python bench/profile.py                      # s1, s3 and s4, 10 s each
    python bench/profile.py --only s3 --held 3000 --out /tmp/profiles

Each scenario gets a fresh app, run under bench/gc_probe.py (which times the
garbage collector, which a sampling profiler cannot see), and ``py-spy
record --nonblocking`` samples it while the load runs (the app is not
paused to be sampled). The raw stacks are kept in ``--out`` (open them with
any flame-graph tool); the summary puts each sample in one *category*: the
one of the innermost frame that belongs to a known part (JSON, escaping,
timers, socket writes, …). With the app's CPU time from /proc and the work
done (tokens, or round trips for S4), a category's share becomes
microseconds per token.

    s1  50 prompts of 500 tokens, no delay, over and over
    s2  100 prompts of 200 tokens 20 ms apart (a model's pace), started over
        1 s, over and over, through the app with ``--answer-window 0``: the
        per-token hand-off with coalescing off
    s3  ``--held`` streams at one token a second, held (only the holding is
        sampled, not the opening)
    s4  POST + GET + one token + close, 20 loops at once
    md        the Markdown answer (bench/markdown_answer.md), 20 at once, over
              and over: ``--md-delay`` seconds a token (0: full speed), the
              answer rendered while it streams (live_markdown.py)
    md-plain  the same with ``--plain-stream``: the difference is the rendering
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import scenarios  # noqa: E402
from bench.load import HeldStreams, Target, collector_paused, round_trips, run_many  # noqa: E402
from bench.procs import Process, free_port, raise_open_file_limit  # noqa: E402
from bench.protocol import Directive, markdown_tokens  # noqa: E402
from bench.run import APP_FLAGS, warm_up, warm_up_markdown  # noqa: E402

SAMPLES_PER_S = 200
SETTLE_S = 2.0  # after opening the held streams, before sampling
CENSUS_WAIT_S = 3.0  # for the heap census to be written
TOP_FUNCTIONS = 12
#: The app's flags of a scenario, past APP_FLAGS.
FLAGS = {"s2": ["--answer-window", "0"], "md-plain": ["--plain-stream"]}
#: A sample belongs to the category of its innermost frame that matches one
#: of these (first match in this order for that frame). Frames look like
#: "function (path/file.py:line)".
CATEGORIES = [
    ("JSON decoding", ("json/decoder.py", "json/__init__.py")),
    ("HTML escaping", ("html/__init__.py", "escape_text (server.py")),
    ("SSE frame building", ("format_event (server.py", "frames_after (server.py")),
    ("upstream SSE parsing", ("upstream_sse.py",)),
    ("think-tag splitting", ("think_tags.py",)),
    ("timers and timeouts", ("asyncio/timeouts.py", "TimerHandle", "call_at", "call_later",
                             "heapq", "_Clock.", "timeout_at")),
    ("asyncio Event/Lock", ("asyncio/locks.py", "Stream.changed (server.py")),
    ("futures and task wake-ups", ("create_future", "asyncio/tasks.py", "asyncio/futures.py",
                                   "_get_loop", "Handle.__init__", "Handle._run")),
    ("socket send (write syscall)", ("_SelectorSocketTransport.write",)),
    ("socket recv (read syscall)", ("_read_ready",)),
    ("aiohttp response writing", ("http_writer.py", "web_response.py")),
    ("aiohttp client reading", ("aiohttp/streams.py", "client_proto.py", "http_parser.py")),
    ("aiohttp client connect/request", ("connector.py", "aiohttp/client.py", "client_reqrep.py",
                                        "resolver.py")),
    ("aiohttp server request handling", ("web_protocol.py", "web_app.py", "web_middlewares.py",
                                         "web_request.py", "web_urldispatcher.py", "multipart.py",
                                         "helpers.py", "web_log.py")),
    # Markdown, live and final: the inclusive lines below tell the two apart.
    ("Pygments (code colours)", ("pygments/",)),
    ("markdown-it", ("markdown_it/",)),
    ("live_markdown.py, own lines", ("live_markdown.py",)),
    ("templates", ("jinja2", "aiohttp_jinja2")),
    ("logging", ("logging/",)),
    ("app: store and limits", ("Store.", "Stream.__init__")),
    ("app: relay, stream log, listeners", ("server.py",)),
    ("provider glue", ("providers/",)),
    ("event loop (epoll, scheduling)", ("selectors.py", "base_events.py", "selector_events.py")),
]  # fmt: skip
#: Functions whose inclusive share is worth a line of its own.
WATCHED = [
    "produce (server.py",
    "listen (server.py",
    "OpenAIProvider.stream (providers/openai.py",
    "_Translator.feed (providers/openai.py",
    "Relay.take (server.py",
    "Stream.append (server.py",
    "write (server.py",
    "format_event (server.py",
    "escape_text (server.py",
    "process_prompt (server.py",
    "render_final_answer (server.py",
    "log_stream (server.py",
    "LiveMarkdown.feed (live_markdown.py",
    "LiveMarkdown.finish (live_markdown.py",
    "LiveMarkdown._parse (live_markdown.py",
    "LiveMarkdown._show_paragraph_text (live_markdown.py",
    "LiveMarkdown._chunk (live_markdown.py",
    "LiveMarkdown._table_row (live_markdown.py",
    "LiveMarkdown._list_item (live_markdown.py",
    "LiveMarkdown._close_code (live_markdown.py",
    "shown_end (live_markdown.py",
    "PlainAnswer.feed (server.py",
    "answer_chunk_event (server.py",
]


def category(stack: list[str]) -> str:
    for frame in reversed(stack):
        for name, patterns in CATEGORIES:
            if any(pattern in frame for pattern in patterns):
                return name
    return "other"


def summarize(raw: Path, cpu_s: float, work: int, unit: str) -> str:
    """The categories, watched functions and hottest lines of a py-spy raw file."""
    by_category: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        stack, count = stack_text.split(";"), int(count_text)
        total += count
        by_category[category(stack)] += count
        own[stack[-1]] += count
        for watched in WATCHED:
            if any(frame.startswith(watched) for frame in stack):
                inclusive[watched] += count
    per_unit = cpu_s / work * 1e6 if work else 0.0
    lines = [
        f"{total} samples; app CPU {cpu_s:.2f} s for {work:,} {unit}: {per_unit:.1f} us/{unit}"
    ]

    def share(count: int) -> str:
        return f"{count / total:6.1%} {count / total * per_unit:7.1f} us"

    lines += ["", "category (innermost known frame)        share  per " + unit]
    lines += [f"  {name:38} {share(count)}" for name, count in by_category.most_common()]
    lines += ["", "inclusive (the function and all it calls)"]
    lines += [
        f"  {name.split(' (')[0]:38} {share(count)}" for name, count in inclusive.most_common()
    ]
    lines += ["", "hottest lines (own time)"]
    lines += [f"  {share(count)}  {frame}" for frame, count in own.most_common(TOP_FUNCTIONS)]
    return "\n".join(lines)


def gc_during(log: Path) -> str:
    """The collector's work between the two SIGUSR2 reports (bench/gc_probe.py)."""
    reports = [
        json.loads(line.split(" ", 1)[1])
        for line in log.read_text().splitlines()
        if line.startswith("GC_PROBE ")
    ]
    if len(reports) < 2:
        return "GC: no reports"
    start, end = reports[0], reports[1]
    counts = [b - a for a, b in zip(start["collections"], end["collections"], strict=True)]
    seconds = [b - a for a, b in zip(start["seconds"], end["seconds"], strict=True)]
    census = [line for line in log.read_text().splitlines() if line.startswith("GC_CENSUS")]
    return "\n".join(
        [
            f"GC while sampled: collections per generation {counts}, "
            f"{sum(seconds):.2f} s in all ({', '.join(f'{value:.2f}' for value in seconds)}); "
            f"longest pause per generation so far {end['longest_ms']} ms",
            *census,
        ]
    )


class Session:
    """A fake upstream, and a fresh app under the GC probe for each scenario."""

    def __init__(self, out: Path, seconds: float, server: Path, md_delay: float = 0.0) -> None:
        self.out = out
        self.seconds = seconds
        self.server = server
        self.md_delay = md_delay
        port = free_port()
        self.upstream = Process(
            "upstream", ["-m", "bench.upstream", "--port", str(port)], port, out
        )
        self.upstream.wait_ready()

    def app(self, name: str, *flags: str) -> Process:
        port = free_port()
        base_url = f"{self.upstream.base}/v1"
        args = ["-m", "bench.gc_probe", str(self.server), *APP_FLAGS, "--base-url", base_url]
        args += flags
        app = Process(name, [*args, "--port", str(port)], port, self.out)
        app.wait_ready()
        return app

    def spy(self, app: Process, name: str) -> tuple[subprocess.Popen, Path]:
        raw = self.out / f"{name}.txt"
        command = [
            "py-spy", "record", "--pid", str(app.pid), "--duration", str(int(self.seconds)),
            "--rate", str(SAMPLES_PER_S), "--format", "raw", "--nonblocking", "-o", str(raw),
        ]  # fmt: skip
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return spy, raw

    async def profile(self, name: str) -> str:
        app = self.app(f"app-{name}", *FLAGS.get(name, ()))
        try:
            await warm_up(app)
            if name.startswith("md"):
                await warm_up_markdown(app)
            spy, raw = self.spy(app, name)
            app.popen.send_signal(signal.SIGUSR2)  # the collector's figures, before
            before = app.cpu_seconds()
            with collector_paused():
                work, unit = await getattr(self, name.replace("-", "_"))(app)
            cpu = app.cpu_seconds() - before
            app.popen.send_signal(signal.SIGUSR2)  # and after
            await asyncio.to_thread(spy.wait)
        finally:
            app.stop()
        report = summarize(raw, cpu, work, unit)
        return "\n".join([f"== {name}", report, "", gc_during(app.log_path)])

    async def s1(self, app: Process) -> tuple[int, str]:
        orders = [Directive(id="p1", tokens=500) for _ in range(50)]
        deadline, tokens = time.monotonic() + self.seconds, 0
        while time.monotonic() < deadline:
            await run_many(Target(app.name, app.base), orders, scenarios.STREAM_LIMIT_S)
            tokens += 50 * 500
        return tokens, "token"

    async def s2(self, app: Process) -> tuple[int, str]:
        orders = [Directive(id="p2", tokens=200, delay=0.02, stamp=True) for _ in range(100)]
        deadline, tokens = time.monotonic() + self.seconds, 0
        while time.monotonic() < deadline:
            await run_many(Target(app.name, app.base), orders, scenarios.STREAM_LIMIT_S, 1.0)
            tokens += 100 * 200
        return tokens, "token"

    async def md(self, app: Process) -> tuple[int, str]:
        orders = [Directive(id="pmd", markdown=True, delay=self.md_delay) for _ in range(20)]
        limit = scenarios.markdown_limit_s(self.md_delay)
        deadline, tokens = time.monotonic() + self.seconds, 0
        while time.monotonic() < deadline:
            await run_many(Target(app.name, app.base), orders, limit, 1.0 if self.md_delay else 0)
            tokens += 20 * len(markdown_tokens())
        return tokens, "token"

    md_plain = md

    async def s4(self, app: Process) -> tuple[int, str]:
        one = Directive(id="p4", tokens=1)
        done, _ = await round_trips(Target(app.name, app.base), 20, self.seconds, one, 60)
        return done, "round trip"


async def hold(session: Session, held_count: int) -> str:
    """S3: open the streams first, then sample only while they are held."""
    app = session.app("app-s3")
    try:
        await warm_up(app)
        with collector_paused():
            held = HeldStreams(Target(app.name, app.base), scenarios.OPEN_LIMIT_S)
            orders = [
                Directive(id=f"p3-{n}", tokens=scenarios.ENDLESS_TOKENS, delay=1.0, stamp=True)
                for n in range(held_count)
            ]
            await held.open(
                orders, deadline=time.monotonic() + scenarios.OPEN_LIMIT_S + held_count / 50
            )
            await asyncio.sleep(SETTLE_S)
            spy, raw = session.spy(app, "s3")
            app.popen.send_signal(signal.SIGUSR2)
            before, start_ns = app.cpu_seconds(), time.monotonic_ns()
            await asyncio.sleep(session.seconds)
            cpu, end_ns = app.cpu_seconds() - before, time.monotonic_ns()
            app.popen.send_signal(signal.SIGUSR2)
            await asyncio.sleep(CENSUS_WAIT_S)
            app.popen.send_signal(signal.SIGUSR1)  # the heap census, while the streams are open
            await asyncio.sleep(CENSUS_WAIT_S)
            latencies = [
                ns for stream in held.streams for ns in stream.latencies_ns(start_ns, end_ns)
            ]
            await asyncio.to_thread(spy.wait)
            await held.drop_all()
    finally:
        app.stop()
    report = summarize(raw, cpu, len(latencies), "token")
    p50, p99 = (scenarios.milliseconds(latencies, q) for q in (0.5, 0.99))
    latency = f"latency while sampled: p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    title = f"== s3 ({held_count:,} streams held)"
    return "\n".join([title, report, "", latency, gc_during(app.log_path)])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", default="s1,s3,s4", help="comma-separated: s1, s2, s3, s4, md, md-plain"
    )
    parser.add_argument(
        "--md-delay", type=float, default=0.0, help="md: seconds per token (0: full speed)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="sampling time per scenario")
    parser.add_argument("--held", type=int, default=3000, help="streams held in s3")
    parser.add_argument("--out", type=Path, help="keep raw stacks and logs here")
    parser.add_argument(
        "--server",
        type=Path,
        default=ROOT / "server.py",
        help="the app to profile (a patched copy?)",
    )
    args = parser.parse_args()
    raise_open_file_limit()
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as scratch:
        out = args.out or Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        session = Session(out, args.seconds, args.server, args.md_delay)
        try:
            for name in args.only.split(","):
                report = await (hold(session, args.held) if name == "s3" else session.profile(name))
                print(report, "\n", flush=True)
        finally:
            session.upstream.stop()


if __name__ == "__main__":
    asyncio.run(main())

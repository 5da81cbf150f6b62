"""The hostile soak: honest users are still served while hostile clients attack.

``hostile_soak(plan)`` starts ``server.py`` (demo provider, ``--demo-delay
0.002``) on a free loopback port with its default limits, except the few that
``Plan`` shortens, and for ``plan.seconds`` runs all of these at once, each
kind from its own loopback addresses (every 127.x.y.z is this machine, and the
server counts its per-client limits by IP):

- honest:    users, one address each, sending prompts one after another (one
             every ``HONEST_INTERVAL_S``, within the default 30 a minute) and
             reading each answer to ``close``; the answer must be exactly the
             demo's, as in tests/soak.py;
- slow body: addresses each holding as many raw connections as they can, each a
             POST whose body never ends, a byte trickled now and then;
- silent:    connections that send nothing, or half a request line;
- pending flood: addresses posting prompts as fast as the server lets them
             (after a refusal, again when its Retry-After is over; sooner would
             only spend the address's prompts per minute) and never opening one;
- reconnect storm: addresses that post a prompt, open extra listeners on its
             live stream, read it to ``close``, then reconnect with
             Last-Event-ID to their own finished stream again and again;
- multipart: addresses posting a 990-part multipart body (refused with 415).

The honest users run in this process and the hostile clients in a child
process (``python -m tests.hostile_soak``), so that an honest prompt's times
are not spent waiting for the attackers' own CPU work.

The report has, for the honest users, prompts sent, answered exactly, refused
(by reason) and failed, and the time from the POST to the first event and to
``close``; for each hostile kind what it got (by status and reason) and how
long the server let its connections live; /healthz's peaks, the server's
memory (VmRSS) along the way, and /healthz once the server had a short while
to forget everything. ``Report.problems()`` says what keeps a run from showing
honest users served and a clean server. tests/test_hostile_soak.py runs a
short one in the suite; ``python bench/hostile_soak.py`` runs the full one.

Every loop ends at the deadline (a request under way gets a bounded time
more), every address is in 127.0.0.0/8, and every connection, the child
process and the server are closed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import os
import random
import re
import resource
import signal
import socket
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp

from tests.snippet import uid_from_snippet
from tests.soak import expected_answer, read_some, resident_kb, settle
from tests.sse_client import SSEEvent, parse_stream, shows_answer

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # the server listens here; /healthz is asked from here too

# Each kind of client has its own block of loopback addresses.
HONEST = "127.0.5.{}"
SLOW = "127.0.6.{}"
SILENT = "127.0.7.{}"
FLOOD = "127.0.8.{}"
STORM = "127.0.9.{}"
MULTIPART = "127.0.10.{}"
MAX_ADDRESSES = 250  # per kind: 127.x.y.1 to 127.x.y.250

DEMO_DELAY_S = 0.002  # the demo's pause per word: an answer takes about 0.4 s
# The server's defaults that the soak's timing depends on (python server.py --help).
SERVER_DEFAULTS = {"uid_ttl": 60.0, "request_timeout": 10.0, "grace_period": 5.0}
# The default --prompts-per-minute is 30, one every 2 s; an honest user stays under it.
HONEST_INTERVAL_S = 2.1
PROMPT_LIMIT_S = 20.0  # one honest prompt's whole life, at most
REQUEST_LIMIT_S = 10.0  # any other single request, at most
TRICKLE_S = 0.5  # a slow body sends one more byte this often
SLOW_BODY_BYTES = 1000  # the Content-Length a slow body announces (and never sends)
RECONNECT_PAUSE_S = 0.2  # a raw client's pause before it opens its next connection
EXTRA_LISTENERS = 4  # the storm's extra listeners on a live stream (the server takes 2)
MULTIPART_FIELDS = 990
LEFTOVERS = ("streams_in_flight", "uids_pending", "listeners", "streams_kept")
SAMPLE_S = 0.25  # the monitor's pace: memory, /healthz, the event loop's lag
START_LIMIT_S = 15.0  # the server and the hostile process must be ready by then
STOP_LIMIT_S = 8.0  # a process gets this long to end after SIGTERM, then it is killed
MIN_EXACT_SHARE = 0.95

# The honest refusals a person would see on any busy server, attacked or not:
# everyone's answers at once (--max-streams) or the prompts waiting for their
# stream (--max-pending) at their limit; both say "try again in a few seconds"
# with a Retry-After. An honest user never meets a per-client limit.
ACCEPTABLE_HONEST_REFUSALS = frozenset({"503 max streams", "503 max pending"})


@dataclass(frozen=True)
class Plan:
    """How long, how many of each kind, and the server flags a short run needs.

    ``uid_ttl``, ``request_timeout`` and ``grace_period`` are server.py's
    flags; None leaves the server's default. ``uid_ttl`` is 10 s, not 60: the
    prompts the flood never opened stay pending for the TTL, and the run ends
    by checking that /healthz is back to zero.
    """

    seconds: float = 30.0
    honest: int = 20
    flood: int = 50
    slow: int = 3
    slow_connections: int = 30  # each slow address tries to hold this many (the limit is 24)
    silent: int = 4
    silent_connections: int = 50
    storm: int = 4
    multipart: int = 2
    seed: int = 1
    uid_ttl: float | None = 10.0
    request_timeout: float | None = None
    grace_period: float | None = None

    def server_flags(self) -> list[str]:
        flags = ["--demo-delay", f"{DEMO_DELAY_S:g}"]
        for name in SERVER_DEFAULTS:
            value = getattr(self, name)
            if value is not None:
                flags += ["--" + name.replace("_", "-"), f"{value:g}"]
        return flags

    def server(self, name: str) -> float:
        """The server's value of ``name``: the plan's, or else its default."""
        value = getattr(self, name)
        return SERVER_DEFAULTS[name] if value is None else value

    def settle_limit(self) -> float:
        """How long the server may take to forget everything after the run: a
        finished stream is kept one grace period, a pending prompt its TTL (the
        sweep runs every quarter TTL)."""
        return max(self.server("grace_period"), self.server("uid_ttl") * 1.25) + 3.0


@dataclass
class Kind:
    """What one kind of hostile client got: outcomes by label, and how long its
    connections lived, by the same labels."""

    outcomes: Counter = field(default_factory=Counter)
    seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def add(self, label: str, seconds: float | None = None) -> None:
        self.outcomes[label] += 1
        if seconds is not None:
            self.seconds[label].append(round(seconds, 3))


@dataclass
class Honest:
    sent: int = 0
    exact: int = 0
    refused: Counter = field(default_factory=Counter)  # by refusal label
    refused_at: list[float] = field(default_factory=list)  # seconds into the run
    failed: list[str] = field(default_factory=list)
    to_first_event: list[float] = field(default_factory=list)
    to_close: list[float] = field(default_factory=list)


@dataclass
class Report:
    plan: Plan
    command: list[str] = field(default_factory=list)
    seconds: float = 0.0  # the run, from its start to the last client's end
    honest: Honest = field(default_factory=Honest)
    hostile: dict[str, Kind] = field(default_factory=dict)
    peak_health: Counter = field(default_factory=Counter)
    health: dict = field(default_factory=dict)  # /healthz once settled
    settle_seconds: float = 0.0
    memory_kb: list[tuple[str, int]] = field(default_factory=list)
    peak_memory_kb: int = 0
    # CPU during the run, in cores (1.0: one core all the time); and how late each event
    # loop was at most (a late loop stamps its reads late).
    cpu: dict[str, float] = field(default_factory=dict)
    loop_lag_s: dict[str, float] = field(default_factory=dict)
    cut_at_end: Counter = field(default_factory=Counter)  # clients that did not end in time
    hostile_process_problem: str = ""
    server_log: str = ""

    @property
    def clean(self) -> bool:
        return all(self.health.get(key) == 0 for key in LEFTOVERS)

    @property
    def server_log_problems(self) -> list[str]:
        """The server log's lines that say something went wrong inside it."""
        words = ("Traceback", " ERROR ", " CRITICAL ")
        return [line for line in self.server_log.splitlines() if any(w in line for w in words)]

    def problems(self) -> list[str]:
        """What keeps this run from showing honest users served and a clean server."""
        honest, problems = self.honest, []
        if honest.sent == 0:
            problems.append("no honest prompt was sent")
        elif honest.exact < MIN_EXACT_SHARE * honest.sent:
            problems.append(
                f"only {honest.exact} of {honest.sent} honest prompts answered exactly "
                f"({honest.exact / honest.sent:.0%}; at least {MIN_EXACT_SHARE:.0%} needed)"
            )
        problems += [f"honest prompt failed: {failure}" for failure in honest.failed[:10]]
        for reason, count in honest.refused.items():
            if reason not in ACCEPTABLE_HONEST_REFUSALS:
                problems.append(f"{count} honest prompts refused: {reason}")
        if not self.clean:
            problems.append(f"/healthz not back to zero: {self.health}")
        if self.cut_at_end:
            problems.append(f"clients still running at the end: {dict(self.cut_at_end)}")
        if self.hostile_process_problem:
            problems.append(f"the hostile process: {self.hostile_process_problem}")
        problems += [f"server log: {line}" for line in self.server_log_problems[:10]]
        return problems


# --- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _prepare_child() -> None:
    # In the child, between fork and exec: every open file it may have, and SIGTERM
    # when the soak dies, so a crashed run leaves nothing behind (PR_SET_PDEATHSIG = 1).
    raise_open_file_limit()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def raise_open_file_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (fields 14 and 15 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time every process on the machine has used so far, all cores (/proc/stat)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_LIMIT_S)
        except TimeoutError:
            process.kill()
            await process.wait()


class Server:
    """``server.py`` in its own process, its log in a temporary file."""

    def __init__(self, flags: list[str], script: Path, log: IO[bytes]) -> None:
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.command = [sys.executable, str(script), "--port", str(self.port), *flags]
        shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
        self.shown_command = ["python", str(shown), *self.command[2:]]
        self.process: asyncio.subprocess.Process | None = None
        self._log = log

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.command, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log, stderr=asyncio.subprocess.STDOUT, preexec_fn=_prepare_child,
        )  # fmt: skip
        deadline = time.monotonic() + START_LIMIT_S
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
            while time.monotonic() < deadline and self.process.returncode is None:
                with contextlib.suppress(aiohttp.ClientConnectionError, TimeoutError):
                    async with session.get(f"{self.base}/healthz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)
        await self.stop()
        raise RuntimeError(f"server.py did not start:\n{self.log()[-2000:]}")

    async def stop(self) -> None:
        if self.process is not None:
            await stop(self.process)

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")


# --- what the server said -----------------------------------------------------------------------

# A refusal's reason, from a fragment of its message (server.py writes them).
REASONS = [
    ("prompts in a minute", "prompts per minute"),
    ("prompts waiting for their answer", "pending per client"),
    ("answers streaming", "streams per client"),
    ("requests open here already", "connections per client"),
    ("answering as many prompts as it can", "max streams"),
    ("Too many prompts are waiting", "max pending"),
    ("took too long to arrive", "body too slow"),
    ("form field named", "not a form"),
    ("too large", "too large"),
]


def label(status: int, text: str) -> str:
    """``"429 prompts per minute"``: the status and, for a refusal we know, its reason."""
    if status == 200:
        return "200"
    for fragment, reason in REASONS:
        if fragment in text:
            return f"{status} {reason}"
    return str(status)


def raw_label(data: bytes) -> str:
    """The label of a raw HTTP answer (see ``label``)."""
    head = data.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = head.split()
    if len(parts) < 2 or not parts[1].isdecimal():
        return f"answered {head[:40]!r}"
    return label(int(parts[1]), data.decode(errors="replace"))


async def read_answer(reader: asyncio.StreamReader, data: bytes) -> bytes:
    """The rest of a refusal that began with ``data``: up to its message's end
    (templates/refusal.html), the connection's end, or a second more."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.0):
            while b"</p>" not in data:
                more = await reader.read(65536)
                if not more:
                    break
                data += more
    return data


def retry_after(response: aiohttp.ClientResponse, default: float = 1.0) -> float:
    try:
        return float(response.headers.get("Retry-After", default))
    except ValueError:
        return default


async def read_events(response: aiohttp.ClientResponse) -> tuple[list[SSEEvent], float | None]:
    """The stream's events until ``close`` (or its end), and when the first one came."""
    events: list[SSEEvent] = []
    first_at = None
    while not (events and events[-1].event == "close"):
        frame = await response.content.readuntil(b"\n\n")
        if not frame:
            break
        new = parse_stream(frame.decode())[0]
        if new and first_at is None:
            first_at = time.monotonic()
        events += new
    return events, first_at


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (``share`` 0.5: the median); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))]


# --- the clients -----------------------------------------------------------------------------


class Clients:
    """The clients of one process: the server's address, the deadline, what they got."""

    def __init__(self, plan: Plan, port: int, started: float) -> None:
        self.plan = plan
        self.port = port
        self.base = f"http://{HOST}:{port}"
        self.started = started
        self.deadline = started + plan.seconds
        self.honest = Honest()
        self.hostile: dict[str, Kind] = defaultdict(Kind)
        self.loop_lag_s = 0.0

    def left(self) -> float:
        return self.deadline - time.monotonic()

    async def pause(self, seconds: float) -> None:
        """Sleep, but never past the deadline."""
        await asyncio.sleep(max(0.0, min(seconds, self.left())))

    def session(self, address: str) -> aiohttp.ClientSession:
        """A client session whose connections all come from ``address``."""
        connector = aiohttp.TCPConnector(local_addr=(address, 0), limit=0)
        return aiohttp.ClientSession(connector=connector)

    async def raw_connection(self, address: str):
        return await asyncio.wait_for(
            asyncio.open_connection(HOST, self.port, local_addr=(address, 0)), REQUEST_LIMIT_S
        )

    async def watch_loop(self) -> None:
        """Until the deadline: how late this process's event loop wakes up, at most."""
        while self.left() > 0:
            asked = time.monotonic()
            await asyncio.sleep(SAMPLE_S)
            self.loop_lag_s = max(self.loop_lag_s, time.monotonic() - asked - SAMPLE_S)

    # --- honest users ---

    async def honest_user(self, n: int) -> None:
        rng = random.Random(self.plan.seed * 1_000_003 + n)
        next_at = self.started + rng.uniform(0, HONEST_INTERVAL_S)  # not all at once
        async with self.session(HONEST.format(n + 1)) as session:
            k = 0
            while True:
                await asyncio.sleep(max(0.0, min(next_at, self.deadline) - time.monotonic()))
                if self.left() <= 0:
                    return
                prompt = f"Honest user {n}, prompt {k}: " + "word " * rng.randint(0, 30)
                wait = await self.honest_prompt(session, prompt, f"user {n} prompt {k}")
                # A person told "try again in a few seconds" waits that long.
                next_at = max(next_at + HONEST_INTERVAL_S, time.monotonic() + wait)
                k += 1

    async def honest_prompt(self, session: aiohttp.ClientSession, prompt: str, name: str) -> float:
        """Send one prompt and read its answer; the seconds to wait before the next."""
        honest = self.honest
        honest.sent += 1
        started = time.monotonic()
        try:
            async with asyncio.timeout(PROMPT_LIMIT_S):
                url = f"{self.base}/process_prompt"
                async with session.post(url, data={"prompt": prompt}) as response:
                    text = await response.text()
                if response.status != 200:
                    honest.refused[label(response.status, text)] += 1
                    honest.refused_at.append(started - self.started)
                    return retry_after(response, 0.0)
                uid = uid_from_snippet(text)
                url = f"{self.base}/response-stream"
                async with session.get(url, params={"uid": uid}) as response:
                    if response.status != 200:
                        honest.failed.append(f"{name}: the stream answered {response.status}")
                        return 0.0
                    events, first_at = await read_events(response)
                closed_at = time.monotonic()
        except TimeoutError:
            honest.failed.append(f"{name}: no end after {PROMPT_LIMIT_S:.0f} s")
            return 0.0
        except (aiohttp.ClientError, OSError, ValueError) as error:
            honest.failed.append(f"{name}: {error!r}")
            return 0.0
        names = [event.event for event in events]
        exact = shows_answer(events, await expected_answer(prompt))
        if names[-2:] == ["final_answer", "close"] and exact and first_at is not None:
            honest.exact += 1
            honest.to_first_event.append(first_at - started)
            honest.to_close.append(closed_at - started)
        else:
            honest.failed.append(f"{name}: not the exact answer; it ended {names[-3:]}")
        return 0.0

    # --- slow bodies ---

    async def slow_address(self, n: int) -> None:
        address = SLOW.format(n + 1)

        async def keep_one() -> None:  # one connection after another, until the deadline
            while self.left() > 0:
                wait = await self.slow_body(address, self.hostile["slow body"])
                await self.pause(max(wait, RECONNECT_PAUSE_S))

        await asyncio.gather(*(keep_one() for _ in range(self.plan.slow_connections)))

    async def slow_body(self, address: str, kind: Kind) -> float:
        """One POST whose body never ends; the seconds the server said to wait, if any."""
        opened = time.monotonic()
        try:
            reader, writer = await self.raw_connection(address)
        except (OSError, TimeoutError):
            kind.add("could not connect")
            return 0.0
        try:
            writer.write(
                b"POST /process_prompt HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: %d\r\n\r\nprompt=" % SLOW_BODY_BYTES
            )
            while True:
                if self.left() <= 0:
                    kind.add("still open at the end", time.monotonic() - opened)
                    return 0.0
                try:
                    data = await asyncio.wait_for(reader.read(65536), min(TRICKLE_S, self.left()))
                except TimeoutError:
                    writer.write(b"x")  # a byte now and then: the body is alive, barely
                    await writer.drain()
                    continue
                held = time.monotonic() - opened
                if not data:
                    kind.add("dropped without an answer", held)
                    return 0.0
                answer = await read_answer(reader, data)
                kind.add(raw_label(answer), held)
                wait = re.search(rb"\r\nRetry-After: (\d+)\r\n", answer)
                return float(wait[1]) if wait else 0.0
        except (ConnectionError, OSError):
            kind.add("reset", time.monotonic() - opened)
        finally:
            writer.close()
        return 0.0

    # --- silent connections ---

    async def silent_address(self, n: int) -> None:
        address = SILENT.format(n + 1)

        async def keep_one(half: bool) -> None:
            while self.left() > 0:
                await self.silent_connection(address, half, self.hostile["silent"])
                await self.pause(RECONNECT_PAUSE_S)

        count = self.plan.silent_connections
        await asyncio.gather(*(keep_one(half=i % 2 == 1) for i in range(count)))

    async def silent_connection(self, address: str, half: bool, kind: Kind) -> None:
        what = "half a request line" if half else "nothing"
        opened = time.monotonic()
        try:
            reader, writer = await self.raw_connection(address)
        except (OSError, TimeoutError):
            kind.add("could not connect")
            return
        try:
            if half:
                writer.write(b"POST /process_prom")
            try:
                data = await asyncio.wait_for(reader.read(), max(0.0, self.left()))
            except TimeoutError:
                kind.add(f"{what}: still open at the end", time.monotonic() - opened)
                return
            outcome = "dropped" if not data else raw_label(data)
            kind.add(f"{what}: {outcome}", time.monotonic() - opened)
        except (ConnectionError, OSError):
            kind.add(f"{what}: reset", time.monotonic() - opened)
        finally:
            writer.close()

    # --- the pending flood ---

    async def flood_address(self, n: int) -> None:
        kind = self.hostile["pending flood"]
        async with self.session(FLOOD.format(n + 1)) as session:
            while self.left() > 0:
                wait = await self.post(session, {"prompt": f"Flood {n}: never opened"}, kind)
                await self.pause(wait)  # what the server lets it: again after the Retry-After

    async def post(self, session: aiohttp.ClientSession, data: Any, kind: Kind) -> float:
        """POST to /process_prompt and count the answer; the seconds the server says to
        wait (0 after a 200 or a 415: those have no Retry-After)."""
        try:
            async with asyncio.timeout(REQUEST_LIMIT_S):
                url = f"{self.base}/process_prompt"
                async with session.post(url, data=data) as response:
                    text = await response.text()
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            kind.add(f"no answer ({type(error).__name__})")
            return 1.0
        kind.add(label(response.status, text))
        return 0.0 if response.status in (200, 415) else retry_after(response)

    # --- the reconnect storm ---

    async def storm_address(self, n: int) -> None:
        rng = random.Random(self.plan.seed * 7_000_003 + n)
        kind = self.hostile["reconnect storm"]
        # Reconnecting to a finished stream works for one grace period: go on a bit longer.
        storm_s = self.plan.server("grace_period") + 1.0
        async with self.session(STORM.format(n + 1)) as session:
            while self.left() > 0:
                try:
                    async with asyncio.timeout(PROMPT_LIMIT_S):
                        await self.storm_round(session, rng, kind, storm_s)
                except TimeoutError:
                    kind.add("a round with no end")
                except (aiohttp.ClientError, OSError) as error:
                    kind.add(f"connection error ({type(error).__name__})")
                    await self.pause(1.0)

    async def storm_round(
        self, session: aiohttp.ClientSession, rng: random.Random, kind: Kind, storm_s: float
    ) -> None:
        url = f"{self.base}/process_prompt"
        async with session.post(url, data={"prompt": "Storm: listen, then reconnect"}) as response:
            text = await response.text()
        if response.status != 200:
            kind.add(f"prompt {label(response.status, text)}")
            await self.pause(retry_after(response))
            return
        kind.add("prompt 200")
        stream_url = f"{self.base}/response-stream"
        params = {"uid": uid_from_snippet(text)}
        first = await session.get(stream_url, params=params)
        try:
            seen = await read_some(first, 1)
            resume = {"Last-Event-ID": seen[-1].id} if seen and seen[-1].id else {}

            async def extra_listener() -> None:
                async with session.get(stream_url, params=params, headers=resume) as response:
                    events = parse_stream(await response.text())[0]
                refused = any(event.event == "error" for event in events)
                kind.add("extra listener refused" if refused else "extra listener served")

            await asyncio.gather(*(extra_listener() for _ in range(EXTRA_LISTENERS)))
            events, _ = await read_events(first)
        finally:
            first.close()
        last_id = int((events or seen or [SSEEvent("", "", "1")])[-1].id or 1)
        # Again and again, to its own finished stream: from its end, or from anywhere.
        until = min(time.monotonic() + storm_s, self.deadline)
        while time.monotonic() < until:
            event_id = last_id if rng.random() < 0.5 else rng.randint(1, last_id)
            headers = {"Last-Event-ID": str(event_id)}
            async with session.get(stream_url, params=params, headers=headers) as response:
                events = parse_stream(await response.text())[0]
            if response.status != 200:
                kind.add(f"reconnect {response.status}")
            elif any(event.event == "error" for event in events):
                kind.add("reconnect refused (expired)")
            else:
                kind.add("reconnect resumed")

    # --- the multipart flood ---

    async def multipart_address(self, n: int) -> None:
        kind = self.hostile["multipart"]
        async with self.session(MULTIPART.format(n + 1)) as session:
            while self.left() > 0:
                form = aiohttp.FormData(default_to_multipart=True)
                for _ in range(MULTIPART_FIELDS):
                    form.add_field("x", "")
                form.add_field("prompt", "hi")
                await self.pause(await self.post(session, form, kind))


# --- the hostile process ---------------------------------------------------------------------


async def run_hostile(plan: Plan, port: int, started: float) -> dict[str, Any]:
    """Every hostile client, until the deadline; what they got, for the report."""
    clients = Clients(plan, port, started)
    attacks = [
        *(clients.slow_address(n) for n in range(plan.slow)),
        *(clients.silent_address(n) for n in range(plan.silent)),
        *(clients.flood_address(n) for n in range(plan.flood)),
        *(clients.storm_address(n) for n in range(plan.storm)),
        *(clients.multipart_address(n) for n in range(plan.multipart)),
    ]
    cpu_before = time.process_time()
    results = await asyncio.gather(*attacks, clients.watch_loop(), return_exceptions=True)
    crashed = [repr(result) for result in results if isinstance(result, BaseException)]
    return {
        "kinds": {
            name: {"outcomes": dict(kind.outcomes), "seconds": dict(kind.seconds)}
            for name, kind in clients.hostile.items()
        },
        "cpu_s": time.process_time() - cpu_before,
        "loop_lag_s": clients.loop_lag_s,
        "crashed": crashed,
    }


def hostile_main(port: str, plan: str) -> None:
    """``python -m tests.hostile_soak PORT PLAN``: says "ready", waits for "go STARTED"
    (a time.monotonic(), the same clock in every process), runs, prints the JSON."""
    raise_open_file_limit()
    print("ready", flush=True)
    started = float(sys.stdin.readline().split()[1])
    result = asyncio.run(run_hostile(Plan(**json.loads(plan)), int(port), started))
    print(json.dumps(result), flush=True)


class HostileProcess:
    """The hostile clients in a child process of their own."""

    def __init__(self, plan: Plan, port: int, stderr: IO[bytes]) -> None:
        self.args = ["-m", "tests.hostile_soak", str(port), json.dumps(dataclasses.asdict(plan))]
        self.process: asyncio.subprocess.Process | None = None
        self._stderr = stderr

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, *self.args, cwd=ROOT, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=self._stderr, preexec_fn=_prepare_child,
        )  # fmt: skip
        assert self.process.stdout is not None
        ready = await asyncio.wait_for(self.process.stdout.readline(), START_LIMIT_S)
        if ready.strip() != b"ready":
            raise RuntimeError(f"the hostile process did not start: {self.stderr()[-2000:]}")

    def go(self, started: float) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(f"go {started!r}\n".encode())

    async def result(self, within: float) -> dict[str, Any]:
        assert self.process is not None
        stdout, _ = await asyncio.wait_for(self.process.communicate(), within)
        if self.process.returncode != 0:
            raise RuntimeError(f"the hostile process failed: {self.stderr()[-2000:]}")
        return json.loads(stdout)

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    async def stop(self) -> None:
        if self.process is not None:
            await stop(self.process)


# --- the run ---------------------------------------------------------------------------------


async def hostile_soak(plan: Plan, server_script: Path = ROOT / "server.py") -> Report:
    """Start the server and the hostile process, run every client for ``plan.seconds``,
    give the server a short while to forget everything, stop it all; what happened."""
    for count in (plan.honest, plan.slow, plan.silent, plan.flood, plan.storm, plan.multipart):
        assert 0 <= count <= MAX_ADDRESSES, f"at most {MAX_ADDRESSES} addresses of each kind"
    report = Report(plan)
    with tempfile.TemporaryFile() as server_log, tempfile.TemporaryFile() as hostile_stderr:
        server = Server(plan.server_flags(), server_script, server_log)
        report.command = server.shown_command
        hostile = HostileProcess(plan, server.port, hostile_stderr)
        try:
            await asyncio.gather(server.start(), hostile.start())
            await run(plan, server, hostile, report)
        finally:
            await hostile.stop()
            await server.stop()
            report.server_log = server.log()
    return report


async def run(plan: Plan, server: Server, hostile: HostileProcess, report: Report) -> None:
    report.memory_kb.append(("at the start", resident_kb(server.pid)))
    server_cpu = cpu_seconds(server.pid)
    cpu = time.process_time()
    machine = machine_busy_seconds()
    started = time.monotonic()
    hostile.go(started)
    clients = Clients(plan, server.port, started)
    users = [asyncio.create_task(clients.honest_user(n)) for n in range(plan.honest)]
    monitor = asyncio.create_task(watch_server(clients, server.pid, report))
    # Every client ends by itself at the deadline; a prompt under way gets a bounded
    # time more (PROMPT_LIMIT_S), then whatever still runs is cut.
    within = plan.seconds + PROMPT_LIMIT_S + 5.0
    _, running = await asyncio.wait(users, timeout=within)
    if running:
        report.cut_at_end["honest users"] = len(running)
    for task in running:
        task.cancel()
    await asyncio.gather(*users, monitor, return_exceptions=True)
    try:
        result = await hostile.result(within=max(1.0, started + within - time.monotonic()))
    except (RuntimeError, TimeoutError, ValueError) as error:
        report.hostile_process_problem = str(error) or type(error).__name__
        result = {"kinds": {}, "cpu_s": 0.0, "loop_lag_s": 0.0, "crashed": []}
    report.seconds = time.monotonic() - started
    if result["crashed"]:
        report.hostile_process_problem = "a client crashed: " + "; ".join(result["crashed"][:3])
    for name, kind in result["kinds"].items():
        report.hostile[name] = Kind(Counter(kind["outcomes"]), kind["seconds"])
    report.honest = clients.honest
    report.cpu = {
        "server": (cpu_seconds(server.pid) - server_cpu) / report.seconds,
        "honest users": (time.process_time() - cpu) / report.seconds,
        "hostile clients": result["cpu_s"] / report.seconds,
    }
    # Whatever else ran on the machine meanwhile (another test suite, say) spoils latency.
    others = (machine_busy_seconds() - machine) / report.seconds - sum(report.cpu.values())
    report.cpu["everything else"] = max(0.0, others)
    report.loop_lag_s = {
        "honest users": clients.loop_lag_s,
        "hostile clients": result["loop_lag_s"],
    }
    report.memory_kb.append(("at the end", resident_kb(server.pid)))

    settled_from = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as session:
        await settle(session, server.base, report, plan.settle_limit())
    report.settle_seconds = time.monotonic() - settled_from
    report.memory_kb.append(("settled", resident_kb(server.pid)))


async def watch_server(clients: Clients, pid: int, report: Report) -> None:
    """Until the deadline: the server's memory and /healthz's peaks, and this
    process's loop lag."""
    lag = asyncio.create_task(clients.watch_loop())
    halfway = clients.started + clients.plan.seconds / 2
    async with aiohttp.ClientSession() as session:
        while clients.left() > 0:
            await clients.pause(SAMPLE_S)
            kb = resident_kb(pid)
            report.peak_memory_kb = max(report.peak_memory_kb, kb)
            if halfway and time.monotonic() >= halfway:
                report.memory_kb.append(("halfway", kb))
                halfway = 0.0
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with asyncio.timeout(2.0), session.get(f"{clients.base}/healthz") as response:
                    health = await response.json()
                for key in LEFTOVERS:
                    report.peak_health[key] = max(report.peak_health[key], health[key])
    await lag


# --- the report ------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def spans(moments: list[float], gap: float = 1.0) -> str:
    """``"0.2-4.9 (12), 10.3 (1)"``: the moments, grouped where less than ``gap`` apart."""
    groups: list[list[float]] = []
    for moment in sorted(moments):
        if groups and moment - groups[-1][-1] < gap:
            groups[-1].append(moment)
        else:
            groups.append([moment])
    return ", ".join(
        (f"{g[0]:.1f}" if len(g) == 1 else f"{g[0]:.1f}-{g[-1]:.1f}") + f" ({len(g)})"
        for g in groups
    )


def describe(report: Report) -> list[str]:
    """The report, line by line, for a person."""
    plan, honest = report.plan, report.honest
    first, close = honest.to_first_event, honest.to_close
    lines = [
        f"server: {' '.join(report.command)}",
        f"{report.seconds:.1f} s: {plan.honest} honest users; hostile: {plan.flood} flood "
        f"addresses, {plan.slow} x {plan.slow_connections} slow bodies, {plan.silent} x "
        f"{plan.silent_connections} silent connections, {plan.storm} storm addresses, "
        f"{plan.multipart} multipart addresses",
        "",
        f"honest prompts: {honest.sent} sent, {honest.exact} answered exactly, "
        f"{sum(honest.refused.values())} refused, {len(honest.failed)} failed",
        *(f"  refused, {reason}: {count}" for reason, count in honest.refused.most_common()),
        *([f"  refused at (s into the run): {spans(honest.refused_at)}"] if honest.refused else []),
        f"  POST to first event: p50 {ms(percentile(first, 0.5))}, "
        f"p99 {ms(percentile(first, 0.99))}, max {ms(max(first, default=0))}",
        f"  POST to close:       p50 {ms(percentile(close, 0.5))}, "
        f"p99 {ms(percentile(close, 0.99))}, max {ms(max(close, default=0))}",
        *(f"  FAILED: {failure}" for failure in honest.failed[:10]),
    ]
    for name, kind in sorted(report.hostile.items()):
        lines.append(f"{name}: {sum(kind.outcomes.values()):,} in all")
        for outcome, count in kind.outcomes.most_common():
            held = kind.seconds.get(outcome)
            when = (
                f" (held {percentile(held, 0.5):.1f} s, at most {max(held):.1f} s)" if held else ""
            )
            lines.append(f"  {outcome}: {count:,}{when}")
    lines += [
        "",
        "healthz peaks during the run: "
        + ", ".join(f"{key} {report.peak_health[key]}" for key in LEFTOVERS),
        f"healthz {report.settle_seconds:.1f} s after the run: "
        + ", ".join(f"{key} {report.health.get(key)}" for key in LEFTOVERS),
        "server memory (VmRSS): "
        + ", ".join(f"{moment} {kb / 1024:.1f} MiB" for moment, kb in report.memory_kb)
        + f"; peak {report.peak_memory_kb / 1024:.1f} MiB",
        f"CPU during the run, in cores (of {os.cpu_count()}): "
        + ", ".join(f"{name} {share:.2f}" for name, share in report.cpu.items()),
        "event loop late by at most: "
        + ", ".join(f"{name} {ms(lag)}" for name, lag in report.loop_lag_s.items()),
        f"server log: {len(report.server_log_problems)} error lines",
    ]
    problems = report.problems()
    lines += [f"PROBLEM: {problem}" for problem in problems]
    lines.append("NOT SERVED OR NOT CLEAN" if problems else "honest users served, server clean")
    return lines


if __name__ == "__main__":
    hostile_main(*sys.argv[1:])

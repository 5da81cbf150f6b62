"""Starting, watching and stopping the benchmark's processes (Linux only).

Every process the benchmark starts gets the highest open-file limit this
machine allows (a held stream costs the relay two sockets: its browser's and
its upstream's) and is told by the kernel to stop when the benchmark dies
(``PR_SET_PDEATHSIG``), so nothing outlives a run, even a crashed one.

CPU time and memory are read from ``/proc``: ``utime + stime`` of
``/proc/PID/stat`` (all threads, in clock ticks) and ``VmRSS`` of
``/proc/PID/status``. A server with worker processes (``server.py --workers
N``: gunicorn's arbiter and the workers it forked) counts as the sum of the
arbiter and its live children (``/proc/PID/task/PID/children``).

``RedisServer`` runs Debian's ``redis-server`` the same way, on a loopback
port, with nothing saved to disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
READY_LIMIT_S = 15.0  # a server that has not answered by then failed to start
READY_POLL_S = 0.05
STOP_LIMIT_S = 8.0  # a server gets this long to end after SIGTERM, then it is killed
REDIS_COMMAND_S = 5.0  # a command to the benchmark's own Redis fails after this long
# Fields 14 and 15 of /proc/PID/stat (1-based), counted after the ")" that ends
# the command name, which may itself hold spaces.
UTIME_AFTER_NAME = 11


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _prepare_child() -> None:
    # Runs in the child between fork and exec.
    raise_open_file_limit()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """One server the benchmark runs: its command, its port, its log file."""

    def __init__(
        self, name: str, args: list[str], port: int, log_dir: Path, program: str = sys.executable
    ) -> None:
        self.name = name
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                [program, *args],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_prepare_child,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_ready(self, path: str = "/healthz") -> None:
        deadline = time.monotonic() + READY_LIMIT_S
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                break
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.base + path, timeout=1),
            ):
                return
            time.sleep(READY_POLL_S)
        self.stop()
        raise RuntimeError(f"{self.name} did not start; see {self.log_path}")

    def workers(self) -> list[int]:
        """The pids of its live child processes (gunicorn's workers); none for one process."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [int(pid) for pid in path.read_text().split()]
        except OSError:
            return []

    def cpu_seconds(self) -> float:
        """Its CPU time so far, and its live workers'."""
        return sum(_or_zero(cpu_seconds, pid) for pid in [self.pid, *self.workers()])

    def rss_bytes(self) -> int:
        """Its resident memory, and its live workers'."""
        return int(sum(_or_zero(rss_bytes, pid) for pid in [self.pid, *self.workers()]))

    def log_lines(self, text: str) -> int:
        """How many lines of its log hold ``text``."""
        with self.log_path.open("rb") as log:
            return sum(text.encode() in line for line in log)

    def open_files(self) -> list[int]:
        """Open files of each serving process: the workers, or the process itself."""
        return [int(_or_zero(open_files, pid)) for pid in self.workers() or [self.pid]]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(STOP_LIMIT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class RedisServer(Process):
    """``redis-server`` on a free loopback port: nothing saved, no password, its own
    log; its own CPU time and ``INFO memory`` for the figures."""

    def __init__(self, name: str, port: int, log_dir: Path) -> None:
        args = ["--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
        args += ["--dir", str(log_dir)]
        super().__init__(name, args, port, log_dir, program="redis-server")
        self.url = f"redis://127.0.0.1:{port}/0"
        self.client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=REDIS_COMMAND_S)

    def wait_ready(self, path: str = "") -> None:
        deadline = time.monotonic() + READY_LIMIT_S
        while time.monotonic() < deadline and self.popen.poll() is None:
            with contextlib.suppress(redis.RedisError):
                self.client.ping()
                return
            time.sleep(READY_POLL_S)
        self.stop()
        raise RuntimeError(f"{self.name} did not start; see {self.log_path}")

    def used_memory(self) -> int:
        """``used_memory`` of ``INFO memory``: the bytes Redis's allocator holds for data."""
        return int(self.client.info("memory")["used_memory"])

    def keys_without_expiry(self) -> list[str]:
        """Every key that has no time to live (``PTTL`` -1): the app means each to expire."""
        return [
            key.decode() for key in self.client.scan_iter(count=1000) if self.client.pttl(key) == -1
        ]

    def stop(self) -> None:
        self.client.close()
        super().stop()


def _or_zero(read: Callable[[int], float], pid: int) -> float:
    """``read(pid)``, or 0 for a process that ended meanwhile."""
    try:
        return read(pid)
    except OSError:
        return 0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = fields[UTIME_AFTER_NAME], fields[UTIME_AFTER_NAME + 1]
    return (int(utime) + int(stime)) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU time every process on the machine has used so far (all cores, /proc/stat)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def tree_cpu_seconds(root: int, marker: str | None = None) -> float:
    """CPU time of ``root`` and everything it started, waited-for children included,
    plus processes whose command line holds ``marker`` (Chromium's helpers leave
    the tree: they are children of its zygote, which the kernel reparents)."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    marked = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if marker and marker.encode() in (entry / "cmdline").read_bytes():
                marked.append(int(entry.name))
        except OSError:
            continue  # it ended while we looked
        fields = stat[stat.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        # utime, stime, and cutime, cstime: the children it has waited for.
        ticks = fields[UTIME_AFTER_NAME : UTIME_AFTER_NAME + 4]
        cpu[int(entry.name)] = sum(int(value) for value in ticks) / CLOCK_TICKS
    ours, todo = set(), [root, *marked]
    while todo:
        pid = todo.pop()
        if pid not in ours:
            ours.add(pid)
            todo += children.get(pid, [])
    return sum(cpu.get(pid, 0.0) for pid in ours)


class OtherLoad:
    """How busy the machine was with *other* work while we measured.

    Everything else on the machine (another test suite, a build) competes for
    the same cores and spoils the figures; this says how much it did: the
    share of all cores used by processes that are not this one or its
    descendants (0.0: nothing else ran; 0.5: one of two cores was taken).
    """

    def __init__(self, marker: str | None = None) -> None:
        self._marker = marker  # see tree_cpu_seconds
        self._started = time.monotonic()
        self._machine = machine_busy_seconds()
        self._ours = tree_cpu_seconds(os.getpid(), marker)

    def share(self) -> float:
        seconds = time.monotonic() - self._started
        others = (machine_busy_seconds() - self._machine) - (
            tree_cpu_seconds(os.getpid(), self._marker) - self._ours
        )
        return max(0.0, others) / (seconds * (os.cpu_count() or 1))

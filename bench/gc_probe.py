"""Run server.py with Python's garbage collector watched, for bench/profile.py.

    python -m bench.gc_probe server.py --port 8080 …

A sampling profiler cannot see the cyclic garbage collector: its pauses are
charged to whatever line happened to allocate. This wrapper times every
collection with ``gc.callbacks`` and, at exit, writes one line to stderr::

    GC_PROBE {"collections": [n0, n1, n2], "seconds": [...], "longest_ms": [...]}

SIGUSR2 writes the same line at once (two of them bracket a measurement);
SIGUSR1 writes a census of the heap (``GC_CENSUS {...}``): how many objects
the collector tracks, the most common types, and how many timers the event
loop holds (cancelled ones included: they stay until the loop prunes them).

With ``BENCH_TRACEMALLOC=1`` the census also names the lines of code that
hold the most memory (tracemalloc; it slows the app, so not for timings).

To try a tuning before proposing it, set ``BENCH_GC_THRESHOLD=700,10,10``
(``gc.set_threshold``'s three numbers) or ``BENCH_GC_FREEZE=1``
(``gc.freeze()`` once server.py is loaded, before its ``main()`` runs: what
was imported is never scanned again). The app itself is not changed: its
module is loaded and its ``main()`` called, as ``python server.py`` would.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import gc
import json
import os
import runpy
import signal
import sys
import time
import tracemalloc
from pathlib import Path

CENSUS_TYPES = 15
CENSUS_LINES = 20
CENSUS_TIMERS = 8
_started = [0.0]
_counts = [0, 0, 0]
_seconds = [0.0, 0.0, 0.0]
_longest = [0.0, 0.0, 0.0]


def _time_collections(phase: str, info: dict) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    elapsed = time.perf_counter() - _started[0]
    generation = info["generation"]
    _counts[generation] += 1
    _seconds[generation] += elapsed
    _longest[generation] = max(_longest[generation], elapsed)


def _report(*signal_args: object) -> None:
    figures = {
        "collections": _counts,
        "seconds": [round(value, 4) for value in _seconds],
        "longest_ms": [round(value * 1000, 1) for value in _longest],
    }
    print("GC_PROBE", json.dumps(figures), file=sys.stderr, flush=True)


def _census(signum: int, frame: object) -> None:
    objects = gc.get_objects()
    types = collections.Counter(type(item).__qualname__ for item in objects)
    loop = asyncio._get_running_loop()  # the signal arrives in the loop's thread
    timers = list(getattr(loop, "_scheduled", []))
    figures = {
        "tracked_objects": len(objects),
        "top_types": types.most_common(CENSUS_TYPES),
        "loop_timers": len(timers),
        "loop_timers_cancelled": sum(timer.cancelled() for timer in timers),
        # What the live timers will call: which parts of the app keep a timer per stream.
        "timer_callbacks": collections.Counter(
            getattr(timer._callback, "__qualname__", repr(timer._callback))
            for timer in timers
            if not timer.cancelled()
        ).most_common(CENSUS_TIMERS),
    }
    del objects
    if tracemalloc.is_tracing():
        lines = tracemalloc.take_snapshot().statistics("lineno")[:CENSUS_LINES]
        figures["top_lines_kb"] = [(str(line.traceback), line.size // 1024) for line in lines]
        figures["traced_kb"] = tracemalloc.get_traced_memory()[0] // 1024
    print("GC_CENSUS", json.dumps(figures), file=sys.stderr, flush=True)


def main() -> None:
    script, *args = sys.argv[1:]
    gc.callbacks.append(_time_collections)
    atexit.register(_report)
    signal.signal(signal.SIGUSR1, _census)
    signal.signal(signal.SIGUSR2, _report)
    if os.environ.get("BENCH_TRACEMALLOC") == "1":
        tracemalloc.start()
    if threshold := os.environ.get("BENCH_GC_THRESHOLD"):
        gc.set_threshold(*(int(value) for value in threshold.split(",")))
    sys.argv = [script, *args]
    sys.path.insert(0, str(Path(script).resolve().parent))
    # Loaded under another name, so its `if __name__ == "__main__"` does not
    # run yet: the freeze (if asked for) comes between loading and running.
    server = runpy.run_path(script, run_name="gc_probed")
    if os.environ.get("BENCH_GC_FREEZE") == "1":
        gc.freeze()
    server["main"]()


if __name__ == "__main__":
    main()

"""Two versions of the app taking turns on one scenario: a same-run before/after.

    git worktree add /tmp/before HEAD~3                 # the version to compare with
    python bench/compare.py /tmp/before .                # S4, in memory
    python bench/compare.py /tmp/before . --scenario s2 --redis
    python bench/compare.py /tmp/before . --scenario release --turns 2

Each version is the ``server.py`` of its checkout, run with the benchmark's flags
(``APP_FLAGS`` in bench/run.py) against this checkout's fake upstream, load client
and scenarios. The turns go A B B A, so that a machine getting busier or quieter
meanwhile weighs on both alike; each figure is the median of a version's turns,
and B/A is the ratio of the medians. ``--redis``: each version is one worker on a
``redis-server`` of its own.

    s4       POST + GET + one token + close, 20 loops, ``--seconds`` each turn:
             the relay's CPU per round trip, and round trips a second
    s2       100 streams of 200 tokens at 20 ms, ``--answer-window 0``: CPU per
             token and relay latency
    release  1,000 answering streams whose clients all leave at once (grace 0):
             when the upstream saw each request closed (and the floor, with no relay)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import scenarios  # noqa: E402
from bench.procs import Process, RedisServer, raise_open_file_limit  # noqa: E402
from bench.run import S2_SPREAD_S, Servers, target, warm_up  # noqa: E402

S4_LOOPS = 20
S2_STREAMS, S2_TOKENS, S2_DELAY = 100, 200, 0.02
RELEASE_STREAMS, RELEASE_DELAY = 1000, 0.5
#: Per scenario, the figures compared (a key of the scenario's figures, how it is shown).
FIGURES = {
    "s4": {"cpu_ms_per_round_trip": "CPU ms per round trip",
           "store_cpu_ms_per_round_trip": "Redis's CPU ms per round trip",
           "round_trips_per_s": "round trips per s"},
    "s2": {"cpu_us_per_token": "CPU µs per token",
           "store_cpu_us_per_token": "Redis's CPU µs per token",
           "p99_ms": "relay latency p99, ms"},
    "release": {"p50_ms": "released p50, ms", "p99_ms": "released p99, ms"},
}  # fmt: skip


class Comparison:
    """The two versions' apps, and a turn of the chosen scenario on either."""

    def __init__(self, servers: Servers, args: argparse.Namespace) -> None:
        self.servers, self.args = servers, args
        self.apps: dict[str, Process] = {}
        self.stores: dict[str, RedisServer | None] = {}

    async def start(self, name: str, tree: Path) -> None:
        store = self.servers.redis(f"redis-{name}") if self.args.redis else None
        window = 0 if self.args.scenario == "s2" else None
        app = self.servers.app(f"app-{name}", window=window, store=store, tree=tree)
        self.apps[name], self.stores[name] = app, store
        await warm_up(app)
        await self.turn(name)  # a first turn, not counted: caches, pools, the bound

    async def turn(self, name: str) -> dict:
        app, store, args = self.apps[name], self.stores[name], self.args
        if args.scenario == "s4":
            return await scenarios.prompt_round_trips(
                target(app), app, S4_LOOPS, args.seconds, store
            )
        if args.scenario == "s2":
            return await scenarios.latency(
                target(app), app, S2_STREAMS, S2_TOKENS, S2_DELAY, S2_SPREAD_S, store
            )
        upstream = self.servers.upstream_target
        return await scenarios.release(target(app), RELEASE_STREAMS, RELEASE_DELAY, upstream)


def report(scenario: str, turns: dict[str, list[dict]]) -> str:
    lines = []
    for key, label in FIGURES[scenario].items():
        values = {name: [t[key] for t in turns[name] if t.get(key) is not None] for name in turns}
        if not all(values.values()):
            continue
        a, b = (statistics.median(values[name]) for name in ("A", "B"))
        ratio = f"{b / a:.2f}" if a else "-"
        each = "; ".join(
            f"{name}: " + ", ".join(f"{v:.3g}" for v in values[name]) for name in values
        )
        lines.append(f"{label:34} A {a:10.4g}   B {b:10.4g}   B/A {ratio}   ({each})")
    for name, figures in turns.items():
        exact = sum(t["exact"] for t in figures)
        checked = sum(t["checked"] for t in figures)
        lines.append(f"{name}: {exact:,} of {checked:,} answers exact")
    return "\n".join(lines)


async def compare(args: argparse.Namespace, log_dir: Path) -> str:
    servers = Servers(log_dir)
    try:
        comparison = Comparison(servers, args)
        await comparison.start("A", args.a.resolve())
        await comparison.start("B", args.b.resolve())
        turns: dict[str, list[dict]] = {"A": [], "B": [], "floor": []}
        for _ in range(args.turns):
            for name in ("A", "B", "B", "A"):
                turns[name].append(await comparison.turn(name))
            if args.scenario == "release":
                floor = servers.upstream_target
                turns["floor"].append(
                    await scenarios.release(floor, RELEASE_STREAMS, RELEASE_DELAY, floor)
                )
        if not turns["floor"]:
            del turns["floor"]
        return report(args.scenario, turns)
    finally:
        servers.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="the checkout to compare with (A)")
    parser.add_argument("b", type=Path, help="the checkout compared (B)")
    parser.add_argument("--scenario", choices=FIGURES, default="s4")
    parser.add_argument("--redis", action="store_true", help="each app one worker on Redis")
    parser.add_argument("--turns", type=int, default=3, help="rounds of A B B A (default 3)")
    parser.add_argument("--seconds", type=float, default=3.0, help="S4: each turn's length")
    parser.add_argument("--logs", type=Path, help="keep the servers' logs in this folder")
    args = parser.parse_args()
    for tree in (args.a, args.b):
        if not (tree / "server.py").is_file():
            parser.error(f"{tree} has no server.py")
    raise_open_file_limit()
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
        print(asyncio.run(compare(args, args.logs)))
    else:
        with tempfile.TemporaryDirectory() as log_dir:
            print(asyncio.run(compare(args, Path(log_dir))))


if __name__ == "__main__":
    main()

"""The benchmark's table (bench/table.py) from made-up figures: every section's
rows, their targets and met / not met, without starting a server."""

from dataclasses import asdict, astuple, fields

from bench import table
from bench.run import FULL, QUICK, Plan

LOG = {"ended_as_orphans": 0, "no_connection": 0, "not_kept": 0}


def relay(**figures: float) -> dict:
    """A relay's figures in any section: every key a row may read, then ``figures``."""
    base = dict(
        tokens_per_s=1000.0, cpu_us_per_token=10.0, cpu_share=0.5, p50_ms=1.0, p99_ms=3.0,
        first_event_p99_ms=5.0, round_trips_per_s=500.0, cpu_ms_per_round_trip=1.0,
        max_ms=4.0, producer_p50_ms=1.0, producer_p99_ms=2.0, first_event_max_ms=9.0,
        checked=10, exact=10, missing=0, failed=0, refused=0, streams=64, timed=8,
    )  # fmt: skip
    return {**base, **figures}


def held(size: int, store: bool = False, **figures: float) -> dict:
    s3 = relay(
        streams=size, held=size, opened=size, opening_s=3.0, kb_per_stream=20.0,
        upstream_cpu_share=0.1, client_cpu_share=0.2, release_p99_ms=100.0, not_released=0,
        open_files=[size * 2], opened_per_s_first=100.0, opened_per_s_last=50.0, errored=0,
        tokens_in_window=size * 5, checked=size, exact=size,
    )  # fmt: skip
    if store:
        s3 |= dict(
            store_kb_per_stream=5.0, store_cpu_share=0.05, store_cpu_us_per_token=1.0,
            keys_without_expiry=[], log=LOG,
        )  # fmt: skip
    return s3 | figures


def made_up(plan: Plan, sections: tuple[str, ...] = ("memory", "redis")) -> dict:
    """Figures as bench/run.py keeps them, for the in-memory and the Redis sections."""
    figures: dict = {"plan": asdict(plan), "other_load": {}}

    def put(key: str, value: dict) -> None:
        figures[key] = value
        figures["other_load"][key] = 0.01

    names = ("app", "aiohttp", "peer")
    if "memory" in sections:
        put("s1", {name: relay() for name in (*names, "app-w0")})
        put("s2", {name: relay() for name in ("floor", "app", "app-w0", "aiohttp", "peer")})
        figures["s2"]["app-w0"]["cpu_us_per_token"] = 12.0  # above aiohttp-sse's 10
        put("first-text", {"app-hold": relay()})
        put("s4", {name: relay() for name in ("floor", *names)})
        figures["s4"]["app"]["round_trips_per_s"] = 600.0  # above aiohttp-sse's 500
        for size in plan.release_sizes:
            put(f"release-{size}", {name: relay() for name in ("floor", *names)})
        figures[f"release-{plan.release_sizes[-1]}"]["app"]["p99_ms"] = 60.0  # floor 3 + 50
        for size in plan.s3_sizes:
            put(f"s3-{size}", held(size))
        figures[f"s3-{plan.s3_sizes[-1]}"]["held"] -= 1
        for name in ("aiohttp", "peer"):
            put(f"s3-{name}-{plan.s3_peer_size}", held(plan.s3_peer_size))
    if "redis" in sections:
        put("redis-s1", {name: relay() for name in ("app", "redis-1w", "redis-2w")})
        put("redis-s2", {name: relay() for name in ("app-w0", "redis-1w-w0", "redis-ab")})
        put("redis-s4", {name: relay() for name in ("app", "redis-1w")})
        put(
            f"redis-release-{plan.redis_release_size}",
            {name: relay() for name in ("floor", "app", "redis-1w", "redis-2w")},
        )
        put("redis-stop", {name: relay() for name in ("app", "redis-ab")})
        put("redis-burst", {name: relay() for name in ("app", "redis-1w")})
        figures["redis-keys"] = []
        figures["redis-log"] = LOG
        for size in plan.redis_s3_1w_sizes:
            put(f"redis-1w-s3-{size}", held(size, store=True))
        put(f"redis-s3-{plan.redis_s3_size}", held(plan.redis_s3_size, store=True))
    return figures


def by_figure(rows: list[table.Row]) -> dict[str, table.Row]:
    return {row.figure: row for row in rows}


def test_every_row_renders_with_a_cell_per_column():
    for plan in (FULL, QUICK):
        rows = table.rows(made_up(plan))
        text = table.render(rows)
        assert len(text.splitlines()) == len(rows) + 2  # the headings and their rule
        for row in rows:
            assert len(astuple(row)) == len(fields(table.Row))
            assert row.met in ("", "yes", "NO", table.NOT_MEASURED)


def test_targets_against_the_peers_and_the_floor():
    rows = by_figure(table.rows(made_up(FULL)))
    tokens = rows["S1 tokens/s (50 x 500, no delay)"]
    assert (tokens.app, tokens.aiohttp, tokens.peer) == ("1,000", "1,000", "1,000")
    assert (tokens.target, tokens.met) == (">= 2x FastAPI: 1.00x", "NO")
    cpu = rows["S2 CPU per token, window 0 (app --answer-window 0)"]
    assert (cpu.app, cpu.aiohttp, cpu.ratio, cpu.met) == ("12.0 us", "10.0 us", "1.20x", "NO")
    trips = rows["S4 prompt round trips/s (20 at once)"]
    assert (trips.target, trips.met) == (">= aiohttp-sse's", "yes")
    assert rows["S4 CPU per round trip"].aiohttp == "1.00 ms"
    released = rows["upstream released p50 / p99 at 1,000 (0 never)"]
    assert (released.target, released.met) == ("p99 <= 53.0 ms (floor + 50)", "NO")
    assert rows["upstream released p50 / p99 at 100 (0 never)"].met == "yes"


def test_the_held_streams_scale():
    rows = by_figure(table.rows(made_up(FULL)))
    assert rows[
        "S3 held of 100 / 1,000 / 5,000 / 10,000 (1 token/s, a fresh process each)"
    ].met == ("NO")
    for size in ("100", "1,000", "5,000"):
        scale = rows[f"S3 scale at {size}: CPU/token; memory/stream; p50 / p99"]
        assert scale.app == "10.0 us; 20.0 KB; 1.0 / 3.0 ms" and scale.target == ""
    at_1000 = rows["S3 scale at 1,000: CPU/token; memory/stream; p50 / p99"]
    assert at_1000.aiohttp == at_1000.peer == at_1000.app and at_1000.ratio == "1.0x; 1.0x"
    assert "S3 memory per stream at 100" not in rows
    memory = rows["S3 memory per stream at 1,000"]
    assert (memory.aiohttp, memory.target, memory.met) == ("20.0 KB", "<= 25 KB", "yes")
    assert rows["S3 memory per stream at 5,000"].peer == ""
    assert rows["S3 memory per stream at 10,000 (9,999 held)"].met == "yes"
    assert rows["S3 latency p50 / p99 at 5,000"].target == "p99 <= 25 ms"
    assert rows["S3 latency p50 / p99 at 10,000 (9,999 held)"].target == "p99 <= 50 ms"
    quick = by_figure(table.rows(made_up(QUICK)))
    assert quick["S3 latency p50 / p99 at 2,000 (1,999 held)"].target == "p99 <= 25 ms"


def test_redis_rows_against_the_same_runs_peer_or_not_measured():
    rows = by_figure(table.rows(made_up(FULL)))
    cpu = rows["Redis S2 CPU per token, window 0, 1 worker (aiohttp-sse: of the S2 rows)"]
    assert (cpu.app, cpu.aiohttp, cpu.met) == ("10.0 us", "10.0 us", "yes")
    trips = rows[
        "Redis S4 prompt round trips/s (20 at once), 1 worker (aiohttp-sse: of the S4 rows)"
    ]
    assert trips.met == "yes"
    released = rows[
        "Redis upstream released p50 / p99 at 1,000, 1 worker (0 never, 0 without text)"
    ]
    assert released.target == "p99 <= 53.0 ms (floor + 50)"
    memory = rows["Redis S3 memory per stream at 5,000, 1 worker: app; Redis"]
    assert (memory.app, memory.met) == ("20.0 KB; 5.0 KB", "yes")
    assert rows["Redis S3 latency p50 / p99 at 5,000, 1 worker"].target == "p99 <= 25 ms"
    assert rows["Redis S3 latency p50 / p99 at 10,000"].target == "p99 <= 50 ms"

    alone = by_figure(table.rows(made_up(FULL, sections=("redis",))))
    cpu = alone["Redis S2 CPU per token, window 0, 1 worker (aiohttp-sse: of the S2 rows)"]
    assert (cpu.aiohttp, cpu.met) == (table.NOT_MEASURED, table.NOT_MEASURED)
    assert not any(figure.startswith("S3 ") for figure in alone)

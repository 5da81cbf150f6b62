"""The benchmark's one table, made from the figures of a run (bench/run.py).

Each row is one figure: the app's value, the two yardstick peers' where they
ran the same scenario (aiohttp + aiohttp-sse, the app's own stack, and FastAPI
+ sse-starlette), the app's ratio to the aiohttp-sse peer, the lead's target
and whether the app met it, how many answers were checked and found exact, and
how busy the machine was with other work meanwhile ("busy else"; see
bench/procs.py). Targets are ratios within the same run where a peer or the
floor is the yardstick (the absolute figures are context: they follow the
machine). The rows read the figures by the keys that bench/scenarios.py gives
them; a figure that did not run shows as "-".

The table of a kept run (``bench/run.py --json figures.json``) again, as text
or as a Markdown table for the docs:

    python -m bench.table figures.json
    python -m bench.table figures.json --markdown
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, fields

NOT_MEASURED = "-"
# The lead's targets for the app.
THROUGHPUT_TIMES_PEER = 2.0  # S1 tokens/s, times the FastAPI peer's
CPU_US_PER_TOKEN = 20.0  # S1
LATENCY_OVER_FLOOR_MS = 2.0  # S2 p99, window 0, over the floor's p99
#: Held streams (S3): memory per stream at every size from ``MEMORY_TARGET_FROM``;
#: p99 at most ``HELD_P99_MS`` at the scale's top (the largest size up to
#: ``SCALE_TOP``: 5,000, or 2,000 with --quick), ``HELD_P99_PAST_TOP_MS`` past it
#: (10,000: more than one process can hold here, see bench/README.md).
KB_PER_STREAM = 25.0
MEMORY_TARGET_FROM = 1000
SCALE_TOP = 5000
HELD_P99_MS = 25.0
HELD_P99_PAST_TOP_MS = 50.0
#: Upstream released after every browser left: p99 at most the floor's p99 (the
#: client reading the upstream directly) of the same section plus this.
RELEASE_OVER_FLOOR_MS = 50.0
FIRST_TEXT_MS = 50.0
#: Rendering the answer while it streams (live_markdown.py): the answer_chunk
#: data at most this many times its final rendering's bytes, and the app's CPU
#: per token at most this many times the same app's with --plain-stream.
MD_BYTES_TIMES_FINAL = 1.5
MD_CPU_TIMES_PLAIN = 1.5
#: The shared Redis store (redis_store.py): one worker's relay latency at most
#: this much over the in-memory app's of the same run (S2, window 0).
REDIS_OVER_MEMORY_MS = 2.0
#: The peers, by their names in the figures.
AIOHTTP, FASTAPI = "aiohttp", "peer"


@dataclass
class Row:
    figure: str
    app: str = ""
    aiohttp: str = ""  # the aiohttp + aiohttp-sse peer
    peer: str = ""  # the FastAPI + sse-starlette peer
    ratio: str = ""  # app / the aiohttp-sse peer
    target: str = ""
    met: str = ""
    exact: str = ""
    busy_else: str = ""


HEADINGS = Row(
    "figure", "app", "aiohttp-sse", "FastAPI", "app/aiohttp-sse", "target", "met", "exact",
    "busy else",
)  # fmt: skip


def number(value: float | None, unit: str = "", digits: int = 0) -> str:
    return NOT_MEASURED if value is None else f"{value:,.{digits}f}{unit}"


def pair(first: float | None, second: float | None, unit: str = " ms") -> str:
    """Two figures of one kind, as "p50 / p99" shows them."""
    return f"{number(first, '', 1)} / {number(second, unit, 1)}"


def percent(share: float | None) -> str:
    return NOT_MEASURED if share is None else f"{share:.0%}"


def ratio(app: float | None, peer: float | None) -> float | None:
    return app / peer if app is not None and peer else None


def times(app: float | None, peer: float | None, digits: int = 1) -> str:
    """The ratio as "1.5x", or nothing where either figure is missing."""
    measured = ratio(app, peer)
    return "" if measured is None else number(measured, "x", digits)


def met(value: float | None, limit: float | None, at_least: bool = False) -> str:
    """Whether ``value`` meets the target: at most ``limit``, or at least it."""
    if value is None or limit is None:
        return NOT_MEASURED
    ok = value >= limit if at_least else value <= limit
    return "yes" if ok else "NO"


def exact(*figures: dict) -> str:
    exact_answers = sum(figure.get("exact", 0) for figure in figures)
    return f"{exact_answers:,}/{sum(figure.get('checked', 0) for figure in figures):,}"


def busiest(busy: dict[str, str], keys: Sequence[str]) -> str:
    """The largest "busy else" of several sections (one row over them)."""
    shares = [busy[key] for key in keys if key in busy and busy[key] != NOT_MEASURED]
    return max(shares, key=lambda share: int(share.rstrip("%"))) if shares else ""


def plus(value: float | None, extra: float | None) -> float | None:
    return None if value is None or extra is None else value + extra


def peers_row(
    figure: str,
    section: dict,
    cell: Callable[[dict], str],
    ratio_key: str,
    busy: str,
    app_name: str = "app",
    target: str = "",
    met_text: str = "",
    digits: int = 1,
) -> Row:
    """A row of the app and of both peers (each ``cell`` of its figures, empty where
    a peer did not run), and the app/aiohttp-sse ratio of ``ratio_key``."""
    app, aio, peer = (section.get(name, {}) for name in (app_name, AIOHTTP, FASTAPI))
    return Row(
        figure,
        cell(app),
        cell(aio) if aio else "",
        cell(peer) if peer else "",
        times(app.get(ratio_key), aio.get(ratio_key), digits),
        target,
        met_text,
        busy_else=busy,
    )


def three(
    figure: str,
    section: dict,
    key: str,
    unit: str,
    digits: int,
    busy: str,
    app_name: str = "app",
    target: str = "",
    met_text: str = "",
) -> Row:
    """One figure (``key``) of the app and of both peers, and the app/aiohttp-sse ratio."""

    def cell(figures: dict) -> str:
        return number(figures.get(key), unit, digits)

    return peers_row(figure, section, cell, key, busy, app_name, target, met_text, digits=2)


def pairs(
    figure: str,
    section: dict,
    busy: str,
    app_name: str = "app",
    target: str = "",
    met_text: str = "",
) -> Row:
    """p50 / p99 of the app and of both peers (ratio: of the p99s), and their answers."""

    def cell(figures: dict) -> str:
        return pair(figures.get("p50_ms"), figures.get("p99_ms"))

    row = peers_row(figure, section, cell, "p99_ms", busy, app_name, target, met_text)
    names = (app_name, AIOHTTP, FASTAPI)
    row.exact = exact(*(section[name] for name in names if section.get(name)))
    return row


def throughput_rows(figures: dict, busy: str) -> list[Row]:
    plan, s1 = figures["plan"], figures["s1"]
    app, no_window, peer = s1["app"], s1["app-w0"], s1.get(FASTAPI, {})
    shape = f"{plan['s1_streams']} x {plan['s1_tokens']}"
    versus_fastapi = ratio(app["tokens_per_s"], peer.get("tokens_per_s"))
    tokens = three(f"S1 tokens/s ({shape}, no delay)", s1, "tokens_per_s", "", 0, busy)
    tokens.target = f">= {THROUGHPUT_TIMES_PEER:g}x FastAPI: {number(versus_fastapi, 'x', 2)}"
    tokens.met = met(versus_fastapi, THROUGHPUT_TIMES_PEER, at_least=True)
    tokens.exact = exact(*(s1[name] for name in ("app", AIOHTTP, FASTAPI) if name in s1))
    cpu = three("S1 relay CPU per token", s1, "cpu_us_per_token", " us", 1, busy)
    cpu.target = f"<= {CPU_US_PER_TOKEN:g} us"
    cpu.met = met(app["cpu_us_per_token"], CPU_US_PER_TOKEN)
    return [
        tokens,
        cpu,
        Row(
            "S1 app --answer-window 0: tokens/s; CPU/token",
            f"{number(no_window['tokens_per_s'])}; "
            f"{number(no_window['cpu_us_per_token'], ' us', 1)}",
            exact=exact(no_window),
            busy_else=busy,
        ),
    ]


def latency_rows(figures: dict, busy: str) -> list[Row]:
    plan, s2 = figures["plan"], figures["s2"]
    floor, app, no_window = s2["floor"], s2["app"], s2["app-w0"]
    aio, peer = s2.get(AIOHTTP, {}), s2.get(FASTAPI, {})
    limit = plus(floor["p99_ms"], LATENCY_OVER_FLOOR_MS)
    shape = f"{plan['s2_streams']} x {plan['s2_tokens']} @ {plan['s2_delay'] * 1000:g} ms"
    cpu = three(
        "S2 CPU per token, window 0 (app --answer-window 0)",
        s2, "cpu_us_per_token", " us", 1, busy, app_name="app-w0",
        target="<= aiohttp-sse's",
        met_text=met(no_window.get("cpu_us_per_token"), aio.get("cpu_us_per_token")),
    )  # fmt: skip
    return [
        Row(
            f"S2 floor, no relay: p50 / p99 ({shape})",
            pair(floor["p50_ms"], floor["p99_ms"]),
            target="upstream -> client",
            exact=exact(floor),
            busy_else=busy,
        ),
        pairs(
            "S2 relay latency p50 / p99, window 0",
            s2,
            busy,
            app_name="app-w0",
            target=f"p99 <= {number(limit, ' ms', 1)}",
            met_text=met(no_window["p99_ms"], limit),
        ),
        cpu,
        Row(
            "  floor: the fake upstream's CPU per token",
            number(floor.get("cpu_us_per_token"), " us", 1),
            busy_else=busy,
        ),
        Row(
            "S2 relay latency p50 / p99, default window",
            pair(app["p50_ms"], app["p99_ms"]),
            exact=exact(app),
            busy_else=busy,
        ),
        Row(
            "S2 first event p99: window 0 / default",
            pair(no_window["first_event_p99_ms"], app["first_event_p99_ms"]),
            number(aio.get("first_event_p99_ms"), " ms", 1) if aio else "",
            number(peer.get("first_event_p99_ms"), " ms", 1) if peer else "",
            busy_else=busy,
        ),
    ]


def first_text_rows(figures: dict, busy: str) -> list[Row]:
    app = figures["first-text"]["app-hold"]
    return [
        Row(
            f"first answer text, default settings: p50 / max ({app['timed']} timed)",
            pair(app["p50_ms"], app["max_ms"]),
            target=f"max <= {FIRST_TEXT_MS:g} ms",
            met=met(app["max_ms"], FIRST_TEXT_MS),
            exact=exact(app),
            busy_else=busy,
        )
    ]


def scale_cell(s3: dict) -> str:
    """Held streams: CPU per token while holding; memory per stream; p50 / p99."""
    return (
        f"{number(s3.get('cpu_us_per_token'), ' us', 1)}; "
        f"{number(s3['kb_per_stream'], ' KB', 1)}; {pair(s3['p50_ms'], s3['p99_ms'])}"
    )


def held_context(s3: dict) -> str:
    """Held streams: the CPU shares (the relay; upstream + client), the streams
    opened and in how long, and the release p99 once everyone left."""
    others = s3["upstream_cpu_share"] + s3["client_cpu_share"]
    return (
        f"{percent(s3['cpu_share'])}; {percent(others)}; "
        f"{number(s3['opened'])} in {s3['opening_s']:.0f} s; {number(s3['release_p99_ms'], ' ms')}"
    )


def held_note(s3: dict) -> str:
    return "" if s3["held"] >= s3["streams"] else f" ({s3['held']:,} held)"


def held_rows(figures: dict, busy: dict[str, str]) -> list[Row]:
    """S3 on the app, a fresh process each size, and on each peer at
    ``s3_peer_size``: what was held; the scale (CPU per token and memory per
    stream at each size: flat is the goal); the targets."""
    plan = figures["plan"]
    apps = {size: figures[f"s3-{size}"] for size in plan["s3_sizes"] if f"s3-{size}" in figures}
    if not apps:
        return []
    peer_size = plan.get("s3_peer_size")
    peers = {name: figures.get(f"s3-{name}-{peer_size}", {}) for name in (AIOHTTP, FASTAPI)}

    def section(size: int) -> dict:
        """The app's figures at ``size``, and the peers' if they held as many."""
        ran = {name: s3 for name, s3 in peers.items() if s3 and size == peer_size}
        return {"app": apps[size], **ran}

    def busy_at(size: int) -> str:
        return busiest(busy, [f"s3-{size}", *(f"s3-{name}-{size}" for name in section(size))])

    def each(size: int, cell: Callable[[dict], str]) -> dict[str, str]:
        """``cell`` of each peer's figures at ``size``, as the Row's keywords."""
        at = section(size)
        return {name: cell(at[name]) if name in at else "" for name in (AIOHTTP, FASTAPI)}

    sizes = list(apps)
    ran_peers = [s3 for s3 in peers.values() if s3]
    table = [
        Row(
            f"S3 held of {' / '.join(f'{size:,}' for size in sizes)} "
            "(1 token/s, a fresh process each)",
            " / ".join(number(apps[size]["held"]) for size in sizes),
            **{
                name: f"{s3['held']:,} of {s3['streams']:,}" if s3 else ""
                for name, s3 in peers.items()
            },
            target="all",
            met=met(min(s3["held"] - s3["streams"] for s3 in apps.values()), 0, at_least=True),
            exact=exact(*apps.values(), *ran_peers),
            busy_else=busiest(busy, [key for key in busy if key.startswith("s3-")]),
        )
    ]
    for size in sizes:
        at = section(size)
        cpu_ratio = times(
            at["app"].get("cpu_us_per_token"), at.get(AIOHTTP, {}).get("cpu_us_per_token")
        )
        kb_ratio = times(at["app"]["kb_per_stream"], at.get(AIOHTTP, {}).get("kb_per_stream"))
        table.append(
            Row(
                f"S3 scale at {size:,}{held_note(apps[size])}: CPU/token; memory/stream; p50 / p99",
                scale_cell(apps[size]),
                ratio=f"{cpu_ratio}; {kb_ratio}" if AIOHTTP in at else "",
                **each(size, scale_cell),
                busy_else=busy_at(size),
            )
        )
    for size in sizes:
        table.append(
            Row(
                f"  at {size:,}: CPU relay; upstream + client; opened in; released p99 after",
                held_context(apps[size]),
                **each(size, held_context),
                busy_else=busy_at(size),
            )
        )
    for size in sizes:
        if size >= MEMORY_TARGET_FROM:
            table.append(
                three(
                    f"S3 memory per stream at {size:,}{held_note(apps[size])}",
                    section(size),
                    "kb_per_stream",
                    " KB",
                    1,
                    busy_at(size),
                    target=f"<= {KB_PER_STREAM:g} KB",
                    met_text=met(apps[size]["kb_per_stream"], KB_PER_STREAM),
                )
            )
    top = max((size for size in sizes if size <= SCALE_TOP), default=None)
    for size in sizes:
        if size == top or size > SCALE_TOP:
            limit = HELD_P99_MS if size == top else HELD_P99_PAST_TOP_MS
            s3 = apps[size]
            table.append(
                Row(
                    f"S3 latency p50 / p99 at {size:,}{held_note(s3)}",
                    pair(s3["p50_ms"], s3["p99_ms"]),
                    target=f"p99 <= {limit:g} ms",
                    met=met(s3["p99_ms"], limit),
                    busy_else=busy_at(size),
                )
            )
    return table


def round_trip_rows(figures: dict, busy: str) -> list[Row]:
    plan, s4 = figures["plan"], figures["s4"]
    app, floor = s4["app"], s4["floor"]
    aio = s4.get(AIOHTTP, {})
    key = "round_trips_per_s"
    trips = three(
        f"S4 prompt round trips/s ({plan['s4_workers']} at once)", s4, key, "", 0, busy,
        target=">= aiohttp-sse's", met_text=met(app[key], aio.get(key), at_least=True),
    )  # fmt: skip
    trips.exact = exact(*(s4[name] for name in ("app", AIOHTTP, FASTAPI) if name in s4))
    return [
        trips,
        three("S4 CPU per round trip", s4, "cpu_ms_per_round_trip", " ms", 2, busy),
        Row(
            "  floor: one request straight to the upstream: per s; the upstream's CPU",
            f"{number(floor[key])}; {number(floor.get('cpu_ms_per_round_trip'), ' ms', 2)}",
            exact=exact(floor),
            busy_else=busy,
        ),
    ]


def release_limit(floor: dict) -> tuple[float | None, str]:
    """The release target: p99 at most the floor's p99 + ``RELEASE_OVER_FLOOR_MS``."""
    limit = plus(floor.get("p99_ms"), RELEASE_OVER_FLOOR_MS)
    return limit, f"p99 <= {number(limit, ' ms', 1)} (floor + {RELEASE_OVER_FLOOR_MS:g})"


def release_rows(freed: dict, size: int, busy: str) -> list[Row]:
    floor, app = freed["floor"], freed["app"]
    never = app["missing"]
    limit, target = release_limit(floor)
    return [
        pairs(
            f"upstream released p50 / p99 at {size:,} ({never} never)",
            freed,
            busy,
            target=target,
            met_text="NO" if never else met(app["p99_ms"], limit),
        ),
        Row(
            f"  floor: client -> upstream, no relay, {size:,}",
            pair(floor["p50_ms"], floor["p99_ms"]),
            busy_else=busy,
        ),
    ]


def browser_rows(pages: dict, busy: str) -> list[Row]:
    rate = f"{pages['tokens_per_s']:,} tokens/s"
    rows = []
    for name, label in (("app", "default window"), ("app-w0", "window 0")):
        page = pages[name]
        rows.append(
            Row(
                f"browser: swaps/s, main thread busy; {rate}, {label}",
                f"{number(page['swaps_per_s'])}; {percent(page['busy_share'])}",
                exact=exact(page),
                busy_else=busy,
            )
        )
    return rows


def markdown_rows(figures: dict, busy: str) -> list[Row]:
    plan, md = figures["plan"], figures["markdown"]
    paced, fast, w0 = md["paced"], md["fast"], md["w0"]["md-w0"]
    pace = f"{plan['md_delay'] * 1000:g} ms/token"
    streams = plan["md_streams"]

    def wire(figure: str, app: dict) -> Row:
        return Row(
            figure,
            f"{number(app['bytes_ratio'], 'x', 2)} ({number(app['answer_bytes'])} / "
            f"{number(app['final_bytes'])} B, {number(app['chunks'])} chunks)",
            target=f"<= {MD_BYTES_TIMES_FINAL:g}x",
            met=met(app["bytes_ratio_max"], MD_BYTES_TIMES_FINAL),
            exact=exact(app),
            busy_else=busy,
        )

    def cpu(figure: str, both: dict) -> Row:
        rendered, plain = both["md"], both["md-plain"]
        us = f"{number(rendered['cpu_us_per_token'], '', 1)} / "
        us += number(plain["cpu_us_per_token"], " us", 1)
        return Row(
            figure,
            f"{number(rendered['cpu_vs_plain'], 'x', 2)} ({us})",
            target=f"<= {MD_CPU_TIMES_PLAIN:g}x plain",
            met=met(rendered["cpu_vs_plain"], MD_CPU_TIMES_PLAIN),
            exact=exact(rendered, plain),
            busy_else=busy,
        )

    return [
        wire(
            f"Markdown ({md['tokens']:,} tokens): chunk bytes / final HTML, default window, {pace}",
            paced["md"],
        ),
        wire("  the same, --answer-window 0 (each token rendered alone)", w0),
        cpu(f"Markdown CPU/token, rendered / plain: {streams} streams, {pace}", paced),
        cpu(f"  the same, {streams} streams at full speed", fast),
    ]


def redis_rows(figures: dict, busy: dict[str, str]) -> list[Row]:
    """The app on Redis, each figure next to the in-memory app's of the same section."""
    table = []
    if "redis-s1" in figures:
        table += redis_throughput_rows(figures, busy["redis-s1"])
    if "redis-s2" in figures:
        table += redis_latency_rows(figures, busy["redis-s2"])
    if "redis-s4" in figures:
        table += redis_round_trip_rows(figures, busy["redis-s4"])
    size = figures["plan"]["redis_release_size"]
    if f"redis-release-{size}" in figures:
        freed = figures[f"redis-release-{size}"]
        table += redis_release_rows(freed, size, busy[f"redis-release-{size}"])
    if "redis-stop" in figures:
        table += redis_stop_rows(figures["redis-stop"], busy["redis-stop"])
    if "redis-burst" in figures:
        table += redis_burst_rows(figures["redis-burst"], busy["redis-burst"])
    if "redis-keys" in figures:
        table.append(
            keys_row("Redis keys without an expiry, after these rows", figures["redis-keys"])
        )
    if "redis-log" in figures:
        table.append(log_row("Redis apps' logs, these rows", figures["redis-log"]))
    table += redis_one_worker_held_rows(figures, busy)
    size = figures["plan"]["redis_s3_size"]
    if f"redis-s3-{size}" in figures:
        table += redis_held_rows(figures[f"redis-s3-{size}"], busy[f"redis-s3-{size}"])
    return table


def per_token(app: dict) -> str:
    """Tokens/s; the relay's CPU per token (all its workers), and Redis's apart."""
    text = f"{number(app['tokens_per_s'])}; {number(app['cpu_us_per_token'], ' us', 1)}"
    if "store_cpu_us_per_token" in app:
        text += f" + Redis {number(app['store_cpu_us_per_token'], ' us', 1)}"
    return text


def redis_throughput_rows(figures: dict, busy: str) -> list[Row]:
    plan, s1 = figures["plan"], figures["redis-s1"]
    shape = f"{plan['s1_streams']} x {plan['s1_tokens']}"
    memory = s1["app"]["tokens_per_s"]
    rows = []
    for name, label in (("redis-1w", "1 worker"), ("redis-2w", "--workers 2 (both workers)")):
        app = s1[name]
        rows.append(
            Row(
                f"Redis S1 ({shape}), {label}: tokens/s; CPU/token + Redis's",
                per_token(app),
                ratio=number(ratio(app["tokens_per_s"], memory), "x in-mem", 2),
                exact=exact(app),
                busy_else=busy,
            )
        )
    rows.append(
        Row(
            "  in-memory app, same section: tokens/s; CPU/token",
            per_token(s1["app"]),
            exact=exact(s1["app"]),
            busy_else=busy,
        )
    )
    return rows


def plus_redis(figures: dict, key: str, unit: str, digits: int) -> str:
    """A Redis app's CPU figure, and Redis's own apart ("+ Redis")."""
    text = number(figures.get(key), unit, digits)
    if f"store_{key}" in figures:
        text += f" + Redis {number(figures[f'store_{key}'], unit, digits)}"
    return text


def aiohttp_of(figures: dict, section: str) -> dict:
    """The aiohttp-sse peer's figures in ``section`` of this run, or none."""
    return figures.get(section, {}).get(AIOHTTP, {})


def redis_latency_rows(figures: dict, busy: str) -> list[Row]:
    s2 = figures["redis-s2"]
    memory, redis, across = s2["app-w0"], s2["redis-1w-w0"], s2["redis-ab"]
    limit = plus(memory["p99_ms"], REDIS_OVER_MEMORY_MS)
    aio = aiohttp_of(figures, "s2")
    key = "cpu_us_per_token"
    return [
        Row(
            "Redis S2 relay latency p50 / p99, window 0, 1 worker",
            pair(redis["p50_ms"], redis["p99_ms"]),
            target=f"p99 <= {number(limit, ' ms', 1)}",
            met=NOT_MEASURED if limit is None else met(redis["p99_ms"], limit),
            exact=exact(redis),
            busy_else=busy,
        ),
        Row(
            "  in-memory app, window 0, same section",
            pair(memory["p50_ms"], memory["p99_ms"]),
            target=f"+ {REDIS_OVER_MEMORY_MS:g} ms: the target above",
            exact=exact(memory),
            busy_else=busy,
        ),
        Row(
            "Redis S2 CPU per token, window 0, 1 worker (aiohttp-sse: of the S2 rows)",
            plus_redis(redis, key, " us", 1),
            number(aio.get(key), " us", 1) if aio else NOT_MEASURED,
            ratio=times(redis.get(key), aio.get(key), 2),
            target="<= aiohttp-sse's",
            met=met(redis.get(key), aio.get(key)),
            busy_else=busy,
        ),
        Row(
            "  in-memory app, window 0, same section: CPU per token",
            number(memory.get(key), " us", 1),
            busy_else=busy,
        ),
        Row(
            "Redis S2 across processes: made on A, read on B (Last-Event-ID)",
            pair(across["p50_ms"], across["p99_ms"]),
            exact=exact(across),
            busy_else=busy,
        ),
        Row(
            "  the same answers read on A, which makes them",
            pair(across["producer_p50_ms"], across["producer_p99_ms"]),
            busy_else=busy,
        ),
    ]


def redis_round_trip_rows(figures: dict, busy: str) -> list[Row]:
    """S4 on one worker on Redis, against the aiohttp-sse peer of the S4 rows."""
    plan, s4 = figures["plan"], figures["redis-s4"]
    redis, memory, aio = s4["redis-1w"], s4["app"], aiohttp_of(figures, "s4")
    trips, cpu = "round_trips_per_s", "cpu_ms_per_round_trip"
    return [
        Row(
            f"Redis S4 prompt round trips/s ({plan['s4_workers']} at once), 1 worker "
            "(aiohttp-sse: of the S4 rows)",
            number(redis[trips]),
            number(aio.get(trips)) if aio else NOT_MEASURED,
            ratio=times(redis[trips], aio.get(trips), 2),
            target=">= aiohttp-sse's",
            met=met(redis[trips], aio.get(trips), at_least=True),
            exact=exact(redis),
            busy_else=busy,
        ),
        Row(
            "Redis S4 CPU per round trip, 1 worker",
            plus_redis(redis, cpu, " ms", 2),
            number(aio.get(cpu), " ms", 2) if aio else NOT_MEASURED,
            ratio=times(redis.get(cpu), aio.get(cpu), 2),
            busy_else=busy,
        ),
        Row(
            "  in-memory app, same section: round trips/s; CPU per round trip",
            f"{number(memory[trips])}; {number(memory.get(cpu), ' ms', 2)}",
            exact=exact(memory),
            busy_else=busy,
        ),
    ]


def redis_release_rows(freed: dict, size: int, busy: str) -> list[Row]:
    """Upstream release on Redis (target: the same section's floor + 50 ms), the
    in-memory app and the floor beside it."""
    floor = freed.get("floor", {})
    limit, target = release_limit(floor)
    rows = []
    for name, label in (("redis-1w", "1 worker"), ("redis-2w", "--workers 2"), ("app", "")):
        app = freed[name]
        never = app["missing"]
        counts = f"{never:,.0f} never, {app['failed']:,.0f} without text"
        if name == "app":
            figure = f"  in-memory app, same section ({counts})"
        else:
            figure = f"Redis upstream released p50 / p99 at {size:,}, {label} ({counts})"
        rows.append(
            Row(
                figure,
                pair(app["p50_ms"], app["p99_ms"]),
                target="" if name == "app" else target,
                met="" if name == "app" else "NO" if never else met(app["p99_ms"], limit),
                exact=exact(app),
                busy_else=busy,
            )
        )
    if floor:
        rows.append(
            Row(
                f"  floor: client -> upstream, no relay, {size:,}, same section",
                pair(floor["p50_ms"], floor["p99_ms"]),
                busy_else=busy,
            )
        )
    return rows


def redis_stop_rows(stopped: dict, busy: str) -> list[Row]:
    across, memory = stopped["redis-ab"], stopped["app"]
    return [
        Row(
            f"Redis stop on B, made on A: POST -> upstream closed, p50 / p99 "
            f"({across['missing']} never)",
            pair(across["p50_ms"], across["p99_ms"]),
            exact=exact(across),
            busy_else=busy,
        ),
        Row(
            f"  in-memory app, stop on the same process ({memory['missing']} never)",
            pair(memory["p50_ms"], memory["p99_ms"]),
            exact=exact(memory),
            busy_else=busy,
        ),
    ]


def redis_burst_rows(burst: dict, busy: str) -> list[Row]:
    rows = []
    for name, figure in (
        ("redis-1w", f"Redis {burst['redis-1w']['streams']:,} first GETs at once, 1 worker"),
        ("app", "  in-memory app, same section"),
    ):
        app = burst[name]
        rows.append(
            Row(
                f"{figure}: refused; slowest first event",
                f"{number(app['refused'])}; {number(app['first_event_max_ms'], ' ms')}",
                exact=exact(app),
                busy_else=busy,
            )
        )
    return rows


def log_row(figure: str, log: dict[str, int]) -> Row:
    """The Redis apps' warnings: answers ended as orphaned by another worker, a
    Redis pool with no connection free, answers not kept in their conversation."""
    return Row(
        f"{figure}: ended as orphans; no connection; not kept",
        f"{log['ended_as_orphans']:,}; {log['no_connection']:,}; {log['not_kept']:,}",
    )


def keys_row(figure: str, keys: list[str]) -> Row:
    """How many Redis keys had no time to live, and the first few of them."""
    named = f" ({', '.join(keys[:3])})" if keys else ""
    return Row(figure, f"{len(keys):,}{named}", target="0", met=met(len(keys), 0))


def redis_one_worker_held_rows(figures: dict, busy: dict[str, str]) -> list[Row]:
    """Held streams on one worker on Redis, a fresh Redis and app each size: the
    scale as S3's rows (CPU per token, Redis's apart; memory per stream, the
    app's and Redis's apart), with the in-memory targets."""
    sizes = figures["plan"].get("redis_s3_1w_sizes", ())
    runs = {
        size: figures[f"redis-1w-s3-{size}"] for size in sizes if f"redis-1w-s3-{size}" in figures
    }
    if not runs:
        return []
    at = {size: busy.get(f"redis-1w-s3-{size}", "") for size in runs}
    table = [
        Row(
            f"Redis S3 streams held of {' / '.join(f'{size:,}' for size in runs)}, 1 worker "
            "(a fresh Redis each)",
            " / ".join(number(s3["held"]) for s3 in runs.values()),
            target="all",
            met=met(min(s3["held"] - s3["streams"] for s3 in runs.values()), 0, at_least=True),
            exact=exact(*runs.values()),
            busy_else=busiest(busy, [f"redis-1w-s3-{size}" for size in runs]),
        )
    ]
    for size, s3 in runs.items():
        table.append(
            Row(
                f"Redis S3 1 worker at {size:,}{held_note(s3)}: CPU/token; KB/stream app; Redis; "
                "p50 / p99",
                f"{plus_redis(s3, 'cpu_us_per_token', ' us', 1)}; "
                f"{number(s3['kb_per_stream'], ' KB', 1)}; "
                f"{number(s3['store_kb_per_stream'], ' KB', 1)}; "
                f"{pair(s3['p50_ms'], s3['p99_ms'])}",
                busy_else=at[size],
            )
        )
    for size, s3 in runs.items():
        table.append(
            Row(
                f"  at {size:,}: CPU worker; upstream + client; opened in; released p99 after",
                held_context(s3),
                busy_else=at[size],
            )
        )
    for size, s3 in runs.items():
        if size >= MEMORY_TARGET_FROM:
            table.append(
                Row(
                    f"Redis S3 memory per stream at {size:,}{held_note(s3)}, 1 worker: app; Redis",
                    f"{number(s3['kb_per_stream'], ' KB', 1)}; "
                    f"{number(s3['store_kb_per_stream'], ' KB', 1)}",
                    target=f"app <= {KB_PER_STREAM:g} KB",
                    met=met(s3["kb_per_stream"], KB_PER_STREAM),
                    busy_else=at[size],
                )
            )
    top = max((size for size in runs if size <= SCALE_TOP), default=None)
    if top is not None:
        s3 = runs[top]
        table.append(
            Row(
                f"Redis S3 latency p50 / p99 at {top:,}{held_note(s3)}, 1 worker",
                pair(s3["p50_ms"], s3["p99_ms"]),
                target=f"p99 <= {HELD_P99_MS:g} ms",
                met=met(s3["p99_ms"], HELD_P99_MS),
                busy_else=at[top],
            )
        )
    keys = [key for s3 in runs.values() for key in s3["keys_without_expiry"]]
    table.append(keys_row("Redis S3 1 worker: keys without an expiry, after", keys))
    logs = [s3["log"] for s3 in runs.values()]
    table.append(
        log_row(
            "Redis S3 1 worker: app's logs", {key: sum(log[key] for log in logs) for key in logs[0]}
        )
    )
    return table


def redis_held_rows(s3: dict, busy: str) -> list[Row]:
    size, held = s3["streams"], s3["held"]
    limit = HELD_P99_PAST_TOP_MS if size > SCALE_TOP else HELD_P99_MS
    at = f"at {held:,}"
    return [
        Row(
            f"Redis S3 streams held of {size:,}, --workers 2 (1 token/s each)",
            number(held),
            target=f"{size:,}",
            met=met(held, size, at_least=True),
            exact=exact(s3),
            busy_else=busy,
        ),
        Row(
            f"Redis S3 memory per stream {at}: app (both workers); Redis",
            f"{number(s3['kb_per_stream'], ' KB', 1)}; "
            f"{number(s3['store_kb_per_stream'], ' KB', 1)}",
            target=f"app <= {KB_PER_STREAM:g} KB",
            met=met(s3["kb_per_stream"], KB_PER_STREAM),
            busy_else=busy,
        ),
        Row(
            f"Redis S3 latency p50 / p99 {at}",
            pair(s3["p50_ms"], s3["p99_ms"]),
            target=f"p99 <= {limit:g} ms",
            met=met(s3["p99_ms"], limit),
            busy_else=busy,
        ),
        Row(
            f"Redis S3 CPU {at}: workers; Redis; upstream + client; per token + Redis's",
            f"{percent(s3['cpu_share'])}; {percent(s3['store_cpu_share'])}; "
            f"{percent(s3['upstream_cpu_share'] + s3['client_cpu_share'])} of a core; "
            f"{plus_redis(s3, 'cpu_us_per_token', ' us', 1)}",
            busy_else=busy,
        ),
        Row(
            f"Redis S3 opened in {s3['opening_s']:.0f} s: per s first / last 10 s; refused; errors",
            f"{number(s3['opened'])}: {number(s3['opened_per_s_first'])} / "
            f"{number(s3['opened_per_s_last'])}; {number(s3['refused'])}; {number(s3['errored'])}",
            busy_else=busy,
        ),
        Row(
            f"Redis S3 open files per worker {at}; released p99 after "
            f"({s3['not_released']:,} never)",
            f"{', '.join(f'{count:,}' for count in s3['open_files'])}; "
            f"{number(s3['release_p99_ms'], ' ms')}",
            busy_else=busy,
        ),
        keys_row("Redis S3 keys without an expiry, after", s3["keys_without_expiry"]),
        log_row("Redis S3 app's log", s3["log"]),
    ]


def rows(figures: dict) -> list[Row]:
    """Every row of the table, in the scenarios' order (of the sections that ran)."""
    plan = figures["plan"]
    busy = {key: percent(share) for key, share in figures["other_load"].items()}
    table = []
    if "s1" in figures:
        table += throughput_rows(figures, busy["s1"])
    if "s2" in figures:
        table += latency_rows(figures, busy["s2"])
    if "first-text" in figures:
        table += first_text_rows(figures, busy["first-text"])
    table += held_rows(figures, busy)
    if "s4" in figures:
        table += round_trip_rows(figures, busy["s4"])
    for size in plan["release_sizes"]:
        if f"release-{size}" in figures:
            table += release_rows(figures[f"release-{size}"], size, busy[f"release-{size}"])
    if "browser" in figures:
        table += browser_rows(figures["browser"], busy["browser"])
    if "markdown" in figures:
        table += markdown_rows(figures, busy["markdown"])
    table += redis_rows(figures, busy)
    return table


def render(table: list[Row]) -> str:
    """The rows as aligned text columns, headings first."""
    cells = [astuple(row) for row in [HEADINGS, *table]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(fields(Row)))]
    lines = [
        " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def render_markdown(table: list[Row]) -> str:
    """The rows as a Markdown table, headings first (a "|" in a cell escaped)."""
    cells = [[cell.replace("|", "\\|") for cell in astuple(row)] for row in [HEADINGS, *table]]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    lines.insert(1, "|" + "---|" * len(fields(Row)))
    return "\n".join(lines)


def answers_checked(figures: dict) -> tuple[int, int]:
    """(exact, checked) answers over the whole run (every run's, summed in the medians)."""
    found = []
    todo = [value for key, value in figures.items() if not key.endswith("-runs")]
    while todo:
        value = todo.pop()
        if isinstance(value, dict):
            if "checked" in value:
                found.append(value)
            else:
                todo += value.values()
    return sum(f["exact"] for f in found), sum(f["checked"] for f in found)


def main() -> None:
    parser = argparse.ArgumentParser(description="The table of a run kept with --json.")
    parser.add_argument("figures", type=argparse.FileType(), help="bench/run.py --json's file")
    parser.add_argument("--markdown", action="store_true", help="as a Markdown table")
    args = parser.parse_args()
    rows_ = rows(json.load(args.figures))
    print(render_markdown(rows_) if args.markdown else render(rows_))


if __name__ == "__main__":
    main()

"""The benchmark's one table, made from the figures of a run (bench/run.py).

Each row is one figure: the app's value, the FastAPI peer's where it ran
the same scenario, their ratio, the lead's target and whether the app met
it, how many answers were checked and found exact, and how busy the machine
was with other work meanwhile ("busy else"; see bench/procs.py). The rows
read the figures by the keys that bench/scenarios.py gives them.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

NOT_MEASURED = "-"
# The lead's targets for the app.
THROUGHPUT_TIMES_PEER = 2.0
CPU_US_PER_TOKEN = 20.0
LATENCY_OVER_FLOOR_MS = 2.0
KB_PER_STREAM = 25.0
HELD_P99_MS = 50.0
ROUND_TRIPS_TIMES_PEER = 5.0
RELEASE_P99_MS = 100.0
FIRST_TEXT_MS = 50.0
#: Rendering the answer while it streams (live_markdown.py): the answer_chunk
#: data at most this many times its final rendering's bytes, and the app's CPU
#: per token at most this many times the same app's with --plain-stream.
MD_BYTES_TIMES_FINAL = 1.5
MD_CPU_TIMES_PLAIN = 1.5
#: The shared Redis store (redis_store.py): one worker's relay latency at most
#: this much over the in-memory app's of the same run (S2, window 0).
REDIS_OVER_MEMORY_MS = 2.0


@dataclass
class Row:
    figure: str
    app: str = ""
    peer: str = ""
    ratio: str = ""
    target: str = ""
    met: str = ""
    exact: str = ""
    busy_else: str = ""


HEADINGS = Row("figure", "app", "FastAPI peer", "app/peer", "target", "met", "exact", "busy else")


def number(value: float | None, unit: str = "", digits: int = 0) -> str:
    return NOT_MEASURED if value is None else f"{value:,.{digits}f}{unit}"


def pair(first: float | None, second: float | None, unit: str = " ms") -> str:
    """Two figures of one kind, as "p50 / p99" shows them."""
    return f"{number(first, '', 1)} / {number(second, unit, 1)}"


def percent(share: float | None) -> str:
    return NOT_MEASURED if share is None else f"{share:.0%}"


def ratio(app: float | None, peer: float | None) -> float | None:
    return app / peer if app is not None and peer else None


def met(value: float | None, limit: float, at_least: bool = False) -> str:
    """Whether ``value`` meets the target: at most ``limit``, or at least it."""
    if value is None:
        return NOT_MEASURED
    ok = value >= limit if at_least else value <= limit
    return "yes" if ok else "NO"


def exact(*figures: dict) -> str:
    exact_answers = sum(figure.get("exact", 0) for figure in figures)
    return f"{exact_answers:,}/{sum(figure.get('checked', 0) for figure in figures):,}"


def versus_peer(figure: str, app: dict, peer: dict, key: str, times: float, busy: str) -> Row:
    """A rate of the app and of the peer, where the target is ``times`` the peer's."""
    measured = ratio(app[key], peer[key])
    return Row(
        figure,
        number(app[key]),
        number(peer[key]),
        number(measured, "x", 1),
        f">= {times:g}x peer",
        met(measured, times, at_least=True),
        exact(app, peer),
        busy,
    )


def throughput_rows(figures: dict, busy: str) -> list[Row]:
    plan, s1 = figures["plan"], figures["s1"]
    app, no_window, peer = s1["app"], s1["app-w0"], s1["peer"]
    shape = f"{plan['s1_streams']} x {plan['s1_tokens']}"
    return [
        versus_peer(
            f"S1 tokens/s ({shape}, no delay)",
            app,
            peer,
            "tokens_per_s",
            THROUGHPUT_TIMES_PEER,
            busy,
        ),
        Row(
            "S1 relay CPU per token",
            number(app["cpu_us_per_token"], " us", 1),
            number(peer["cpu_us_per_token"], " us", 1),
            target=f"<= {CPU_US_PER_TOKEN:g} us",
            met=met(app["cpu_us_per_token"], CPU_US_PER_TOKEN),
            busy_else=busy,
        ),
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
    floor, app, no_window, peer = s2["floor"], s2["app"], s2["app-w0"], s2["peer"]
    limit = None if floor["p99_ms"] is None else floor["p99_ms"] + LATENCY_OVER_FLOOR_MS
    shape = f"{plan['s2_streams']} x {plan['s2_tokens']} @ {plan['s2_delay'] * 1000:g} ms"
    return [
        Row(
            f"S2 floor, no relay: p50 / p99 ({shape})",
            pair(floor["p50_ms"], floor["p99_ms"]),
            target="upstream -> client",
            exact=exact(floor),
            busy_else=busy,
        ),
        Row(
            "S2 relay latency p50 / p99, window 0",
            pair(no_window["p50_ms"], no_window["p99_ms"]),
            pair(peer["p50_ms"], peer["p99_ms"]),
            target=f"p99 <= {number(limit, ' ms', 1)}",
            met=NOT_MEASURED if limit is None else met(no_window["p99_ms"], limit),
            exact=exact(no_window, peer),
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
            number(peer["first_event_p99_ms"], " ms", 1),
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


def held_rows(s3: dict, busy: str) -> list[Row]:
    size = s3["streams"]
    return [
        Row(
            f"S3 streams held of {size:,} (1 token/s each)",
            number(s3["held"]),
            target=f"{size:,}",
            met=met(s3["held"], size, at_least=True),
            exact=exact(s3),
            busy_else=busy,
        ),
        Row(
            f"S3 memory per stream at {size:,}",
            number(s3["kb_per_stream"], " KB", 1),
            target=f"<= {KB_PER_STREAM:g} KB",
            met=met(s3["kb_per_stream"], KB_PER_STREAM),
            busy_else=busy,
        ),
        Row(
            f"S3 latency p50 / p99 at {size:,}",
            pair(s3["p50_ms"], s3["p99_ms"]),
            target=f"p99 < {HELD_P99_MS:g} ms",
            met=met(s3["p99_ms"], HELD_P99_MS),
            busy_else=busy,
        ),
        Row(
            f"S3 CPU while holding {size:,}: app; upstream + client",
            f"{percent(s3['cpu_share'])}; "
            f"{percent(s3['upstream_cpu_share'] + s3['client_cpu_share'])} of a core",
            busy_else=busy,
        ),
        Row(
            f"S3 opened in {s3['opening_s']:.0f} s; released p99 after",
            f"{number(s3['opened'])}; {number(s3['release_p99_ms'], ' ms')}",
            busy_else=busy,
        ),
    ]


def round_trip_rows(figures: dict, busy: str) -> list[Row]:
    plan, s4 = figures["plan"], figures["s4"]
    figure = f"S4 prompt round trips/s ({plan['s4_workers']} at once)"
    key = "round_trips_per_s"
    return [
        versus_peer(figure, s4["app"], s4["peer"], key, ROUND_TRIPS_TIMES_PEER, busy),
        Row(
            "  floor: one request straight to the upstream",
            number(s4["floor"][key]),
            exact=exact(s4["floor"]),
            busy_else=busy,
        ),
    ]


def release_rows(freed: dict, size: int, busy: str) -> list[Row]:
    floor, app, peer = freed["floor"], freed["app"], freed["peer"]
    never = app["missing"]
    return [
        Row(
            f"upstream released p50 / p99 at {size:,} ({never} never)",
            pair(app["p50_ms"], app["p99_ms"]),
            pair(peer["p50_ms"], peer["p99_ms"]),
            target=f"p99 <= {RELEASE_P99_MS:g} ms",
            met="NO" if never else met(app["p99_ms"], RELEASE_P99_MS),
            exact=exact(app, peer),
            busy_else=busy,
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
        table += redis_latency_rows(figures["redis-s2"], busy["redis-s2"])
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


def redis_latency_rows(s2: dict, busy: str) -> list[Row]:
    memory, redis, across = s2["app-w0"], s2["redis-1w-w0"], s2["redis-ab"]
    limit = None if memory["p99_ms"] is None else memory["p99_ms"] + REDIS_OVER_MEMORY_MS
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


def redis_release_rows(freed: dict, size: int, busy: str) -> list[Row]:
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
                target="" if name == "app" else f"p99 <= {RELEASE_P99_MS:g} ms",
                met="" if name == "app" else "NO" if never else met(app["p99_ms"], RELEASE_P99_MS),
                exact=exact(app),
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


def redis_held_rows(s3: dict, busy: str) -> list[Row]:
    size, held = s3["streams"], s3["held"]
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
            target=f"p99 < {HELD_P99_MS:g} ms",
            met=met(s3["p99_ms"], HELD_P99_MS),
            busy_else=busy,
        ),
        Row(
            f"Redis S3 CPU {at}: workers; Redis; upstream + client",
            f"{percent(s3['cpu_share'])}; {percent(s3['store_cpu_share'])}; "
            f"{percent(s3['upstream_cpu_share'] + s3['client_cpu_share'])} of a core",
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
    for size in plan["s3_sizes"]:
        if f"s3-{size}" in figures:
            table += held_rows(figures[f"s3-{size}"], busy[f"s3-{size}"])
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

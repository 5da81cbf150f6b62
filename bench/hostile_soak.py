"""Hostile soak: honest users keep being served while hostile clients attack the server.

    python bench/hostile_soak.py [--seconds 30] [--honest 20] [--flood 50] [--seed 1]

It starts ``server.py`` on a free loopback port (demo provider, a short pause
per word) with its default limits, except ``--uid-ttl 10`` so that the
prompts the flood never opened expire soon after the run, and for the given
seconds runs honest users (each from its own loopback address, a prompt every
2.1 s, each answer read to ``close`` and checked) alongside slow bodies,
silent connections, a flood of prompts nobody opens, a reconnect storm and a
multipart flood. tests/hostile_soak.py says what each does; a short run of
the same code is in the test suite (tests/test_hostile_soak.py).

It prints, for the honest users, prompts sent, answered exactly, refused and
failed, and the p50 and p99 of the time from the POST to the first event and
to ``close``; what each hostile kind got; /healthz and the server's memory
along the way and after a short wait. Exit status 1 if the honest users were
not served (fewer than 95% answered exactly, any failed, or a refusal other
than the server being full) or the server did not end clean.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.hostile_soak import Plan, describe, hostile_soak  # noqa: E402

DEFAULTS = Plan()


def seconds_or_default(text: str) -> float | None:
    """A flag's value in seconds; "default" for the server's own default."""
    return None if text == "default" else float(text)


def parse_plan(argv: list[str] | None = None) -> tuple[Plan, dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--seconds", type=float, default=DEFAULTS.seconds, help="how long the clients run")
    add("--honest", type=int, default=DEFAULTS.honest, help="honest users, one address each")
    add("--flood", type=int, default=DEFAULTS.flood, help="addresses flooding prompts")
    add("--slow", type=int, default=DEFAULTS.slow, help="addresses sending slow bodies")
    add("--slow-connections", type=int, default=DEFAULTS.slow_connections,
        help="connections each slow address tries to hold")  # fmt: skip
    add("--silent", type=int, default=DEFAULTS.silent, help="addresses holding silent connections")
    add("--silent-connections", type=int, default=DEFAULTS.silent_connections,
        help="connections each silent address holds")  # fmt: skip
    add("--storm", type=int, default=DEFAULTS.storm, help="addresses in the reconnect storm")
    add("--multipart", type=int, default=DEFAULTS.multipart, help="addresses posting multipart")
    add("--seed", type=int, default=DEFAULTS.seed)
    for flag, name in [
        ("--uid-ttl", "uid_ttl"),
        ("--request-timeout", "request_timeout"),
        ("--grace-period", "grace_period"),
    ]:
        value = getattr(DEFAULTS, name)
        add(flag, type=seconds_or_default, default=value, metavar="SECONDS",
            help=f"server.py's {flag} ('default': the server's own; "
            f"here {'the default' if value is None else f'{value:g}'})")  # fmt: skip
    add("--server", type=Path, default=ROOT / "server.py",
        help="the server to run (to measure a change before proposing it)")  # fmt: skip
    add("--server-log", type=Path, help="write the server's log to this file")
    args = vars(parser.parse_args(argv))
    return Plan(**{key: args[key] for key in Plan.__dataclass_fields__}), args


async def main() -> int:
    plan, args = parse_plan()
    report = await hostile_soak(plan, args["server"])
    log = args["server_log"]
    if log is not None:
        log.write_text(report.server_log)
    print("\n".join(describe(report)))
    return 1 if report.problems() else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

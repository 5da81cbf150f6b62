"""A short hostile soak (bench/hostile_soak.py runs the full one): honest users are
served while slow bodies, silent connections, a pending flood, a reconnect storm and
a multipart flood attack the server, and the server forgets everything afterwards."""

from tests.hostile_soak import (
    ACCEPTABLE_HONEST_REFUSALS,
    Plan,
    describe,
    hostile_soak,
)

# server.py with its default limits, but a run of seconds, not minutes: a prompt the
# flood never opened expires after 1 s (not 60), a finished stream is kept 1 s for a
# resume (not 5), and a body or request line that never ends is cut after 2 s (not 10).
SHORT = Plan(seconds=6.0, seed=3, uid_ttl=1.0, grace_period=1.0, request_timeout=2.0)

# The share of honest prompts answered exactly, in this short run: six seconds
# on a shared machine make the share noisy (a single 503 is 2%), so the suite
# asks less than the benchmark's MIN_EXACT_SHARE; `python bench/hostile_soak.py`
# measures it over 30 s. Every honest refusal must still be the server being full.
IN_SUITE_MIN_SHARE = 0.85


async def test_honest_users_are_served_among_hostile_clients():
    report = await hostile_soak(SHORT)
    summary = "\n".join(describe(report))
    honest, hostile = report.honest, report.hostile

    assert honest.sent >= SHORT.honest, summary
    assert honest.failed == [], summary  # every answer opened was exact, and ended
    assert set(honest.refused) <= ACCEPTABLE_HONEST_REFUSALS, summary
    assert report.clean, summary  # /healthz back to zero
    assert report.server_log_problems == [], summary
    assert report.hostile_process_problem == "" and not report.cut_at_end, summary
    # Each attack was made, and met the limit the server has for it.
    assert hostile["slow body"].outcomes["408 body too slow"] > 0, summary
    assert hostile["slow body"].outcomes["429 connections per client"] > 0, summary
    assert hostile["silent"].outcomes["nothing: dropped"] > 0, summary
    assert hostile["silent"].outcomes["half a request line: dropped"] > 0, summary
    assert hostile["pending flood"].outcomes["200"] > 0, summary  # stored, never opened
    assert hostile["reconnect storm"].outcomes["extra listener refused"] > 0, summary
    assert hostile["reconnect storm"].outcomes["reconnect refused (expired)"] > 0, summary
    assert hostile["multipart"].outcomes["415 not a form"] > 0, summary
    assert honest.exact >= IN_SUITE_MIN_SHARE * honest.sent, summary

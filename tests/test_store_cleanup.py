"""What the store forgets on its own, so that memory stays flat on a long-running server."""

import server
from server import STORE
from tests.conftest import post_prompt
from tests.waiting import eventually, healthz

TIMEOUT_S = 5.0


async def test_idle_clients_rate_counters_are_forgotten(start_app, monkeypatch):
    # Each client IP has a counter of its prompts in the last minute. Once the
    # minute has passed, the background sweep drops it: without that, every
    # address that ever sent a prompt would stay in memory for good.
    monkeypatch.setattr(server, "RATE_WINDOW_S", 0.2)
    client = await start_app(uid_ttl=0.2)  # the sweep runs every uid_ttl / 4
    limits = client.app[STORE].limits
    await post_prompt(client)
    assert limits.clients_counted() == 1

    await eventually(lambda: limits.clients_counted() == 0, within=TIMEOUT_S)


async def test_a_prompt_nobody_streams_expires(start_app):
    client = await start_app(uid_ttl=0.2)
    await post_prompt(client)
    await eventually(lambda: nothing_pending(client), within=TIMEOUT_S)


async def nothing_pending(client) -> bool:
    return (await healthz(client))["uids_pending"] == 0

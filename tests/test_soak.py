"""A small soak (bench/soak.py runs a big one): random disconnects leave nothing behind."""

from server import STORE
from tests.soak import GRACE_S, UID_TTL_S, soak


async def test_random_disconnects_leave_nothing_behind(start_app):
    client = await start_app(
        demo_delay=0.001, grace_period=GRACE_S, uid_ttl=UID_TTL_S, max_conversations=30
    )
    report = await soak(str(client.make_url("")).rstrip("/"), prompts=200, concurrency=20, seed=7)

    assert report.wrong == []
    assert report.exact == report.fates["read"] + report.fates["resume"] > 0
    assert report.fates["resume"] > 0 and report.fates["leave"] > 0
    assert report.clean, report.health
    # 66 were had, 20 at a time: the least recently used were forgotten.
    assert report.health["conversations"] == 30
    kept = client.app[STORE].conversations  # its running count of characters is exact
    assert kept.kept_chars == sum(conversation.chars() for conversation in kept) > 0

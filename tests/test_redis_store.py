"""The shared store: two workers (two apps, each with its own RedisStore) on one real
redis-server. Any worker serves any request; Stop, the grace period and the
limits count across workers; every key expires; the password stays secret.

Real worker processes (gunicorn, SIGKILL, SIGTERM) are in test_workers.py.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

import redis_store
from providers.events import Answer, Reasoning
from redis_store import STORE_UNREACHABLE
from server import MINE_STREAMING, RETRY_FIELD, STOPPED_BY_SERVER, STORE, STORE_LOST_REASON
from tests.conftest import Hang, Pause, ScriptedProvider, post_prompt
from tests.redis_server import PASSWORD
from tests.snippet import uid_from_snippet
from tests.sse_client import answer_of, parse_stream
from tests.test_hang_up import provider_that_connects
from tests.test_resume import PIECES, read_events, slow_answer
from tests.waiting import eventually


async def test_a_prompt_posted_to_one_worker_streams_from_another(start_workers):
    a, b = await start_workers(provider=slow_answer())
    uid = await post_prompt(a, "Tell me a story")

    events, _ = parse_stream(await (await b.get("/response-stream", params={"uid": uid})).text())

    assert answer_of(events) == "".join(PIECES)
    assert [e.event for e in events[-2:]] == ["final_answer", "close"]
    assert [int(e.id) for e in events] == list(range(1, len(events) + 1))


@pytest.mark.parametrize("cut_after", [1, 2, 4, 6])
@pytest.mark.parametrize("producer", ["first", "second"])
async def test_a_reconnect_to_another_worker_resumes_without_loss_or_repeat(
    start_workers, cut_after, producer
):
    provider = slow_answer()
    a, b = await start_workers(provider=provider, grace_period=5)
    uid = await post_prompt(a)
    first, then = (a, b) if producer == "first" else (b, a)

    cut = await first.get("/response-stream", params={"uid": uid})
    before = await read_events(cut, cut_after)
    cut.close()  # the connection drops; the browser comes back through the other worker
    resumed = await then.get(
        "/response-stream", params={"uid": uid}, headers={"Last-Event-ID": before[-1].id}
    )
    after, _ = parse_stream(await resumed.text())

    ids = [int(e.id) for e in before + after]
    assert ids == list(range(1, len(ids) + 1))  # nothing lost, nothing repeated
    assert answer_of(before + after) == "".join(PIECES)
    assert [e.event for e in after[-2:]] == ["final_answer", "close"]
    assert provider.started == 1  # the same generation went on


async def streaming_on_a(start_workers):
    """Two workers; a conversation's answer streaming on A, its first two events read:
    the other worker B, the conversation's id, the uid, A's open stream, those events."""
    provider = ScriptedProvider([Answer("Early words. "), Pause(0.3), Answer("Late words.")])
    a, b = await start_workers(provider=provider, grace_period=5)
    posted = await a.post("/process_prompt", data={"prompt": "hi"})
    cid = posted.headers["HX-Push-Url"].rsplit("/", 1)[1]
    uid = uid_from_snippet(await posted.text())
    listening = await a.get("/response-stream", params={"uid": uid})
    return b, cid, uid, listening, await read_events(listening, 2)


async def test_a_page_reloaded_on_another_worker_mid_stream_shows_the_whole_answer(start_workers):
    b, cid, uid, listening, _ = await streaming_on_a(start_workers)

    page = await (await b.get(f"/c/{cid}")).text()
    assert f"uid={uid}&amp;after=0" in page  # B shows the stream from its first event
    replay = await b.get("/response-stream", params={"uid": uid, "after": "0"})
    events, _ = parse_stream(await replay.text())

    assert answer_of(events) == "Early words. Late words."
    listening.close()


async def test_stop_on_one_worker_ends_the_generation_on_another_within_200_ms(start_workers):
    provider = ScriptedProvider([Answer("Half an "), Answer("answer"), Hang()])
    a, b = await start_workers(provider=provider)
    uid = await post_prompt(a)
    stream = await a.get("/response-stream", params={"uid": uid})
    await stream.content.readuntil(b"data: answer\n\n")

    asked = time.monotonic()
    assert (await b.post("/stop", params={"uid": uid})).status == 204
    await asyncio.wait_for(provider.closed.wait(), timeout=2)
    released = time.monotonic() - asked
    events, _ = parse_stream(await asyncio.wait_for(stream.text(), timeout=2))

    assert released < 0.2, f"the upstream was released {released * 1000:.0f} ms after Stop"
    assert "You stopped the answer here." in events[-2].data


async def test_the_grace_period_counts_listeners_on_every_worker(start_workers):
    provider = ScriptedProvider([Answer("a"), Hang()])
    a, b = await start_workers(provider=provider, grace_period=0.3)
    uid = await post_prompt(a)
    first = await a.get("/response-stream", params={"uid": uid})
    before = await read_events(first, 2)  # thought, answer_chunk: A produces it
    second = await b.get(
        "/response-stream", params={"uid": uid}, headers={"Last-Event-ID": before[-1].id}
    )
    await asyncio.sleep(0.1)
    first.close()  # A's listener leaves; B's stays

    await asyncio.sleep(0.8)  # well past the grace period
    assert not provider.closed.is_set(), "the generation stopped while B was listening"

    second.close()  # now nobody listens anywhere
    await asyncio.wait_for(provider.closed.wait(), timeout=3)


async def test_listeners_leaving_at_once_are_each_counted_out(start_workers):
    """Forty browsers leave at the same moment: their count-outs go to Redis
    together (``ListenerCounts``), and each must come off its own stream's count:
    the streams that another browser still reads go on, the others are let go."""
    generating: set[str] = set()

    class Streams(ScriptedProvider):
        async def stream(self, request):
            generating.add(request.prompt)
            try:
                async for event in super().stream(request):
                    yield event
            finally:
                generating.discard(request.prompt)

    (app,) = await start_workers(count=1, provider=Streams([Answer("a"), Hang()]), grace_period=0)
    prompts = [f"prompt {n}" for n in range(40)]
    uids = [await post_prompt(app, prompt) for prompt in prompts]
    leaving, staying = [], []
    for n, uid in enumerate(uids):
        leaving.append(await app.get("/response-stream", params={"uid": uid}))
        seen = await read_events(leaving[-1], 2)  # thought, answer_chunk
        if n % 2 == 0:  # a second tab on the same answer
            headers = {"Last-Event-ID": seen[-1].id}
            staying.append(await app.get("/response-stream", params={"uid": uid}, headers=headers))
    store = app.app[STORE]

    async def counts() -> list[int]:
        keys = [store.key("stream", uid) for uid in uids]
        found = await asyncio.gather(*(store.redis.hget(key, "listeners") for key in keys))
        return [int(count or 0) for count in found]

    async def counted(expected: list[int]) -> bool:
        return await counts() == expected

    await eventually(lambda: counted([2, 1] * 20))  # (a claim counts in after its headers)

    for browser in leaving:
        browser.close()
    await eventually(lambda: generating == set(prompts[::2]))
    assert await counts() == [1, 0] * 20

    for browser in staying:
        browser.close()
    await eventually(lambda: not generating)
    assert await counts() == [0] * 40
    mine = await store.redis.hgetall(store.key("listening", store.worker))
    assert {int(count) for count in mine.values()} <= {0}


async def test_a_count_whose_flush_was_cancelled_before_it_began_waits_for_nothing(
    start_workers,
):
    """A task cancelled before its first step runs none of its coroutine, not even its
    ``finally``: the listener count it was to send must still be answered (0: Redis
    cannot say), and the counts made after it must still go out."""
    (app,) = await start_workers(count=1)
    store = app.app[STORE]
    before = set(store.tasks)
    counting = asyncio.ensure_future(store.listeners.change("a" * 16, 1))
    await asyncio.sleep(0)  # queued, and its flush made, which has not begun yet
    (flush,) = store.tasks - before
    flush.cancel()

    assert await asyncio.wait_for(counting, timeout=2) == 0
    assert await asyncio.wait_for(store.listeners.change("b" * 16, 1), timeout=2) == 1


async def test_a_flush_that_fails_unexpectedly_loses_no_count_made_meanwhile(
    start_workers, monkeypatch, caplog
):
    """A flush that fails with something Redis did not raise (a bug) says so in the
    log; its own counts are answered 0 as if Redis were away, and those made while
    it was out still reach Redis."""
    (app,) = await start_workers(count=1)
    store = app.app[STORE]
    pipeline, made = store.redis.pipeline, []

    def failing_once(**options):
        pipe = pipeline(**options)
        made.append(pipe)
        if len(made) == 1:

            async def execute(**_):
                await asyncio.sleep(0.1)  # out a while: the next count waits for it
                raise RuntimeError("a bug")

            pipe.execute = execute
        return pipe

    monkeypatch.setattr(store.redis, "pipeline", failing_once)
    first = asyncio.ensure_future(store.listeners.change("c" * 16, 1))
    await asyncio.sleep(0.05)
    meanwhile = asyncio.ensure_future(store.listeners.change("d" * 16, 1))

    assert await asyncio.wait_for(first, timeout=2) == 0
    assert await asyncio.wait_for(meanwhile, timeout=2) == 1
    assert await store.redis.hget(store.key("stream", "d" * 16), "listeners") == b"1"
    assert "a bug" in caplog.text


async def test_the_last_browser_leaving_another_worker_hangs_up_where_the_answer_is_made(
    start_workers,
):
    """Made on A, read on B: when B's browser, the last, leaves, B tells A (a control
    message, "idle"), and A hangs up before it closes the generation."""
    provider, calls = provider_that_connects(Answer("Once"), Hang())
    a, b = await start_workers(provider=provider, grace_period=0)
    uid = await post_prompt(a)
    first = await a.get("/response-stream", params={"uid": uid})
    await first.content.readuntil(b"data: Once\n\n")
    # The id of the event just read: the answer chunk, after the status thoughts.
    second = await b.get("/response-stream", params={"uid": uid}, headers={"Last-Event-ID": "1"})
    await second.content.readuntil(b"data: Once\n\n")
    first.close()  # A's browser leaves; B's still reads
    await asyncio.sleep(0.3)
    assert calls == [] and not provider.closed.is_set()

    second.close()  # the last one
    await asyncio.wait_for(provider.closed.wait(), timeout=5)
    assert calls == ["hung up"]


async def test_the_rate_limit_counts_prompts_on_every_worker(start_workers):
    a, b = await start_workers(prompts_per_minute=3)
    for client in (a, b, a):
        assert (await client.post("/process_prompt", data={"prompt": "hi"})).status == 200

    refused = await b.post("/process_prompt", data={"prompt": "hi"})

    assert refused.status == 429
    assert "That is 3 prompts in a minute, the most allowed." in await refused.text()
    assert 0 < int(refused.headers["Retry-After"]) <= 60


async def test_the_per_client_stream_limit_counts_streams_on_every_worker(start_workers):
    provider = ScriptedProvider([Answer("a"), Hang()])
    a, b = await start_workers(provider=provider, max_streams_per_client=1)
    uid = await post_prompt(a)
    stream = await a.get("/response-stream", params={"uid": uid})
    await read_events(stream, 2)

    refused = await b.post("/process_prompt", data={"prompt": "again"})

    assert refused.status == 429
    assert MINE_STREAMING.format(count=1) in await refused.text()
    stream.close()


async def test_a_conversation_outlives_every_worker(start_app, redis_config):
    first = await start_app(**redis_config)
    posted = await first.post("/process_prompt", data={"prompt": "Remember me"})
    cid = posted.headers["HX-Push-Url"].rsplit("/", 1)[1]
    await (
        await first.get("/response-stream", params={"uid": uid_from_snippet(await posted.text())})
    ).text()
    await first.close()  # every worker stops

    later = await start_app(**redis_config)
    page = await later.get(f"/c/{cid}")

    assert page.status == 200
    text = await page.text()
    assert "Remember me" in text
    assert "final-container done" in text  # the finished answer, not a stream


async def test_every_key_expires_and_a_finished_log_is_gone_after_its_resume_window(
    start_workers, redis_server, redis_config
):
    a, b = await start_workers(grace_period=0.5, provider=slow_answer())
    uid = await post_prompt(a)
    await (await b.get("/response-stream", params={"uid": uid})).text()

    keys = redis_server.keys(redis_config["redis_prefix"])
    assert keys and all(ttl > 0 for ttl in keys.values()), keys

    def log_gone() -> bool:
        keys = redis_server.keys(redis_config["redis_prefix"])
        return not any(uid in name for name in keys)

    await eventually(log_gone, within=5)


async def test_the_redis_password_never_reaches_a_page_an_event_or_a_log_line(
    start_workers, caplog
):
    caplog.set_level(logging.DEBUG)
    a, b = await start_workers(provider=ScriptedProvider([Reasoning("x"), Answer("y")]))
    uid = await post_prompt(a)
    shown = [
        await (await b.get("/response-stream", params={"uid": uid})).text(),
        await (await a.get("/")).text(),
        await (await a.get("/healthz")).text(),
    ]
    assert all(PASSWORD not in text for text in shown)
    assert PASSWORD not in caplog.text


async def test_redis_lost_gives_readable_refusals_and_the_app_recovers_by_itself(
    start_app, own_redis_server
):
    provider = ScriptedProvider([Answer("a"), Hang()])
    a = await start_app(provider=provider, redis_url=own_redis_server.url, grace_period=5)
    b = await start_app(provider=provider, redis_url=own_redis_server.url, grace_period=5)
    uid = await post_prompt(a)
    produced = await a.get("/response-stream", params={"uid": uid})
    before = await read_events(produced, 2)
    followed = await b.get(
        "/response-stream", params={"uid": uid}, headers={"Last-Event-ID": before[-1].id}
    )
    assert await followed.content.readuntil(b"\n\n") == RETRY_FIELD  # B follows it now

    own_redis_server.stop()
    ended, _ = parse_stream(await asyncio.wait_for(followed.text(), timeout=10))
    refused = await a.post("/process_prompt", data={"prompt": "hi"})

    assert [e.event for e in ended[-2:]] == ["error", "close"]
    assert STOPPED_BY_SERVER[STORE_LOST_REASON] in ended[-2].data
    assert refused.status == 503
    assert STORE_UNREACHABLE in await refused.text()
    health = await a.get("/healthz")  # a load balancer sees it too
    assert health.status == 503
    assert (await health.json())["status"] == "shared store unreachable"
    produced.close()

    own_redis_server.start()

    async def answers_again() -> bool:
        response = await a.post("/process_prompt", data={"prompt": "back"})
        return response.status == 200

    await eventually(answers_again, within=10)
    assert (await a.get("/healthz")).status == 200
    provider.script = [Answer("fine")]
    uid = await post_prompt(b)
    events, _ = parse_stream(await (await a.get("/response-stream", params={"uid": uid})).text())
    assert answer_of(events) == "fine"


async def test_a_page_from_a_worker_that_follows_the_stream_replays_it_whole(start_workers):
    # B follows A's stream for another browser: it has the events, not what they
    # show on a page. A page it renders replays the stream from its first event.
    b, cid, uid, produced, seen = await streaming_on_a(start_workers)
    followed = await b.get(
        "/response-stream", params={"uid": uid}, headers={"Last-Event-ID": seen[-1].id}
    )
    assert await followed.content.readuntil(b"\n\n") == RETRY_FIELD

    page = await (await b.get(f"/c/{cid}")).text()
    assert f"uid={uid}&amp;after=0" in page
    replay = await b.get("/response-stream", params={"uid": uid, "after": "0"})
    events, _ = parse_stream(await replay.text())

    assert answer_of(events) == "Early words. Late words."
    produced.close()
    followed.close()


async def test_a_conversation_only_read_keeps_the_counts_of_the_bounds(
    start_app, redis_server, redis_config
):
    """Reading a conversation (its page) keeps it as long as a prompt would, and with
    it what the bounds count: its characters, everyone's, its turn not done."""
    client = await start_app(conversation_ttl=1.0, **redis_config)
    posted = await client.post("/process_prompt", data={"prompt": "Remember me"})
    cid = posted.headers["HX-Push-Url"].rsplit("/", 1)[1]
    await (
        await client.get("/response-stream", params={"uid": uid_from_snippet(await posted.text())})
    ).text()
    prefix = redis_config["redis_prefix"]
    counted = {f"{prefix}:chars", f"{prefix}:chars-total"}

    for _ in range(6):  # 1.8 s of reading, well past the 1 s it is kept unread
        await asyncio.sleep(0.3)
        assert (await client.get(f"/c/{cid}")).status == 200

    assert counted <= redis_server.keys(prefix).keys()


async def test_a_worker_with_a_stale_heartbeat_is_alive_again_once_it_starts_an_answer(
    start_workers, monkeypatch
):
    # Redis restored from an old snapshot can hold an old heartbeat of a live worker.
    # The answer it starts must not be taken for one whose worker died: the claim
    # says the worker is alive, before its next heartbeat does.
    monkeypatch.setattr(redis_store, "HEARTBEAT_S", 60.0)  # no beat or watch meanwhile
    a, b = await start_workers(provider=ScriptedProvider([Answer("still here"), Hang()]))
    store_a, store_b = a.app[STORE], b.app[STORE]
    uid = await post_prompt(a)
    stale = time.time() - 2 * redis_store.HEARTBEAT_TTL_S
    await store_a.redis.zadd(store_a.key("workers"), {store_a.worker: stale})

    stream = await a.get("/response-stream", params={"uid": uid})
    async with asyncio.timeout(5):
        await stream.content.readuntil(b"data: still here")
    await store_b.end_orphans()

    assert await store_a.redis.hget(store_a.key("stream", uid), "state") == b"producing"
    stream.close()

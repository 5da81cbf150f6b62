"""Real worker processes on one Redis: `python server.py --workers 2` (gunicorn), and
separate `server.py` processes as on two machines, one of them killed or stopped
mid-stream. Refusals at start: several workers without Redis, Redis unreachable."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from providers.demo import _answer
from providers.events import ChatRequest, Message
from redis_store import PRODUCER_GONE
from server import RESTARTING, RETRY_FIELD
from tests.redis_server import PASSWORD, RedisServer, free_port
from tests.snippet import uid_from_snippet
from tests.soak import GRACE_S, UID_TTL_S, soak
from tests.sse_client import SSEEvent, parse_stream, shows_answer
from tests.test_shutdown import wait_until_serving

ROOT = Path(__file__).resolve().parent.parent


def demo_answer(prompt: str) -> str:
    return _answer(ChatRequest((Message("user", prompt),)))


@asynccontextmanager
async def app_process(
    redis: RedisServer, prefix: str, *args: str
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process, Callable[[], str]]]:
    """``server.py`` on a free port with the shared store: its base URL, process and log."""
    port = free_port()
    log = redis.directory / f"app-{port}.log"
    with log.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "server.py", "--port", str(port),
            "--redis-url", redis.url, "--redis-prefix", prefix, *args,
            cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await wait_until_serving(base, session)
        yield base, process, log.read_text
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=15)
            except TimeoutError:
                process.kill()
                await process.wait()


async def post(session: aiohttp.ClientSession, base: str, prompt: str) -> str:
    async with session.post(f"{base}/process_prompt", data={"prompt": prompt}) as response:
        assert response.status == 200, await response.text()
        return uid_from_snippet(await response.text())


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[SSEEvent]:
    events: list[SSEEvent] = []
    while len(events) < count:
        frame = await response.content.readuntil(b"\n\n")
        assert frame, f"the stream ended after {len(events)} events"
        events += parse_stream(frame.decode())[0]
    return events


def test_more_than_one_worker_without_redis_is_refused_at_start():
    result = subprocess.run(
        [sys.executable, "server.py", "--workers", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--workers 2 needs a shared store (--redis-url or REDIS_URL)" in result.stderr


def test_an_unreachable_redis_stops_the_start_with_one_line():
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"  # nobody listens there
    result = subprocess.run(
        [sys.executable, "server.py", "--port", str(free_port()), "--redis-url", url],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1
    assert last.startswith("Cannot reach Redis at redis://127.0.0.1:")
    assert PASSWORD not in result.stderr


async def test_gunicorn_workers_answer_every_prompt_exactly(redis_server, redis_config):
    prefix = redis_config["redis_prefix"]
    limits = ("--max-streams-per-client", "50", "--max-pending-per-client", "50")
    async with app_process(
        redis_server, prefix, "--workers", "2", "--demo-delay", "0", *limits
    ) as (
        base,
        _,
        read_log,
    ):
        prompts = [f"Prompt number {n}" for n in range(8)]
        async with aiohttp.ClientSession() as session:

            async def ask(prompt: str) -> bool:
                uid = await post(session, base, prompt)
                async with session.get(f"{base}/response-stream", params={"uid": uid}) as stream:
                    events, _ = parse_stream(await stream.text())
                return shows_answer(events, demo_answer(prompt)) and events[-1].event == "close"

            results = await asyncio.gather(*(ask(prompt) for prompt in prompts))
        for _ in range(100):  # gunicorn's own log lines come when they come
            if read_log().count("Booting worker with pid") == 2:
                break
            await asyncio.sleep(0.1)
        booted = read_log().count("Booting worker with pid")
    assert all(results)
    assert booted == 2
    assert PASSWORD not in read_log()


async def follow_elsewhere(
    session: aiohttp.ClientSession, producer: str, follower: str, prompt: str
) -> tuple[aiohttp.ClientResponse, aiohttp.ClientResponse, str]:
    """A stream produced by ``producer`` (its first GET there), then also followed
    through ``follower`` (a browser that came back there): both open."""
    uid = await post(session, producer, prompt)
    produced = await session.get(f"{producer}/response-stream", params={"uid": uid})
    seen = await read_events(produced, 3)
    followed = await session.get(
        f"{follower}/response-stream", params={"uid": uid}, headers={"Last-Event-ID": seen[-1].id}
    )
    assert await followed.content.readuntil(b"\n\n") == RETRY_FIELD
    return produced, followed, uid


@pytest.mark.parametrize(
    ("how", "message"), [(signal.SIGKILL, PRODUCER_GONE), (signal.SIGTERM, RESTARTING)]
)
async def test_a_worker_gone_mid_stream_ends_its_answers_readably_through_the_others(
    redis_server, redis_config, how, message
):
    prefix = redis_config["redis_prefix"]
    slow = ("--demo-delay", "0.2", "--grace-period", "1")
    async with (
        app_process(redis_server, prefix, *slow) as (a, a_process, _),
        app_process(redis_server, prefix, *slow) as (b, _, _),
        aiohttp.ClientSession() as session,
    ):
        produced, followed, uid = await follow_elsewhere(session, a, b, "Tell me more")
        gone_at = time.monotonic()
        a_process.send_signal(how)
        rest, _ = parse_stream(await asyncio.wait_for(followed.text(), timeout=15))
        took = time.monotonic() - gone_at
        produced.close()

        assert [event.event for event in rest[-2:]] == ["error", "close"]
        assert message in rest[-2].data
        assert took < 10, f"the browser waited {took:.1f} s"

        # Nothing is left past the answer's resume window (grace 1 s, then 1 s more).
        deadline = time.monotonic() + 10
        while any(uid in key for key in redis_server.keys(prefix)):
            assert time.monotonic() < deadline, redis_server.keys(prefix)
            await asyncio.sleep(0.2)
        page_turn = await session.get(f"{b}/healthz")
        assert page_turn.status == 200


async def test_a_soak_across_workers_is_exact_and_survives_redis_restarting(
    own_redis_server, redis_config
):
    """Conversations whose POST, GET and resume each reach either worker at random,
    while Redis is stopped for a second and started again (empty: it keeps nothing
    on disk). Every answer read to its end is exact, or ends with a readable error;
    a prompt during the outage gets a readable refusal; the workers recover alone."""
    prefix = redis_config["redis_prefix"]
    soak_args = ("--demo-delay", "0.002", "--grace-period", str(GRACE_S))
    soak_args += ("--uid-ttl", str(UID_TTL_S), "--max-streams-per-client", "100")
    soak_args += ("--max-pending-per-client", "100", "--prompts-per-minute", "10000")
    async with (
        app_process(own_redis_server, prefix, *soak_args) as (a, _, _),
        app_process(own_redis_server, prefix, *soak_args) as (b, _, _),
    ):
        before = await soak([a, b], prompts=150, concurrency=15, seed=3)
        assert before.wrong == [] and before.clean, (before.wrong, before.health)
        assert before.exact == before.fates["read"] + before.fates["resume"] > 0

        during = asyncio.create_task(soak([a, b], prompts=600, concurrency=15, seed=4, outage=True))
        await asyncio.sleep(1.0)
        own_redis_server.stop()
        await asyncio.sleep(1.0)
        own_redis_server.start()
        report = await during

        assert report.wrong == [], report.wrong
        assert report.exact > 0
        assert report.refused + report.ended_by_error > 0  # the outage was felt
        assert report.clean, report.health

        after = await soak([a, b], prompts=150, concurrency=15, seed=5)
        assert after.wrong == [] and after.clean, (after.wrong, after.health)
        assert after.exact == after.fates["read"] + after.fates["resume"] > 0


async def test_three_processes_post_on_one_stream_from_another_resume_on_a_third(
    redis_server, redis_config
):
    """The prompt is posted to A, streamed from B, cut and resumed on C at several
    points: the events joined are exactly those of one uninterrupted stream; then
    Stop pressed on C ends a generation B runs, and the rate limit counts all three."""
    prefix = redis_config["redis_prefix"]
    args = ("--demo-delay", "0.01", "--grace-period", "5", "--prompts-per-minute", "12")
    args += ("--max-streams-per-client", "50", "--max-pending-per-client", "50")
    async with (
        app_process(redis_server, prefix, *args) as (a, _, _),
        app_process(redis_server, prefix, *args) as (b, _, _),
        app_process(redis_server, prefix, *args) as (c, _, _),
        aiohttp.ClientSession() as session,
    ):
        for cut_after in (1, 4, 9):
            prompt = f"Cut after {cut_after} events"
            uid = await post(session, a, prompt)
            first = await session.get(f"{b}/response-stream", params={"uid": uid})
            before = await read_events(first, cut_after)
            first.close()
            headers = {"Last-Event-ID": before[-1].id}
            async with session.get(
                f"{c}/response-stream", params={"uid": uid}, headers=headers
            ) as resumed:
                after, _ = parse_stream(await resumed.text())
            events = before + after
            assert [int(e.id) for e in events] == list(range(1, len(events) + 1)), cut_after
            assert shows_answer(events, demo_answer(prompt)), cut_after
            assert [e.event for e in events[-2:]] == ["final_answer", "close"]

        uid = await post(session, a, "Stop me")
        running = await session.get(f"{b}/response-stream", params={"uid": uid})
        await read_events(running, 3)
        async with session.post(f"{c}/stop", params={"uid": uid}) as stopped:
            assert stopped.status == 204
        rest, _ = parse_stream(await asyncio.wait_for(running.text(), timeout=5))
        assert "You stopped the answer here." in rest[-2].data

        # 4 prompts so far, 12 a minute allowed: 8 more, on any of the three.
        for n in range(8):
            await post(session, (a, b, c)[n % 3], f"Prompt {n}")
        async with session.post(f"{b}/process_prompt", data={"prompt": "one more"}) as refused:
            assert refused.status == 429
            assert "That is 12 prompts in a minute, the most allowed." in await refused.text()

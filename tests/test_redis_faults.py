"""The shared store when things go wrong between workers and Redis: concurrent resumes,
a worker replaced or killed, Redis cut off and back, bad input on a following worker,
a mistyped URL. Real sockets, real redis-server, real worker processes where it matters."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress

import aiohttp
import pytest

import redis_store
from providers.events import Answer
from server import ALREADY_STREAMING, MINE_STREAMING, STILL_STREAMING, STORE
from tests.conftest import Pause, ScriptedProvider, post_prompt, read_stream
from tests.snippet import uid_from_snippet
from tests.sse_client import parse_stream
from tests.test_resume import read_events
from tests.test_workers import ROOT, app_process, follow_elsewhere


class CuttableProxy:
    """A TCP proxy to Redis that a test can cut (connections dropped, new ones refused)
    and mend, as a network partition would, while Redis keeps its data."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server: asyncio.Server | None = None
        self.listen_port = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.listen_port or 0, reuse_address=True
        )
        self.listen_port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            writer.close()
            return
        self.writers += [writer, up_writer]
        connection: dict[str, bool] = {}  # what the two directions note about it

        async def pump(source, sink, passes):
            try:
                while data := await source.read(65536):
                    if not passes(data, connection):
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        with suppress(asyncio.CancelledError):
            await asyncio.gather(
                pump(reader, up_writer, self.to_redis), pump(up_reader, writer, self.from_redis)
            )

    def to_redis(self, data: bytes, connection: dict[str, bool]) -> bool:
        """Whether these bytes of commands go on to Redis (else the connection drops)."""
        return True

    def from_redis(self, data: bytes, connection: dict[str, bool]) -> bool:
        """Whether these bytes of replies go on to the app (else the connection drops)."""
        return True

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        self.writers = []
        await self.server.wait_closed()

    async def mend(self) -> None:
        await self.start()


async def test_two_resumes_at_once_on_one_worker_both_get_close(start_workers):
    """Two pages open a long answer produced on worker A through worker B at about the
    same moment (a page rendered mid-stream asks with after=0): B keeps one copy of the
    answer for both, and both get every event and `close`."""
    script = [Answer("word ") for _ in range(20_000)] + [Pause(1.0), Answer("end")]
    provider = ScriptedProvider(script)
    a, b = await start_workers(provider=provider, grace_period=5, max_answer_chars=1_000_000)
    uid = await post_prompt(a)
    producing = await a.get("/response-stream", params={"uid": uid})
    await read_events(producing, 20_000)

    async def resume(delay):
        await asyncio.sleep(delay)
        response = await b.get("/response-stream", params={"uid": uid, "after": "0"})
        return parse_stream(await asyncio.wait_for(response.text(), timeout=6))[0]

    results = await asyncio.gather(*(resume(i * 0.002) for i in range(2)), return_exceptions=True)
    producing.close()
    hung = [r for r in results if isinstance(r, BaseException)]
    assert not hung, f"{len(hung)} of 2 listeners never got `close`"


async def test_a_worker_replaced_while_redis_is_away_does_not_take_the_app_down(
    own_redis_server, redis_config
):
    """Redis is away while gunicorn replaces a worker: the new worker starts anyway and
    reconnects with the others; the app never shuts down for it."""

    async with app_process(own_redis_server, redis_config["redis_prefix"], "--workers", "2") as (
        base,
        process,
        read_log,
    ):
        workers: list[str] = []
        for _ in range(100):  # both workers booted and serving
            workers = subprocess.run(  # noqa: ASYNC221 (a test: blocking for a moment is fine)
                ["pgrep", "-P", str(process.pid)], capture_output=True, text=True, timeout=5
            ).stdout.split()
            if len(workers) == 2:
                break
            await asyncio.sleep(0.1)
        assert len(workers) == 2
        await asyncio.sleep(2)  # both have started their apps (and pinged Redis)
        own_redis_server.stop()
        os.kill(int(workers[0]), signal.SIGKILL)
        await asyncio.sleep(6)
        own_redis_server.start()
        await asyncio.sleep(3)

        assert process.returncode is None, "the whole app exited:\n" + read_log()[-600:]
        async with aiohttp.ClientSession() as session, session.get(f"{base}/healthz") as health:
            assert health.status == 200


async def test_reading_a_conversation_never_leaves_a_key_without_expiry(
    start_workers, redis_server, redis_config
):
    """Reading a conversation refreshes the expiry of every key it touches: no key is
    ever left without one."""
    (a,) = await start_workers(count=1, conversation_ttl=1.0)
    posted = await a.post("/process_prompt", data={"prompt": "hi"})
    cid = posted.headers["HX-Push-Url"].rsplit("/", 1)[1]
    await asyncio.sleep(0.6)
    assert (await a.get(f"/c/{cid}")).status == 200  # the conversation lives on; `convs` not
    await asyncio.sleep(0.6)
    assert (await a.get(f"/c/{cid}")).status == 200

    keys = redis_server.keys(redis_config["redis_prefix"])
    assert all(ttl > 0 for ttl in keys.values()), f"keys that never expire: {keys}"


async def test_an_answer_ending_while_redis_is_cut_off_leaves_nothing_stuck(
    start_app, redis_server, redis_config
):
    """The network to Redis drops for a moment while an answer streams (Redis keeps its
    data: a partition, a failover, a restart with persistence). The answer ends with a
    readable error; when Redis is back, its frames that could not be written are
    written, so nothing is left half-done: it holds no stream slot, its conversation
    takes the next prompt, and its log replays to `close` on another worker."""

    proxy = CuttableProxy(int(redis_server.url.rsplit(":", 1)[1].split("/")[0]))
    await proxy.start()
    url = redis_server.url.replace(f":{proxy.port}/", f":{proxy.listen_port}/")
    provider = ScriptedProvider([Answer("word ") if i % 2 else Pause(0.05) for i in range(400)])
    settings = {**redis_config, "redis_url": url, "grace_period": 1.0}
    a = await start_app(provider=provider, max_streams_per_client=2, **settings)
    b = await start_app(provider=provider, max_streams_per_client=2, **settings)
    posted = await a.post("/process_prompt", data={"prompt": "hi"})
    cid = posted.headers["HX-Push-Url"].rsplit("/", 1)[1]
    uid = uid_from_snippet(await posted.text())
    listening = await a.get("/response-stream", params={"uid": uid})
    await read_events(listening, 5)

    await proxy.cut()
    ended, _ = parse_stream(await asyncio.wait_for(listening.text(), timeout=10))
    assert [e.event for e in ended[-2:]] == ["error", "close"]  # readable
    await proxy.mend()
    await asyncio.sleep(3)  # the frames that could not be written are written now

    # The answer is over everywhere: it holds no stream slot (two new prompts fit in
    # --max-streams-per-client 2), its conversation takes the next prompt, and its
    # log replays to `close` on another worker.
    elsewhere = await b.post("/process_prompt", data={"prompt": "a new chat"})
    assert elsewhere.status == 200, await elsewhere.text()
    replay = await b.get("/response-stream", params={"uid": uid, "after": "0"})
    replayed = parse_stream(await asyncio.wait_for(replay.text(), timeout=5))[0]
    assert [e.event for e in replayed[-2:]] == ["error", "close"]
    again = await b.post("/process_prompt", data={"prompt": "again", "conversation": cid})
    assert again.status == 200, (STILL_STREAMING, MINE_STREAMING, await again.text())
    await proxy.cut()


async def test_a_follower_worker_killed_does_not_keep_a_generation_alive_for_ever(
    redis_server, redis_config
):
    """The browser moved from worker A (the producer) to worker B; B is SIGKILLed and
    the browser is gone. A takes B's listeners back from the count: after the grace
    period the generation is let go, as if the browser had left normally."""
    prefix = redis_config["redis_prefix"]
    args = ("--demo-delay", "0.3", "--grace-period", "1")
    async with (
        app_process(redis_server, prefix, *args) as (a, _, _),
        app_process(redis_server, prefix, *args) as (b, b_process, _),
        aiohttp.ClientSession() as session,
    ):
        on_a, on_b, _ = await follow_elsewhere(session, a, b, "tell me a long story")
        on_a.close()  # the browser now listens through B only
        await asyncio.sleep(0.3)
        os.kill(b_process.pid, signal.SIGKILL)  # B dies, and the browser is gone too
        on_b.close()

        deadline = time.monotonic() + 12  # grace 1 s, heartbeat expiry 6 s: ample
        while time.monotonic() < deadline:
            health = await (await session.get(f"{a}/healthz")).json()
            if health["streams_in_flight"] == 0:
                return
            await asyncio.sleep(0.5)
        pytest.fail("12 s after its last listener died, the generation on A still runs")


async def test_a_last_event_id_past_the_log_is_refused_on_every_worker_alike(start_workers):
    """Bad input: a Last-Event-ID beyond the answer's events is refused alike by the
    producing worker and by a worker that follows the answer."""

    provider = ScriptedProvider([Answer("a"), Pause(1.0), Answer("b")])
    a, b = await start_workers(provider=provider, grace_period=5)
    uid = await post_prompt(a)
    producing = await a.get("/response-stream", params={"uid": uid})
    await read_events(producing, 2)

    said = {}
    for name, worker in (("producer", a), ("follower", b)):
        response = await worker.get(
            "/response-stream", params={"uid": uid}, headers={"Last-Event-ID": "999"}
        )
        events, _ = parse_stream(await asyncio.wait_for(response.text(), timeout=5))
        said[name] = [(e.event, e.data) for e in events]
    producing.close()
    assert said["producer"] == [("error", ALREADY_STREAMING), ("close", "")]
    assert said["follower"] == said["producer"], said


async def test_an_answer_watched_on_two_workers_is_let_go_when_it_ends(start_workers):
    """One answer, produced on worker A for its page, is also open in a second tab
    through worker B. When both have left, A lets the finished answer go (streams_kept
    back to zero) instead of keeping its frames for ever."""

    provider = ScriptedProvider([Answer("x"), Pause(0.3), Answer("y")])
    a, b = await start_workers(provider=provider, grace_period=0.3)
    for _ in range(5):
        uid = await post_prompt(a)
        on_a = await a.get("/response-stream", params={"uid": uid})
        await read_events(on_a, 2)
        on_b = await b.get("/response-stream", params={"uid": uid, "after": "0"})
        for response in (on_a, on_b):
            events, _ = parse_stream(await asyncio.wait_for(response.text(), timeout=5))
            assert events[-1].event == "close"
    await asyncio.sleep(2)  # grace 0.3 s, an ended log 1.3 s: all should be gone

    health = await (await a.get("/healthz")).json()
    assert health["streams_kept"] == 0, f"A still keeps {len(a.server.app[STORE].streams())}"


@pytest.mark.parametrize("where", ["flag", "env"])
def test_a_mistyped_redis_url_never_prints_its_password(where):
    """A Redis URL that does not parse (a port mistyped, here 99999) is refused at start
    with a one-line message that never shows the password."""

    url = "redis://:hunter2-secret@127.0.0.1:99999/0"
    args, env = (
        ([], {**os.environ, "REDIS_URL": url})
        if where == "env"
        else (["--redis-url", url], dict(os.environ))
    )
    result = subprocess.run(
        [sys.executable, "server.py", *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode != 0
    assert "hunter2-secret" not in result.stderr, result.stderr


async def test_two_workers_forgetting_one_conversation_take_its_characters_off_once(
    start_workers,
):
    """Prompts at --max-conversations at once pick the same oldest conversations to
    forget: each conversation's characters come off the kept total once."""
    a, b = await start_workers(count=2, provider=ScriptedProvider([Answer("forty-two")]))
    for _ in range(2):
        await read_stream(a, await post_prompt(a, "What is six times seven?"))
    store_a, store_b = a.app[STORE], b.app[STORE]
    redis = store_a.redis
    chars, total = store_a.key("chars"), store_a.key("chars-total")
    oldest = (await redis.zrange(store_a.key("convs"), 0, 0))[0]
    kept = int(await redis.get(total))
    its_chars = int(await redis.hget(chars, oldest))
    assert its_chars > 0

    forgot = await asyncio.gather(
        store_a._forget_conversation(oldest), store_b._forget_conversation(oldest)
    )

    assert sorted(forgot) == [0, its_chars]  # one of them forgot it
    assert int(await redis.get(total)) == kept - its_chars
    assert sum(int(n) for n in (await redis.hvals(chars))) == kept - its_chars


async def test_two_workers_making_room_at_once_forget_no_more_than_they_must(start_workers):
    """Two prompts past --max-conversations at once, on two workers: one conversation
    too many, so one is forgotten (the oldest), not one each."""
    provider = ScriptedProvider([Answer("forty-two")])
    a, b = await start_workers(count=2, provider=provider, max_conversations=3)
    for _ in range(3):
        await read_stream(a, await post_prompt(a, "What is six times seven?"))
    store_a, store_b = a.app[STORE], b.app[STORE]
    redis, convs = store_a.redis, store_a.key("convs")
    oldest, *others = await redis.zrange(convs, 0, -1)
    kept = await redis.get(store_a.key("chars-total"))
    for store in (store_a, store_b):
        store.config = dataclasses.replace(store.config, max_conversations=2)  # one too many

    await asyncio.gather(
        store_a._bound_conversations([], 3, kept), store_b._bound_conversations([], 3, kept)
    )

    assert await redis.zrange(convs, 0, -1) == others
    assert await redis.get(store_a.key("conv", oldest.decode())) is None
    total = int(await redis.get(store_a.key("chars-total")))
    assert total == sum(int(n) for n in await redis.hvals(store_a.key("chars"))) > 0


class ReplyDroppingProxy(CuttableProxy):
    """A proxy to Redis that, once armed, lets through the first command containing
    ``marker`` and then drops that connection instead of passing on Redis's reply (a
    reply lost to a network blip or a socket timeout, after Redis ran the command).
    A reply that is an error (such as NOSCRIPT: nothing ran) is passed on."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.marker: bytes | None = None
        self.dropped = 0

    def to_redis(self, data: bytes, connection: dict[str, bool]) -> bool:
        if self.marker is not None and self.marker in data:
            self.marker, connection["marked"] = None, True
        return True

    def from_redis(self, data: bytes, connection: dict[str, bool]) -> bool:
        if connection.pop("marked", False) and not data.startswith(b"-"):
            self.dropped += 1
            return False
        return True


async def test_a_claim_whose_reply_is_lost_still_streams_the_answer(
    start_app, redis_server, redis_config
):
    """Redis ran a browser's claim (CLAIM), but its reply was lost (the connection
    dropped, or the socket timed out): redis-py sends the claim again, on a new
    connection. That claim is this worker's own already: the browser gets its answer.
    Not "already streaming", with the prompt left producing for nobody until its keys
    expire (--uid-ttl + --max-duration + the grace period + 60 s), counted against
    the client's streams, and its conversation refusing every prompt meanwhile."""
    proxy = ReplyDroppingProxy(int(redis_server.url.rsplit(":", 1)[1].split("/")[0]))
    await proxy.start()
    url = redis_server.url.replace(f":{proxy.port}/", f":{proxy.listen_port}/")
    a = await start_app(**{**redis_config, "redis_url": url})
    warm = await post_prompt(a)  # the claim script is loaded (its first try: NOSCRIPT)
    await (await a.get("/response-stream", params={"uid": warm})).text()
    posted = await a.post("/process_prompt", data={"prompt": "Hello again"})
    cid = posted.headers["HX-Push-Url"].rsplit("/", 1)[1]
    uid = uid_from_snippet(await posted.text())

    proxy.marker = hashlib.sha1(redis_store.CLAIM.encode()).hexdigest().encode()
    response = await a.get("/response-stream", params={"uid": uid})
    events, _ = parse_stream(await asyncio.wait_for(response.text(), timeout=10))
    assert proxy.dropped == 1  # the claim ran, and its reply was lost
    await asyncio.sleep(0.2)  # the answer's end is written
    again = await a.post("/process_prompt", data={"prompt": "And?", "conversation": cid})
    await proxy.cut()

    assert ALREADY_STREAMING not in events[0].data
    assert [e.event for e in events[-2:]] == ["final_answer", "close"], events
    assert again.status == 200, await again.text()

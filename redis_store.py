"""The shared store: streams, conversations and limits kept in Redis, so that
several worker processes, on one machine or many, serve the same app.

server.py's ``Store`` keeps everything in one process's memory, and stays the
default. ``RedisStore`` (``--redis-url`` or ``REDIS_URL``) keeps it where every
worker sees it, so that any worker serves any request: the POST may reach one
worker, the GET another, a reconnect with ``Last-Event-ID`` a third.

How an answer travels. The worker that gets a uid's first GET produces it
(``produce`` in server.py, unchanged). Its ``LoggedStream`` keeps each frame
for its own listeners, as the in-memory store does, and the ``LogWriter``
appends it to the answer's Redis stream, entry id ``0-N`` for SSE id N: the
SSE ids stay what they are with one process. A worker with a listener for an
answer produced elsewhere follows that log with its ``LogReader``: one XREAD
over every log it follows, on one connection, into a ``FollowedStream``,
which ``listen`` writes out exactly as it writes a local one.

Stop and "nobody is listening" reach the producing worker as messages on a
control stream that every worker reads. Each worker refreshes its heartbeat;
the answers of a worker whose heartbeat stopped (a worker killed) are ended by
another worker with a readable ``error`` and ``close``.

The stream limits count with sorted sets, so that a prompt costs a few commands
whatever the number of answers: prompts waiting to be opened (scored by when
they were posted) and answers being produced, for everyone and per client.

Keys (each under ``--redis-prefix``; every one expires):

=======================  ====================================================
``conv:{cid}``           a conversation, as JSON (``--conversation-ttl``)
``convs``                conversation ids by last use (``--max-conversations``)
``chars``                hash: conversation id -> its characters
``chars-total``          all conversations' characters (``--max-kept-chars``)
``stream:{uid}``         hash: state (pending, producing, closed), client,
                         conversation, turn, request, producer, listeners
``log:{uid}``            Redis stream: the answer's SSE frames
``pending``              sorted set: prompts not opened yet, by when posted
``pending:{client}``     the same, of one client
``producing``            sorted set: answers being produced, by when started
``producing:{client}``   the same, of one client
``owned:{worker}``       set: the answers a worker produces
``listening:{worker}``   hash: uid -> a worker's listeners of that answer
``workers``              sorted set: each worker's last heartbeat
``rate:{client}``        sorted set: the client's prompts of the last minute
``control``              Redis stream: stop and idle messages
``wake:{worker}``        Redis stream: wakes a worker's reader for a new log
=======================  ====================================================
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict
from typing import Any

import redis.asyncio as redis
from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import RedisError, WatchError

from conversations import ChatSettings, Conversation, Turn, is_id, new_id
from providers.events import ChatRequest, Message, Usage
from server import (
    ALREADY_STREAMING,
    CONVERSATION_GONE,
    GIVE_WAY_S,
    MAX_LISTENERS_PER_STREAM,
    PENDING_COUNTS_S,
    RATE_WINDOW_S,
    STILL_STREAMING,
    STOPPED_BY_SERVER,
    STORE_LOST_REASON,
    UNKNOWN_UID,
    UNOPENED,
    Config,
    Event,
    NotClaimable,
    PromptForm,
    Refusal,
    Room,
    StartProducer,
    Store,
    Stream,
    Transcript,
    Unopened,
    close_event,
    error_event,
    format_event,
    public_url,
)

log = logging.getLogger("stream")

STORE_UNREACHABLE = (
    "The server cannot reach its shared store right now. Please try again in a moment."
)
PRODUCER_GONE = "The server process writing this answer stopped. Please submit the prompt again."
HEARTBEAT_S = 1.0  # how often a worker says it is alive, and looks for answers left behind
# A worker silent this long is gone: its answers are ended. Not less: a worker
# whose event loop is saturated (thousands of streams) can be late by seconds.
HEARTBEAT_TTL_S = 6.0
LOG_LAG_S = 0.5  # how far a log may lag behind what its producer's listeners saw
READ_BLOCK_MS = 5_000  # the reader's XREAD waits this long at most, then asks again
CONTROL_KEPT = 10_000  # control messages kept (about): older ones are trimmed
SETTLE_S = 1.0  # a finished log outlives the grace period by this much
POOL_SIZE = 32  # connections per worker for requests (reader, writer, heartbeat: one each)
CLOSE_S = 2.0  # at shutdown, how long the background loops may take to end
DRAIN_S = 5.0  # at shutdown, how long the last frames may take to be written
# Frames that come within this long of each other go to Redis in one pipeline. A
# pipeline costs the worker ~50 us of CPU whatever its size: at 100 answers of 50
# tokens a second, a pipeline per frame or two cost more than relaying the token.
# The log lags that much more (the producer's own listeners do not wait for it),
# but for an answer's end: its counts go at once (the next prompt may follow it).
LOG_BATCH_S = 0.002
RETRY_S = 1.0  # how often frames that could not be written are tried again
UID_CHARS = 33  # "u" and 128 random bits in hex (server.Store.new_uid)
BOUND_CANDIDATES = 20  # conversations looked at, at most, to come back within the bounds
#: What the bounds on conversations count, one key each (MAKE_ROOM's KEYS, in order):
#: the conversations by last use, their characters, their total, their turns not done.
BOUND_KEYS = ("convs", "chars", "chars-total", "undone-turns")
RETRIES = 10  # a transaction retried this often when another worker changed its key


# --- what is kept, as JSON ----------------------------------------------------------------


def turn_to_json(turn: Turn) -> dict[str, Any]:
    transcript = turn.transcript
    return {
        "uid": turn.uid,
        "prompt": turn.prompt,
        "settings": asdict(turn.settings),
        "created": turn.created,
        "left_out": turn.left_out,
        "outcome": turn.outcome,
        "error": turn.error,
        "extras": turn.extras,
        "transcript": None
        if transcript is None
        else {
            "answer": transcript.answer,
            "reasoning": transcript.reasoning,
            "finish_reason": transcript.finish_reason,
            "usage": None if transcript.usage is None else asdict(transcript.usage),
        },
    }


def turn_from_json(data: dict[str, Any]) -> Turn:
    kept = data["transcript"]
    transcript = None
    if kept is not None:
        transcript = Transcript(finish_reason=kept["finish_reason"])
        transcript.add_answer(kept["answer"])
        transcript.add_reasoning(kept["reasoning"])
        transcript.usage = None if kept["usage"] is None else Usage(**kept["usage"])
    return Turn(
        data["uid"],
        data["prompt"],
        ChatSettings(**data["settings"]),
        created=data["created"],
        left_out=data["left_out"],
        outcome=data["outcome"],
        transcript=transcript,
        error=data["error"],
        extras=data["extras"],
    )


def conversation_to_json(conversation: Conversation) -> bytes:
    return json.dumps(
        {
            "cid": conversation.cid,
            "settings": asdict(conversation.settings),
            "created": conversation.created,
            "turns": [turn_to_json(turn) for turn in conversation.turns],
        }
    ).encode()


def conversation_from_json(raw: bytes) -> Conversation:
    data = json.loads(raw)
    return Conversation(
        data["cid"],
        ChatSettings(**data["settings"]),
        [turn_from_json(turn) for turn in data["turns"]],
        created=data["created"],
    )


def request_to_json(request: ChatRequest) -> bytes:
    return json.dumps(
        {
            "messages": [[message.role, message.content] for message in request.messages],
            "model": request.model,
            "temperature": request.temperature,
        }
    ).encode()


def request_from_json(raw: bytes) -> ChatRequest:
    data = json.loads(raw)
    messages = tuple(Message(role, content) for role, content in data["messages"])
    return ChatRequest(messages, data["model"], data["temperature"])


#: Lua: forget conversation ``cid`` (its JSON at ``conv``, its entries in the
#: conversations' zset, the characters hash and the undone turns' hash) and take its
#: characters off their ``total``: only if this call took it out of the zset, since
#: prompts at the bound at once pick the same oldest conversations, and each took its
#: characters off again. Its characters, or false if another call forgot it first.
#: The two scripts below are registered after it.
FORGET = """
local function forget(conv, convs, chars, total, undone, cid)
  if redis.call('ZREM', convs, cid) == 0 then return false end
  local its = tonumber(redis.call('HGET', chars, cid) or '0')
  redis.call('DEL', conv)
  redis.call('HDEL', chars, cid)
  redis.call('HDEL', undone, cid)
  redis.call('DECRBY', total, its)
  return its
end
"""

#: Forgets one conversation (KEYS: its JSON, the conversations' zset, the characters
#: hash, their total, the undone turns' hash; ARGV: its id): how many characters it
#: had (0 if another prompt forgot it first).
FORGET_CONVERSATION = "return forget(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1]) or 0"

#: Counts a listener of stream ``uid`` in or out (``change``: +1 or -1) on every
#: worker's count (``stream``, its hash; given an expiry if it had none: a count
#: made for a stream that was gone is new) and on this worker's own (``mine``,
#: which the others take back if it dies); ``ttl``: their time to live, in ms.
#: Returns how many listen now, on every worker.
COUNT_LISTENER = """
local function count_listener(stream, mine, uid, change, ttl)
  local left = redis.call('HINCRBY', stream, 'listeners', change)
  redis.call('PEXPIRE', stream, ttl, 'NX')
  redis.call('HINCRBY', mine, uid, change)
  redis.call('PEXPIRE', mine, ttl)
  return left
end
"""

#: ``count_listener`` alone (KEYS: the stream's hash, this worker's counts; ARGV: the
#: uid, the change, the time to live).
LISTENED = COUNT_LISTENER + "return count_listener(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])"

#: A browser's first GET of a prompt nobody opened yet: the prompt becomes an answer
#: this worker produces, in one step, or the reason it does not. KEYS: the stream's
#: hash, everyone's pending and producing zsets, this worker's owned set and its
#: listener counts, the workers' heartbeats. ARGV: the uid, the time now, --uid-ttl,
#: PENDING_COUNTS_S, 1 if a prompt that stopped counting may start, this worker, the
#: time to live of what it writes (ms), the prefixes of a client's pending and
#: producing zsets (its keys are made here, which is fine on the one Redis server this
#: store uses), a token new for each claim. Returns {"claimed", client, turn, request,
#: conversation id}, {"late", client} (the limits must be counted first), {"unknown"}
#: (gone, expired, or only a trace is left), or {"not pending"} (producing, or over: a
#: resume). The token makes it safe to run twice: redis-py sends a command again when
#: its reply is lost, and a claim that finds its own token gets what it claimed.
CLAIM = COUNT_LISTENER + """
local stream, uid, now = KEYS[1], ARGV[1], tonumber(ARGV[2])
local f = redis.call('HMGET', stream, 'state', 'posted', 'client')
local state, posted, client = f[1], f[2], f[3]
if not state or not posted then return {'unknown'} end
if state ~= 'pending' then
  -- This very claim, run already (its reply lost, redis-py sent it again): claimed.
  local again = redis.call('HMGET', stream, 'claim', 'turn', 'request', 'cid')
  if state == 'producing' and again[1] == ARGV[10] then
    return {'claimed', client, again[2], again[3], again[4]}
  end
  return {'not pending'}
end
local age = now - tonumber(posted)
if age > tonumber(ARGV[3]) or not client then return {'unknown'} end
if age >= tonumber(ARGV[4]) and ARGV[5] ~= '1' then return {'late', client} end
local worker, ttl = ARGV[6], ARGV[7]
redis.call('HSET', stream, 'state', 'producing', 'producer', worker, 'claim', ARGV[10])
count_listener(stream, KEYS[5], uid, 1, ttl)
redis.call('PEXPIRE', stream, ttl)
redis.call('ZREM', KEYS[2], uid)
redis.call('ZREM', ARGV[8] .. client, uid)
for _, counted in ipairs({KEYS[3], ARGV[9] .. client}) do
  redis.call('ZADD', counted, now, uid)
  redis.call('PEXPIRE', counted, ttl)
end
redis.call('SADD', KEYS[4], uid)
redis.call('PEXPIRE', KEYS[4], ttl)
-- Its producer's heartbeat, fresh: even just after Redis came back empty, no
-- worker may take this answer for one whose worker died.
redis.call('ZADD', KEYS[6], now, worker)
redis.call('PEXPIRE', KEYS[6], ttl)
local kept = redis.call('HMGET', stream, 'turn', 'request', 'cid')
return {'claimed', client, kept[1], kept[2], kept[3]}
"""  # fmt: skip

#: Past the bounds, forgets the least recently used conversations, never the newest
#: nor one whose answer may still stream (its undone turn's stream is producing,
#: kept for a resume, or waiting to be opened within --uid-ttl, as
#: ``RedisStore._may_stream`` says), until both bounds hold or ARGV[3] were looked
#: at. KEYS: the conversations' zset, the characters hash, their total, the undone
#: turns' hash (conversation → uid). ARGV: at most this many conversations, and
#: characters, the most to look at, the prefixes of a conversation's key and of a
#: stream's, the time now, --uid-ttl. One step for all: prompts at the bound at once
#: each forget what is past it at their moment, never the same one twice. (Keys are
#: made here from the prefixes, which is fine on the one Redis server this store
#: uses.) Returns how many it forgot.
MAKE_ROOM = """
local convs, chars, total, undone = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local max_count, max_chars = tonumber(ARGV[1]), tonumber(ARGV[2])
local now, uid_ttl = tonumber(ARGV[6]), tonumber(ARGV[7])
local count = redis.call('ZCARD', convs)
local kept = tonumber(redis.call('GET', total) or '0')
if count < 2 or (count <= max_count and kept <= max_chars) then return 0 end
local function may_stream(cid)  -- as RedisStore._may_stream, for its undone turn
  local uid = redis.call('HGET', undone, cid)
  if not uid then return false end
  local s = redis.call('HMGET', ARGV[5] .. uid, 'state', 'posted')
  if not s[2] then return false end
  if s[1] == 'pending' then return now - tonumber(s[2]) <= uid_ttl end
  return s[1] ~= false
end
local forgotten = 0
for _, cid in ipairs(redis.call('ZRANGE', convs, 0, math.min(count - 2, ARGV[3] - 1))) do
  if count <= max_count and kept <= max_chars then break end
  if not may_stream(cid) then
    local its = forget(ARGV[4] .. cid, convs, chars, total, undone, cid)
    if its then count, kept, forgotten = count - 1, kept - its, forgotten + 1 end
  end
end
return forgotten
"""


# --- the streams: produced here, or followed here -----------------------------------------


class LoggedStream(Stream):
    """An answer produced by this worker: each frame is also appended to its Redis log."""

    def __init__(self, store: RedisStore, uid: str, request: ChatRequest, client: str,
                 turn: Turn, cid: str) -> None:  # fmt: skip
        super().__init__(uid, request, client, turn, cid)
        self.store = store
        self.names: list[str] = []  # names[n]: the name of the event with id n + 1
        self.logged = 0  # the events up to this id are in the Redis log

    def append(self, event: Event, *, replaces_previous: bool = False) -> None:
        if self.closed:
            return
        older = self._latest.get(event.name) if replaces_previous else None
        super().append(event, replaces_previous=replaces_previous)
        self.names.append(event.name)
        frame = self.frames[-1]
        assert frame is not None
        forgotten = None if older is None else older + 1  # the event id the log drops
        self.store.writer.add(self, event.name, len(self.frames), frame, forgotten)


class FollowedStream(Stream):
    """An answer another worker produces, as far as this worker has read its log."""

    def receive(self, event_id: int, name: str, frame: bytes) -> None:
        frames = self.frames
        if self.closed or event_id <= len(frames):
            return  # already here
        frames.extend([None] * (event_id - 1 - len(frames)))  # ids the log dropped
        frames.append(frame)
        if name == "thought":  # the page shows only the newest: as Stream.append does
            older = self._latest.get(name)
            if older is not None:
                frames[older] = None
            self._latest[name] = len(frames) - 1
        if name == "close":
            self.closed = True
            self.ended_at = time.monotonic()
        self.last_event_at = time.monotonic()
        self.wake()

    def lost(self, message: str) -> None:
        """The log cannot be read: end this copy with an error, for its listeners."""
        for event in (error_event(message), close_event()):
            event_id = len(self.frames) + 1
            self.receive(event_id, event.name, format_event(event.name, event.data, event_id))


# --- the store ----------------------------------------------------------------------------


class LateStart(Exception):
    """A prompt opened after it stopped counting: the limits must be counted first."""

    def __init__(self, client: str) -> None:
        super().__init__(client)
        self.client = client


class RedisStore(Store):
    """server.Store's interface, with every worker's streams, conversations and limits
    in one Redis. The in-memory parts of Store remain for what is this worker's own:
    the streams it produces or follows, and the limits on requests at once."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        assert config.redis_url is not None
        self.url = config.redis_url
        self.prefix = config.redis_prefix
        self.worker = secrets.token_hex(6)
        self.redis = connect(self.url)
        self._forget_script = self.redis.register_script(FORGET + FORGET_CONVERSATION)
        self._make_room_script = self.redis.register_script(FORGET + MAKE_ROOM)
        self._claim_script = self.redis.register_script(CLAIM)
        self.listeners = ListenerCounts(self)
        # The heartbeat's own connection: however busy the pool, it is never late
        # (a worker whose heartbeat stops is taken for dead, and its answers ended).
        self.beat = connect(self.url, pool_size=1)
        self.writer = LogWriter(self)
        self.reader = LogReader(self)
        self.closing = False  # the app is stopping: the background loops end
        self.lost_at: float | None = None  # when Redis started failing, while it does
        self.tasks: set[asyncio.Task[None]] = set()  # work begun in the background
        self._following: dict[str, FollowedStream] = {}  # the streams it follows, by uid

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def running(self, app: web.Application) -> AsyncIterator[None]:
        """The cleanup context: Redis reachable at start, the background tasks while
        the app runs, and this worker's last frames written before it goes."""
        try:
            await self.redis.ping()
        except (RedisError, OSError) as error:
            # A worker (re)started while Redis is away starts anyway, and reconnects
            # like a running one (`python server.py` itself refuses to start without it).
            self.unreachable(error)
        tasks = [
            asyncio.create_task(self.writer.run()),
            asyncio.create_task(self.reader.run()),
            asyncio.create_task(self.heartbeat()),
            asyncio.create_task(self.watch_workers()),
        ]
        yield
        await self.writer.drain()
        # Stop the loops. A blocked XREAD may not notice a cancellation (redis-py can
        # take it for a failed read), so each loop also checks `closing`, and the
        # reader is woken by its wake stream.
        self.closing = True
        with suppress(RedisError, OSError):
            await self.reader.wake("closing")
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=CLOSE_S)
        with suppress(RedisError, OSError):
            await self.redis.delete(self.key("wake", self.worker))
            await self.redis.zrem(self.key("workers"), self.worker)
        await self.reader.close()
        for client in (self.writer.redis, self.beat, self.redis):
            await client.aclose()

    @asynccontextmanager
    async def reachable(self) -> AsyncIterator[None]:
        """Redis unreachable (or failing): a readable 503 for the person, never a 500."""
        try:
            yield
        except (RedisError, OSError) as error:
            if isinstance(error, WatchError):
                raise
            self.unreachable(error)
            raise Refusal(503, STORE_UNREACHABLE, {"Retry-After": "5"}) from None
        self.reachable_again()

    def status(self) -> str:
        return "ok" if self.lost_at is None else "shared store unreachable"

    async def counts(self) -> dict[str, int]:
        """This worker's streams; every worker's prompts waiting to be opened, and
        conversations kept."""
        counts = await super().counts()
        with suppress(RedisError, OSError):
            since = time.time() - self.config.conversation_ttl
            counts["conversations"] = await self.redis.zcount(self.key("convs"), since, "+inf")
            since = time.time() - self.config.uid_ttl
            counts["uids_pending"] = await self.redis.zcount(self.key("pending"), since, "+inf")
        return counts

    # --- conversations ---

    async def conversation(self, cid: str) -> Conversation | None:
        if not is_id(cid):
            return None
        async with self.reachable():
            return await self._conversation(cid)

    async def _conversation(self, cid: str) -> Conversation | None:
        """The conversation, now the most recently used (a RedisError if Redis fails)."""
        raw = await self.redis.getex(self.key("conv", cid), px=ms(self.config.conversation_ttl))
        if raw is None:
            return None
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(self.key("convs"), {cid: time.time()})
        for name in BOUND_KEYS:  # kept as long as the conversation: the bounds count them
            pipe.pexpire(self.key(name), ms(self.config.conversation_ttl))
        await pipe.execute()
        conversation = conversation_from_json(raw)
        for turn in conversation.turns:
            if not turn.done and not await self._may_stream(turn.uid):
                turn.end("expired", None, UNOPENED)  # its prompt was never opened in time
        return conversation

    async def recent(self, cids: list[str]) -> list[Conversation]:
        cids = [cid for cid in cids if is_id(cid)]
        if not cids:
            return []
        async with self.reachable():
            found = await self.redis.mget([self.key("conv", cid) for cid in cids])
        conversations = [conversation_from_json(raw) for raw in found if raw is not None]
        return [conversation for conversation in conversations if conversation.turns]

    async def settings_of(self, cid: str) -> ChatSettings | None:
        if not is_id(cid):
            return None
        async with self.reachable():
            raw = await self.redis.get(self.key("conv", cid))
        return None if raw is None else conversation_from_json(raw).settings

    # --- limits ---

    async def count_prompt(self, client: str) -> None:
        key = self.key("rate", client)
        now = time.time()
        async with self.reachable():
            pipe = self.redis.pipeline(transaction=True)
            pipe.zremrangebyscore(key, "-inf", now - RATE_WINDOW_S)
            pipe.zadd(key, {secrets.token_hex(4): now})
            pipe.zrange(key, 0, 0, withscores=True)
            pipe.zcard(key)
            pipe.pexpire(key, ms(RATE_WINDOW_S + 1))
            _, _, oldest, count, _ = await pipe.execute()
            if count > self.config.prompts_per_minute:
                await self.redis.zremrangebyscore(key, now, now)  # this one did not count
                wait = math.ceil(RATE_WINDOW_S - (now - oldest[0][1]))
                raise Refusal(
                    429,
                    f"That is {count - 1} prompts in a minute, the most allowed. "
                    f"Please wait {wait} s.",
                    {"Retry-After": str(wait)},
                )

    async def shared_room(self, client: str) -> tuple[Room, list[Unopened]]:
        """What the stream limits count (server.Room), for every worker; and the
        oldest prompts nobody opened for GIVE_WAY_S, of each kind (Limits.check_room)."""
        now = time.time()
        counts_since = now - PENDING_COUNTS_S
        stale_since = now - GIVE_WAY_S
        pending, mine_pending = self.key("pending"), self.key("pending", client)
        producing, mine_producing = self.key("producing"), self.key("producing", client)
        pipe = self.redis.pipeline(transaction=False)
        for key in (pending, mine_pending):  # expired unopened: no longer waiting
            pipe.zremrangebyscore(key, "-inf", now - self.config.uid_ttl)
        for key in (producing, mine_producing):  # longer than any answer may last
            pipe.zremrangebyscore(key, "-inf", now - self.live_ttl())
        pipe.zcard(mine_pending)
        pipe.zcount(mine_pending, f"({counts_since}", "+inf")
        pipe.zcard(mine_producing)
        pipe.zcard(pending)
        pipe.zcount(pending, f"({counts_since}", "+inf")
        pipe.zcard(producing)
        pipe.zrangebyscore(pending, "-inf", stale_since, start=0, num=2, withscores=True)
        pipe.zrangebyscore(
            pending, f"({counts_since}", stale_since, start=0, num=2, withscores=True
        )
        (
            *_,
            waiting,
            mine_new,
            mine_on,
            waiting_all,
            new_all,
            on_all,
            oldest,
            counting,
        ) = await pipe.execute()
        room = Room(waiting, mine_new + mine_on, waiting_all, new_all + on_all)
        stale = {uid.decode(): posted for uid, posted in [*oldest, *counting]}
        unopened = [
            Unopened(uid, posted > counts_since)
            for uid, posted in sorted(stale.items(), key=lambda item: item[1])
        ]
        return room, unopened

    # --- a new turn ---

    async def add_turn(
        self, form: PromptForm, settings: ChatSettings, client: str
    ) -> tuple[Conversation, Turn, bool]:
        async with self.reachable():
            for _ in range(RETRIES):
                try:
                    return await self._add_turn(form, settings, client)
                except WatchError:
                    continue  # another worker changed it meanwhile: read it again
        raise Refusal(503, STORE_UNREACHABLE, {"Retry-After": "1"})

    async def _add_turn(
        self, form: PromptForm, settings: ChatSettings, client: str
    ) -> tuple[Conversation, Turn, bool]:
        config = self.config
        # The limits count every worker's answers (not watched: two workers may both
        # let one more in at the same moment, never more than that). Counted before
        # the transaction: a request holds one pooled connection at a time, so that
        # no number of requests at once can leave them all waiting for a second.
        room, stale = await self.shared_room(client)
        async with self.redis.pipeline(transaction=True) as pipe:
            conversation, given_way, old_chars = None, [], 0
            if form.conversation:
                key = self.key("conv", form.conversation)
                await pipe.watch(key)
                raw = await pipe.get(key)
                if raw is None:
                    raise Refusal(404, CONVERSATION_GONE)
                conversation = conversation_from_json(raw)
                old_chars = conversation.chars()
                given_way = await self._let_go_of_unopened_turns(pipe, conversation)
                if conversation.streaming:
                    raise Refusal(409, STILL_STREAMING)
            earlier = self.earlier_turns(conversation, form)
            making_room_of = []
            for uid in self.limits.check_room(room, lambda: stale):
                await pipe.watch(self.key("stream", uid))  # if opened meanwhile: again
                state, its_client = await pipe.hmget(self.key("stream", uid), "state", "client")
                if state != b"pending":
                    raise WatchError("a prompt that was to make room was opened")
                making_room_of.append((uid, its_client.decode()))

            new = conversation is None
            if conversation is None:
                conversation = Conversation(new_id(), settings)
            turn, request = self.next_turn(conversation, earlier, form, settings)
            conversation.turns = [*earlier, turn]
            conversation.settings = settings
            posted = time.time()
            pipe.multi()
            for uid, its_client in [*given_way, *making_room_of]:
                pipe.zrem(self.key("pending"), uid)
                pipe.zrem(self.key("pending", its_client), uid)
                pipe.delete(self.key("stream", uid))
            self._save(pipe, conversation, old_chars)
            pipe.hset(
                self.key("stream", turn.uid),
                mapping={
                    "state": "pending",
                    "client": client,
                    "cid": conversation.cid,
                    "posted": repr(posted),
                    "listeners": 0,
                    "turn": json.dumps(turn_to_json(turn)),
                    "request": request_to_json(request),
                },
            )
            pipe.pexpire(self.key("stream", turn.uid), ms(config.uid_ttl))
            for key in (self.key("pending"), self.key("pending", client)):
                pipe.zadd(key, {turn.uid: posted})
                pipe.pexpire(key, ms(self.live_ttl()))
            self._read_bounds(pipe)
            *_, expired, count, kept = await pipe.execute()
        await self._bound_conversations(expired, count, kept)
        return conversation, turn, new

    def _save(self, pipe: Any, conversation: Conversation, old_chars: int) -> None:
        """Keep the conversation (it had ``old_chars`` characters before), and what the
        bounds count: its last use, its characters, everyone's characters, and its
        turn not done yet, if any (``MAKE_ROOM`` asks that turn's stream whether
        the answer may still stream: then the conversation is not forgotten)."""
        cid, chars = conversation.cid, conversation.chars()
        pipe.set(
            self.key("conv", cid), conversation_to_json(conversation),
            px=ms(self.config.conversation_ttl),
        )  # fmt: skip
        pipe.zadd(self.key("convs"), {cid: time.time()})
        pipe.hset(self.key("chars"), cid, chars)
        pipe.incrby(self.key("chars-total"), chars - old_chars)
        undone = [turn.uid for turn in conversation.turns if not turn.done]
        if undone:
            pipe.hset(self.key("undone-turns"), cid, undone[-1])
        else:
            pipe.hdel(self.key("undone-turns"), cid)
        for name in BOUND_KEYS:
            pipe.pexpire(self.key(name), ms(self.config.conversation_ttl))

    async def _let_go_of_unopened_turns(
        self, pipe: Any, conversation: Conversation
    ) -> list[tuple[str, str]]:
        """A turn whose stream is gone (expired unopened, or made room) is over; one
        never opened for GIVE_WAY_S gives way to the new prompt, as in server.Store.
        The uids whose streams must go, each with its client."""
        given_way = []
        for turn in conversation.turns:
            if turn.done:
                continue
            key = self.key("stream", turn.uid)
            await pipe.watch(key)  # if it is opened meanwhile, the new turn starts again
            state, posted, client = await pipe.hmget(key, ["state", "posted", "client"])
            if posted is None:
                turn.end("expired", None, UNOPENED)
            elif state == b"pending" and time.time() - float(posted) >= GIVE_WAY_S:
                turn.end("expired", None, UNOPENED)
                given_way.append((turn.uid, client.decode()))
        return given_way

    def _read_bounds(self, pipe: Any) -> None:
        """Queue the three reads ``_bound_conversations`` takes: the conversations
        past their expiry, how many are kept, and their characters in all. (Read in
        the transaction that saved a conversation: no round trip of their own.)"""
        convs = self.key("convs")
        pipe.zrangebyscore(
            convs, "-inf", time.time() - self.config.conversation_ttl, start=0, num=100
        )
        pipe.zcard(convs)
        pipe.get(self.key("chars-total"))

    async def _bound_conversations(
        self, expired: list[bytes], count: int, kept_total: bytes | None
    ) -> None:
        """Past --max-conversations or --max-kept-chars, forget the least recently
        used conversations (never one whose answer is streaming, nor the newest).
        Within the bounds, the usual case, this costs nothing more: the counts come
        from ``_read_bounds``."""
        config = self.config
        kept = int(kept_total or 0)
        for cid in expired:  # gone by their own expiry: out of the counts too
            kept -= await self._forget_conversation(cid)
            count -= 1
        if count <= config.max_conversations and kept <= config.max_kept_chars:
            return
        # The oldest first, a few at a time: while they are all streaming, the
        # bound waits for their answers to end, at a later prompt.
        keys = [self.key(name) for name in BOUND_KEYS]
        limits = [config.max_conversations, config.max_kept_chars, BOUND_CANDIDATES]
        prefixes = [self.key("conv", ""), self.key("stream", "")]
        await self._make_room_script(
            keys=keys, args=[*limits, *prefixes, repr(time.time()), config.uid_ttl]
        )

    async def _forget_conversation(self, cid: bytes) -> int:
        """Forget a conversation, and its characters from the count; how many (0 if
        another prompt forgot it first)."""
        keys = [
            self.key("conv", cid.decode()), self.key("convs"), self.key("chars"),
            self.key("chars-total"), self.key("undone-turns"),
        ]  # fmt: skip
        return int(await self._forget_script(keys=keys, args=[cid]))

    def live_ttl(self) -> float:
        """How long a stream's keys live while it may still be producing."""
        config = self.config
        return config.uid_ttl + config.max_duration + config.grace_period + 60

    # --- streams ---

    def stream(self, uid: str) -> Stream | None:
        """The stream, if this worker produces it: only then does it know what the
        events so far show, for a page rendered mid-stream."""
        stream = self._streams.get(uid)
        return stream if isinstance(stream, LoggedStream) else None

    def followed(self, uid: str) -> FollowedStream | None:
        """This worker's copy of another worker's stream, if it follows it."""
        return self._following.get(uid)

    def following(self) -> list[FollowedStream]:
        """The streams this worker follows (kept apart: the reader asks for them at
        every read, and need not look through every stream it produces)."""
        return list(self._following.values())

    def _forget(self, stream: Stream) -> None:
        super()._forget(stream)
        if self._following.get(stream.uid) is stream:
            del self._following[stream.uid]

    async def streams_elsewhere(self, uid: str) -> bool:
        async with self.reachable():
            return await self._may_stream(uid)

    async def _may_stream(self, uid: str) -> bool:
        """Whether the stream is kept: producing, over but resumable, or pending in time."""
        state, posted = await self.redis.hmget(self.key("stream", uid), ["state", "posted"])
        if posted is None:  # gone, or only a trace is left
            return False
        if state == b"pending":
            return time.time() - float(posted) <= self.config.uid_ttl
        return state is not None

    async def claim(
        self,
        uid: str,
        last_event_id: int | None,
        start: StartProducer,
    ) -> tuple[Stream, int]:
        # A browser that leaves cancels its handler, perhaps between two commands to
        # Redis: the claim is finished anyway (shielded), then undone (detached).
        claiming = asyncio.ensure_future(self._claim_anywhere(uid, last_event_id, start))
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError:
            claiming.add_done_callback(self._undo_claim)
            raise

    def _undo_claim(self, claiming: asyncio.Future[tuple[Stream, int]]) -> None:
        if not claiming.cancelled() and claiming.exception() is None:
            stream, _ = claiming.result()
            self.background(self.detach(stream))

    def background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` on its own: kept referenced until done (the loop keeps only
        weak references to tasks)."""
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _claim_anywhere(
        self,
        uid: str,
        last_event_id: int | None,
        start: StartProducer,
    ) -> tuple[Stream, int]:
        local = self._streams.get(uid)
        if isinstance(local, LoggedStream):  # produced here: as with one process
            stream, position = await super().claim(uid, last_event_id, start)
            await self.listeners.change(uid, 1)
            return stream, position
        room = None
        try:
            for _ in range(RETRIES):
                try:
                    return await self._claim_shared(uid, last_event_id, start, room)
                except WatchError:
                    continue
                except LateStart as late:  # counted outside the transaction, then again
                    room = (await self.shared_room(late.client))[0]
        except (RedisError, OSError) as error:
            self.unreachable(error)
            raise NotClaimable(STORE_UNREACHABLE) from None
        raise NotClaimable(ALREADY_STREAMING)

    async def _claim_shared(
        self,
        uid: str,
        last_event_id: int | None,
        start: StartProducer,
        room: Room | None,
    ) -> tuple[Stream, int]:
        # A prompt that stopped counting may start if the limits (``room``) allow it.
        late = None if room is None else self.limits.started_late(room)
        answer, *rest = await self._claim_script(
            keys=[
                self.key("stream", uid), self.key("pending"), self.key("producing"),
                self.key("owned", self.worker), self.key("listening", self.worker),
                self.key("workers"),
            ],
            args=[
                uid, repr(time.time()), self.config.uid_ttl, PENDING_COUNTS_S,
                int(room is not None and late is None), self.worker, ms(self.live_ttl()),
                self.key("pending", ""), self.key("producing", ""), secrets.token_hex(8),
            ],
        )  # fmt: skip
        if answer == b"unknown":
            raise NotClaimable(UNKNOWN_UID)
        if answer == b"late":
            if late is None:
                raise LateStart(rest[0].decode())
            raise NotClaimable(late)
        if answer == b"claimed":
            client, turn, request, cid = rest
            stream = LoggedStream(
                self, uid, request_from_json(request), client.decode(),
                turn_from_json(json.loads(turn)), cid.decode(),
            )  # fmt: skip
            stream.listeners = 1
            async with self.lock:
                self._streams[uid] = stream
            stream.producer = asyncio.create_task(start(stream))
            return stream, 0
        return await self._resume_shared(uid, last_event_id)

    async def _resume_shared(self, uid: str, last_event_id: int | None) -> tuple[Stream, int]:
        """A browser coming back to an answer producing elsewhere, or over."""
        key = self.key("stream", uid)
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(key)
            fields = await pipe.hgetall(key)
            if fields.get(b"state") is None or b"posted" not in fields:  # gone meanwhile
                raise NotClaimable(UNKNOWN_UID)
            # Producing elsewhere, or over: only a browser coming back may listen.
            if last_event_id is None:
                raise NotClaimable(ALREADY_STREAMING)
            ended = fields.get(b"ended")
            if ended is not None and time.time() - float(ended) > self.config.grace_period:
                raise NotClaimable(UNKNOWN_UID)
            if int(fields.get(b"listeners", 0)) >= MAX_LISTENERS_PER_STREAM:
                raise NotClaimable(ALREADY_STREAMING)
            pipe.multi()
            mine = self.key("listening", self.worker)
            pipe.eval(LISTENED, 2, key, mine, uid, 1, ms(self.live_ttl()))  # one listener more
            await pipe.execute()
        followed = await self.follow(uid)
        if last_event_id > len(followed.frames) and not followed.closed:
            # The producer's own listeners see an event a moment before its log has
            # it: give the log that moment. An id it never reaches is none of ours.
            with suppress(TimeoutError):
                async with asyncio.timeout(LOG_LAG_S):
                    while last_event_id > len(followed.frames) and not followed.closed:
                        await followed.changed()
            if last_event_id > len(followed.frames) and not followed.closed:
                await self.detach(followed)
                raise NotClaimable(ALREADY_STREAMING)
        if followed.closed and last_event_id >= len(followed.frames):
            # The browser saw events its dead producer never logged: it still
            # gets how the answer ended (the last two events).
            return followed, max(0, len(followed.frames) - 2)
        return followed, last_event_id

    async def follow(self, uid: str) -> FollowedStream:
        """This worker's copy of another worker's answer, read from its log so far."""
        followed = self._streams.get(uid)
        if isinstance(followed, FollowedStream):
            followed.listeners += 1
            return followed
        placeholder = Turn(uid, "", ChatSettings())  # the producer keeps the real one
        followed = FollowedStream(uid, ChatRequest(()), "", placeholder, "")
        followed.listeners = 1
        self._streams[uid] = self._following[uid] = followed  # before any await: one copy
        try:
            for entry_id, fields in await self.redis.xrange(self.key("log", uid)):
                followed.receive(_event_id(entry_id), fields[b"e"].decode(), fields[b"f"])
            await self.reader.wake(uid)
        except BaseException:
            await self.detach(followed)
            raise
        return followed

    async def detach(self, stream: Stream) -> None:
        # This worker's count at once; every worker's in Redis, shielded: a handler
        # cancelled (its browser gone) must not leave a listener counted for ever.
        stream.listeners -= 1
        if isinstance(stream, FollowedStream) and stream.listeners == 0:
            self._forget(stream)  # the reader stops following it
        await asyncio.shield(self._detached(stream))

    async def _detached(self, stream: Stream) -> None:
        left = await self.listeners.change(stream.uid, -1)
        if isinstance(stream, FollowedStream):
            if left <= 0:  # to its producer: nobody listens now (let it go, even if over)
                await self.send("idle", stream.uid)
        elif stream.listeners == 0 and left <= 0:
            async with self.lock:
                if self.config.grace_period == 0 and stream.listeners == 0:
                    # No grace, and the count just said no worker listens: let go
                    # now, without asking Redis again (Store._give_up, not ours).
                    Store._give_up(self, stream)
                else:
                    self._wait_for_return(stream)

    def _give_up(self, stream: Stream) -> None:
        # The grace period is over. A finished answer is let go here (its log stays
        # in Redis for the rest of its resume window); one still generating only if
        # no worker has a listener for it.
        stream.timer = None
        if stream.closed:
            super()._give_up(stream)
        elif stream.listeners == 0:
            self.background(self._give_up_unless_listened(stream))

    async def _give_up_unless_listened(self, stream: Stream) -> None:
        try:
            listeners = await self.redis.hget(self.key("stream", stream.uid), "listeners")
        except (RedisError, OSError):
            listeners = None
        if listeners is None or int(listeners) <= 0:
            super()._give_up(stream)

    async def keep_answer(self, stream: Stream) -> None:
        try:
            for _ in range(RETRIES):
                with suppress(WatchError):
                    await self._keep_turn(stream.cid, stream.turn)
                    return
        except (RedisError, OSError) as error:
            self.unreachable(error)

    async def _keep_turn(self, cid: str, turn: Turn) -> None:
        """Put the ended turn into its conversation (if the conversation is still kept)."""
        key = self.key("conv", cid)
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(key)
            raw = await pipe.get(key)
            if raw is None:
                return
            conversation = conversation_from_json(raw)
            old_chars = conversation.chars()
            conversation.turns = [
                turn if kept.uid == turn.uid else kept for kept in conversation.turns
            ]
            pipe.multi()
            self._save(pipe, conversation, old_chars)
            self._read_bounds(pipe)
            *_, expired, count, kept = await pipe.execute()
        await self._bound_conversations(expired, count, kept)

    async def stop(self, uid: str, reason: str) -> None:
        if isinstance(self._streams.get(uid), LoggedStream):
            await super().stop(uid, reason)
            return
        # Produced elsewhere, if anywhere: its producer reads the control stream. Only
        # for an answer being produced: any other uid is ignored, as with one process.
        with suppress(RedisError, OSError):
            if (
                len(uid) <= UID_CHARS
                and await self.redis.hget(self.key("stream", uid), "state") == b"producing"
            ):
                await self.send("stop", uid, reason)

    async def send(self, op: str, uid: str, reason: str = "") -> None:
        """A message to the worker producing ``uid`` (every worker reads them)."""
        key = self.key("control")
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(key, {"op": op, "uid": uid, "reason": reason}, maxlen=CONTROL_KEPT)
        pipe.pexpire(key, ms(self.live_ttl()))
        with suppress(RedisError, OSError):
            await pipe.execute()

    def on_control(self, op: str, uid: str, reason: str) -> None:
        stream = self._streams.get(uid)
        if not isinstance(stream, LoggedStream):
            return  # another worker's
        if op == "stop":
            stream.stop(reason)
        elif op == "idle" and stream.listeners == 0:
            self._wait_for_return(stream)

    # --- workers that died ---

    async def heartbeat(self) -> None:
        """Say this worker is alive; end the answers of workers that are not."""
        while not self.closing:
            try:
                pipe = self.beat.pipeline(transaction=False)
                pipe.zadd(self.key("workers"), {self.worker: time.time()})
                pipe.pexpire(self.key("workers"), ms(self.live_ttl()))
                await pipe.execute()
                self.reachable_again()
            except (RedisError, OSError) as error:
                self.unreachable(error)
            await asyncio.sleep(HEARTBEAT_S)

    async def watch_workers(self) -> None:
        """Every second, end the answers of workers that stopped (a loop of its own:
        however long that takes, this worker's heartbeat is not late)."""
        while not self.closing:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self.end_orphans()
            except (RedisError, OSError) as error:
                self.unreachable(error)
            except Exception:  # a bug here must not stop the watch for good
                log.exception("ending the answers of stopped workers failed")

    def unreachable(self, error: Exception) -> None:
        """Log that Redis failed: once when it starts failing, not for every request."""
        if self.lost_at is None:
            self.lost_at = time.monotonic()
            log.warning("shared store %s unreachable: %s", public_url(self.url), error)
        else:
            log.debug("shared store %s: %s", public_url(self.url), error)

    def reachable_again(self) -> None:
        if self.lost_at is not None:
            lost_for = time.monotonic() - self.lost_at
            self.lost_at = None
            log.warning(
                "shared store %s reachable again after %.1f s", public_url(self.url), lost_for
            )

    async def end_orphans(self) -> None:
        """End the answers of every worker whose heartbeat stopped."""
        workers = self.key("workers")
        gone = await self.redis.zrangebyscore(workers, "-inf", time.time() - HEARTBEAT_TTL_S)
        for worker in gone:
            owned = self.key("owned", worker.decode())
            for uid in await self.redis.smembers(owned):
                with suppress(WatchError):
                    await self._end_orphan(uid.decode())
            await self.redis.delete(owned)
            # Its listeners are gone too: no generation elsewhere waits for them.
            listening = self.key("listening", worker.decode())
            for uid, count in (await self.redis.hgetall(listening)).items():
                if int(count) > 0:
                    key = self.key("stream", uid.decode())
                    if await self.redis.exists(key):
                        left = await self.redis.hincrby(key, "listeners", -int(count))
                        if left <= 0:
                            await self.send("idle", uid.decode())
            await self.redis.delete(listening)
            await self.redis.zrem(workers, worker)

    async def _end_orphan(self, uid: str) -> None:
        """End an answer whose producer died: `error` and `close` after its last frame."""
        key, log_key = self.key("stream", uid), self.key("log", uid)
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(key, log_key)
            state, cid, client, producer = await pipe.hmget(
                key, ["state", "cid", "client", "producer"]
            )
            if state != b"producing":
                await pipe.unwatch()
                return
            last = await pipe.xrevrange(log_key, count=1)
            event_id = _event_id(last[0][0]) if last else 0
            pipe.multi()
            for event in (error_event(PRODUCER_GONE), close_event()):
                event_id += 1
                frame = format_event(event.name, event.data, event_id)
                pipe.xadd(log_key, {"e": event.name, "f": frame}, id=f"0-{event_id}")
            ended = self.ended_ttl()
            pipe.hset(key, mapping={"state": "closed", "ended": repr(time.time())})
            pipe.pexpire(key, ms(ended))
            pipe.pexpire(log_key, ms(ended))
            self.produced(pipe, uid, client.decode(), producer.decode())
            await pipe.execute()
        log.warning("stream %s: its worker stopped; ended it", uid[:9])
        conversation = await self._conversation(cid.decode()) if cid else None
        if conversation is not None:
            for turn in conversation.turns:
                if turn.uid == uid and not turn.done:
                    turn.end("crashed", None, PRODUCER_GONE)
                    await self._keep_turn(conversation.cid, turn)

    def produced(self, pipe: Any, uid: str, client: str, producer: str) -> None:
        """The answer is over: it no longer counts against the limits."""
        pipe.zrem(self.key("producing"), uid)
        pipe.zrem(self.key("producing", client), uid)
        pipe.srem(self.key("owned", producer), uid)

    def ended_ttl(self) -> float:
        """How long a finished answer's keys live: its resume window, and a little more."""
        return self.config.grace_period + SETTLE_S


# --- writing and reading the logs ---------------------------------------------------------


class ListenerCounts:
    """Listeners counted in and out on Redis, all the changes made at one moment in
    one round trip.

    When a thousand browsers leave at once, a transaction each through the pool
    of ``POOL_SIZE`` connections took about a second for the last (the model kept
    generating for nobody that long). Here the first change starts a flush on the
    next turn of the event loop; it sends every change made by then as one
    pipeline of ``LISTENED`` scripts, in the order they were made, and the changes
    made while it is out go in the next one. One at a time alone, a change waits
    only for that turn.
    """

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self._queued: list[tuple[str, int, asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None  # the last flush started

    async def change(self, uid: str, change: int) -> int:
        """Count a listener of ``uid`` in (1) or out (-1); how many listen now, on
        every worker (0 if Redis cannot say)."""
        counted: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queued.append((uid, change, counted))
        # A flush that is out takes this change in its next round; one that is done
        # (even cancelled before it began: then it took nothing) takes none.
        if self._flusher is None or self._flusher.done():
            self._flusher = self.store.background(self._flush())
            self._flusher.add_done_callback(self._flushed)
        return await counted

    async def _flush(self) -> None:
        store, batch = self.store, []
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                mine = store.key("listening", store.worker)
                ttl = ms(store.live_ttl())
                counts: list[Any] | None = None  # none: Redis cannot say
                try:
                    pipe = store.redis.pipeline(transaction=False)
                    for uid, change, _ in batch:
                        # EVAL, not EVALSHA: Redis keeps the script compiled, and a
                        # Redis restarted meanwhile needs no SCRIPT LOAD first.
                        pipe.eval(LISTENED, 2, store.key("stream", uid), mine, uid, change, ttl)
                    counts = await pipe.execute(raise_on_error=False)
                except (RedisError, OSError):
                    pass
                except Exception:  # a bug: as if Redis were away, for this batch only
                    log.exception("counting %d listeners in and out failed", len(batch))
                _answer(batch, counts)
        finally:
            _answer(batch)  # cancelled while out (at shutdown): none waits

    def _flushed(self, flusher: asyncio.Task[None]) -> None:
        """A flush that ends well leaves nothing queued. One cancelled (at shutdown;
        even before it began, when not even its ``finally`` ran) or failed leaves the
        changes made meanwhile: none waits for them, unless a newer flush took them."""
        if flusher is self._flusher and self._queued:
            queued, self._queued = self._queued, []
            _answer(queued)


def _answer(
    changes: list[tuple[str, int, asyncio.Future[int]]], counts: list[Any] | None = None
) -> None:
    """Tell each change not answered yet how many listen now: its count from Redis
    (``counts``, one per change), or 0 (Redis cannot say) without one."""
    for (_, _, counted), left in zip(changes, counts or [0] * len(changes), strict=True):
        if not counted.done():
            counted.set_result(left if isinstance(left, int) else 0)


class LogWriter:
    """Appends the frames of the answers this worker produces to their Redis logs,
    in batches: whatever came while the last batch was being written goes in one
    pipeline, so a busy worker makes one round trip per batch, not per frame."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        # Its own connection: busy requests never keep an answer's frames waiting.
        self.redis = connect(store.url, pool_size=1)
        self.queue: list[tuple[LoggedStream, str, int, bytes, int | None]] = []
        self.ready = asyncio.Event()
        self.ending = asyncio.Event()  # an answer's `close` is queued: no waiting for more
        self.idle = asyncio.Event()
        self.idle.set()
        #: Streams whose last frames could not be written (Redis away), by uid.
        self.behind: dict[str, LoggedStream] = {}

    def add(
        self, stream: LoggedStream, name: str, event_id: int, frame: bytes, forgotten: int | None
    ) -> None:
        self.queue.append((stream, name, event_id, frame, forgotten))
        self.ready.set()
        if name == "close":
            self.ending.set()
        self.idle.clear()

    async def drain(self) -> None:
        """Wait until what was queued is written (at shutdown), a few seconds at most."""
        with suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_S):
                await self.idle.wait()

    async def run(self) -> None:
        store = self.store
        while not store.closing:
            if self.behind:  # try them again in a while, even if nothing new comes
                with suppress(TimeoutError):
                    async with asyncio.timeout(RETRY_S):
                        await self.ready.wait()
            else:
                await self.ready.wait()
                with suppress(TimeoutError):  # what comes meanwhile joins the batch
                    async with asyncio.timeout(LOG_BATCH_S):
                        await self.ending.wait()
            self.ready.clear()
            self.ending.clear()
            batch, self.queue = self.queue, []
            behind, self.behind = self.behind, {}
            try:
                await self.find_where_logs_stopped(behind)
            except (RedisError, OSError):
                self.behind = behind  # Redis is still away
                continue
            entries = [entry for entry in batch if entry[0].uid not in behind]
            for stream in behind.values():  # their frames since the log stopped, again
                for event_id in range(stream.logged + 1, len(stream.frames) + 1):
                    frame = stream.frames[event_id - 1]
                    if frame is not None:
                        entries.append((stream, stream.names[event_id - 1], event_id, frame, None))
            await self.write(entries)
            if not self.queue and not self.behind:
                self.idle.set()

    async def write(self, entries: list[tuple[LoggedStream, str, int, bytes, int | None]]) -> None:
        """Append the entries to their logs in one pipeline; a stream whose entries
        fail is stopped (it says why) and goes on the ``behind`` list."""
        store = self.store
        pipe = self.redis.pipeline(transaction=False)
        streams: dict[str, LoggedStream] = {}
        whose: list[tuple[LoggedStream, int]] = []  # per command: its stream, its event id
        for stream, name, event_id, frame, forgotten in entries:
            log_key = store.key("log", stream.uid)
            pipe.xadd(log_key, {"e": name, "f": frame}, id=f"0-{event_id}")
            whose.append((stream, event_id))
            if forgotten is not None:
                pipe.xdel(log_key, f"0-{forgotten}")
                whose.append((stream, 0))
            streams[stream.uid] = stream
        for uid, stream in streams.items():
            # Expiries are set twice in a log's life, not with every batch: when it
            # is made (the claim set its hash's), and when the answer ends.
            if stream.closed:
                ended = {"state": "closed", "ended": repr(time.time())}
                pipe.hset(store.key("stream", uid), mapping=ended)
                store.produced(pipe, uid, stream.client, store.worker)
                pipe.pexpire(store.key("log", uid), ms(store.ended_ttl()))
                pipe.pexpire(store.key("stream", uid), ms(store.ended_ttl()))
                whose += [(stream, 0)] * 6
            elif stream.logged == 0:  # its log is made by this batch
                pipe.pexpire(store.key("log", uid), ms(store.live_ttl()))
                whose.append((stream, 0))
        try:
            results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as error:
            results = [error] * len(whose)
        failed: set[str] = set()
        for (stream, event_id), result in zip(whose, results, strict=True):
            if isinstance(result, Exception):
                failed.add(stream.uid)
            elif event_id and stream.uid not in failed:
                stream.logged = event_id
        for uid in failed:
            # Redis is away: the generation stops, and says why; its frames are
            # written when Redis is back, so that nothing of it is left half-done.
            stream = streams[uid]
            stream.stop(STORE_LOST_REASON)
            if self.too_late(stream):
                log.warning("stream %s: its log could not be written; given up", uid[:9])
            else:
                self.behind[uid] = stream

    async def find_where_logs_stopped(self, behind: dict[str, LoggedStream]) -> None:
        """Set each stream's ``logged`` to its log's last entry, if that entry is its
        own; a stream whose log another worker ended meanwhile (it thought this one
        dead) is left alone."""
        if not behind:
            return
        pipe = self.redis.pipeline(transaction=False)
        for uid in behind:
            pipe.xrevrange(self.store.key("log", uid), count=1)
        for (uid, stream), last in zip(list(behind.items()), await pipe.execute(), strict=True):
            if not last:
                stream.logged = 0  # the log is gone (Redis came back empty): all again
                continue
            entry_id, fields = last[0]
            event_id = _event_id(entry_id)
            ours = event_id <= len(stream.frames) and (
                stream.frames[event_id - 1] == fields[b"f"]
                or stream.names[event_id - 1] == fields[b"e"].decode() != "close"
            )
            if ours:
                stream.logged = event_id
            else:
                del behind[uid]

    def too_late(self, stream: LoggedStream) -> bool:
        """Whether its keys would have expired by now anyway."""
        return time.monotonic() - stream.created > self.store.live_ttl()


class LogReader:
    """Follows, for this worker's listeners, the logs of answers other workers
    produce, and reads the control stream: one blocking XREAD over all of them,
    on a connection of its own."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        # Its own connection: a blocking read must not time out as a command would.
        self.redis = connect(store.url, socket_timeout=READ_BLOCK_MS / 1000 + 5, retries=0)
        self.wake_key = store.key("wake", store.worker)

    async def wake(self, uid: str) -> None:
        """Wake the blocked read, so that its next one includes this log (or sees
        that the app is closing)."""
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.xadd(self.wake_key, {"uid": uid}, maxlen=100)
        pipe.pexpire(self.wake_key, ms(60))
        await pipe.execute()

    async def close(self) -> None:
        await self.redis.aclose()

    async def run(self) -> None:
        store = self.store
        control_key = store.key("control")
        wait = 0.1
        last_control = last_wake = b""
        while not store.closing:
            try:
                if not last_control:  # only what is sent from now on
                    newest = await self.redis.xrevrange(control_key, count=1)
                    last_control = newest[0][0] if newest else b"0-0"
                    newest = await self.redis.xrevrange(self.wake_key, count=1)
                    last_wake = newest[0][0] if newest else b"0-0"
                keys: dict[Any, Any] = {control_key: last_control, self.wake_key: last_wake}
                for each in store.following():
                    keys[store.key("log", each.uid)] = f"0-{len(each.frames)}"
                reply = await self.redis.xread(keys, block=READ_BLOCK_MS)
                wait = 0.1
            except (RedisError, OSError) as error:
                store.unreachable(error)
                for each in store.following():
                    each.lost(STOPPED_BY_SERVER[STORE_LOST_REASON])
                await asyncio.sleep(wait)
                wait = min(wait * 2, 5.0)
                continue
            for key, entries in reply or []:
                key = key.decode()
                if key == control_key:
                    for entry_id, fields in entries:
                        last_control = entry_id
                        store.on_control(
                            fields[b"op"].decode(),
                            fields[b"uid"].decode(),
                            fields[b"reason"].decode(),
                        )
                elif key == self.wake_key:
                    last_wake = entries[-1][0]
                else:
                    followed = store.followed(key.rsplit(":", 1)[1])
                    if followed is not None:
                        for entry_id, fields in entries:
                            followed.receive(
                                _event_id(entry_id), fields[b"e"].decode(), fields[b"f"]
                            )


# --- helpers ------------------------------------------------------------------------------


def connect(
    url: str, socket_timeout: float = 5.0, retries: int = 1, pool_size: int = POOL_SIZE
) -> Any:
    """A client for ``url`` (typed Any: redis-py's replies are not typed by command).

    Its connections come from a pool of at most POOL_SIZE: a request that finds
    them all busy waits for one (up to socket_timeout), where redis-py's default
    pool would fail at once. Few, quick retries: with Redis gone, a person gets a
    readable 503 within a second or two, not after redis-py's default of ten tries.
    """
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=pool_size,
        timeout=socket_timeout,
        protocol=2,
        socket_timeout=socket_timeout,
        socket_connect_timeout=2.0,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02) if retries else NoBackoff(), retries),
    )
    return redis.Redis.from_pool(pool)


def ms(seconds: float) -> int:
    """Seconds as the milliseconds of PEXPIRE and PX (at least 1)."""
    return max(1, math.ceil(seconds * 1000))


def _event_id(entry_id: bytes) -> int:
    """The SSE id of a log entry: entry 0-N is event N."""
    return int(entry_id.split(b"-")[1])


async def check_reachable(url: str) -> str | None:
    """At start: None if Redis answers, else why not, in one line."""
    try:
        client = connect(url, retries=0)
    except ValueError as error:  # a URL option redis-py cannot read
        return f"Cannot use the Redis URL {public_url(url)}: {error}"
    try:
        await client.ping()
        return None
    except (RedisError, OSError) as error:
        return f"Cannot reach Redis at {public_url(url)}: {error}"
    finally:
        await client.aclose()

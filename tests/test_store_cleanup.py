"""What the store forgets on its own, so that memory stays flat on a long-running server."""

import gc

from aiohttp import web

import conversations
import server
from conversations import Conversation
from providers.events import Answer
from server import STORE
from tests.conftest import Hang, ScriptedProvider, post_prompt
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


async def test_past_the_bound_a_prompt_looks_at_a_few_streaming_conversations(
    start_app, monkeypatch
):
    # More conversations streaming (here: prompts posted, not opened yet) than
    # --max-conversations allows: none of them can be forgotten, and a prompt
    # must not look at every one of them to find that out, or opening N streams
    # costs N² (5,000 took 30 s). Each prompt makes room twice (for its new
    # conversation, then for its turn).
    monkeypatch.setattr(conversations, "MAKE_ROOM_LOOKS", 3, raising=False)
    looked_at: list[str] = []
    streaming = Conversation.streaming.fget
    assert streaming is not None

    def counted(conversation: Conversation) -> bool:
        looked_at.append(conversation.cid)
        return streaming(conversation)

    monkeypatch.setattr(Conversation, "streaming", property(counted))
    client = await start_app(provider=ScriptedProvider([Hang()]), max_conversations=2)
    for _ in range(12):
        looked_at.clear()
        await post_prompt(client)
        assert len(looked_at) <= 2 * 3
    assert (await healthz(client))["conversations"] == 12  # all streaming: all kept


async def test_past_the_bound_an_answered_conversation_behind_streaming_ones_goes(start_app):
    # The oldest conversation is answered; newer ones stream (posted, not
    # opened). Past the bound, the answered one is forgotten, and no streaming one.
    client = await start_app(provider=ScriptedProvider([Hang()]), max_conversations=3)
    client.app[STORE].conversations.max_conversations = 1000
    answered = await post_prompt(client)
    client.app[STORE].stream(answered).turn.end("done", None, None)
    for _ in range(5):
        await post_prompt(client)
    client.app[STORE].conversations.max_conversations = 3
    await post_prompt(client)
    kept = list(client.app[STORE].conversations)
    assert len(kept) == 6 and all(conversation.streaming for conversation in kept)


async def test_a_prompts_answer_is_not_kept_while_its_stream_is_held(start_app):
    # aiohttp keeps a connection's last response until the next request on it
    # is answered; the page opens the stream right after the POST, here on the
    # same connection. The POST's answer (the turn's HTML) must not stay in
    # memory for as long as the stream is held.
    client = await start_app(provider=ScriptedProvider([Answer("Hi"), Hang()]))
    uid = await post_prompt(client)
    stream = await client.get("/response-stream", params={"uid": uid})
    await stream.content.readuntil(b"\n\n")  # the stream is open
    gc.collect()
    kept = [
        body
        for item in gc.get_objects()
        if isinstance(item, web.Response)
        and isinstance(body := item.body, bytes)
        and uid.encode() in body
    ]
    assert kept == []
    stream.close()

"""Each limit refuses with a readable message, the right status and Retry-After."""

import asyncio
import socket
import uuid

import pytest

from providers.events import Answer
from tests.conftest import Hang, ScriptedProvider, post_prompt, read_stream
from tests.each_store import start_app_on_each_store  # noqa: F401  (both stores)
from tests.sse_client import parse_stream
from tests.waiting import eventually, healthz


async def refused(client, prompt="hi", headers=None):
    response = await client.post("/process_prompt", data={"prompt": prompt}, headers=headers)
    return response.status, response.headers.get("Retry-After"), await response.text()


async def test_prompts_per_minute_per_client(start_app):
    client = await start_app(prompts_per_minute=3)
    for _ in range(3):
        await post_prompt(client)
    status, retry_after, message = await refused(client)

    assert status == 429
    assert 55 <= int(retry_after) <= 60
    assert "3 prompts in a minute" in message and "Please wait" in message


@pytest.mark.parametrize(
    ("limit", "status", "message"),
    [
        ({"max_streams_per_client": 2}, 429, "You already have 2 answers streaming"),
        ({"max_streams": 2}, 503, "The server is answering as many prompts as it can"),
        ({"max_pending": 2}, 503, "Too many prompts are waiting right now"),
    ],
    ids=["per-client", "everyone", "pending"],
)
async def test_streams_at_once_are_limited(start_app, limit, status, message):
    client = await start_app(**limit)
    await post_prompt(client)
    await post_prompt(client)
    refusal = await refused(client)
    assert refusal[:2] == (status, "5")
    assert message in refusal[2]


async def test_finished_streams_do_not_count_against_the_client(start_app):
    client = await start_app(max_streams_per_client=1)
    for _ in range(3):
        uid = await post_prompt(client)
        await read_stream(client, uid)


async def test_clients_are_told_apart_by_x_forwarded_for_only_with_trust_proxy(start_app):
    trusting = await start_app(max_streams_per_client=1, trust_proxy=True)
    await post_prompt(trusting)  # from 127.0.0.1
    one = {"X-Forwarded-For": "203.0.113.9, 198.51.100.1"}
    assert (await refused(trusting, headers=one))[0] == 200  # a different client
    assert (await refused(trusting, headers=one))[0] == 429  # the same one again

    # Another app, with a store of its own (with Redis: its own key prefix).
    naive = await start_app(max_streams_per_client=1, redis_prefix=f"naive-{uuid.uuid4().hex}")
    await post_prompt(naive)
    assert (await refused(naive, headers=one))[0] == 429  # the header is not believed


async def test_answer_longer_than_max_duration_is_stopped(start_app):
    provider = ScriptedProvider([Answer("partial"), Hang()])
    client = await start_app(provider=provider, max_duration=0.3)
    uid = await post_prompt(client)
    _, events, _ = await read_stream(client, uid)

    assert [e.event for e in events[-2:]] == ["error", "close"]
    assert "took longer than the server allows" in events[-2].data
    assert provider.closed.is_set()


async def open_stream_and_read_nothing(client, uid, receive_buffer):
    """A raw socket that sends the stream's GET, with a small receive buffer, and
    reads nothing until the test says so."""
    host, port = client.server.host, client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    writer.write(f"GET /response-stream?uid={uid} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    await eventually(lambda: claimed(client))  # the server has taken it on
    return reader, writer


async def claimed(client) -> bool:
    """Whether the prompt's stream was opened (it is no longer waiting)."""
    return (await healthz(client))["uids_pending"] == 0


async def no_listeners_left(client, within=10.0):
    """Poll /healthz until no stream has a listener; whether it came to that."""
    deadline = asyncio.get_running_loop().time() + within
    while (await (await client.get("/healthz")).json())["listeners"] != 0:
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def dechunked(body: bytes) -> bytes:
    """The payload of an HTTP/1.1 chunked body (as far as it goes)."""
    payload, at = b"", 0
    while (line_end := body.find(b"\r\n", at)) >= 0:
        size = int(body[at:line_end], 16)
        if size == 0 or line_end + 2 + size > len(body):
            break
        payload += body[line_end + 2 : line_end + 2 + size]
        at = line_end + 2 + size + 2
    return payload


async def test_a_client_that_stops_reading_a_while_then_gets_every_event_once(start_app):
    """While a browser's socket is full, the producer cannot write its events to it
    directly (Stream.hand_off): the listener writes them itself, with its time
    limit, and when the browser reads again nothing is lost, repeated or reordered."""
    # About 5 MB in events of 8 KB: each small enough to be handed off, all of them
    # far more than the socket buffers hold while nothing is read.
    pieces = [f"{n:04d}" + "x" * 8000 for n in range(600)]
    provider = ScriptedProvider([*(Answer(piece) for piece in pieces), Hang()])
    client = await start_app(provider=provider, write_timeout=30, max_answer_chars=50_000_000)
    uid = await post_prompt(client)

    # (Not 4096: so small a window makes reading 5 MB back take minutes.)
    reader, writer = await open_stream_and_read_nothing(client, uid, receive_buffer=65536)
    try:
        await asyncio.sleep(0.5)  # the buffers fill up, and the producer runs ahead
        # A listener that catches up writes all it missed as one HTTP chunk, so
        # read until the last event's frame has come whole.
        last_frame_end = pieces[-1].encode() + b"\n\n"
        raw = b""
        async with asyncio.timeout(20):  # (the answer never ends: Hang)
            while last_frame_end not in raw[-len(last_frame_end) - (1 << 16) :]:
                raw += await reader.read(1 << 16)
    finally:
        writer.close()

    events, _ = parse_stream(dechunked(raw.split(b"\r\n\r\n", 1)[1]).decode())
    assert [int(event.id) for event in events] == list(range(1, len(events) + 1))
    answer = "".join(event.data for event in events if event.event == "answer_chunk")
    assert answer == "".join(pieces)


async def test_a_client_that_reads_nothing_is_dropped(start_app):
    """A frozen browser must not hold the server's memory without bound."""
    big = "x" * 200_000
    provider = ScriptedProvider([Answer(big) for _ in range(200)])
    client = await start_app(provider=provider, write_timeout=0.3, max_answer_chars=50_000_000)
    uid = await post_prompt(client)

    _reader, writer = await open_stream_and_read_nothing(client, uid, receive_buffer=4096)
    try:
        assert await no_listeners_left(client)
    finally:
        writer.close()


async def test_a_client_that_reads_nothing_has_its_connection_closed(start_app):
    """The frozen browser's connection is cut, not left open nor ended as a
    finished response: read again, it gives what the buffers still held, then
    the end of the connection, in the middle of the response body."""
    # About 10 MB, far more than the socket buffers hold while nothing is read.
    provider = ScriptedProvider([Answer("x" * 200_000) for _ in range(50)] + [Hang()])
    client = await start_app(provider=provider, write_timeout=0.5, max_answer_chars=50_000_000)
    uid = await post_prompt(client)

    # Not 4096: so small a window makes reading the buffers back take minutes.
    reader, writer = await open_stream_and_read_nothing(client, uid, receive_buffer=65536)
    try:
        assert await no_listeners_left(client)  # dropped after the write timeout
        tail = b""
        try:
            async with asyncio.timeout(10):
                while data := await reader.read(1 << 16):
                    tail = (tail + data)[-16:]
        except ConnectionResetError:
            pass  # cut with a reset: the connection is closed too
        except TimeoutError:
            pytest.fail("the connection was still open 10 s after the client was dropped")
        # A finished chunked body ends with a last, empty chunk. Had the server
        # only let go of the stream, aiohttp would finish the response and then
        # wait for the next request; aiohttp 3.14 in fact closes the connection
        # as well (the timed-out write left its drain waiter cancelled, so
        # finishing fails at once), so the cut body is what shows it was cut.
        assert not tail.endswith(b"\r\n0\r\n\r\n"), "the response was finished, not cut"
    finally:
        writer.close()


async def test_limits_keep_the_server_serving(start_app):
    client = await start_app(prompts_per_minute=1)
    await post_prompt(client)
    assert (await refused(client))[0] == 429
    events, _ = parse_stream(
        await (await client.get("/response-stream", params={"uid": "nope"})).text()
    )
    assert [e.event for e in events] == ["error", "close"]

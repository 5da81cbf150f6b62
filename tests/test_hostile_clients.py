"""Hostile clients, over real sockets: each attack leaves the server serving everyone else.

Each test reproduces one attack: a connection that never finishes its request,
a flood of prompts nobody opens, a costly body, a foreign Host name, values
that used to raise, a forged log line, password guessing, broken Unicode,
too many listeners on one stream, a HEAD of a stream.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest

import server
from providers.events import Answer
from providers.openai import OpenAISettings
from tests.conftest import Hang, ScriptedProvider, post_prompt, read_stream
from tests.each_store import start_app_on_each_store, tune  # noqa: F401  (both stores)
from tests.fake_upstream import DONE, chunk
from tests.snippet import uid_from_snippet
from tests.sse_client import answer_of, parse_stream
from tests.test_access import basic
from tests.waiting import healthz

BOUND_S = 5.0  # every wait in this file ends by then


async def raw_connection(client):
    return await asyncio.open_connection(client.server.host, client.server.port)


async def read_to_end(reader: asyncio.StreamReader, within: float = BOUND_S) -> bytes:
    """Everything the server sends until it closes the connection."""
    async with asyncio.timeout(within):
        return await reader.read()


# --- 1. connections that never finish ----------------------------------------------------


async def test_a_request_whose_headers_never_end_is_dropped(start_app):
    client = await start_app(request_timeout=0.5)
    reader, writer = await raw_connection(client)
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
    started = time.monotonic()
    assert await read_to_end(reader) == b""
    assert time.monotonic() - started < 2
    writer.close()


async def test_a_silent_connection_is_dropped(start_app):
    client = await start_app(request_timeout=0.5)
    reader, writer = await raw_connection(client)
    assert await read_to_end(reader) == b""
    writer.close()


async def test_a_body_that_never_ends_is_refused_and_its_connection_closed(start_app):
    client = await start_app(request_timeout=0.5)
    reader, writer = await raw_connection(client)
    writer.write(
        b"POST /process_prompt HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
        b"prompt=only the start"
    )
    started = time.monotonic()
    answer = await read_to_end(reader)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"took too long to arrive" in answer
    assert time.monotonic() - started < 3
    writer.close()


async def test_one_client_cannot_hold_more_than_its_requests_at_once(start_app):
    client = await start_app(request_timeout=2, max_requests_per_client=3)
    slow = []
    for _ in range(3):  # three bodies that never end: three requests in flight
        reader, writer = await raw_connection(client)
        writer.write(
            b"POST /process_prompt HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
        )
        slow.append((reader, writer))
    await asyncio.sleep(0.2)

    response = await client.get("/")
    assert response.status == 429
    assert "requests open here already" in await response.text()
    assert (await client.get("/healthz")).status == 200  # health checks are never held up

    for reader, writer in slow:  # they time out, and the client is welcome again
        assert (await read_to_end(reader)).startswith(b"HTTP/1.1 408 ")
        writer.close()
    assert (await client.get("/")).status == 200


# --- 2. prompts posted and never opened ---------------------------------------------------


async def post_from(client, address: str, prompt: str = "hi") -> int:
    """POST a prompt from another loopback address: another client, as the server sees it."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        url = client.make_url("/process_prompt")
        async with session.post(url, data={"prompt": prompt}) as response:
            return response.status


async def test_prompts_nobody_opens_stop_counting_after_a_few_seconds(start_app, monkeypatch):
    # 50 addresses post 4 prompts each and never open them: 200 prompts, the
    # default --max-streams. They count only for PENDING_COUNTS_S, not for the
    # whole --uid-ttl, so the server is soon open to everyone again.
    tune(monkeypatch, "PENDING_COUNTS_S", 2.0)
    tune(monkeypatch, "GIVE_WAY_S", 60.0)  # none gives way: the next test's point
    client = await start_app(max_streams=200, max_streams_per_client=4)
    statuses = await asyncio.gather(
        *(post_from(client, f"127.0.1.{n}") for n in range(1, 51) for _ in range(4))
    )
    assert statuses == [200] * 200
    assert await post_from(client, "127.0.2.1") == 503  # full, for a moment

    await asyncio.sleep(2.1)
    assert await post_from(client, "127.0.2.1") == 200


async def test_prompts_nobody_opened_make_room_when_the_server_is_full(start_app, monkeypatch):
    # The same flood, posted again as soon as its prompts stop counting: the
    # oldest unopened prompt gives way to a new one instead of a 503.
    tune(monkeypatch, "GIVE_WAY_S", 60.0)  # for now, nobody gives way
    client = await start_app(max_streams=200, max_streams_per_client=4)
    flood = [f"127.0.1.{n}" for n in range(1, 51) for _ in range(4)]
    assert await asyncio.gather(*(post_from(client, address) for address in flood)) == [200] * 200
    assert await post_from(client, "127.0.2.1") == 503

    # Now they have waited GIVE_WAY_S unopened (and still count, for PENDING_COUNTS_S).
    tune(monkeypatch, "GIVE_WAY_S", 0.0)
    assert [await post_from(client, "127.0.2.1") for _ in range(3)] == [200, 200, 200]
    assert (await healthz(client))["uids_pending"] == 200  # three flood prompts gave way


async def test_a_prompt_opened_late_counts_again_when_it_starts(start_app, monkeypatch):
    # Two prompts wait unopened until they stop counting; two more are posted;
    # then all four are opened at once. Only as many may generate as the limit.
    tune(monkeypatch, "PENDING_COUNTS_S", 0.3)
    provider = ScriptedProvider([Answer("x"), Hang()])
    client = await start_app(provider=provider, max_streams=10, max_streams_per_client=2)
    early = [await post_prompt(client) for _ in range(2)]
    await asyncio.sleep(0.4)
    later = [await post_prompt(client) for _ in range(2)]

    first_events, responses = [], []
    for uid in later + early:  # each stays open, listening
        response = await client.get("/response-stream", params={"uid": uid})
        async with asyncio.timeout(BOUND_S):
            await response.content.readuntil(b"event: ")
            frame = await response.content.readuntil(b"\n\n")
        first_events.append(parse_stream("event: " + frame.decode())[0][0])
        responses.append(response)
    assert [event.event for event in first_events] == ["thought", "thought", "error", "error"]
    assert "You already have 2 answers streaming" in first_events[-1].data
    assert (await healthz(client))["streams_in_flight"] == 2
    for response in responses:
        response.close()


async def test_one_client_can_keep_only_a_few_prompts_waiting(start_app):
    client = await start_app(max_pending_per_client=3)
    statuses = [await post_from(client, "127.0.3.1") for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert await post_from(client, "127.0.3.2") == 200  # others are not held up


async def test_x_forwarded_for_counts_only_when_it_is_an_address(start_app):
    client = await start_app(trust_proxy=True, prompts_per_minute=1)
    for value, status in [("not-an-address", 200), ("still not", 429), ("203.0.113.9", 200)]:
        response = await client.post(
            "/process_prompt", data={"prompt": "hi"}, headers={"X-Forwarded-For": value}
        )
        assert response.status == status, value  # the first two are the proxy's own address


async def test_only_the_last_x_forwarded_for_entry_is_the_client(start_app):
    # A proxy appends the address it saw; whatever comes before is the client's
    # own say, and must not let it pose as another client.
    client = await start_app(trust_proxy=True, prompts_per_minute=1)
    for forwarded, status in [("203.0.113.9, 198.51.100.1", 200),
                              ("203.0.113.10, 198.51.100.1", 429),
                              ("198.51.100.1, 203.0.113.9", 200)]:  # fmt: skip
        response = await client.post(
            "/process_prompt", data={"prompt": "hi"}, headers={"X-Forwarded-For": forwarded}
        )
        assert response.status == status, forwarded


# --- 3. bodies that cost more than they carry ---------------------------------------------


async def test_a_multipart_body_is_refused_unread(start_app):
    client = await start_app()
    form = aiohttp.FormData(default_to_multipart=True)
    for _ in range(990):
        form.add_field("x", "")
    form.add_field("prompt", "hi")
    response = await client.post("/process_prompt", data=form)
    assert response.status == 415
    assert "form field named" in await response.text()


async def test_the_rate_limit_comes_before_the_body_is_read(start_app):
    client = await start_app(prompts_per_minute=1, request_timeout=5)
    await post_prompt(client)
    reader, writer = await raw_connection(client)
    writer.write(  # a body announced but never sent: reading it would wait 5 s
        b"POST /process_prompt HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 50000\r\n\r\n"
    )
    async with asyncio.timeout(1):
        status_line = await reader.readline()
    assert status_line.startswith(b"HTTP/1.1 429 ")
    writer.close()


# --- 4. the Host header (DNS rebinding) ---------------------------------------------------


@pytest.mark.parametrize(
    ("host", "status"),
    [("evil.example", 400), ("evil.example:8080", 400), ("[::1", 400), ("", 400),
     ("localhost:8080", 200), ("127.0.0.1", 200), ("[::1]:8080", 200), ("192.0.2.7", 200)],
)  # fmt: skip
async def test_only_known_host_names_are_served(start_app, host, status):
    client = await start_app()
    response = await client.get("/", headers={"Host": host})
    assert response.status == status
    if status == 400:
        assert "does not answer to that host name" in await response.text()


async def test_allowed_hosts_adds_names_and_healthz_answers_any(start_app):
    client = await start_app(allowed_hosts=("chat.example.org",))
    assert (await client.get("/", headers={"Host": "chat.example.org"})).status == 200
    assert (await client.get("/", headers={"Host": "other.example.org"})).status == 400
    assert (await client.get("/healthz", headers={"Host": "other.example.org"})).status == 200


# --- 5. values that used to raise ----------------------------------------------------------


async def test_a_huge_last_event_id_is_no_id(start_app):
    client = await start_app(provider=ScriptedProvider([Answer("a"), Hang()]))
    uid = await post_prompt(client)
    first = await client.get("/response-stream", params={"uid": uid})
    response = await client.get(
        "/response-stream", params={"uid": uid}, headers={"Last-Event-ID": "9" * 5000}
    )
    assert response.status == 200
    events, _ = parse_stream(await response.text())
    assert [event.event for event in events] == ["error", "close"]
    first.close()


async def test_a_malformed_origin_is_refused_as_foreign(start_app):
    client = await start_app()
    response = await client.post(
        "/process_prompt", data={"prompt": "hi"}, headers={"Origin": "http://[::1"}
    )
    assert response.status == 403


# --- 6. the access log --------------------------------------------------------------------


async def test_a_line_break_in_the_path_cannot_forge_a_log_line(start_app, caplog):
    client = await start_app()
    with caplog.at_level(logging.INFO, logger="aiohttp.access"):
        await client.get('/%0A127.0.0.1 "GET /admin" 200')
        await asyncio.sleep(0.05)
    lines = [record.getMessage() for record in caplog.records if record.name == "aiohttp.access"]
    assert lines and all("\n" not in line for line in lines)
    assert any('\\n127.0.0.1 "GET /admin"' in line for line in lines)


# --- 7. password guessing ------------------------------------------------------------------


async def test_wrong_passwords_are_slowed_down(start_app):
    client = await start_app(password="right one")
    wrong, right = basic("guess"), basic("right one")
    for _ in range(server.FREE_PASSWORD_TRIES):
        assert (await client.get("/", headers=wrong)).status == 401

    refused = await client.get("/", headers=right)
    assert refused.status == 429  # even the right one, until the wait is over
    wait = int(refused.headers["Retry-After"])
    assert 1 <= wait <= 2
    await asyncio.sleep(wait + 0.1)
    assert (await client.get("/", headers=right)).status == 200


# --- 8. broken Unicode -----------------------------------------------------------------------


async def test_a_lone_surrogate_from_the_model_is_replaced(start_app):
    client = await start_app(provider=ScriptedProvider([Answer("a \ud83d b")]))
    _, events, _ = await read_stream(client, await post_prompt(client))
    names = [event.event for event in events]
    assert names[-2:] == ["final_answer", "close"]
    assert "a \ufffd b" in "".join(e.data for e in events if e.event == "answer_chunk")


async def test_a_utf7_prompt_with_a_lone_surrogate_is_replaced(start_app):
    client = await start_app()
    response = await client.post(
        "/process_prompt",
        data=b"prompt=%2B2NgAAA-",  # UTF-7 for a lone high surrogate
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-7"},
    )
    assert response.status == 200
    uid = uid_from_snippet(await response.text())
    _, events, _ = await read_stream(client, uid)
    assert events[-2].event == "final_answer"
    assert "\ufffd" in events[-2].data


async def test_a_lone_surrogate_in_the_prompt_never_reaches_the_model_server(
    start_app, fake_upstream
):
    fake_upstream.reply([chunk(content="ok"), chunk(finish_reason="stop"), DONE])
    openai = OpenAISettings(base_url=fake_upstream.base_url, model="m")
    client = await start_app("openai", openai=openai)
    response = await client.post(
        "/process_prompt",
        data=b"prompt=%2B2NgAAA-",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-7"},
    )
    await read_stream(client, uid_from_snippet(await response.text()))
    sent = fake_upstream.requests[0].json["messages"][-1]["content"]
    assert sent == "\ufffd\x00"  # UTF-7's "2NgAAA": a lone high surrogate, then U+0000


# --- 9. listeners of one stream ---------------------------------------------------------------


async def test_one_stream_has_at_most_a_few_listeners(start_app):
    client = await start_app(provider=ScriptedProvider([Answer("a"), Hang()]))
    uid = await post_prompt(client)
    open_ones = [await client.get("/response-stream", params={"uid": uid})]
    await open_ones[0].content.readuntil(b"data: a")
    resume = {"Last-Event-ID": "1"}
    for _ in range(server.MAX_LISTENERS_PER_STREAM - 1):
        response = await client.get("/response-stream", params={"uid": uid}, headers=resume)
        await response.content.readuntil(b"\n\n")  # retry: a listener
        open_ones.append(response)

    extra = await client.get("/response-stream", params={"uid": uid}, headers=resume)
    async with asyncio.timeout(BOUND_S):  # refused at once, not one more listener held open
        events, _ = parse_stream(await extra.text())
    assert [event.event for event in events] == ["error", "close"]
    for response in open_ones:
        response.close()


async def test_reconnecting_again_and_again_keeps_a_finished_log_one_grace_period(start_app):
    client = await start_app(provider=ScriptedProvider([Answer("done")]), grace_period=0.5)
    uid = await post_prompt(client)
    _, events, _ = await read_stream(client, uid)
    last_id = events[-1].id
    ended = time.monotonic()
    outcomes = []
    while time.monotonic() - ended < 1.5:  # a reconnect every 0.1 s, for three grace periods
        response = await client.get(
            "/response-stream", params={"uid": uid}, headers={"Last-Event-ID": last_id}
        )
        events, _ = parse_stream(await response.text())
        outcomes.append("refused" if events else "resumed")
        await asyncio.sleep(0.1)
    assert outcomes[0] == "resumed" and outcomes[-1] == "refused"
    assert (await (await client.get("/healthz")).json())["streams_kept"] == 0


async def test_a_head_request_neither_gets_a_body_nor_takes_the_stream(start_app):
    # aiohttp routes HEAD to a GET handler unless told not to: a HEAD of the
    # stream's URL (a link checker, a prefetching proxy) claimed the stream, ran the
    # answer to its end and sent it as a body, and the browser's GET found it gone.
    client = await start_app(provider=ScriptedProvider([Answer("Hello there")]))
    uid = await post_prompt(client)

    reader, writer = await raw_connection(client)
    host = f"{client.server.host}:{client.server.port}"
    writer.write(f"HEAD /response-stream?uid={uid} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    got = b""
    try:
        async with asyncio.timeout(1.0):  # the head, then (kept alive) nothing more
            while data := await reader.read(65536):
                got += data
    except TimeoutError:
        pass
    writer.close()
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405"), got[:200]
    # Bytes after a HEAD's head would be read by a kept-alive client as its next response.
    assert body == b"", body[:200]

    _, events, _ = await read_stream(client, uid)
    assert [event.data for event in events if event.event == "error"] == []
    assert answer_of(events) == "Hello there"

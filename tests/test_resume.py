"""A dropped connection is not the end of the answer: the browser comes back with
Last-Event-ID and the stream picks up right after that event."""

import asyncio

import pytest

from providers.events import Answer, Reasoning
from tests.conftest import Hang, Pause, ScriptedProvider, post_prompt
from tests.sse_client import answer_of, parse_stream

PIECES = ["Once", " upon", " a time,\n", "  there", " was", " a 🤖", "."]


def slow_answer() -> ScriptedProvider:
    script = [Reasoning("Planning."), Pause(0.03)]
    for piece in PIECES:
        script += [Answer(piece), Pause(0.03)]
    return ScriptedProvider(script)


async def read_events(response, count):
    """Read exactly ``count`` events (a frame at a time) from an open stream."""
    events = []
    while len(events) < count:
        frame = await response.content.readuntil(b"\n\n")
        assert frame, f"the stream ended after {len(events)} events"
        events += parse_stream(frame.decode())[0]
    return events


@pytest.mark.parametrize("cut_after", [1, 2, 4, 6])
async def test_reconnect_with_last_event_id_resumes_without_loss_or_repeat(start_app, cut_after):
    provider = slow_answer()
    client = await start_app(provider=provider, grace_period=5)
    uid = await post_prompt(client)

    first = await client.get("/response-stream", params={"uid": uid})
    before = await read_events(first, cut_after)
    first.close()  # Wi-Fi drops
    await asyncio.sleep(0.05)

    last_id = before[-1].id
    second = await client.get(
        "/response-stream", params={"uid": uid}, headers={"Last-Event-ID": last_id}
    )
    after, _ = parse_stream(await second.text())
    ids = [int(e.id) for e in before + after]

    assert answer_of(before + after) == "".join(PIECES)
    assert ids == sorted(set(ids))  # nothing repeated
    assert after[0].id != last_id
    assert [e.event for e in after[-2:]] == ["final_answer", "close"]
    assert provider.started == 1  # the same generation went on


async def test_reconnect_after_the_answer_finished_gets_the_rest(start_app):
    provider = ScriptedProvider([Answer("short"), Pause(0.05), Answer(" answer")])
    client = await start_app(provider=provider, grace_period=5)
    uid = await post_prompt(client)
    first = await client.get("/response-stream", params={"uid": uid})
    before = await read_events(first, 1)
    first.close()
    await asyncio.sleep(0.3)  # the generation ends while nobody listens

    second = await client.get(
        "/response-stream", params={"uid": uid}, headers={"Last-Event-ID": before[-1].id}
    )
    after, _ = parse_stream(await second.text())
    assert answer_of(before + after) == "short answer"
    assert after[-1].event == "close"
    health = await (await client.get("/healthz")).json()
    # Kept a grace period more, in case the connection dropped before `close`.
    assert health["streams_kept"] == 1


async def leave_after_the_first_event(start_app, grace_period: float):
    """A browser that reads one event and goes; the provider and the client."""
    provider = ScriptedProvider([Answer("a"), Hang()])
    client = await start_app(provider=provider, grace_period=grace_period)
    uid = await post_prompt(client)
    response = await client.get("/response-stream", params={"uid": uid})
    await read_events(response, 1)
    response.close()
    return provider, client, uid


async def test_generation_stops_when_nobody_comes_back_within_the_grace_period(start_app):
    provider, client, uid = await leave_after_the_first_event(start_app, grace_period=0.3)

    await asyncio.sleep(0.15)
    assert not provider.closed.is_set()  # still generating, waiting for the browser
    await asyncio.wait_for(provider.closed.wait(), timeout=2)
    late = await client.get("/response-stream", params={"uid": uid}, headers={"Last-Event-ID": "1"})
    events, _ = parse_stream(await late.text())
    assert [e.event for e in events] == ["error", "close"]


async def test_grace_period_zero_stops_at_once(start_app):
    provider, _, _ = await leave_after_the_first_event(start_app, grace_period=0)
    await asyncio.wait_for(provider.closed.wait(), timeout=0.5)


async def test_stream_tells_the_browser_to_come_back_quickly(start_app):
    client = await start_app()
    uid = await post_prompt(client)
    text = await (await client.get("/response-stream", params={"uid": uid})).text()
    assert text.startswith("retry: 1000\n\n")


@pytest.mark.parametrize("header", ["abc", "-1", "0", "99999", ""])
async def test_second_get_without_a_valid_last_event_id_is_refused(start_app, header):
    provider = ScriptedProvider([Answer("a"), Hang()])
    client = await start_app(provider=provider, grace_period=5)
    uid = await post_prompt(client)
    first = await client.get("/response-stream", params={"uid": uid})
    await read_events(first, 1)

    second = await client.get(
        "/response-stream", params={"uid": uid}, headers={"Last-Event-ID": header}
    )
    events, _ = parse_stream(await second.text())
    first.close()
    assert [e.event for e in events] == ["error", "close"]
    assert "streamed to another window" in events[0].data


async def test_old_thoughts_are_not_kept_for_a_resume(start_app):
    beat = Pause(0.02)
    script = [Reasoning("First thought. "), beat, Reasoning("Second. "), beat, Pause(0.3)]
    script += [Reasoning("Third. "), beat, Reasoning("Fourth."), beat, Answer("done")]
    client = await start_app(provider=ScriptedProvider(script), grace_period=5)
    uid = await post_prompt(client)
    first = await client.get("/response-stream", params={"uid": uid})
    before = await read_events(first, 2)
    first.close()
    await asyncio.sleep(0.5)  # two more thoughts, the answer and the end go by

    second = await client.get(
        "/response-stream", params={"uid": uid}, headers={"Last-Event-ID": before[-1].id}
    )
    events, _ = parse_stream(await second.text())

    assert [e.data for e in before] == ["First thought. ", "First thought. Second. "]
    thoughts = [e.data for e in events if e.event == "thought"]
    assert thoughts == [""]  # only the newest thought line (cleared at the end) is replayed
    assert answer_of(events) == "done"

"""Whatever happens to a stream, nothing is left behind: no entry, no listener, no task."""

import asyncio

import pytest

from providers.openai import OpenAISettings
from tests.conftest import post_prompt, read_stream
from tests.fake_upstream import DONE, chunk, error_body

ZERO = {"streams_in_flight": 0, "uids_pending": 0, "listeners": 0, "streams_kept": 0}


async def settled(client, baseline_tasks: int, within: float = 3.0) -> dict:
    """Wait until /healthz reads zero and the tasks are back to the baseline."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        health = await (await client.get("/healthz")).json()
        counts = {key: health[key] for key in ZERO}
        tasks = len(asyncio.all_tasks())
        if (counts == ZERO and tasks <= baseline_tasks) or (
            asyncio.get_running_loop().time() > deadline
        ):
            return {**counts, "extra_tasks": max(0, tasks - baseline_tasks)}
        await asyncio.sleep(0.02)


async def start(start_app, fake_upstream, **settings):
    # An idle kept-alive connection to the model server is no leftover, but this
    # server's task waiting on it would count as one: no keep-alive here.
    fake_upstream.keep_alive = False
    openai = OpenAISettings(
        **{"base_url": fake_upstream.base_url, "model": "m", "idle_timeout": 0.3, **settings}
    )
    client = await start_app("openai", openai=openai, uid_ttl=0.2)
    await client.get("/healthz")
    return client, len(asyncio.all_tasks())


FAULTS = {
    "http-500": {"body": error_body("boom"), "status": 500, "content_type": "application/json"},
    "error-mid-stream": {"body": [chunk(content="a"), b'data: {"error": "x"}\n\n', DONE]},
    "connection-dropped": {"body": [chunk(content="a")], "abort": True},
    "stall": {"body": [chunk(content="a")], "stall": 5},
    "eof-without-finish": {"body": [chunk(content="a")]},
    "html-502": {"body": b"<html>Bad Gateway</html>", "status": 502, "content_type": "text/html"},
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
async def test_every_upstream_fault_leaves_nothing_behind(start_app, fake_upstream, fault):
    fake_upstream.reply(**fault)
    client, baseline = await start(start_app, fake_upstream)
    uid = await post_prompt(client)
    _, events, _ = await read_stream(client, uid)

    assert [e.event for e in events[-2:]] == ["error", "close"]
    assert await settled(client, baseline) == {**ZERO, "extra_tasks": 0}


MOMENTS = {
    "before-the-get": None,
    "while-thinking": b"data: Waiting for the first token\xe2\x80\xa6\n\n",
    "while-streaming": b"data: Once\n\n",
    "during-the-final-answer": b"event: final_answer\n",
}


@pytest.mark.parametrize("moment", MOMENTS.values(), ids=MOMENTS.keys())
async def test_a_browser_vanishing_at_any_moment_leaves_nothing_behind(
    start_app, fake_upstream, moment
):
    frames = [chunk(content="Once"), chunk(content=" upon"), chunk(finish_reason="stop"), DONE]
    if moment == MOMENTS["while-thinking"]:
        fake_upstream.reply([], stall=30)  # the model says nothing for a long time
    else:
        fake_upstream.reply(frames)
    client, baseline = await start(start_app, fake_upstream, idle_timeout=60)
    uid = await post_prompt(client)
    if moment is not None:
        response = await client.get("/response-stream", params={"uid": uid})
        await response.content.readuntil(moment)
        response.close()

    assert await settled(client, baseline) == {**ZERO, "extra_tasks": 0}

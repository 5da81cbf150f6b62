"""When the person leaves, the model server is told at once (``Connected.hang_up``),
before the producer's turn to close the generation comes; an answer that has
ended is never hung up on. On both stores: each gives up on a stream its own way."""

import asyncio

import pytest

from providers.events import Answer, Connected
from tests.conftest import Hang, ScriptedProvider, post_prompt
from tests.each_store import start_app_on_each_store  # noqa: F401  (both stores)
from tests.waiting import eventually, healthz


def provider_that_connects(*script: object) -> tuple[ScriptedProvider, list[str]]:
    """A provider whose first event is ``Connected``; the list says, in order,
    when it was hung up on and whether its generator was closed by then."""
    calls: list[str] = []
    provider = ScriptedProvider([])

    def hang_up() -> None:
        calls.append("hung up after close" if provider.closed.is_set() else "hung up")

    provider.script = [Connected(hang_up), *script]
    return provider, calls


@pytest.mark.parametrize("grace_period", [0, 0.2])
async def test_a_browser_leaving_hangs_up_on_the_model_before_the_generation_is_closed(
    start_app, grace_period
):
    provider, calls = provider_that_connects(Answer("Once"), Hang())
    client = await start_app(provider=provider, grace_period=grace_period)
    uid = await post_prompt(client)
    response = await client.get("/response-stream", params={"uid": uid})
    await response.content.readuntil(b"data: Once\n\n")

    response.close()  # the browser tab goes away
    await asyncio.wait_for(provider.closed.wait(), timeout=5)
    assert calls == ["hung up"]


async def test_an_answer_that_ended_is_never_hung_up_on(start_app):
    """Its connection may be back in the pool, carrying the next prompt."""
    provider, calls = provider_that_connects(Answer("Once"))
    client = await start_app(provider=provider)
    uid = await post_prompt(client)
    response = await client.get("/response-stream", params={"uid": uid})
    await response.content.readuntil(b"event: close\n")
    response.close()  # the browser leaves after `close`

    await eventually(lambda: nothing_kept(client))  # the store gave up on it
    assert calls == []


async def nothing_kept(client) -> bool:
    return (await healthz(client))["streams_kept"] == 0

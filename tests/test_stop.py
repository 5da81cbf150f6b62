"""The Stop button: the generation ends at once and the partial answer becomes final."""

import asyncio

from providers.events import Answer
from tests.conftest import Hang, ScriptedProvider, post_prompt
from tests.snippet import uid_from_snippet
from tests.sse_client import parse_stream


async def test_stop_ends_generation_and_keeps_the_partial_answer(start_app):
    provider = ScriptedProvider([Answer("Half an "), Answer("answer"), Hang()])
    client = await start_app(provider=provider)
    uid = await post_prompt(client)
    stream = await client.get("/response-stream", params={"uid": uid})
    await stream.content.readuntil(b"data: answer\n\n")

    stop = await client.post("/stop", params={"uid": uid})
    events, _ = parse_stream(await asyncio.wait_for(stream.text(), timeout=2))

    assert stop.status == 204
    assert provider.closed.is_set()  # the upstream is released
    assert [e.event for e in events[-2:]] == ["final_answer", "close"]
    final = events[-2].data
    assert f'id="{uid}-final-container"' in final
    assert "Half an answer" in final
    assert "You stopped the answer here." in final


async def test_stop_for_an_unknown_or_finished_uid_is_harmless(start_app):
    client = await start_app()
    assert (await client.post("/stop", params={"uid": "u" + "0" * 32})).status == 204
    uid = await post_prompt(client)
    await (await client.get("/response-stream", params={"uid": uid})).text()
    assert (await client.post("/stop", params={"uid": uid})).status == 204
    assert (await client.get("/healthz")).status == 200


async def test_snippet_has_a_stop_button_and_a_polite_status_line(start_app):
    client = await start_app()
    snippet = await (await client.post("/process_prompt", data={"prompt": "hi"})).text()
    uid = uid_from_snippet(snippet)
    assert f'<button type="button" class="stop" hx-post="/stop?uid={uid}" hx-swap="none">' in (
        snippet
    )
    assert '<p class="status" role="status" aria-live="polite"></p>' in snippet
    assert 'aria-busy="true"' in snippet and 'role="alert"' in snippet


async def test_stop_from_another_site_is_refused(start_app):
    provider = ScriptedProvider([Answer("a"), Hang()])
    client = await start_app(provider=provider)
    uid = await post_prompt(client)
    response = await client.post(
        "/stop", params={"uid": uid}, headers={"Origin": "https://evil.example"}
    )
    assert response.status == 403

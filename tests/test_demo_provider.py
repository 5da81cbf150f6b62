"""The offline demo provider: deterministic, every event, a failure on request."""

from providers.demo import DemoProvider, pieces
from providers.events import Answer, Failure, Finished, Reasoning, Status
from tests.chat import chat
from tests.conftest import post_prompt, read_stream


async def collect(prompt: str) -> list:
    return [event async for event in DemoProvider(delay=0).stream(chat(prompt))]


def test_pieces_join_back_to_the_text_exactly():
    for text in ["", " lead", "trail ", "a  b\n\nc\t", "🎉 x"]:
        assert "".join(pieces(text)) == text


async def test_demo_exercises_every_event_and_echoes_the_prompt():
    events = await collect("Tell me <b>something</b>")
    kinds = {type(event) for event in events}
    answer = "".join(event.text for event in events if isinstance(event, Answer))

    assert kinds == {Status, Reasoning, Answer, Finished}  # no Usage: it counts no tokens
    assert "demo provider" in answer and "No model was asked" in answer
    assert "> Tell me <b>something</b>" in answer
    assert "\n\n" in answer and "**" in answer  # line breaks and a little markdown
    assert events[-1] == Finished("stop")


async def test_demo_is_deterministic_for_a_prompt():
    assert await collect("same prompt") == await collect("same prompt")
    assert await collect("one prompt") != await collect("another prompt")


async def test_error_prompt_fails_midway():
    events = await collect("/error please")
    assert isinstance(events[-1], Failure)
    assert "/error" in events[-1].message
    assert any(isinstance(event, Answer) for event in events)  # some answer came first


async def test_demo_is_paced_by_its_delay():
    import time

    started = time.monotonic()
    events = [event async for event in DemoProvider(delay=0.002).stream(chat("hi"))]
    assert time.monotonic() - started >= 0.002 * len(events) / 2


async def test_error_prompt_through_the_app_ends_with_error_then_close(start_app):
    client = await start_app()
    uid = await post_prompt(client, "/error show me")
    _, events, _ = await read_stream(client, uid)
    names = [event.event for event in events]

    assert "answer_chunk" in names
    assert names[-2:] == ["error", "close"]
    assert "failed on purpose" in events[-2].data

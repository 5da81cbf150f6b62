"""A fast model does not cost the page a swap per token: the server coalesces."""

import html

from providers.events import Answer, Reasoning
from tests.conftest import Pause, ScriptedProvider, post_prompt, read_stream


def fast_model(tokens: int, reasoning: int = 0) -> ScriptedProvider:
    """About 1,000 tokens a second."""
    script = []
    for n in range(reasoning):
        script += [Reasoning(f"r{n} "), Pause(0.001)]
    for n in range(tokens):
        script += [Answer(f"t{n} "), Pause(0.001)]
    return ScriptedProvider(script)


def answer_chunks(events):
    return [html.unescape(e.data) for e in events if e.event == "answer_chunk"]


async def test_answer_chunks_are_coalesced_within_the_window(start_app):
    client = await start_app(provider=fast_model(300), answer_window=0.05)
    uid = await post_prompt(client)
    _, events, _ = await read_stream(client, uid)
    chunks = answer_chunks(events)

    assert "".join(chunks) == "".join(f"t{n} " for n in range(300))
    assert chunks[0] == "t0 "  # the first token goes out at once, alone
    assert len(chunks) < 300 / 5  # many tokens per swap


async def test_window_zero_sends_every_piece(start_app):
    client = await start_app(provider=fast_model(50), answer_window=0)
    uid = await post_prompt(client)
    _, events, _ = await read_stream(client, uid)
    assert answer_chunks(events) == [f"t{n} " for n in range(50)]


async def test_thought_line_is_refreshed_a_few_times_a_second(start_app):
    provider = fast_model(tokens=1, reasoning=300)
    client = await start_app(provider=provider, thought_interval=0.1, grace_period=5)
    uid = await post_prompt(client)
    _, events, _ = await read_stream(client, uid)
    thoughts = [html.unescape(e.data) for e in events if e.event == "thought"]

    assert len(thoughts) < 300 / 5
    assert thoughts[-2].endswith("r299 ")  # the reasoning's last words were shown
    assert thoughts[-1] == ""  # cleared at the end

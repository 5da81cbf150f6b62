"""Text whose kind is not known yet is shown at once, and never as answer too soon.

Untagged text may still turn out to be reasoning (an orphan ``</think>`` may
follow: providers/think_tags.py), so it is held back from the answer box. Held
is not hidden: the thought line shows it the moment it arrives. These tests
run the app against the fake OpenAI-compatible server with the app's default
settings (reasoning hold, thought interval, answer window), over real sockets.
"""

from __future__ import annotations

import asyncio
import html
import re
import time
from dataclasses import dataclass

import pytest
from aiohttp.test_utils import TestClient

from providers.events import Answer, Status, Undecided
from providers.openai import OpenAISettings
from server import STORE, WRITING, Config
from tests.conftest import Pause, ScriptedProvider, StartApp, post_prompt
from tests.fake_upstream import DONE, FakeUpstream, chunk
from tests.fake_upstream import Pause as UpstreamPause
from tests.sse_client import SSEEvent, answer_of, parse_stream

#: The pacing the app ships with (the test defaults turn it off).
DEFAULT_PACING = {
    "thought_interval": Config.thought_interval,
    "answer_window": Config.answer_window,
}
#: Well under the default reasoning hold of a second, well over a busy machine's delays.
SHOWN_WITHIN_S = 0.3
READ_LIMIT_S = 10.0


async def start_with_defaults(start_app: StartApp, fake_upstream: FakeUpstream) -> TestClient:
    openai = OpenAISettings(base_url=fake_upstream.base_url, model="m")  # the default hold
    assert openai.reasoning_hold >= 1.0  # long enough that waiting it out would show
    return await start_app("openai", openai=openai, **DEFAULT_PACING)


@dataclass(frozen=True)
class Seen:
    """An event, and how many seconds after the stream was opened the client read it."""

    after: float
    event: SSEEvent

    @property
    def text(self) -> str:
        return html.unescape(self.event.data)


async def read_timed(client: TestClient, uid: str) -> list[Seen]:
    """Open the stream and read it to ``close``, noting when each event arrived.

    The time counts from the GET, which starts the request to the model
    server: it is at least the time from the model's first token.
    """
    seen: list[Seen] = []
    async with asyncio.timeout(READ_LIMIT_S):
        opened = time.monotonic()
        response = await client.get("/response-stream", params={"uid": uid})
        assert response.status == 200
        while not seen or seen[-1].event.event != "close":
            frame = await response.content.readuntil(b"\n\n")
            assert frame, "the stream ended before close"
            after = time.monotonic() - opened
            seen += [Seen(after, event) for event in parse_stream(frame.decode())[0]]
    return seen


def first_showing(seen: list[Seen], text: str) -> Seen:
    """The first thought or answer chunk that shows ``text``."""
    return next(
        each
        for each in seen
        if each.event.event in ("thought", "answer_chunk") and text in each.text
    )


def texts(seen: list[Seen], name: str) -> list[str]:
    return [each.text for each in seen if each.event.event == name]


def thought_line_at(seen: list[Seen], after: float) -> str:
    """What the thought line showed ``after`` seconds into the stream."""
    return [each.text for each in seen if each.event.event == "thought" and each.after <= after][-1]


async def kept_answer(client: TestClient) -> str:
    """The conversation's answer as the app keeps it: its export (which has no reasoning)."""
    (cid,) = [conversation.cid for conversation in client.app[STORE].conversations]
    response = await client.get(f"/c/{cid}/export")
    assert response.status == 200
    return await response.text()


async def test_the_first_words_of_a_model_that_does_not_reason_show_at_once(
    start_app: StartApp, fake_upstream: FakeUpstream
) -> None:
    """The first token shows (in the thought line) at once, not after the hold;
    once the hold says it is answer, the answer box has it and the thought line
    says the model is writing."""
    fake_upstream.reply(
        [
            chunk(role="assistant", content=""),
            chunk(content="Hello"),
            UpstreamPause(1.5),  # longer than the hold: the first word's kind is settled meanwhile
            chunk(content=" there"),
            chunk(finish_reason="stop"),
            DONE,
        ]
    )
    client = await start_with_defaults(start_app, fake_upstream)
    seen = await read_timed(client, await post_prompt(client))

    shown = first_showing(seen, "Hello")
    assert shown.after < SHOWN_WITHIN_S, f"first shown after {shown.after * 1000:.0f} ms"
    events = [each.event for each in seen]
    assert answer_of(events) == "Hello there"
    thoughts = texts(seen, "thought")
    assert WRITING in thoughts[thoughts.index("Hello") :]
    final = texts(seen, "final_answer")[0]
    assert "Hello there" in final
    # The stats' first token is when the text came, not when it became answer.
    first_token = float(re.search(r"first token after ([0-9.]+) s", final).group(1))
    assert first_token < SHOWN_WITHIN_S


async def test_the_first_undecided_text_shows_at_once_and_answer_ends_its_thoughts(
    start_app: StartApp,
) -> None:
    """The thought line's pacing never holds back the first text; and once the
    text turns out to be answer, "Writing…" stays: the undecided text still
    waiting for its turn in the thought line is dropped."""
    interval = 1.0  # longer than SHOWN_WITHIN_S: the first thought must not wait for it
    provider = ScriptedProvider(
        [
            Status("Connecting…"),
            Pause(0.1),  # each thought stays long enough for the client to read it
            Undecided("Hel"),
            Undecided("lo"),  # within the interval: it waits for its turn
            Pause(0.2),
            Answer("Hello"),
            Pause(interval + 0.2),  # past the turn "lo" was waiting for
        ]
    )
    client = await start_app(provider=provider, thought_interval=interval)
    seen = await read_timed(client, await post_prompt(client))

    assert first_showing(seen, "Hel").after < SHOWN_WITHIN_S
    assert answer_of([each.event for each in seen]) == "Hello"
    thoughts = texts(seen, "thought")
    assert thoughts[:3] == ["Connecting…", "Hel", WRITING]
    (final,) = [each for each in seen if each.event.event == "final_answer"]
    assert thought_line_at(seen, final.after - 0.1) == WRITING  # until the very end


REASONING = "Hm, two and two."
VECTORS = {
    "inline-think-tags": [
        chunk(content="<think>"),
        chunk(content=REASONING),
        UpstreamPause(0.5),
        chunk(content="</think>\n\n"),
        chunk(content="4"),
    ],
    "orphan-close-tag": [
        chunk(content=REASONING),
        UpstreamPause(0.5),
        chunk(content="</think>\n\n4"),
    ],
    "orphan-close-tag-split": [
        chunk(content=REASONING[:5]),
        chunk(content=REASONING[5:] + "</th"),
        UpstreamPause(0.5),
        chunk(content="ink>\n\n4"),
    ],
}


@pytest.mark.parametrize("script", VECTORS.values(), ids=VECTORS.keys())
async def test_reasoning_shows_at_once_as_a_thought_and_never_as_answer(
    start_app: StartApp, fake_upstream: FakeUpstream, script: list[bytes | UpstreamPause]
) -> None:
    """Tagged, or untagged with an orphan </think> (a chat template that puts
    <think> in the prompt): the reasoning is in the thought line at once, and
    never in an answer chunk, the final answer's answer or the kept answer."""
    fake_upstream.reply([*script, chunk(finish_reason="stop"), DONE])
    client = await start_with_defaults(start_app, fake_upstream)
    seen = await read_timed(client, await post_prompt(client))

    assert first_showing(seen, REASONING[:5]).event.event == "thought"
    assert first_showing(seen, REASONING[:5]).after < SHOWN_WITHIN_S
    assert REASONING in texts(seen, "thought")
    assert answer_of([each.event for each in seen]) == "4"
    final = texts(seen, "final_answer")[0]
    reasoning_part, answer_part = final.split("</details>", 1)
    assert REASONING in reasoning_part and REASONING[:5] not in answer_part
    kept = await kept_answer(client)
    assert "\n\n4\n" in kept and REASONING[:5] not in kept


async def test_text_shown_before_its_kind_is_known_is_kept_as_answer_when_stopped(
    start_app: StartApp, fake_upstream: FakeUpstream
) -> None:
    """Stop pressed while the first words are in the thought line: they are the
    answer so far, as untagged text at the end of a stream is, not lost."""
    fake_upstream.reply([chunk(content="Once upon"), UpstreamPause(30), chunk(content=" a time")])
    client = await start_with_defaults(start_app, fake_upstream)
    uid = await post_prompt(client)
    response = await client.get("/response-stream", params={"uid": uid})
    async with asyncio.timeout(READ_LIMIT_S):
        shown = await response.content.readuntil(b"Once upon")
        assert b"event: thought" in shown.rsplit(b"\n\n", 1)[-1]  # not yet known to be answer
        await client.post("/stop", params={"uid": uid})
        events, _ = parse_stream(shown.decode() + await response.text())

    final = html.unescape(next(each.data for each in events if each.event == "final_answer"))
    assert "Once upon" in final and "You stopped the answer here." in final
    assert "\n\nOnce upon\n" in await kept_answer(client)

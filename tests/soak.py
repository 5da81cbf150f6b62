"""The soak: many conversations, browsers that leave at random, and a server that
must end with nothing left over.

``soak(base, …)`` sends the prompts to the app at ``base`` (the demo provider,
with ``GRACE_S`` and ``UID_TTL_S``), as conversations of ``TURNS`` prompts:
each prompt after the first continues its conversation, and the demo's answer
(which quotes the previous prompt) shows that the history reached it.
tests/test_soak.py runs a small one in the suite; ``python bench/soak.py``
runs thousands against ``server.py`` and prints the report. Every turn but a
conversation's last is read whole; the last meets a fate, drawn with a fixed
seed:

- read:    the whole stream is read; the answer must be exactly the demo's;
- resume:  the connection is cut after a few events and comes back with
           Last-Event-ID; the answer, joined, must be exact, with no repeat;
- leave:   the connection is cut after a few events, for good;
- abandon: the prompt is posted but its stream is never opened (TTL expiry).

At the end /healthz must show zero streams, listeners and pending uids. Given
the server's pid, the report also has its resident memory after the warm-up,
halfway, at the end and once settled.

Given several ``bases`` (workers sharing one Redis store), each request goes to
one of them at random: the POST, the GET and the resume may each reach another.
With ``outage`` (Redis stopped for a while during the soak), a prompt may also
be refused with a readable message, or its stream end with a readable ``error``:
those are counted, and only an answer that is neither exact nor a readable
refusal or error is wrong.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from providers.demo import DemoProvider
from providers.events import Answer
from tests.chat import chat
from tests.snippet import uid_from_snippet
from tests.sse_client import parse_stream, shows_answer

FATES = {"read": 0.5, "resume": 0.15, "leave": 0.2, "abandon": 0.15}
TURNS = 3  # prompts per conversation
GRACE_S = 0.5
UID_TTL_S = 1.0
SETTLE_LIMIT_S = 15.0  # how long the server may take to forget everything at the end
PROMPT_LIMIT_S = 30.0  # one prompt's whole life, at most


@dataclass
class Report:
    fates: Counter = field(default_factory=Counter)
    exact: int = 0
    wrong: list[str] = field(default_factory=list)
    seconds: float = 0.0
    health: dict = field(default_factory=dict)
    memory_kb: list[tuple[str, int]] = field(default_factory=list)
    refused: int = 0  # with ``outage``: POSTs refused with a readable message
    ended_by_error: int = 0  # with ``outage``: streams ended by a readable `error`

    @property
    def clean(self) -> bool:
        leftovers = ("streams_in_flight", "uids_pending", "listeners", "streams_kept")
        return not self.wrong and all(self.health.get(key) == 0 for key in leftovers)


async def expected_answer(prompt: str, *earlier: str) -> str:
    events = DemoProvider(delay=0).stream(chat(prompt, *earlier))
    return "".join([event.text async for event in events if isinstance(event, Answer)])


async def read_some(response: aiohttp.ClientResponse, count: int) -> list:
    events: list = []
    while len(events) < count:
        frame = await response.content.readuntil(b"\n\n")
        if not frame:
            break  # the stream ended first
        events += parse_stream(frame.decode())[0]
    return events


def pick(bases: list[str], rng: random.Random) -> str:
    """One of the workers, at random (no draw for one: the same seed, the same soak)."""
    return bases[0] if len(bases) == 1 else rng.choice(bases)


class Refused(Exception):
    """The POST was refused, with a readable message (the HTML fragment)."""


def ended_by_error(events: list) -> bool:
    """Whether the stream ended with a readable `error`, then `close`."""
    return [event.event for event in events[-2:]] == ["error", "close"] and len(
        events[-2].data
    ) > 20


async def one_conversation(
    session,
    bases: list[str],
    n: int,
    last_fate: str,
    rng: random.Random,
    report: Report,
    outage: bool = False,
) -> None:
    earlier: list[str] = []  # the prompts and answers so far, in turn
    conversation = ""
    for turn in range(TURNS):
        fate = last_fate if turn == TURNS - 1 else "read"
        report.fates[fate] += 1
        prompt = f"Soak prompt number {n}.{turn}: " + "word " * rng.randint(0, 30)
        try:
            events = await one_prompt(session, bases, conversation, prompt, fate, rng)
        except Refused:
            if not outage:
                raise
            report.refused += 1
            return
        conversation = conversation or events.conversation
        if events.read is None:
            return  # left or never opened: the conversation ends here
        expected = await expected_answer(prompt, *earlier)
        if shows_answer(events.read, expected) and events.read[-1].event == "close":
            report.exact += 1
        elif outage and ended_by_error(events.read):
            report.ended_by_error += 1
            return
        else:
            report.wrong.append(f"{fate} #{n}.{turn}: {[e.event for e in events.read][-3:]}")
            return
        earlier += [prompt, expected]


@dataclass
class Prompted:
    conversation: str  # the id of the conversation the prompt is part of
    read: list | None  # every event, when the fate reads to the end


async def one_prompt(
    session, bases: list[str], conversation: str, prompt: str, fate: str, rng: random.Random
) -> Prompted:
    form = {"prompt": prompt, "conversation": conversation}
    async with session.post(f"{pick(bases, rng)}/process_prompt", data=form) as response:
        snippet = await response.text()
        if response.status != 200 and 'class="refusal"' in snippet:
            raise Refused(snippet)
        conversation = response.headers.get("HX-Push-Url", conversation).removeprefix("/c/")
    uid = uid_from_snippet(snippet)
    if fate == "abandon":
        return Prompted(conversation, None)
    url = f"{pick(bases, rng)}/response-stream"
    if fate == "read":
        async with session.get(url, params={"uid": uid}) as response:
            events, _ = parse_stream(await response.text())
        return Prompted(conversation, events)
    response = await session.get(url, params={"uid": uid})
    events = await read_some(response, rng.randint(1, 30))
    response.close()  # the connection drops
    if fate == "leave":
        return Prompted(conversation, None)
    await asyncio.sleep(rng.uniform(0, GRACE_S / 2))
    url = f"{pick(bases, rng)}/response-stream"  # the browser may come back to another worker
    headers = {"Last-Event-ID": events[-1].id}
    async with session.get(url, params={"uid": uid}, headers=headers) as response:
        events += parse_stream(await response.text())[0]
    return Prompted(conversation, events)


async def settle(
    session: aiohttp.ClientSession, base: str | list[str], report: Any, limit_s: float
) -> None:
    """Read /healthz into ``report.health`` until ``report.clean``, or ``limit_s`` is
    over. With several workers, each one's counts are added up."""
    deadline = time.monotonic() + limit_s
    bases = [base] if isinstance(base, str) else base
    while True:
        report.health = {}
        for each in bases:
            async with session.get(f"{each}/healthz") as response:
                for key, value in (await response.json()).items():
                    if isinstance(value, int):
                        report.health[key] = report.health.get(key, 0) + value
                    else:
                        report.health[key] = value
        if report.clean or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.2)


def resident_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def soak(
    base: str | list[str],
    prompts: int,
    concurrency: int,
    seed: int,
    pid: int | None = None,
    outage: bool = False,
) -> Report:
    """Send the prompts through ``base`` (or several workers' bases); what happened,
    and what the server kept."""
    bases = [base] if isinstance(base, str) else base
    rng = random.Random(seed)
    report = Report()
    conversations = max(1, prompts // TURNS)
    fates = rng.choices(list(FATES), weights=list(FATES.values()), k=conversations)
    limit = asyncio.Semaphore(concurrency)
    started = time.monotonic()

    async def run(session, n: int) -> None:
        async with limit:
            try:
                async with asyncio.timeout(PROMPT_LIMIT_S):
                    rng = random.Random(seed * 100_003 + n)
                    await one_conversation(session, bases, n, fates[n], rng, report, outage)
            except TimeoutError:
                report.wrong.append(f"{fates[n]} #{n}: no end after {PROMPT_LIMIT_S:.0f} s")
        if pid and n in (conversations // 5, conversations // 2, conversations - 1):
            report.memory_kb.append((f"after {n + 1} conversations", resident_kb(pid)))

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(run(session, n) for n in range(conversations)))
        report.seconds = time.monotonic() - started
        await settle(session, bases, report, SETTLE_LIMIT_S)
    if pid:
        report.memory_kb.append(("settled", resident_kb(pid)))
    return report

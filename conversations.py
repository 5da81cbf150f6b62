"""Conversations: the turns of a chat, kept on the server so that a reload shows them.

A conversation has its own unguessable id (``c`` + 128 random bits) and URL,
``/c/<id>``. Each turn is a prompt and its answer; the answer streams under the
turn's uid like any other, and when it ends its text is kept here. A new prompt
is sent to the model with the conversation so far (``history``): the system
prompt, then each earlier prompt and answer, oldest turns left out when they do
not fit the history budget. Reasoning is never sent back.

Memory is bounded: at most ``max_conversations``, at most ``max_kept_chars`` of
text in all, each forgotten after ``idle_ttl`` seconds without use; the least
recently used goes first, never one whose answer is streaming.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import TYPE_CHECKING, Any

from providers.events import Message

if TYPE_CHECKING:
    from server import Transcript

#: The cookie that lists this browser's recent conversations (their ids, newest first).
RECENT_COOKIE = "recent"
RECENT_KEPT = 8
TITLE_CHARS = 60
#: The most conversations one ``make_room`` looks at. When more conversations are
#: streaming than the bound allows, none of them can go: looking at every one for
#: each prompt made opening N streams cost N² (5,000 streams took 30 s to open).
MAKE_ROOM_LOOKS = 32


def new_id() -> str:
    # 128 random bits, like a stream's uid; the letter tells the two apart.
    return "c" + secrets.token_hex(16)


def is_id(text: str) -> bool:
    return len(text) == 33 and text[0] == "c" and all(c in "0123456789abcdef" for c in text[1:])


@dataclass(frozen=True)
class ChatSettings:
    """What a conversation asks the model with; None: the server's own choice."""

    model: str | None = None
    system_prompt: str | None = None
    temperature: float | None = None


@dataclass
class Turn:
    """One prompt and its answer. ``outcome`` is None while the answer streams."""

    uid: str
    prompt: str
    settings: ChatSettings
    created: float = field(default_factory=time.time)  # wall clock, for the export
    left_out: int = 0  # earlier turns not sent to the model: over the history budget
    outcome: str | None = None  # "done", "stopped", "failed", …
    transcript: Transcript | None = None  # what the answer was, once it ended
    error: str | None = None  # what went wrong, for a failed turn
    extras: dict[str, Any] = field(default_factory=dict)  # the final answer's stats

    @property
    def done(self) -> bool:
        return self.outcome is not None

    @property
    def answer(self) -> str:
        return self.transcript.answer if self.transcript is not None else ""

    @property
    def failed(self) -> bool:
        return self.done and self.error is not None

    def end(
        self,
        outcome: str,
        transcript: Transcript | None,
        error: str | None,
        extras: dict[str, Any] | None = None,
    ) -> None:
        """The answer ended: keep what it was (the first ending counts)."""
        if self.done:
            return
        self.outcome, self.transcript, self.error = outcome, transcript, error
        self.extras = extras or {}

    def chars(self) -> int:
        transcript = self.transcript
        if transcript is None:
            return len(self.prompt)
        return len(self.prompt) + transcript.answer_chars + transcript.reasoning_chars


@dataclass
class Conversation:
    cid: str
    settings: ChatSettings
    turns: list[Turn] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)

    @property
    def title(self) -> str:
        """The first prompt's first line, short: how the recent list names it."""
        if not self.turns:
            return "New chat"
        first = self.turns[0].prompt.strip().splitlines()[0] if self.turns[0].prompt.strip() else ""
        return first if len(first) <= TITLE_CHARS else first[: TITLE_CHARS - 1] + "…"

    @property
    def streaming(self) -> bool:
        return any(not turn.done for turn in self.turns)

    def chars(self) -> int:
        return sum(turn.chars() for turn in self.turns)


class Conversations:
    """Every conversation, by id, least recently used first, within its bounds."""

    def __init__(self, max_conversations: int, max_kept_chars: int, idle_ttl: float) -> None:
        self.max_conversations = max_conversations
        self.max_kept_chars = max_kept_chars
        self.idle_ttl = idle_ttl
        self._by_id: OrderedDict[str, Conversation] = OrderedDict()
        #: The characters of all conversations together, kept up to date as they
        #: change, so that checking the bound costs nothing per prompt.
        self.kept_chars = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Conversation]:
        return iter(list(self._by_id.values()))

    def get(self, cid: str) -> Conversation | None:
        """The conversation, now the most recently used; None if unknown or forgotten."""
        conversation = self._by_id.get(cid)
        if conversation is not None:
            conversation.last_used = time.monotonic()
            self._by_id.move_to_end(cid)
        return conversation

    def peek(self, cid: str) -> Conversation | None:
        """The conversation, without counting this as a use."""
        return self._by_id.get(cid)

    def new(self, settings: ChatSettings) -> Conversation:
        conversation = Conversation(new_id(), settings)
        self._by_id[conversation.cid] = conversation
        self.make_room()
        return conversation

    def set_turns(self, conversation: Conversation, turns: list[Turn]) -> None:
        """Give the conversation these turns (one new, or the last replaced)."""
        old = sum(turn.chars() for turn in conversation.turns)
        conversation.turns = turns
        self.kept_chars += sum(turn.chars() for turn in turns) - old

    def answered(self, cid: str, turn: Turn) -> None:
        """The turn's answer ended: its text is kept now (if its conversation is)."""
        if cid in self._by_id and turn.transcript is not None:
            self.kept_chars += turn.transcript.answer_chars + turn.transcript.reasoning_chars

    def make_room(self) -> None:
        """Forget the least recently used conversations while over a bound (never one
        that is streaming, nor the newest).

        A streaming conversation is in use: met here, it becomes the most recently
        used, so that the next call looks past it. One call looks at
        ``MAKE_ROOM_LOOKS`` conversations at most; past the bound, the next
        prompts go on where it stopped."""
        if not self._over_a_bound():
            return  # the usual case, checked without a look at any conversation
        # From the oldest, only as far as needed: at the bound each new conversation
        # pushes out one old one, so this looks at one, not at all (or a copy of all)
        # of them; and at most MAKE_ROOM_LOOKS of them, which are all streaming when
        # more conversations stream than the bound allows. They are forgotten, or
        # moved, after the walk: a dict cannot change while walked.
        newest = next(reversed(self._by_id))
        count, chars = len(self._by_id), self.kept_chars
        going: list[Conversation] = []
        in_use: list[Conversation] = []
        for conversation in islice(self._by_id.values(), MAKE_ROOM_LOOKS):
            if not self._over(count, chars) or conversation.cid == newest:
                break
            if conversation.streaming:
                in_use.append(conversation)
            else:
                going.append(conversation)
                count, chars = count - 1, chars - conversation.chars()
        for conversation in going:
            self._forget(conversation)
        for conversation in in_use:
            self._by_id.move_to_end(conversation.cid)

    def _over_a_bound(self) -> bool:
        return self._over(len(self._by_id), self.kept_chars)

    def _over(self, count: int, chars: int) -> bool:
        return count > self.max_conversations or chars > self.max_kept_chars

    def _forget(self, conversation: Conversation) -> None:
        self.kept_chars -= conversation.chars()
        del self._by_id[conversation.cid]

    def forget_idle(self) -> int:
        """Forget conversations unused for ``idle_ttl`` seconds; how many."""
        limit = time.monotonic() - self.idle_ttl
        idle = [c for c in self._by_id.values() if c.last_used < limit and not c.streaming]
        for conversation in idle:
            self._forget(conversation)
        return len(idle)


def history(
    turns: list[Turn], system_prompt: str | None, prompt: str, budget_chars: int
) -> tuple[tuple[Message, ...], int]:
    """The messages for the model, and how many earlier turns did not fit the budget.

    The system prompt and the new prompt are always sent. Earlier turns go
    from the newest back while they fit: each is its prompt and its answer (a
    stopped answer as far as it got). A failed turn is left out, and so is
    every turn's reasoning: reasoning APIs ask clients not to send it back.
    """
    earlier = [turn for turn in turns if turn.done and not turn.failed]
    room = budget_chars - len(prompt) - len(system_prompt or "")
    sent: list[Turn] = []
    for turn in reversed(earlier):
        size = len(turn.prompt) + len(turn.answer)
        if size > room:
            break
        room -= size
        sent.append(turn)
    messages = [Message("system", system_prompt)] if system_prompt else []
    for turn in reversed(sent):
        messages += [Message("user", turn.prompt), Message("assistant", turn.answer)]
    messages.append(Message("user", prompt))
    return tuple(messages), len(earlier) - len(sent)


# --- this browser's recent conversations ---


def recent_ids(cookie: str | None) -> list[str]:
    """The conversation ids in the cookie, newest first (anything else is dropped)."""
    return [cid for cid in (cookie or "").split(".") if is_id(cid)][:RECENT_KEPT]


def with_recent(cookie: str | None, cid: str) -> str:
    """The cookie's value with ``cid`` first."""
    ids = [cid, *(other for other in recent_ids(cookie) if other != cid)]
    return ".".join(ids[:RECENT_KEPT])


# --- export ---


def export_markdown(conversation: Conversation) -> str:
    """The conversation as a Markdown document: each prompt and answer, with model and time."""
    lines = [
        f"# {conversation.title}",
        "",
        f"Exported from HTMX AI Stream on {_when(time.time())}.",
        "",
    ]
    for turn in conversation.turns:
        # The prompt as a quote: its own "## …" lines cannot pass for the export's.
        quoted = "\n".join("> " + line for line in turn.prompt.split("\n"))
        lines += [f"## You, {_when(turn.created)}", "", quoted, ""]
        model = turn.extras.get("model") or turn.settings.model or "the model"
        if not turn.done:
            lines += [f"## {model}", "", turn.answer, "", "*(still being written)*", ""]
            continue
        lines += [f"## {model}", "", turn.answer, ""]
        if turn.error:
            lines += [f"*(failed: {turn.error})*", ""]
        elif turn.outcome == "stopped":
            lines += ["*(stopped here)*", ""]
    return "\n".join(lines)


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")

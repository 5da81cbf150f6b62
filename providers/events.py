"""What a provider tells the server, in domain terms.

A provider turns a prompt into an async stream of these small events. The
server decides how each one reaches the browser (which SSE event, escaping,
pacing); a provider never knows about SSE, HTML or htmx, and the server never
sees a provider's wire format (no ``choices[0].delta`` outside ``providers/``).

The contract of ``Provider.stream(request)``, where ``request`` is a
``ChatRequest`` (the conversation so far, ending with the new prompt):

- it yields any number of ``Status``, ``Undecided``, ``Reasoning``, ``Answer``
  and ``Usage`` events, in the order the model produced them;
- it may yield one ``Connected`` when the model server has taken the request
  on a connection of its own (providers that talk to none never do);
- it may yield one ``Finished`` with the model's stop reason;
- it ends after a ``Failure`` (the message is shown to the person as it is,
  so it must be short, readable and free of secrets);
- it ends normally otherwise, which means the answer is complete;
- it is an async generator: closing it early (``aclose()``: the person left)
  releases everything it holds, such as an upstream HTTP response, before
  ``aclose()`` returns.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Status:
    """A short line about progress ("Connecting to qwen3…"), not model output."""

    text: str


@dataclass(frozen=True, slots=True)
class Connected:
    """The model server is generating, on a connection this stream holds.

    ``hang_up()`` drops that connection at once, from outside the generator:
    the server calls it when the person left, so that the model stops before
    the generator's turn to be closed comes (when a thousand browsers leave at
    once, that turn comes after a thousand streams' clean-up). ``aclose()``
    still follows and releases everything. It may be called at any moment and
    more than once; a connection the stream no longer holds (its answer read
    to the end, back in the pool for the next prompt) is never touched.
    """

    hang_up: Callable[[], None]


@dataclass(frozen=True, slots=True)
class Reasoning:
    """The next piece of the model's visible reasoning ("thinking").

    ``sent_at``: as for ``Answer``, below.
    """

    text: str
    sent_at: float | None = None


@dataclass(frozen=True, slots=True)
class Undecided:
    """The next piece of text whose kind is not known yet: it may be reasoning or answer.

    A provider that cannot tell at once (inline ``<think>`` tags:
    providers/think_tags.py) gives its text out as it comes, to be shown where
    it can be replaced (the thought line), never appended to the answer. The
    next ``Reasoning`` or ``Answer`` settles every undecided piece before it:
    it holds their text again, now with its kind. A provider settles it before
    it ends; if the stream is cut short first (Stop), the server keeps it as
    answer, as held text is at the end of a stream.
    """

    text: str


@dataclass(frozen=True, slots=True)
class Answer:
    """The next piece of the answer; all pieces joined are the answer, exactly.

    ``sent_at`` is set when the text is given out later than the model sent
    it (held back to tell reasoning from answer: providers/think_tags.py). It
    is when the first of it came, on ``time.monotonic()``, so that time to
    first token and tokens per second are the model's, not the hold's.
    """

    text: str
    sent_at: float | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts, when the model server reports them."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Finished:
    """Why the model stopped: "stop", "length", "content_filter", …"""

    reason: str


@dataclass(frozen=True, slots=True)
class Failure:
    """The stream failed. ``message`` is for the person: short, readable, no secret.
    ``hint`` is for the operator's log: what to check or change ("Check
    OPENAI_API_KEY."); the person never sees it."""

    message: str
    hint: str | None = None


ProviderEvent = Status | Connected | Undecided | Reasoning | Answer | Usage | Finished | Failure


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a conversation, as chat APIs take it."""

    role: str  # "system", "user" or "assistant"
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What a provider is asked: the messages so far, ending with the new prompt."""

    messages: tuple[Message, ...]
    model: str | None = None  # None: the provider's own choice
    temperature: float | None = None  # None: the model server's default

    @property
    def prompt(self) -> str:
        return self.messages[-1].content

    @property
    def earlier(self) -> tuple[Message, ...]:
        """The messages before the new prompt, the system message left out."""
        return tuple(message for message in self.messages[:-1] if message.role != "system")


class Provider(Protocol):
    """Anything that can stream an answer to a prompt."""

    #: Short name shown on the page and in logs ("demo", "openai").
    name: str
    #: The model that answers, as the person should see it.
    model: str

    async def models(self) -> list[str]:
        """The models a person may choose from (empty when the server lists none)."""
        ...

    def stream(self, request: ChatRequest) -> AsyncGenerator[ProviderEvent, None]:
        """Stream the events for one request (see the module docstring).

        An async generator: the server closes it (``aclose()``) when it stops
        listening, and closing it releases what it holds.
        """
        ...

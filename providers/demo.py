"""The offline demo provider: the default, so the app runs with no key and no network.

It is not a model and never pretends to be one. It explains, in its own
"thoughts" and "answer", what the page is showing, and it echoes the prompt so
you can see that the text travels through the stream intact (try a prompt with
``<b>tags</b>``, leading spaces or emoji). For a given prompt it always says
the same thing.

It exercises every event the page handles:

- a few reasoning steps, word by word (``thought`` events);
- an answer with spaces, line breaks and a little markdown (``answer_chunk``);
- then the end of the answer (``final_answer``);
- a prompt beginning with ``/error`` fails halfway through the answer, so a
  workshop can show the ``error`` path.

``delay`` is the pause before each piece, in seconds: 0 in tests, a few
hundredths of a second by default, so it looks like a model typing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator

from providers.events import (
    Answer,
    ChatRequest,
    Failure,
    Finished,
    ProviderEvent,
    Reasoning,
    Status,
)

#: What makes the demo provider fail on purpose.
ERROR_COMMAND = "/error"
#: How much of the prompt the demo quotes back.
QUOTE_CHARS = 200

# A word with the whitespace that follows it, or whitespace alone at the start.
# Joined, the pieces give back the text exactly.
_PIECE = re.compile(r"\s+|\S+\s*")


def pieces(text: str) -> list[str]:
    """Split text into word-sized pieces that join back to exactly ``text``."""
    return _PIECE.findall(text)


def _thinking(prompt: str) -> str:
    return (
        f"The prompt is {len(prompt)} characters long. "
        "I am the offline demo provider, not a model, so I will not really answer it. "
        "Instead I will show how the stream works: these words arrive as thought events, "
        "and each one replaces the last. Next comes the answer, a few words per event, "
        "appended one after another."
    )


def _quote(text: str) -> str:
    quoted = text[:QUOTE_CHARS] + ("…" if len(text) > QUOTE_CHARS else "")
    return "\n".join("> " + line for line in quoted.split("\n"))


def _context(request: ChatRequest) -> str:
    """What the demo received of the conversation: it shows that history travels."""
    asked = [message.content for message in request.earlier if message.role == "user"]
    if not asked:
        return "This is the first prompt of the conversation: no history came with it.\n\n"
    turns = "one earlier turn" if len(asked) == 1 else f"{len(asked)} earlier turns"
    return (
        f"The history came with it: {turns}. Your previous prompt was:\n\n{_quote(asked[-1])}\n\n"
    )


def _answer(request: ChatRequest) -> str:
    return (
        "**This is the demo provider.** No model was asked.\n"
        "\n"
        "You wrote:\n"
        "\n"
        f"{_quote(request.prompt)}\n"
        "\n"
        f"{_context(request)}"
        "What you just watched:\n"
        "\n"
        "- the grey line above came as `thought` events, each one replacing the last;\n"
        "- this text came as `answer_chunk` events, each one appended to the box;\n"
        "- when it ends, one `final_answer` event replaces the box with the whole answer.\n"
        "\n"
        "To ask a real model, start the server with `OPENAI_BASE_URL` (and `OPENAI_API_KEY` "
        "if it needs one), for example Ollama: "
        "`OPENAI_BASE_URL=http://localhost:11434/v1 OPENAI_MODEL=qwen3 python server.py`."
    )


class DemoProvider:
    """Streams a canned, prompt-dependent explanation (see the module docstring)."""

    name = "demo"
    model = "demo (no model)"

    def __init__(self, delay: float = 0.03) -> None:
        self.delay = delay

    async def models(self) -> list[str]:
        return []  # nothing to choose

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ProviderEvent, None]:
        prompt = request.prompt
        fail = prompt.lstrip().startswith(ERROR_COMMAND)
        yield Status("Thinking…")
        for piece in pieces(_thinking(prompt)):
            await asyncio.sleep(self.delay)
            yield Reasoning(piece)

        answer = pieces(_answer(request))
        fail_at = len(answer) // 2 if fail else None
        for index, piece in enumerate(answer):
            if index == fail_at:
                yield Failure(
                    f"The demo provider failed on purpose, because the prompt starts with "
                    f"{ERROR_COMMAND}. This is how a real failure would look."
                )
                return
            await asyncio.sleep(self.delay)
            yield Answer(piece)

        # No Usage: the demo has no tokens to count, and says no more than it knows.
        yield Finished("stop")

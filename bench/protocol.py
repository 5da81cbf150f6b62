"""What the benchmark's fake model server and its load client agree on.

The prompt is the control channel. The client writes a *directive* as the
prompt; the relay under test passes it on unchanged as the user message; the
fake upstream (bench/upstream.py) reads it and streams what it asks for::

    bench id=s2-17 tokens=200 delay=0.02 stamp=1

- ``id``: names the request, so the upstream can say when *this* one was let go;
- ``tokens``: how many answer tokens to send;
- ``delay``: seconds between two tokens (0 = as fast as it can write);
- ``stamp``: 1 to embed each token's send time, for relay latency;
- ``markdown``: 1 to stream the fixed Markdown answer instead
  (``bench/markdown_answer.md``, see ``markdown_tokens``): ``tokens`` and
  ``stamp`` are then ignored.

Token ``i`` is the text ``" {i}"``, then ``"@{send_ns}"`` when stamped (the
upstream's ``time.monotonic_ns()`` just before the write, modulo
``STAMP_MODULUS``: CLOCK_MONOTONIC is one clock for every process on a Linux
machine, so the client can subtract it from its own receive time, modulo the
same, in ``since_stamp``), then every ``MARKUP_EVERY``-th token ``MARKUP``: text that
must be HTML-escaped, so the relay's escaping is exercised and checked.

Because every token carries its index, the client can check an answer exactly:
the joined, unescaped ``answer_chunk`` texts must be tokens 0, 1, 2, … in order,
each written exactly as the upstream wrote it, and nothing else. A lost token, a
repeated one or a stray byte all fail that check.

The Markdown answer is a realistic one (headings, lists, a table, code blocks),
for what the app's rendering while it streams costs; it is cut into tokens of
about four characters, as a model's are (``markdown_tokens``), and checked whole:
its text, or the page its rendered chunks build (bench/load.py).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

DIRECTIVE_WORD = "bench"
#: HTML-special characters (and none that JSON must escape, so the upstream can
#: write a token into its JSON template as it is).
MARKUP = " <i>&'"
MARKUP_EVERY = 8

_TOKEN = re.compile(r" (\d+)(?:@(\d+))?")
#: A stamped token's index and send time, wherever it is (a rendered paragraph
#: drops the space before its first word).
_STAMPED = re.compile(r"(?<![\d@])(\d+)@(\d+)")

MARKDOWN_ANSWER = Path(__file__).with_name("markdown_answer.md")
#: A model's tokens, roughly: a run of line breaks, or up to four characters
#: of a word with the spaces before it, or spaces alone. Every character is kept.
_MODEL_TOKEN = re.compile(r"\n+|[^\S\n]*\S{1,4}|[^\S\n]+")


@dataclass(frozen=True)
class Directive:
    """One request's orders to the fake upstream."""

    id: str = "-"
    tokens: int = 10
    delay: float = 0.0
    stamp: bool = False
    markdown: bool = False

    def prompt(self) -> str:
        return (
            f"{DIRECTIVE_WORD} id={self.id} tokens={self.tokens} "
            f"delay={self.delay:g} stamp={int(self.stamp)}"
            + (" markdown=1" if self.markdown else "")
        )

    def answer_tokens(self) -> int:
        """How many answer tokens the upstream sends for this directive."""
        return len(markdown_tokens()) if self.markdown else self.tokens

    @classmethod
    def parse(cls, prompt: str) -> Directive:
        """The directive in a prompt; unknown words are ignored, missing ones default."""
        fields = dict(word.partition("=")[::2] for word in prompt.split() if "=" in word)
        return cls(
            id=fields.get("id", cls.id),
            tokens=int(fields.get("tokens", cls.tokens)),
            delay=float(fields.get("delay", cls.delay)),
            stamp=fields.get("stamp", "0") == "1",
            markdown=fields.get("markdown", "0") == "1",
        )


@functools.cache
def markdown_answer() -> str:
    """The fixed Markdown answer (``markdown=1``), as the upstream sends it."""
    return MARKDOWN_ANSWER.read_text(encoding="utf-8")


@functools.cache
def markdown_tokens() -> tuple[str, ...]:
    """The Markdown answer cut into a model's tokens: ``"".join()`` gives it back."""
    tokens = tuple(_MODEL_TOKEN.findall(markdown_answer()))
    assert "".join(tokens) == markdown_answer(), "every character is in a token"
    return tokens


#: Stamps are the send time modulo this (100 s), so they stay 11 digits at most
#: however long the machine has been up: 200 stamped tokens make one paragraph
#: of about 3,400 characters, under the length the app renders live (4,000;
#: with 14 digits, after 2.8 hours of uptime, they went over it).
STAMP_MODULUS = 10**11


def stamp_of(now_ns: int) -> int:
    """A send time as a token carries it."""
    return now_ns % STAMP_MODULUS


def since_stamp(now_ns: int, stamped: int) -> int:
    """Nanoseconds from a stamped send time to ``now_ns`` (less than 100 s)."""
    return (now_ns - stamped) % STAMP_MODULUS


def token_text(index: int, sent_ns: int | None = None) -> str:
    """Token ``index`` exactly as the upstream writes it (see the module docstring)."""
    text = f" {index}" if sent_ns is None else f" {index}@{sent_ns}"
    if index % MARKUP_EVERY == MARKUP_EVERY - 1:
        text += MARKUP
    return text


def read_tokens(answer: str) -> list[tuple[int, int | None]]:
    """The (index, send time or None) of every token in ``answer``, in order."""
    return [(int(index), int(stamp) if stamp else None) for index, stamp in _TOKEN.findall(answer)]


def read_stamps(text: str) -> list[tuple[int, int]]:
    """The (index, send time) of every stamped token in ``text``, even one that is
    not preceded by its space (the first word of a rendered paragraph)."""
    return [(int(index), int(stamp)) for index, stamp in _STAMPED.findall(text)]


def answer_is_exact(answer: str, count: int | None) -> bool:
    """True if ``answer`` is tokens 0…count-1 (or any whole prefix when count is None),
    each exactly once, in order, with nothing else in between."""
    tokens = read_tokens(answer)
    if count is not None and len(tokens) != count:
        return False
    if [index for index, _ in tokens] != list(range(len(tokens))):
        return False
    return "".join(token_text(index, stamp) for index, stamp in tokens) == answer

"""Split a model's ``content`` into reasoning and answer when it uses ``<think>`` tags.

Servers that do not parse reasoning (llama.cpp with ``--reasoning-format none``,
vLLM without a reasoning parser, Groq's ``raw`` format, LM Studio without
"separate reasoning_content", old Ollama) leave the model's thoughts inline::

    <think>Let me add 2 and 2.</think>

    4

The rule this module keeps: **reasoning is never given out as answer.** An
answer piece cannot be taken back (the page appends it), so text whose kind is
not known yet is held back from the answer until it is (and shown meanwhile,
rule 7):

1. ``<think>`` counts only at the start of the content, after optional white
   space (as much as rule 6 allows). From there to ``</think>`` everything is
   reasoning, given out as it comes. If the stream ends before ``</think>``,
   it was all reasoning.
2. Some chat templates (Qwen3-Thinking, DeepSeek-R1) put ``<think>`` in the
   prompt, so the output holds only the closing ``</think>``. Content that does
   not start with ``<think>`` is therefore *held*: if ``</think>`` arrives, the
   text before it was reasoning. If ``hold`` seconds pass (counted from the
   first content) without it, the held text is released as answer and any later
   ``</think>`` is ordinary text. At the end of the stream, held text is the
   answer. ``hold=0`` turns this detection off (untagged text is answer at
   once); ``hold=math.inf`` waits for ``</think>`` or the end (or rule 6). Held
   text, given out as answer or reasoning, says when it came (``sent_at``).
3. A tag may arrive split over several pieces (``"<th"`` + ``"ink>"``): a
   trailing piece of text that could be the start of the tag is kept back
   until the next piece settles it.
4. Line breaks at the very start of the answer right after reasoning are
   dropped (the ``"\\n\\n"`` models write after ``</think>``).
5. When the server sends reasoning in a field of its own, it parses the tags
   itself: ``server_reasoning()`` turns tag handling off for the rest of the
   stream (rule 4 still applies).
6. At most ``MAX_HELD_CHARS`` characters are kept back. Past that, white space
   before the first word and held text are given out as answer, as when the
   hold runs out: a ``<think>`` or ``</think>`` after them is ordinary text.
   Without this bound a server sending nothing but white space, or untagged
   text with ``hold=math.inf``, would fill memory with text the app's answer
   cap never sees. Each piece is searched for a tag before the bound applies,
   so a tag in the piece that goes past it still counts. Reasoning opened by
   ``<think>`` is given out as it comes, so the bound never turns it into
   answer.
7. Held text is held back from the answer, not hidden: each piece of it is
   also given out as it comes, as ``Undecided``, once it has been searched
   for ``</think>`` (a trailing piece that could start the tag waits for the
   next, as in rule 3). Undecided text is only for showing where it can be
   replaced, such as the page's thought line; the ``Reasoning`` or ``Answer``
   that settles it holds all of it again. So the first words of a model that
   does not reason are seen at once, not ``hold`` seconds later. White space
   and part of ``<think>`` at the very start are not given out so: there is
   nothing to see in them yet.

The splitter is pure: the caller passes the time (``now``, in seconds on any
monotonic clock) and asks it to ``poll()`` when ``hold_deadline`` passes.
Each character is searched for a tag once, however many pieces it came in,
so the time it takes grows with the length of the content, not its square.
"""

from __future__ import annotations

import enum

from providers.events import Answer, Reasoning, Undecided

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"
#: The most text kept back while its kind is not known (rule 6): 256 Ki
#: characters, some 64,000 tokens of English. Untagged reasoning longer than
#: that is shown as answer, as it is once the hold runs out.
MAX_HELD_CHARS = 256 * 1024
_ANSWER_LEADING_BREAKS = "\r\n"

Piece = Reasoning | Answer | Undecided


class _Mode(enum.Enum):
    STARTING = "nothing but white space or part of <think> so far"
    THINKING = "inside <think>, waiting for </think>"
    HOLDING = "untagged text that may still turn out to be reasoning"
    ANSWERING = "everything from here on is answer"


def _partial_tag_length(text: str, tag: str) -> int:
    """How many characters at the end of ``text`` could be the start of ``tag``."""
    for length in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


class ThinkTagSplitter:
    """Turns content pieces into ``Reasoning``, ``Answer`` and ``Undecided`` pieces
    (see the module docstring)."""

    def __init__(self, hold: float) -> None:
        self._hold = hold
        self._mode = _Mode.STARTING
        self._buffer = ""
        # Kept-back text already looked at, in pieces: the white space before
        # the first word while starting, the held text while holding. Moved
        # here from the buffer, it is searched once and joined once, so that
        # a long run of small pieces costs linear time, not quadratic.
        self._set_aside: list[str] = []
        self._set_aside_chars = 0  # their length in all, for rule 6
        self._first_content_at: float | None = None  # the hold counts from here
        self._held_since: float | None = None  # when the held text came
        self._after_reasoning = False
        self._answer_started = False

    @property
    def hold_deadline(self) -> float | None:
        """When held text becomes answer, if text is being held; ``poll()`` then."""
        if self._mode is not _Mode.HOLDING or self._first_content_at is None:
            return None
        return self._first_content_at + self._hold

    def feed(self, text: str, now: float) -> list[Piece]:
        """Take the next piece of content; return what can be given out now."""
        if not text:
            return []
        if self._mode is _Mode.ANSWERING and not (self._buffer or self._set_aside):
            return self._answer(text)  # the answer has begun: nothing more to look for
        if self._first_content_at is None:
            self._first_content_at = now
        # Text held past its time is answer, whatever this new piece says.
        pieces = self._advance(now)
        self._buffer += text
        return pieces + self._advance(now)

    def poll(self, now: float) -> list[Piece]:
        """Release held text if its time is up."""
        return self._advance(now)

    def server_reasoning(self) -> list[Piece]:
        """The server sent reasoning in its own field: stop looking for tags."""
        pieces = self.finish() if self._mode is not _Mode.ANSWERING else []
        self._mode = _Mode.ANSWERING
        self._after_reasoning = True
        return pieces

    def finish(self) -> list[Piece]:
        """The content is over: give out whatever was kept back."""
        if self._mode is _Mode.THINKING:
            return self._reasoning(self._take_all())
        return self._answer(self._take_all())

    def _advance(self, now: float) -> list[Piece]:
        pieces: list[Piece] = []
        while self._buffer or self._set_aside:
            if self._mode is _Mode.STARTING:
                if not self._decide():
                    break
            elif self._mode is _Mode.THINKING:
                if not self._split_at_close_tag(pieces):
                    settled = len(self._buffer) - _partial_tag_length(self._buffer, CLOSE_TAG)
                    pieces += self._reasoning(self._take(settled))
                    break
            elif self._mode is _Mode.HOLDING:
                if not self._split_at_close_tag(pieces):
                    deadline = self.hold_deadline
                    in_time = deadline is not None and now < deadline
                    if in_time and not self._too_much_kept_back():
                        # Searched: only a tag's possible start stays in the buffer,
                        # and the rest is shown meanwhile (rule 7).
                        searched = len(self._buffer) - _partial_tag_length(self._buffer, CLOSE_TAG)
                        pieces += self._undecided(self._put_aside(searched))
                        break
                    self._mode = _Mode.ANSWERING
            else:
                pieces += self._answer(self._take_all())
        return pieces

    def _take(self, length: int) -> str:
        """Remove and return the first ``length`` characters of the buffer."""
        text, self._buffer = self._buffer[:length], self._buffer[length:]
        return text

    def _put_aside(self, length: int) -> str:
        """Move the first ``length`` characters of the buffer, already searched, aside;
        return them."""
        if not length:
            return ""
        text = self._take(length)
        self._set_aside.append(text)
        self._set_aside_chars += length
        return text

    def _drop_set_aside(self) -> None:
        self._set_aside.clear()
        self._set_aside_chars = 0

    def _take_all(self) -> str:
        """Remove and return all the kept-back text: what was put aside, then the buffer."""
        self._put_aside(len(self._buffer))  # joined once: one copy, not two
        text = "".join(self._set_aside)
        self._drop_set_aside()
        return text

    def _too_much_kept_back(self) -> bool:
        """Whether the kept-back text is longer than ``MAX_HELD_CHARS`` (rule 6)."""
        return self._set_aside_chars + len(self._buffer) > MAX_HELD_CHARS

    def _decide(self) -> bool:
        """Settle the mode from the start of the content; False while it cannot be told."""
        start = self._buffer.lstrip()
        # White space is put aside as it comes (dropped if <think> follows, part
        # of the text otherwise), so that it is never scanned twice.
        self._put_aside(len(self._buffer) - len(start))
        if start.startswith(OPEN_TAG):
            self._drop_set_aside()
            self._buffer = start.removeprefix(OPEN_TAG)
            self._mode = _Mode.THINKING
        elif OPEN_TAG.startswith(start) and not self._too_much_kept_back():
            return False
        elif self._hold > 0:
            self._mode = _Mode.HOLDING
            self._held_since = self._first_content_at
        else:
            self._mode = _Mode.ANSWERING
        return True

    def _split_at_close_tag(self, pieces: list[Piece]) -> bool:
        """If ``</think>`` has arrived, give out the reasoning before it and switch to answer."""
        before, found, rest = self._buffer.partition(CLOSE_TAG)
        if not found:
            return False
        self._buffer = before
        pieces += self._reasoning(self._take_all())
        self._buffer = rest
        self._mode = _Mode.ANSWERING
        self._held_since = None  # whatever was held is out: the answer comes as it comes
        return True

    def _undecided(self, text: str) -> list[Piece]:
        return [Undecided(text)] if text else []

    def _reasoning(self, text: str) -> list[Piece]:
        if not text:
            return []
        self._after_reasoning = True
        return [Reasoning(text, self._take_held_since())]

    def _answer(self, text: str) -> list[Piece]:
        if self._after_reasoning and not self._answer_started:
            text = text.lstrip(_ANSWER_LEADING_BREAKS)
        if not text:
            return []
        self._answer_started = True
        return [Answer(text, self._take_held_since())]

    def _take_held_since(self) -> float | None:
        """When the held text came, for the first piece given out of it (once)."""
        held_since, self._held_since = self._held_since, None
        return held_since

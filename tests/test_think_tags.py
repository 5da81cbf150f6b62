"""The <think> splitter, table-driven, with an explicit clock (no sleeping).

Each case is a list of ``(seconds, content piece)`` and the reasoning and
answer that must come out. The invariant behind every row: text is given out
as reasoning or as answer, never as both, and never as answer before it is
known not to be reasoning. Until its kind is known, held text is given out as
``Undecided`` too, to be shown, and comes again in the piece that settles it.
"""

from __future__ import annotations

import gc
import math
import time
import tracemalloc

import pytest

from providers.events import Answer, Reasoning, Undecided
from providers.think_tags import MAX_HELD_CHARS, ThinkTagSplitter

HOLD = 1.0
Piece = Reasoning | Answer | Undecided


def split(pieces: list[tuple[float, str]], hold: float = HOLD) -> list[Piece]:
    splitter = ThinkTagSplitter(hold)
    out: list[Piece] = []
    for now, text in pieces:
        out += splitter.feed(text, now)
    return out + splitter.finish()


def joined(out: list[Piece], kind: type[Piece]) -> str:
    return "".join(piece.text for piece in out if isinstance(piece, kind))


CASES = {
    "plain-answer": ([(0, "Hello"), (0, " world")], "", "Hello world"),
    "think-block": ([(0, "<think>Hm.</think>\n\nYes.")], "Hm.", "Yes."),
    "white-space-before-think": ([(0, " \n <think>Hm.</think>Yes.")], "Hm.", "Yes."),
    "open-tag-split": ([(0, "<"), (0, "th"), (0, "ink>Hm.</think>Yes.")], "Hm.", "Yes."),
    "close-tag-split": ([(0, "<think>Hm.</"), (0, "thi"), (0, "nk>\r\nYes.")], "Hm.", "Yes."),
    "tag-like-text-inside-reasoning": (
        [(0, "<think>a </b> <"), (0, "c</think>d")],
        "a </b> <c",
        "d",
    ),
    "think-not-at-start-is-text": ([(0, "Say <think>"), (2, " ok")], "", "Say <think> ok"),
    "no-close-tag-is-all-reasoning": ([(0, "<think>Never"), (5, " done")], "Never done", ""),
    "orphan-close-tag": ([(0, "Hm, maths."), (0.5, "</think>\n\n4")], "Hm, maths.", "4"),
    "orphan-close-tag-split": ([(0, "Hm.</th"), (0.5, "ink>4")], "Hm.", "4"),
    "close-tag-after-the-hold-is-text": ([(0, "4"), (1.5, "</think>")], "", "4</think>"),
    "held-text-is-answer-at-the-end": ([(0, "Just this.")], "", "Just this."),
    "partial-open-tag-at-the-end": ([(0, "<thi")], "", "<thi"),
    "white-space-only": ([(0, "\n")], "", "\n"),
    "only-breaks-right-after-reasoning-are-dropped": (
        [(0, "<think>a</think>"), (0, "\n"), (0, "\n Hi\n\n")],
        "a",
        " Hi\n\n",
    ),
}


@pytest.mark.parametrize(("pieces", "reasoning", "answer"), CASES.values(), ids=CASES.keys())
def test_split(pieces: list[tuple[float, str]], reasoning: str, answer: str) -> None:
    out = split(pieces)
    assert joined(out, Reasoning) == reasoning
    assert joined(out, Answer) == answer


def test_reasoning_streams_out_before_the_close_tag() -> None:
    splitter = ThinkTagSplitter(HOLD)
    assert splitter.feed("<think>Step one", 0) == [Reasoning("Step one")]
    assert splitter.feed(", step two</thi", 0) == [Reasoning(", step two")]
    assert splitter.feed("nk>Done", 0) == [Answer("Done")]


def test_held_text_waits_for_the_hold_deadline() -> None:
    splitter = ThinkTagSplitter(HOLD)
    assert splitter.feed("Hello", 10.0) == [Undecided("Hello")]  # shown, not yet answer
    assert splitter.hold_deadline == 10.0 + HOLD
    assert splitter.poll(10.5) == []
    assert splitter.poll(11.0) == [Answer("Hello", sent_at=10.0)]  # says when it came
    assert splitter.hold_deadline is None
    assert splitter.feed(" again", 11.1) == [Answer(" again")]  # not held


def test_hold_zero_gives_untagged_text_at_once() -> None:
    splitter = ThinkTagSplitter(0)
    assert splitter.feed("x</think>y", 0) == [Answer("x</think>y")]


def test_infinite_hold_waits_for_the_close_tag() -> None:
    out = split([(0, "Long thought"), (3600, "</think>Answer")], hold=math.inf)
    # The held text was reasoning, and says when it came; the answer was not held.
    assert out == [
        Undecided("Long thought"),
        Reasoning("Long thought", sent_at=0),
        Answer("Answer"),
    ]


def test_server_reasoning_turns_tags_off() -> None:
    splitter = ThinkTagSplitter(HOLD)
    assert splitter.server_reasoning() == []
    assert splitter.feed("\n\n<think>literal</think>", 0) == [Answer("<think>literal</think>")]


def test_server_reasoning_after_held_text_releases_it_as_answer() -> None:
    splitter = ThinkTagSplitter(HOLD)
    assert splitter.feed("Early", 0) == [Undecided("Early")]
    assert splitter.server_reasoning() == [Answer("Early", sent_at=0)]


# --- held text is shown while its kind is not known (rule 7) ---

SHOWN_CASES = {
    "held-text-shows-at-once-then-is-answer": (
        [(0, "Hello"), (0.5, " there"), (1.5, "!")],
        [Undecided("Hello"), Undecided(" there"), Answer("Hello there", sent_at=0), Answer("!")],
    ),
    "held-text-shows-at-once-then-is-reasoning": (
        [(0, "Hm."), (0.5, " Four."), (0.7, " Yes.</think>4")],
        [Undecided("Hm."), Undecided(" Four."), Reasoning("Hm. Four. Yes.", sent_at=0),
         Answer("4")],
    ),
    "held-text-shows-at-once-then-is-answer-at-the-end": (
        [(0, "Just this.")], [Undecided("Just this."), Answer("Just this.", sent_at=0)],
    ),
    "a-possible-close-tag-is-not-shown": (
        [(0, "Hm.</th"), (0.5, "ink>4")],
        [Undecided("Hm."), Reasoning("Hm.", sent_at=0), Answer("4")],
    ),
    "what-was-not-a-close-tag-is-shown-once-known": (
        [(0, "a </th"), (0.5, "en b")],
        [Undecided("a "), Undecided("</then b"), Answer("a </then b", sent_at=0)],
    ),
    "white-space-before-the-first-word-is-not-shown": (
        [(0, "\n "), (0.2, "Hi")], [Undecided("Hi"), Answer("\n Hi", sent_at=0)],
    ),
    "tagged-reasoning-is-never-undecided": (
        [(0, "<thi"), (0, "nk>Hm."), (0, "</think>4")], [Reasoning("Hm."), Answer("4")],
    ),
    "text-after-the-hold-is-answer-at-once": (
        [(0, "4"), (1.5, "</think>")], [Undecided("4"), Answer("4", sent_at=0), Answer("</think>")],
    ),
}  # fmt: skip


@pytest.mark.parametrize(("pieces", "out"), SHOWN_CASES.values(), ids=SHOWN_CASES.keys())
def test_held_text_is_shown_as_undecided_until_its_kind_is_known(
    pieces: list[tuple[float, str]], out: list[Piece]
) -> None:
    assert split(pieces) == out


def test_no_hold_gives_nothing_undecided() -> None:
    assert split([(0, "Hm."), (0, "</think>4")], hold=0) == [Answer("Hm."), Answer("</think>4")]


@pytest.mark.parametrize("pieces", [pieces for pieces, _, _ in CASES.values()], ids=CASES.keys())
def test_undecided_text_comes_again_in_the_piece_that_settles_it(
    pieces: list[tuple[float, str]],
) -> None:
    shown = ""
    for piece in split(pieces):
        if isinstance(piece, Undecided):
            shown += piece.text
        else:
            assert shown in piece.text
            shown = ""
    assert shown == ""  # nothing is left shown but never settled


@pytest.mark.parametrize(
    ("piece", "hold"),
    [(" " * 8, HOLD),  # white space keeps the splitter undecided
     ("Held on.", math.inf)],  # untagged text is held until </think> or the end
    ids=["white-space", "held-text"],
)  # fmt: skip
def test_many_small_pieces_cost_linear_time(piece: str, hold: float) -> None:
    """Each piece is looked at once: 4 times the pieces take about 4 times as long, not 16."""

    def seconds(count: int) -> float:
        best = math.inf
        for _ in range(5):  # the best of five: a busy machine only ever adds time
            splitter = ThinkTagSplitter(hold)
            gc.disable()  # a collection during one run and not another would skew the ratio
            try:
                started = time.perf_counter()
                out = [part for _ in range(count) for part in splitter.feed(piece, 0)]
                out += splitter.feed("End.", 0) + splitter.finish()
                best = min(best, time.perf_counter() - started)
            finally:
                gc.enable()
            assert joined(out, Answer) == piece * count + "End."
        return best

    small, large = seconds(10_000), seconds(40_000)
    assert large / small < 8, f"10,000 pieces: {small:.3f} s, 40,000 pieces: {large:.3f} s"


# --- the bound on kept-back text (rule 6) ---

LIMIT = MAX_HELD_CHARS

BOUND_CASES = {
    "held-text-up-to-the-bound-may-be-reasoning": (
        [(0, "a" * LIMIT), (9, "</think>Yes")], math.inf, "a" * LIMIT, "Yes",
    ),
    "held-text-past-the-bound-is-answer": (
        [(0, "a" * LIMIT), (9, "b"), (9, "</think>Yes")], math.inf,
        "", "a" * LIMIT + "b</think>Yes",
    ),
    "a-tag-in-the-piece-past-the-bound-counts": (
        [(0, "a" * LIMIT), (9, "b</think>Yes")], math.inf, "a" * LIMIT + "b", "Yes",
    ),
    "white-space-up-to-the-bound-may-open-reasoning": (
        [(0, " " * LIMIT), (9, "<think>Hm</think>Yes")], math.inf, "Hm", "Yes",
    ),
    "white-space-past-the-bound-is-answer": (
        [(0, " " * LIMIT), (9, " <thi"), (9, "nk>Hm</think>")], math.inf,
        "", " " * (LIMIT + 1) + "<think>Hm</think>",
    ),
    "white-space-past-the-bound-is-answer-without-hold": (
        [(0, " " * LIMIT), (0, " "), (0, "<think>Hm")], 0, "", " " * (LIMIT + 1) + "<think>Hm",
    ),
    "reasoning-is-never-bounded-into-answer": (
        [(0, "<think>" + "r" * 2 * LIMIT), (9, "</think>Yes")], math.inf, "r" * 2 * LIMIT, "Yes",
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    ("pieces", "hold", "reasoning", "answer"), BOUND_CASES.values(), ids=BOUND_CASES.keys()
)
def test_the_bound_on_kept_back_text(
    pieces: list[tuple[float, str]], hold: float, reasoning: str, answer: str
) -> None:
    out = split(pieces, hold)
    assert joined(out, Reasoning) == reasoning
    assert joined(out, Answer) == answer


@pytest.mark.parametrize(
    ("piece", "hold"),
    [(" " * 1024, HOLD),  # white space keeps the splitter undecided
     ("Held on. " * 100, math.inf)],  # untagged text is held until </think> or the end
    ids=["white-space", "held-text"],
)  # fmt: skip
def test_kept_back_text_stays_bounded(piece: str, hold: float) -> None:
    """8 MiB of such text: nothing comes out as reasoning or answer until the bound
    is passed (held text is only shown, as Undecided), then all of it comes out as
    answer, at once, and memory never holds much more than the bound."""
    splitter = ThinkTagSplitter(hold)
    fed = given_out = 0
    first: Piece | None = None
    tracemalloc.start()
    try:
        while fed < 32 * LIMIT:
            fresh = piece[:1] + piece[1:]  # a new string, as each chunk's JSON makes one
            fed += len(fresh)
            out = [part for part in splitter.feed(fresh, 0) if not isinstance(part, Undecided)]
            if first is None and out:
                first = out[0]
                assert LIMIT < fed <= LIMIT + len(piece)  # released just past the bound
            if first is not None:
                assert all(isinstance(part, Answer) for part in out)
                given_out += sum(len(part.text) for part in out)
                assert given_out == fed  # from then on, each piece comes out at once
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The kept-back text and one joined copy of it (one byte a character here):
    # about twice the bound. Without it, all 8 MiB would stay.
    assert peak < 3 * LIMIT, f"{peak:,} bytes for {fed:,} characters"
    assert first is not None and first.sent_at == 0  # held text says when it came
    # The tags no longer count: the content did not start with <think>.
    assert splitter.feed("<think>x</think>y", 1) == [Answer("<think>x</think>y")]

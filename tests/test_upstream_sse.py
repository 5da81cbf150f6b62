"""The upstream SSE parser, table-driven: network reads in, dispatched events out.

Every case is fed three ways: as the reads written in the table, as one read,
and one byte per read. The events must be the same each time: where the network
cuts the bytes must never matter.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from providers.upstream_sse import EventTooLong, LineTooLong, SSEEvent, SSEParser

E = SSEEvent
BIG = "x" * 600_000

CASES: dict[str, tuple[list[bytes], list[SSEEvent]]] = {
    "lf": ([b"data: a\n\ndata: b\n\n"], [E("a"), E("b")]),
    "crlf": ([b"data: a\r\n\r\ndata: b\r\n\r\n"], [E("a"), E("b")]),
    "lone-cr": ([b"data: a\r\rdata: b\r\r"], [E("a"), E("b")]),
    "mixed-line-ends": ([b"data: a\r\n\ndata: b\r\n\rdata: c\n\r\n"], [E("a"), E("b"), E("c")]),
    "cr|lf-split-across-reads": ([b"data: a\r", b"\n\r", b"\n"], [E("a")]),
    "cr|lf-split-inside-an-event": ([b"data: a\r", b"\ndata: b\r\n\r\n"], [E("a\nb")]),
    "cr|cr-across-reads-is-two-line-ends": ([b"data: a\r", b"\rdata: b\r\r"], [E("a"), E("b")]),
    "bom": ([b"\xef\xbb\xbfdata: a\n\n"], [E("a")]),
    "bom-split-across-reads": ([b"\xef", b"\xbb", b"\xbfdata: a\n\n"], [E("a")]),
    "bom-only-at-the-start": (["data: \ufeffa\n\n".encode()], [E("\ufeffa")]),
    "comments": ([b": keep-alive\n\n: OPENROUTER PROCESSING\n\n:\n\ndata: a\n\n"], [E("a")]),
    "comment-inside-an-event": ([b"data: a\n: ping\ndata: b\n\n"], [E("a\nb")]),
    "data-without-space": ([b"data:a\n\ndata:[DONE]\n\n"], [E("a"), E("[DONE]")]),
    "only-one-space-is-removed": ([b"data:  two\n\n"], [E(" two")]),
    "multi-line-data": ([b'data: {\ndata: "k": 1\ndata: }\n\n'], [E('{\n"k": 1\n}')]),
    "empty-data-line": ([b"data:\n\n"], [E("")]),
    "event-name": ([b"event: error\ndata: boom\n\n"], [E("boom", event="error")]),
    "event-name-resets": ([b"event: x\ndata: 1\n\ndata: 2\n\n"], [E("1", event="x"), E("2")]),
    "event-without-data-is-not-dispatched": ([b"event: ping\n\ndata: a\n\n"], [E("a")]),
    "id-retry-and-unknown-fields-ignored": (
        [b"id: 7\nretry: 10\nfoo: bar\nbaz\ndata: a\n\n"],
        [E("a")],
    ),
    "stray-blank-lines": ([b"\n\n\r\n\rdata: a\n\n\n\n"], [E("a")]),
    "legacy-llama-cpp-error-field": (
        [b'error: {"message":"oops"}\n\ndata: [DONE]\n\n'],
        [E('{"message":"oops"}', event="error"), E("[DONE]")],
    ),
    "split-utf8": (["data: é😀ü\n\n".encode()], [E("é😀ü")]),
    "invalid-utf8-is-replaced": ([b"data: \xff\n\n"], [E("\ufffd")]),
    "unterminated-last-event-is-dropped": ([b"data: a\n\ndata: b\n"], [E("a")]),
    "unterminated-last-line-is-dropped": ([b"data: a\n\ndata: b"], [E("a")]),
    "600-kb-line": ([f"data: {BIG}\n\n".encode()], [E(BIG)]),
}

FEEDS: dict[str, Callable[[list[bytes]], list[bytes]]] = {
    "as-written": lambda reads: reads,
    "one-read": lambda reads: [b"".join(reads)],
    "byte-by-byte": lambda reads: [bytes([byte]) for byte in b"".join(reads)],
}

# The big line is fed byte by byte only in its own test (600,000 reads is slow).
SMALL_CASES = {name: case for name, case in CASES.items() if name != "600-kb-line"}


def parse(reads: list[bytes], parser: SSEParser | None = None) -> list[SSEEvent]:
    parser = parser or SSEParser()
    return [event for read in reads for event in parser.feed(read)]


@pytest.mark.parametrize("feed", FEEDS.values(), ids=FEEDS.keys())
@pytest.mark.parametrize(("reads", "expected"), SMALL_CASES.values(), ids=SMALL_CASES.keys())
def test_events(
    reads: list[bytes], expected: list[SSEEvent], feed: Callable[[list[bytes]], list[bytes]]
) -> None:
    assert parse(feed(reads)) == expected


@pytest.mark.parametrize("feed", ["as-written", "one-read"])
def test_a_600_kb_line(feed: str) -> None:
    reads, expected = CASES["600-kb-line"]
    assert parse(FEEDS[feed](reads)) == expected


def test_a_600_kb_line_in_many_small_reads() -> None:
    data = f"data: {BIG}\n\n".encode()
    reads = [data[start : start + 1000] for start in range(0, len(data), 1000)]
    assert parse(reads) == [E(BIG)]


def test_events_come_out_as_soon_as_they_are_complete() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"\ndata: b\n\nda") == [E("a"), E("b")]
    assert parser.feed(b"ta: c\n\n") == [E("c")]


@pytest.mark.parametrize(
    "reads",
    [
        [b"data: " + b"x" * 100],
        [b"data: " + b"x" * 50, b"x" * 50],
        [b"data: " + b"x" * 100 + b"\n\n"],
    ],
    ids=["unfinished-line", "growing-across-reads", "complete-line-in-one-read"],
)
def test_a_line_over_the_cap_raises(reads: list[bytes]) -> None:
    with pytest.raises(LineTooLong):
        parse(reads, SSEParser(max_line_bytes=64))


def test_a_line_at_the_cap_is_fine() -> None:
    line = b"data: " + b"x" * 58  # exactly 64 bytes
    assert parse([line + b"\n\n"], SSEParser(max_line_bytes=64)) == [E("x" * 58)]


def test_the_default_cap_is_a_few_mib() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: " + b"x" * (3 * 1024 * 1024)) == []
    with pytest.raises(LineTooLong):
        parser.feed(b"x" * (2 * 1024 * 1024))


@pytest.mark.parametrize("feed", FEEDS.values(), ids=FEEDS.keys())
def test_an_event_over_the_cap_raises(feed: Callable[[list[bytes]], list[bytes]]) -> None:
    """Short data lines that never end their event must not pile up without end."""
    with pytest.raises(EventTooLong):
        parse(feed([b"data: " + b"x" * 20 + b"\n"] * 4), SSEParser(max_line_bytes=64))


def test_an_event_at_the_cap_is_fine_and_the_count_starts_again_after_it() -> None:
    event = b"data: " + b"x" * 31 + b"\ndata: " + b"y" * 32 + b"\n\n"  # 31 + "\n" + 32 = 64
    expected = E("x" * 31 + "\n" + "y" * 32)
    assert parse([event, event], SSEParser(max_line_bytes=64)) == [expected, expected]

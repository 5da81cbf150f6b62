"""The exact bytes of every SSE event: one pure function, one table."""

import pytest

from server import escape_text, format_event

# One case per line: the table is the specification.
# fmt: off
FRAMES = [
    ("plain", "thought", "Thinking", 1, b"event: thought\nid: 1\ndata: Thinking\n\n"),
    ("close-has-empty-data-line", "close", "", 7, b"event: close\nid: 7\ndata: \n\n"),
    ("leading-space-kept", "answer_chunk", " world", 2, b"event: answer_chunk\nid: 2\ndata:  world\n\n"),
    ("space-only", "answer_chunk", "   ", 3, b"event: answer_chunk\nid: 3\ndata:    \n\n"),
    ("LF", "answer_chunk", "a\nb", 4, b"event: answer_chunk\nid: 4\ndata: a\ndata: b\n\n"),
    ("CRLF", "answer_chunk", "a\r\nb", 4, b"event: answer_chunk\nid: 4\ndata: a\ndata: b\n\n"),
    ("CR", "answer_chunk", "a\rb", 4, b"event: answer_chunk\nid: 4\ndata: a\ndata: b\n\n"),
    ("LF-CR-is-two-breaks", "answer_chunk", "a\n\rb", 5,
     b"event: answer_chunk\nid: 5\ndata: a\ndata: \ndata: b\n\n"),
    ("newline-only", "answer_chunk", "\n", 6, b"event: answer_chunk\nid: 6\ndata: \ndata: \n\n"),
    ("blank-lines", "answer_chunk", "a\n\n\nb", 8,
     b"event: answer_chunk\nid: 8\ndata: a\ndata: \ndata: \ndata: b\n\n"),
    ("trailing-newline", "answer_chunk", "end\n", 9, b"event: answer_chunk\nid: 9\ndata: end\ndata: \n\n"),
    ("unicode-line-separator-not-a-break", "answer_chunk", "a\u2028b\x85c", 10,
     "event: answer_chunk\nid: 10\ndata: a\u2028b\x85c\n\n".encode()),
    ("utf8", "answer_chunk", "Grüße 🎉", 11, "event: answer_chunk\nid: 11\ndata: Grüße 🎉\n\n".encode()),
]
# fmt: on


@pytest.mark.parametrize(
    ("event", "data", "event_id", "expected"),
    [frame[1:] for frame in FRAMES],
    ids=[frame[0] for frame in FRAMES],
)
def test_format_event_writes_exact_bytes(event, data, event_id, expected):
    assert format_event(event, data, event_id) == expected


# fmt: off
ESCAPES = [
    ("tag", "<img src=x onerror=alert(1)>", "&lt;img src=x onerror=alert(1)&gt;"),
    ("script", "<script>alert(2)</script>", "&lt;script&gt;alert(2)&lt;/script&gt;"),
    ("ampersand-entity-stays-text", "&amp; & <", "&amp;amp; &amp; &lt;"),
    ("quotes", "\"it's\"", "&quot;it&#x27;s&quot;"),
    ("carriage-return-survives-the-sse-parser", "a\r\nb", "a&#13;\nb"),
    ("plain-text-untouched", "  two spaces\n", "  two spaces\n"),
]
# fmt: on


@pytest.mark.parametrize(
    ("text", "expected"), [e[1:] for e in ESCAPES], ids=[e[0] for e in ESCAPES]
)
def test_escape_text(text, expected):
    assert escape_text(text) == expected

"""Read an event stream the way the browser does, so tests can check what the page gets.

This follows the WHATWG rules that matter here: lines end at CRLF, CR or LF;
one space after the colon is dropped; several ``data`` lines join with "\\n";
a blank line dispatches the event; an event with no ``data`` line is never
dispatched (the reason ``close`` must carry one).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from dataclasses import dataclass

from live_markdown import make_markdown
from tests.answer_dom import AnswerModel, normalized

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_MARKDOWN = make_markdown()


@dataclass
class SSEEvent:
    event: str
    data: str
    id: str | None


def parse_stream(text: str) -> tuple[list[SSEEvent], list[str]]:
    """Dispatched events and comments, in order, from a whole stream's text."""
    events: list[SSEEvent] = []
    comments: list[str] = []
    name, data_lines, event_id = "message", [], None
    for line in _LINE_BREAK.split(text):
        if line == "":
            if data_lines:
                events.append(SSEEvent(name, "\n".join(data_lines), event_id))
            name, data_lines, event_id = "message", [], None
            continue
        if line.startswith(":"):
            comments.append(line[1:].strip())
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data_lines.append(value)
        elif field == "id":
            event_id = value
    return events, comments


def answer_of(events: Iterable[SSEEvent]) -> str:
    """The answer text the page shows: the ``answer_chunk`` data, joined and unescaped."""
    return "".join(html.unescape(e.data) for e in events if e.event == "answer_chunk")


def shows_answer(events: Iterable[SSEEvent], answer: str) -> bool:
    """Whether the ``answer_chunk`` events build exactly ``answer`` on the page: the
    text itself (``--plain-stream``), or its Markdown rendered block by block, equal
    to the whole answer rendered at once (tests/answer_dom.py builds the page)."""
    chunks = [event.data for event in events if event.event == "answer_chunk"]
    if not chunks or not chunks[0].startswith("<"):  # plain text: the first chunk has no tag
        return "".join(html.unescape(chunk) for chunk in chunks) == answer
    page = AnswerModel()
    for chunk in chunks:
        page.apply(chunk)
    return page.html() == normalized(_MARKDOWN.render(answer))

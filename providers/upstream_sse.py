"""An incremental parser for the Server-Sent Events a model server sends us.

It is pure: no sockets, no clock. Feed it the bytes of each network read, in
order, and it returns the events those bytes completed. The rules, from the
WHATWG "server-sent events" spec, are kept in the order the spec gives them:

- Lines end with CRLF, LF or a lone CR. They are split on *bytes*, before any
  decoding, so a CR at the end of one read and an LF at the start of the next
  are one line end, not two.
- Each complete line is decoded as UTF-8 on its own. CR and LF bytes never occur
  inside a multi-byte UTF-8 character, so a character split across two reads
  is always whole again by the time its line is complete. Invalid bytes become
  U+FFFD instead of an exception.
- A byte order mark at the very start of the stream is dropped.
- A line starting with ``:`` is a comment (``: keep-alive``,
  ``: OPENROUTER PROCESSING``) and is ignored.
- ``field:value`` loses at most *one* space after the colon; a line without a
  colon is a field with an empty value.
- ``data`` lines accumulate and are joined with ``\\n``; ``event`` names the
  event; a blank line dispatches it. An event without any ``data`` line is not
  dispatched. ``id``, ``retry`` and unknown fields are ignored.
- An event still being written when the stream ends is never dispatched
  (there is no ``close()``: whatever has not been dispatched is dropped).

One deliberate extension: old llama.cpp servers reported a failure with a
non-standard ``error: {json}`` line instead of ``data:``. A spec-strict parser
would drop it and the stream would look like a success, so that field is read
as if it were ``event: error`` with the value as its data.

A line longer than ``max_line_bytes`` raises ``LineTooLong``, and an event
whose data lines add up to more than ``max_line_bytes`` characters raises
``EventTooLong``: a server that never ends a line, or never ends an event
(``data: x`` lines without a blank one), must not be able to fill our memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Big enough for any real chunk (a 600 KB line is fine), small enough that a
#: broken server cannot exhaust memory.
DEFAULT_MAX_LINE_BYTES = 4 * 1024 * 1024

#: The event name when a block has no ``event:`` line.
DEFAULT_EVENT = "message"

#: The event name given to llama.cpp's legacy ``error:`` field (see above).
ERROR_EVENT = "error"

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = "\ufeff"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event: its name and its data lines joined with ``\\n``."""

    data: str
    event: str = DEFAULT_EVENT


class LineTooLong(ValueError):
    """The stream holds a line longer than the parser's cap."""


class EventTooLong(ValueError):
    """The stream holds an event whose data add up to more than the parser's cap."""


class SSEParser:
    """Turns successive network reads into ``SSEEvent``s (see the module docstring)."""

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._partial_line = bytearray()
        # A read that ended with CR: an LF starting the next read ends no line.
        self._skip_next_lf = False
        self._at_stream_start = True
        self._data_lines: list[str] = []
        self._data_chars = 0  # in the data lines so far, to cap the event
        self._event = ""
        self._legacy_error: str | None = None

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Take the bytes of one read; return the events they completed, in order."""
        if self._skip_next_lf and data.startswith(b"\n"):
            data = data[1:]
        events: list[SSEEvent] = []
        for line in self._complete_lines(data):
            event = self._take_line(self._decode(line))
            if event is not None:
                events.append(event)
        return events

    def _complete_lines(self, data: bytes) -> list[bytes]:
        if b"\r" not in data:
            return self._complete_lf_lines(data)
        # Only the new bytes are searched, so a long line arriving one byte per
        # read costs linear time, not quadratic.
        start = 0
        lines = []
        for match in _LINE_END.finditer(data):
            self._partial_line += data[start : match.start()]
            self._check_length()
            lines.append(bytes(self._partial_line))
            self._partial_line.clear()
            start = match.end()
        self._partial_line += data[start:]
        self._check_length()
        self._skip_next_lf = data.endswith(b"\r")
        return lines

    def _complete_lf_lines(self, data: bytes) -> list[bytes]:
        """The common case, lines that end with LF alone: one split in C."""
        lines = data.split(b"\n")
        if self._partial_line:
            self._partial_line += lines[0]
            lines[0] = bytes(self._partial_line)
            self._partial_line.clear()
        self._partial_line += lines.pop()
        if any(len(line) > self.max_line_bytes for line in lines):
            raise LineTooLong(f"a line is longer than {self.max_line_bytes} bytes")
        self._check_length()
        self._skip_next_lf = False
        return lines

    def _check_length(self) -> None:
        if len(self._partial_line) > self.max_line_bytes:
            raise LineTooLong(f"a line is longer than {self.max_line_bytes} bytes")

    def _decode(self, line: bytes) -> str:
        text = line.decode("utf-8", errors="replace")
        if self._at_stream_start:
            self._at_stream_start = False
            text = text.removeprefix(_BOM)
        return text

    def _take_line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._data_chars += len(value) + 1  # with the "\n" that will join it
            if self._data_chars > self.max_line_bytes + 1:
                raise EventTooLong(f"an event is longer than {self.max_line_bytes} characters")
            self._data_lines.append(value)
        elif field == "event":
            self._event = value
        elif field == ERROR_EVENT:
            self._legacy_error = value
        return None

    def _dispatch(self) -> SSEEvent | None:
        if self._legacy_error is not None:
            event = SSEEvent(data=self._legacy_error, event=ERROR_EVENT)
        elif self._data_lines:
            event = SSEEvent(data="\n".join(self._data_lines), event=self._event or DEFAULT_EVENT)
        else:
            event = None
        self._data_lines = []
        self._data_chars = 0
        self._event = ""
        self._legacy_error = None
        return event

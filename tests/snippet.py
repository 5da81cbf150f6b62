"""Reading the snippet that ``POST /process_prompt`` returns, as the page does."""

#: Where the snippet's ``sse-connect`` points; the uid follows it.
STREAM_URL = "/response-stream?uid="


def uid_from_snippet(html: str) -> str:
    """The uid in the snippet's stream URL, ``sse-connect="/response-stream?uid=…"``.

    ``html`` may also be that attribute's value alone. A text without the
    stream URL (a refusal's message, say) raises ValueError.
    """
    _, found, rest = html.partition(STREAM_URL)
    if not found:
        raise ValueError(f"no {STREAM_URL}… in {html[:200]!r}")
    return rest.split('"', 1)[0]

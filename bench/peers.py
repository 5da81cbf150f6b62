"""What the two yardstick relays share: the page's snippet, and the model
server's tokens read from its OpenAI-compatible stream.

Each peer (bench/peer_fastapi.py, bench/peer_aiohttp.py) is what a small
tutorial for its library would write: the same routes and event names as
server.py (``POST /process_prompt`` → uid, ``GET /response-stream?uid=`` →
``thought``, ``answer_chunk``…, ``final_answer``, ``close``), one
``answer_chunk`` per upstream token (no coalescing), HTML escaping, and
nothing else: no limits, no resume, no pacing, no timeouts. Both talk to the
model server with an aiohttp ``ClientSession`` like the app, so the comparison
is between the servers, not their HTTP clients.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp

DATA_PREFIX = b"data: "
DONE_MARKER = b"[DONE]"
SNIPPET = '<div hx-ext="sse" sse-connect="/response-stream?uid={uid}" sse-close="close"></div>'
UNKNOWN = "This answer is unknown or has expired."


def upstream_session() -> aiohttp.ClientSession:
    """One session for every request to the model server, no connection cap."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


async def tokens(session: aiohttp.ClientSession, base_url: str, prompt: str) -> AsyncIterator[str]:
    """The answer's tokens as the model server streams them. Leaving the loop
    (also when the browser leaves and the relay is cancelled) closes the
    upstream response."""
    body = {"model": "bench", "stream": True, "messages": [{"role": "user", "content": prompt}]}
    async with session.post(f"{base_url}/chat/completions", json=body) as response:
        async for line in response.content:
            if not line.startswith(DATA_PREFIX):
                continue
            data = line[len(DATA_PREFIX) :].strip()
            if data == DONE_MARKER:
                return
            choices = json.loads(data).get("choices") or [{}]
            content = choices[0].get("delta", {}).get("content")
            if content:
                yield content

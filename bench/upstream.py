"""The benchmark's fake OpenAI-compatible model server, in its own process, on 127.0.0.1.

    python -m bench.upstream --port 9100

``POST /v1/chat/completions`` (``"stream": true``) answers what the prompt's
directive asks for (bench/protocol.py): a role chunk, ``tokens`` content chunks
``delay`` seconds apart (one write each), a ``finish_reason`` chunk, a usage
chunk and ``data: [DONE]``, each a ``chat.completion.chunk`` JSON of the size
real servers send. Tokens follow a fixed schedule (token i is due ``i * delay``
after the first), so a late wake-up does not slow the whole stream down.
With ``markdown=1`` the content chunks are the fixed Markdown answer's tokens
(``markdown_tokens``), at the same pace.

What it records, for the upstream-release figure: the moment (``monotonic_ns``)
each request's connection closed before its answer was complete. The server
runs with ``handler_cancellation``, so a handler is cancelled the moment its
client's connection drops, even while it sleeps between two tokens.

``GET /bench/stats`` returns those records and counters as JSON;
``POST /bench/reset`` forgets them. The process ends by itself after
``--lifetime`` seconds at the latest.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import time
from collections.abc import Callable

from aiohttp import web

from bench.protocol import Directive, markdown_tokens, stamp_of, token_text

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
#: Every chunk has the fields a real server sends; only the delta differs.
CHUNK_HEAD = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"bench","system_fingerprint":"fp_bench","choices":[{"index":0,"delta":'
)
ROLE_FRAME = CHUNK_HEAD + b'{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
CONTENT_OPEN = CHUNK_HEAD + b'{"content":"'
CONTENT_CLOSE = b'"},"finish_reason":null}]}\n\n'
FINISH_FRAME = CHUNK_HEAD + b'{},"finish_reason":"stop"}]}\n\n'
DONE_FRAME = b"data: [DONE]\n\n"
DEFAULT_LIFETIME_S = 900.0


def content_frame(text: str) -> bytes:
    # The token texts need no JSON escaping (bench/protocol.py), so a template
    # is enough: json.dumps here would cost the upstream more CPU than the app.
    return CONTENT_OPEN + text.encode() + CONTENT_CLOSE


@functools.cache
def markdown_frames() -> tuple[bytes, ...]:
    """The Markdown answer's content chunks, made once: its tokens need JSON escaping
    (quotes, backslashes, line breaks)."""
    return tuple(
        CONTENT_OPEN + json.dumps(token, ensure_ascii=False)[1:-1].encode() + CONTENT_CLOSE
        for token in markdown_tokens()
    )


def numbered_frame(directive: Directive) -> Callable[[int], bytes]:
    """Token ``i``'s chunk, its stamp (when asked for) taken just before the write."""

    def frame(index: int) -> bytes:
        stamp = stamp_of(time.monotonic_ns()) if directive.stamp else None
        return content_frame(token_text(index, stamp))

    return frame


def usage_frame(tokens: int) -> bytes:
    usage = {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens}
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": usage,
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class FakeModel:
    """The routes and the records of one fake model server."""

    def __init__(self) -> None:
        self.released_ns: dict[str, int] = {}  # request id -> when its client left early
        self.started = 0
        self.completed = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.completions)
        app.router.add_get("/bench/stats", self.stats)
        app.router.add_post("/bench/reset", self.reset)
        app.router.add_get("/healthz", self.stats)
        return app

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        directive = Directive.parse(body["messages"][-1]["content"])
        self.started += 1
        response = web.StreamResponse(headers=SSE_HEADERS)
        try:
            await response.prepare(request)
            await response.write(ROLE_FRAME)
            if directive.markdown:
                await self._send_tokens(response, directive, markdown_frames().__getitem__)
            else:
                await self._send_tokens(response, directive, numbered_frame(directive))
            usage = usage_frame(directive.answer_tokens())
            await response.write(FINISH_FRAME + usage + DONE_FRAME)
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionError):
            # The relay let go of the request before the end: the figure we are after.
            self.released_ns[directive.id] = time.monotonic_ns()
            raise
        self.completed += 1
        return response

    async def _send_tokens(
        self, response: web.StreamResponse, directive: Directive, frame: Callable[[int], bytes]
    ) -> None:
        # One token per write, as real servers do. Token i is due i * delay after
        # the first; a late wake-up sends the next token at once and catches up.
        loop = asyncio.get_running_loop()
        first = loop.time()
        for index in range(directive.answer_tokens()):
            # Even with no delay this yields, so concurrent streams interleave like
            # independent generators instead of one of them hogging the loop.
            await asyncio.sleep(max(0.0, first + index * directive.delay - loop.time()))
            await response.write(frame(index))

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"started": self.started, "completed": self.completed, "released_ns": self.released_ns}
        )

    async def reset(self, request: web.Request) -> web.Response:
        self.released_ns.clear()
        self.started = self.completed = 0
        return web.json_response({"ok": True})


async def serve(port: int, lifetime: float) -> None:
    # handler_cancellation: a client that leaves cancels its handler at once,
    # which is when we note the request as released.
    runner = web.AppRunner(FakeModel().app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    # A deep accept queue: the load client opens thousands of connections.
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    try:
        # SIGTERM from the benchmark (or from the kernel, when the benchmark
        # dies: see bench/procs.py) ends the process sooner.
        await asyncio.sleep(lifetime)
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lifetime", type=float, default=DEFAULT_LIFETIME_S)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.lifetime))


if __name__ == "__main__":
    main()

"""A minimal FastAPI + sse-starlette relay, the yardstick for the app's figures.

    python -m bench.peer_fastapi --port 9200 --base-url http://127.0.0.1:9100/v1

It is what a small FastAPI tutorial would write (bench/peers.py says what
both yardsticks do and leave out), with sse-starlette's ``EventSourceResponse``
framing the events.

It runs under uvicorn with httptools (a C HTTP parser, as aiohttp has) on
the standard asyncio loop (as the app runs; no uvloop), with uvicorn's
access log on, as the app has aiohttp's.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import secrets
from collections.abc import AsyncIterator
from urllib.parse import parse_qs

import aiohttp
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from bench.peers import SNIPPET, UNKNOWN, tokens, upstream_session

LINE_END = "\n"


def make_app(base_url: str) -> FastAPI:
    prompts: dict[str, str] = {}
    clients: dict[str, aiohttp.ClientSession] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with upstream_session() as session:
            clients["upstream"] = session
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/process_prompt", response_class=HTMLResponse)
    async def process_prompt(request: Request) -> str:
        # Parsed by hand: FastAPI's Form() would need python-multipart as well.
        form = parse_qs((await request.body()).decode())
        uid = "u" + secrets.token_hex(16)
        prompts[uid] = form["prompt"][0]
        return SNIPPET.format(uid=uid)

    @app.get("/response-stream")
    async def response_stream(uid: str) -> EventSourceResponse:
        prompt = prompts.pop(uid, None)
        events = relay(clients["upstream"], base_url, prompt)
        return EventSourceResponse(events, sep=LINE_END)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def relay(
    session: aiohttp.ClientSession, base_url: str, prompt: str | None
) -> AsyncIterator[ServerSentEvent]:
    """The events for one prompt: the upstream's tokens, escaped, one event each."""
    event_id = 0

    def event(name: str, data: str) -> ServerSentEvent:
        nonlocal event_id
        event_id += 1
        # sep: plain LF line ends, like the app (sse-starlette's default is CRLF).
        return ServerSentEvent(data, event=name, id=str(event_id), sep=LINE_END)

    if prompt is None:
        yield event("error", UNKNOWN)
        yield event("close", "")
        return
    yield event("thought", "Connecting…")
    answer = []
    async with contextlib.aclosing(tokens(session, base_url, prompt)) as contents:
        async for content in contents:
            answer.append(content)
            yield event("answer_chunk", html.escape(content))
    yield event("thought", "Done.")
    yield event("final_answer", f'<div class="answer-text">{html.escape("".join(answer))}</div>')
    yield event("close", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--base-url", required=True)
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.base_url.rstrip("/")),
        host="127.0.0.1",
        port=args.port,
        loop="asyncio",
        http="httptools",
        backlog=4096,
        log_level="info",
    )


if __name__ == "__main__":
    main()

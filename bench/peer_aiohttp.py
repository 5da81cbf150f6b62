"""A minimal aiohttp + aiohttp-sse relay: the best peer on the app's own stack.

    python -m bench.peer_aiohttp --port 9300 --base-url http://127.0.0.1:9100/v1

It is what aiohttp-sse's README leads to (bench/peers.py says what both
yardsticks do and leave out): one handler per route, ``sse_response`` and one
``send(data, event=, id=)`` per event. It runs on aiohttp's own server with
its access log on, as the app does, and aiohttp-sse's default ping every 15 s.
The difference from the app is everything the app does on top: the store and
its resume log, limits, headers and checks, pacing, rendering.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import logging
import secrets
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp_sse import sse_response

from bench.peers import SNIPPET, UNKNOWN, tokens, upstream_session

LINE_END = "\n"  # aiohttp-sse's default is CRLF; the app sends LF
PROMPTS = web.AppKey("prompts", dict[str, str])
UPSTREAM = web.AppKey("upstream", aiohttp.ClientSession)
BASE_URL = web.AppKey("base_url", str)


async def process_prompt(request: web.Request) -> web.Response:
    form = await request.post()
    uid = "u" + secrets.token_hex(16)
    request.app[PROMPTS][uid] = str(form["prompt"])
    return web.Response(text=SNIPPET.format(uid=uid), content_type="text/html")


async def response_stream(request: web.Request) -> web.StreamResponse:
    prompt = request.app[PROMPTS].pop(request.query.get("uid", ""), None)
    async with sse_response(request, sep=LINE_END) as sse:
        event_id = 0

        async def send(event: str, data: str) -> None:
            nonlocal event_id
            event_id += 1
            await sse.send(data, id=str(event_id), event=event)

        if prompt is None:
            await send("error", UNKNOWN)
        else:
            await send("thought", "Connecting…")
            answer = []
            session, base_url = request.app[UPSTREAM], request.app[BASE_URL]
            async with contextlib.aclosing(tokens(session, base_url, prompt)) as contents:
                async for content in contents:
                    answer.append(content)
                    await send("answer_chunk", html.escape(content))
            await send("thought", "Done.")
            text = html.escape("".join(answer))
            await send("final_answer", f'<div class="answer-text">{text}</div>')
        await send("close", "")
    return sse


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def upstream_client(app: web.Application) -> AsyncIterator[None]:
    async with upstream_session() as session:
        app[UPSTREAM] = session
        yield


def make_app(base_url: str) -> web.Application:
    app = web.Application()
    app[PROMPTS] = {}
    app[BASE_URL] = base_url
    app.router.add_post("/process_prompt", process_prompt)
    app.router.add_get("/response-stream", response_stream)
    app.router.add_get("/healthz", healthz)
    app.cleanup_ctx.append(upstream_client)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--base-url", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)  # aiohttp's access log, as the app has it
    web.run_app(
        make_app(args.base_url.rstrip("/")),
        host="127.0.0.1",
        port=args.port,
        backlog=4096,
        print=None,
    )


if __name__ == "__main__":
    main()

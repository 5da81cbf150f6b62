"""Step 8 of docs/workshop.md, solved: a provider of your own, and the app run with it.

The echo provider is not a model either: it thinks the prompt word by word
(``Reasoning``), then answers with it word by word (``Answer``). Run it from
the repository's folder, with any of server.py's flags:

    python docs/workshop/echo_provider.py --port 8081

The server does the rest: each Reasoning becomes a `thought`, each Answer an
`answer_chunk`, the end a `final_answer` and `close`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncGenerator
from pathlib import Path

# The repository's folder, where server.py and providers/ are: Python looks for
# imports next to the script it runs, and this script lives two folders down.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aiohttp import web

from providers.demo import pieces
from providers.events import Answer, ChatRequest, Finished, ProviderEvent, Reasoning
from server import make_app, parse_config


class EchoProvider:
    """Thinks the prompt, then answers it, one word at a time."""

    name = "echo"  # shown in the log; the page shows `model`
    model = "echo (no model)"

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay

    async def models(self) -> list[str]:
        return []  # nothing to choose from

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ProviderEvent, None]:
        words = pieces(request.prompt)  # words with their spaces: joined, the prompt exactly
        for word in words:
            await asyncio.sleep(self.delay)
            yield Reasoning(word)
        for word in words:
            await asyncio.sleep(self.delay)
            yield Answer(word)
        yield Finished("stop")


def main() -> None:
    # The same flags and environment variables as `python server.py`.
    config = parse_config(sys.argv[1:], os.environ)
    # The log that `python server.py` writes: each request, and a line per stream.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    app = make_app(config, provider=EchoProvider())
    web.run_app(app, host=config.host, port=config.port, handler_cancellation=True)


if __name__ == "__main__":
    main()

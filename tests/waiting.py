"""Waiting for something the server does in the background, bounded in time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

POLL_S = 0.02


async def eventually(check: Callable[[], bool | Awaitable[bool]], within: float = 5.0) -> None:
    """Return once ``check()`` is true; fail if it is still false after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {within} s")
        await asyncio.sleep(POLL_S)


async def healthz(client) -> dict:
    """The app's /healthz counts."""
    return await (await client.get("/healthz")).json()

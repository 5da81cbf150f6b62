"""Run a test module's tests once with each store: in memory, and in Redis.

A module takes it with ``from tests.each_store import start_app_on_each_store``:
its ``start_app`` then starts the app with the store of the test's parameter
(``store_config``, tests/redis_server.py).
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(name="start_app")
def start_app_on_each_store(start_app: Any, store_config: dict[str, Any]) -> Any:
    """``start_app``, once with each store."""

    async def start(*args: Any, **overrides: Any) -> Any:
        return await start_app(*args, **{**store_config, **overrides})

    return start


def tune(monkeypatch: pytest.MonkeyPatch, name: str, value: float) -> None:
    """Set one of the limits' timings (GIVE_WAY_S, PENDING_COUNTS_S) for both stores:
    redis_store.py imports them from server.py."""
    import redis_store
    import server

    monkeypatch.setattr(server, name, value)
    monkeypatch.setattr(redis_store, name, value)

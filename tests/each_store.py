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

"""A real ``redis-server`` (Debian's package) on a free loopback port, for tests.

- ``redis_server`` (one for the whole session): started with a password, so
  every test also shows that the password never reaches a page, an event or a
  log line. Each test gets its own key prefix (``redis_config``), so tests
  never see each other's keys.
- ``RedisServer.stop()`` and ``start()``: a test may take Redis away and bring
  it back on the same port (its own server: ``own_redis_server``).

Without the binary the tests that need it are skipped with the command that
installs it; with ``REQUIRE_REDIS=1`` (CI sets it) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

PASSWORD = "redis-test-password-5b1c"
START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class RedisServer:
    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--requirepass",
                PASSWORD,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.directory / 'redis.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start within 10 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def cli(self, *args: str) -> str:
        """Run redis-cli against it; its output."""
        result = subprocess.run(
            ["redis-cli", "-p", str(self.port), "--no-auth-warning", "-a", PASSWORD, *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return result.stdout

    def keys(self, prefix: str) -> dict[str, int]:
        """The keys under ``prefix``, each with its time to live in seconds (-1: none)."""
        names = self.cli("--scan", "--pattern", f"{prefix}:*").split()
        return {name: int(self.cli("TTL", name)) for name in names}


def need_redis() -> None:
    if shutil.which("redis-server") and shutil.which("redis-cli"):
        return
    hint = "install it: apt-get install redis-server"
    if os.environ.get("REQUIRE_REDIS", "") not in ("", "0"):
        pytest.fail(f"redis-server is missing (REQUIRE_REDIS is set): {hint}")
    pytest.skip(f"redis-server is missing: {hint}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    need_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis for one test, which it may stop and start again."""
    need_redis()
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_config(redis_server: RedisServer) -> dict[str, Any]:
    """Config fields for the shared store: the session's Redis, a prefix of this test's own."""
    return {"redis_url": redis_server.url, "redis_prefix": f"test-{uuid.uuid4().hex[:12]}"}


@pytest.fixture(params=["memory store", "redis store"])
def store_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Config fields that run a test once with each store: in memory, and in Redis."""
    if request.param == "memory store":
        return {}
    config: dict[str, Any] = request.getfixturevalue("redis_config")
    return config


@pytest.fixture
def start_workers(start_app: Any, redis_config: dict[str, Any]) -> Any:
    """``start_workers(n, provider=…, **config)``: n apps sharing one Redis store."""

    async def start(count: int = 2, provider: Any = None, **overrides: Any) -> list[Any]:
        return [
            await start_app(provider=provider, **{**redis_config, **overrides})
            for _ in range(count)
        ]

    return start

"""Open files, with the real `python server.py`: the process raises its own limit,
and running out of descriptors is logged once, not once per connection."""

from __future__ import annotations

import asyncio
import resource
import socket
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.server_process import start_server, stop_server
from tests.test_shutdown import free_port, wait_until_serving

ROOT = Path(__file__).resolve().parent.parent


def limited_to(soft: int, hard: int) -> Callable[[], None]:
    def limit_open_files() -> None:  # in the child, before it runs Python
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return limit_open_files


async def test_the_soft_open_file_limit_is_raised_to_the_hard_one_and_said(tmp_path):
    port, log_path = free_port(), tmp_path / "server.log"
    process = start_server(["--port", str(port)], log_path, limited_to(256, 4096))
    try:
        async with aiohttp.ClientSession() as session:
            await wait_until_serving(f"http://127.0.0.1:{port}", session)
        limits = await asyncio.to_thread(Path(f"/proc/{process.pid}/limits").read_text)
    finally:
        log = stop_server(process, log_path)
    assert "open files: at most 4096 (the soft limit was 256)" in log
    assert [line for line in limits.splitlines() if line.startswith("Max open files")] == [
        "Max open files            4096                 4096                 files     "
    ]


async def test_running_out_of_descriptors_is_logged_once_and_the_server_recovers(tmp_path):
    port, log_path = free_port(), tmp_path / "server.log"
    process = start_server(
        ["--port", str(port), "--request-timeout", "30"], log_path, limited_to(64, 64)
    )
    held: list[socket.socket] = []
    try:
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{port}"
            await wait_until_serving(base, session)
            # More connections than the server has descriptors: it cannot accept them all.
            for _ in range(120):
                held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            await asyncio.sleep(3)  # asyncio retries accept() every second meanwhile
            for sock in held:
                sock.close()
            held.clear()
            deadline = time.monotonic() + 15
            while True:  # served again once the descriptors are free
                try:
                    async with session.get(f"{base}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
    finally:
        for sock in held:
            sock.close()
        log = stop_server(process, log_path)
    assert log.count("cannot accept connections") == 1, log[-2000:]
    assert "out of system resource" not in log

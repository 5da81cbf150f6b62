"""SIGTERM or Ctrl-C: streams in flight are told, the model is released, the process exits."""

import asyncio
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp

from tests.snippet import uid_from_snippet
from tests.sse_client import parse_stream

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_until_serving(base: str, session: aiohttp.ClientSession) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{base}/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.1)
    raise AssertionError("the server did not start")


async def test_sigterm_tells_streams_the_server_is_restarting_and_exits():
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = await asyncio.create_subprocess_exec(
        sys.executable, "server.py", "--port", str(port), "--demo-delay", "0.05",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session:
            await wait_until_serving(base, session)
            response = await session.post(f"{base}/process_prompt", data={"prompt": "hi"})
            uid = uid_from_snippet(await response.text())
            stream = await session.get(f"{base}/response-stream", params={"uid": uid})
            await stream.content.readuntil(b"event: thought")  # it is under way

            stopping = time.monotonic()
            server.send_signal(signal.SIGTERM)
            rest = await asyncio.wait_for(stream.text(), timeout=10)
            events, _ = parse_stream(rest)
            exit_code = await asyncio.wait_for(server.wait(), timeout=10)
            took = time.monotonic() - stopping
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
    output = (await server.stdout.read()).decode()

    assert [e.event for e in events[-2:]] == ["error", "close"]
    assert "The server is restarting" in events[-2].data
    assert exit_code == 0
    assert took < 5, f"shutdown took {took:.1f} s"
    assert "outcome=restarting" in output

"""At start, `python server.py` asks the model server once and logs what it found:
a warning when something is off, never a refusal to start."""

from __future__ import annotations

import aiohttp
import pytest

from tests.fake_upstream import error_body
from tests.server_process import start_server, stop_server
from tests.test_shutdown import free_port, wait_until_serving

LISTING = b'{"object": "list", "data": [{"id": "qwen3"}, {"id": "llama3.2"}]}'


@pytest.mark.parametrize(
    ("model", "reply", "logged"),
    [("qwen3", {"body": LISTING}, "INFO model server: the model server is up; it answers with "
                                  "qwen3"),
     ("", {"body": LISTING}, "INFO model server: the model server offers 2 models, one per "
                             "conversation: qwen3, llama3.2"),
     ("gpt-9", {"body": LISTING}, "WARNING model server: the model server does not list 'gpt-9'"),
     ("m", {"body": error_body("nope"), "status": 401}, "WARNING model server: No model is set, "
                                                        "and asking for one failed.")],
    ids=["found", "several", "not-listed", "refused"],
)  # fmt: skip
async def test_the_model_server_is_checked_once_at_start(fake_upstream, tmp_path, model, reply,
                                                         logged):  # fmt: skip
    fake_upstream.reply(content_type="application/json", **reply)
    port, log_path = free_port(), tmp_path / "server.log"
    args = ["--port", str(port), "--base-url", fake_upstream.base_url, "--model", model]
    process = start_server(args, log_path)
    try:
        async with aiohttp.ClientSession() as session:
            await wait_until_serving(f"http://127.0.0.1:{port}", session)  # it started anyway
    finally:
        log = stop_server(process, log_path)
    assert logged in log
    assert [request.path for request in fake_upstream.requests] == ["/v1/models"]


async def test_an_unreachable_model_server_is_a_warning_not_a_refusal(tmp_path):
    port, log_path = free_port(), tmp_path / "server.log"
    unreachable = f"http://127.0.0.1:{free_port()}/v1"
    process = start_server(["--port", str(port), "--base-url", unreachable], log_path)
    try:
        async with aiohttp.ClientSession() as session:
            await wait_until_serving(f"http://127.0.0.1:{port}", session)
    finally:
        log = stop_server(process, log_path)
    assert "WARNING model server: could not reach the model server at 127.0.0.1:" in log

"""`python server.py` as a real process, with its log in a file (never a pipe: a
flood of log lines would fill the pipe and block the server)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_server(
    args: list[str], log: Path, before: Callable[[], None] | None = None
) -> subprocess.Popen[bytes]:
    """Start the app with ``args``; ``before`` runs in the child before Python starts."""
    with log.open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "server.py", *args], cwd=ROOT, stderr=log_file, preexec_fn=before
        )


def stop_server(process: subprocess.Popen[bytes], log: Path) -> str:
    """Stop it as systemd would (SIGTERM); its log."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return log.read_text()

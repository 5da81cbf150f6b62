"""Several worker processes on one machine: ``python server.py --workers N``.

gunicorn is the process manager: it binds the port once, forks N workers that
accept from it in turn, restarts one that dies, and passes SIGTERM and SIGHUP
on. Each worker runs the whole app (aiohttp's ``GunicornWebWorker``) with its
streams and conversations in the shared Redis store (redis_store.py), so any
worker serves any request.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

from aiohttp import web
from gunicorn.app.base import BaseApplication

from server import (
    GC_THRESHOLDS,
    SHUTDOWN_TIMEOUT_S,
    AccessLogger,
    Config,
    check_model_server,
    make_app,
)


class Workers(BaseApplication):
    """gunicorn, configured from our Config instead of its command line."""

    def __init__(self, config: Config) -> None:
        self.config = config
        super().__init__()

    def load_config(self) -> None:
        config = self.config
        host = f"[{config.host}]" if ":" in config.host else config.host
        for name, value in {
            "bind": f"{host}:{config.port}",
            "workers": config.workers,
            "worker_class": "aiohttp.GunicornWebWorker",
            # A worker stopped (SIGTERM) gets this long to tell its browsers, and
            # gunicorn's arbiter waits for it a little longer before a SIGKILL.
            "graceful_timeout": int(SHUTDOWN_TIMEOUT_S) + 1,
            # Each worker writes its own access log lines (AccessLogger).
            "accesslog": None,
            "proc_name": "htmx-sse",
            # gunicorn's control socket (gunicornc) is off: one fixed path in the home
            # directory would clash between two apps, and nothing here needs it.
            "control_socket_disable": True,
        }.items():
            self.cfg.set(name, value if value is None or isinstance(value, bool) else str(value))

    def load(self) -> Any:
        return self.worker_runner

    async def worker_runner(self) -> web.AppRunner:
        """Run in each worker, after the fork: its own app, on its own event loop."""
        app = make_app(self.config)
        app.on_startup.append(check_model_server)  # each worker says what it found
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        return web.AppRunner(
            app,
            # A browser that leaves has its handler cancelled at once, as with one process.
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            access_log_class=AccessLogger,
            access_log=logging.getLogger("aiohttp.access"),
        )


def run_workers(config: Config) -> None:
    Workers(config).run()

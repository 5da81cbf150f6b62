"""A loopback relay that drops every connection through it when you press Enter.

For step 7 of docs/workshop.md: the browser's network offline mode in
Chromium's developer tools fails new requests but leaves an event stream that
is already open alone, so it cannot show a reconnect. This relay can. Open
the app through it, press Enter while an answer streams, and the browser sees
its connection drop, as on a train going into a tunnel:

    python server.py                      # the app, on port 8080
    python docs/workshop/cut.py           # relays 127.0.0.1:8081 to 127.0.0.1:8080

Then open http://127.0.0.1:8081 instead of port 8080. With ``--down 3`` the
relay also refuses new connections for 3 seconds after each cut, like a
network that takes a while to come back. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
import time

CHUNK = 64 * 1024


class Relay:
    """Relays each connection to the app's port, and can drop them all (``cut``)."""

    def __init__(self, target_port: int, down: float) -> None:
        self.target_port = target_port
        self.down = down
        self.down_until = 0.0
        self.open: set[asyncio.StreamWriter] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One browser connection, relayed to the app until either side closes it."""
        if time.monotonic() < self.down_until:
            writer.transport.abort()  # the network is "down": refused
            return
        try:
            app_reader, app_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.open.update((writer, app_writer))
        try:
            await asyncio.gather(pump(reader, app_writer), pump(app_reader, writer))
        finally:
            for each in (writer, app_writer):
                self.open.discard(each)
                each.transport.abort()

    def cut(self) -> None:
        """Drop every open connection at once, as a lost network would."""
        count = len(self.open) // 2
        for writer in list(self.open):
            writer.transport.abort()
        self.open.clear()
        self.down_until = time.monotonic() + self.down
        down = f"; new connections refused for {self.down:g} s" if self.down else ""
        print(f"cut {count} connection(s){down}", flush=True)


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy bytes one way, as they come, until the reading side ends."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.transport.abort()


def watch_enter(loop: asyncio.AbstractEventLoop, relay: Relay) -> None:
    """Each Enter cuts (a thread of its own: reading a terminal would block the relay)."""
    for _ in sys.stdin:
        loop.call_soon_threadsafe(relay.cut)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=int, default=8081, help="port to listen on (8081)")
    parser.add_argument("--to", type=int, default=8080, help="the app's port (8080)")
    parser.add_argument(
        "--down", type=float, default=0.0, help="seconds to refuse connections after a cut (0)"
    )
    return parser


async def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    relay = Relay(args.to, args.down)
    server = await asyncio.start_server(relay.serve, "127.0.0.1", args.listen)
    print(
        f"open http://127.0.0.1:{args.listen} (relayed to port {args.to}); "
        "press Enter to cut every connection",
        flush=True,
    )
    loop = asyncio.get_running_loop()
    threading.Thread(target=watch_enter, args=(loop, relay), daemon=True).start()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: stop quietly
        asyncio.run(main())

"""Soak test: thousands of prompts in conversations, browsers that leave at random,
and a server that must end with nothing left over and memory flat.

    python bench/soak.py [--prompts 2000] [--concurrency 50] [--seed 1] [--max-conversations 100]

It starts ``server.py`` on a free loopback port (demo provider, a short pause
per word, a short grace period and TTL), then sends the prompts through
``soak()`` in tests/soak.py, which also runs, smaller, in the test suite. Each
conversation has a few turns; its last is read whole, resumed after a cut,
left mid-stream or never opened (tests/soak.py says what each must give). The
server keeps at most ``--max-conversations``, reached early in the run, so its
memory must stay flat after that. At the end /healthz must show zero streams,
listeners and pending uids, and the server's resident memory is printed after
the warm-up, halfway, and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.soak import GRACE_S, TURNS, UID_TTL_S, soak  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    # Above --concurrency (a conversation between two turns is not forgotten), and
    # reached before the first memory figure, a fifth into the run.
    parser.add_argument("--max-conversations", type=int, default=100)
    args = parser.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "server.py"), "--port", str(port),
        "--demo-delay", "0.002", "--grace-period", str(GRACE_S), "--uid-ttl", str(UID_TTL_S),
        "--max-streams", "100000", "--max-streams-per-client", "99999",
        "--prompts-per-minute", "1000000", "--max-pending", "100000",
        "--max-pending-per-client", "99999", "--max-requests-per-client", "100000",
        "--max-conversations", str(args.max_conversations),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):  # up to 10 s for the server to start
                try:
                    async with session.get(f"{base}/healthz"):
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
        report = await soak(base, args.prompts, args.concurrency, args.seed, pid=server.pid)
    finally:
        server.terminate()
        await server.wait()

    print(
        f"{args.prompts} prompts in conversations of {TURNS}, {args.concurrency} at a time, "
        f"in {report.seconds:.1f} s; at most {args.max_conversations} conversations kept"
    )
    print("fates:", ", ".join(f"{fate} {count}" for fate, count in sorted(report.fates.items())))
    print(f"exact answers: {report.exact} of {report.fates['read'] + report.fates['resume']}")
    print("healthz at the end:", report.health)
    for moment, kb in report.memory_kb:
        print(f"server memory {moment}: {kb / 1024:.1f} MiB")
    for problem in report.wrong[:10]:
        print("WRONG:", problem)
    print("clean" if report.clean else "NOT CLEAN")
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

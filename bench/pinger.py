"""A concurrent application client: PING over one raw socket every INTERVAL ms, recording round trips.

    python -m bench.pinger PORT INTERVAL_MS MAX_SECONDS

Prints ``ready`` once connected, then pings until its standard input closes (or MAX_SECONDS pass),
and prints its statistics as JSON. No redis-py: the round trip measured is Redis plus the socket.
It raises its own CPU priority when it may (root), so that on a busy machine the figures show how
long Redis made it wait rather than how long the scheduler did.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import socket
import sys
import time


def main() -> None:
    port, interval_ms, max_s = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    with contextlib.suppress(OSError):
        os.nice(-10)
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    samples: list[float] = []

    def ping() -> float:
        t0 = time.perf_counter()
        sock.sendall(b"PING\r\n")
        buf = b""
        while not buf.endswith(b"\r\n"):
            chunk = sock.recv(64)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            buf += chunk
        return (time.perf_counter() - t0) * 1000

    ping()
    print("ready", flush=True)
    deadline = time.monotonic() + max_s
    interval = interval_ms / 1000
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([sys.stdin], [], [], interval)
            if ready:
                break  # EOF (or anything) on stdin: the bench is done with us
            samples.append(ping())
    except (KeyboardInterrupt, ConnectionError, OSError):
        pass
    samples.sort()

    def q(p: float) -> float:
        return round(samples[max(1, math.ceil(p * len(samples))) - 1], 3) if samples else 0.0

    print(
        json.dumps(
            {
                "count": len(samples),
                "p50_ms": q(0.5),
                "p99_ms": q(0.99),
                "max_ms": round(samples[-1], 3) if samples else 0.0,
                "over_10ms": sum(1 for s in samples if s > 10),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()

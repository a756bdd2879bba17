"""Shared plumbing for the benchmarks: child processes that always die with us, throwaway Redis
servers, a concurrent PING prober, statistics and the results table.

Every process a benchmark starts is registered here and stopped in ``finally`` blocks, at exit, on
SIGTERM and on Ctrl-C. Children run in their own session (process group), so Ctrl-C reaches only the
bench, which then stops them in order; a shell pipeline is stopped as a whole group.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import redis

from bot import localstack

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent

_children: list[subprocess.Popen[Any]] = []


def spawn(args: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
    """Start a child in its own process group and remember it for cleanup."""
    proc: subprocess.Popen[Any] = subprocess.Popen(list(args), start_new_session=True, cwd=ROOT, **kw)
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM the child's process group (by its id), then SIGKILL if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ValueError):
        _children.remove(proc)


def stop_all() -> None:
    for proc in list(reversed(_children)):
        stop(proc, timeout=5.0)


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, _on_sigterm)


free_port = localstack.free_port


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------------- redis


class RedisProc:
    """A throwaway redis-server on a free loopback port, no persistence, DEBUG allowed locally."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        # The bot's own process harness: readiness, process group, cleanup at exit.
        self.server = localstack.RedisServer(
            workdir,
            [
                "--enable-debug-command",
                "local",
                "--slowlog-log-slower-than",
                "1000",
                "--slowlog-max-len",
                "10000",
                *extra,
            ],
        )
        self.server.start()
        self.port = self.server.port
        self.workdir = workdir
        self.url = self.server.redis_url
        self.logfile = self.server.log_path
        self.client = redis.Redis(port=self.port, socket_timeout=600)

    def close(self) -> None:
        self.client.close()
        self.server.stop()

    def __enter__(self) -> RedisProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def version(self) -> str:
        return str(self.client.info("server")["redis_version"])

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def cpu_s(self) -> float:
        """CPU seconds Redis' main thread has used (INFO cpu): the single thread every command waits
        for, so the difference over a run is the work that run made Redis do."""
        info = self.client.info("cpu")
        return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])

    def slowest_ms(self) -> float:
        """The slowest command Redis itself logged since the last reset (SLOWLOG, >= 1 ms), in ms."""
        entries = self.client.slowlog_get(10000)
        return max((e["duration"] / 1000 for e in entries), default=0.0)

    def slowest_command(self) -> str:
        entries = self.client.slowlog_get(10000)
        if not entries:
            return ""
        e = max(entries, key=lambda e: e["duration"])
        cmd = e["command"]
        text = cmd.decode(errors="replace") if isinstance(cmd, bytes) else str(cmd)
        return text[:40]


@contextlib.contextmanager
def tempdir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{prefix}-") as d:
        yield Path(d)


# ------------------------------------------------------------------------------------------- pinger


@dataclass
class PingStats:
    count: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    over_10ms: int = 0


class Pinger:
    """A separate process PINGing Redis every millisecond or so, as an application client would."""

    def __init__(self, port: int, interval_ms: float = 1.0, max_s: float = 900.0) -> None:
        self.proc = spawn(
            [PY, "-m", "bench.pinger", str(port), str(interval_ms), str(max_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            stop(self.proc)
            raise RuntimeError(f"pinger did not start: {line!r}")
        self.stats = PingStats()

    def finish(self) -> PingStats:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        out = self.proc.stdout.read()
        self.proc.wait(30)
        stop(self.proc)
        self.stats = PingStats(**json.loads(out))
        return self.stats

    def __enter__(self) -> Pinger:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            if exc[0] is None:
                self.finish()
            else:
                stop(self.proc)


# ----------------------------------------------------------------------------------------- numbers


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (a value that occurred)."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[max(1, math.ceil(q * len(s))) - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def fmt_s(v: float) -> str:
    return f"{v:.2f} s" if v >= 0.1 else f"{v * 1000:.0f} ms"


def fmt_ms(v: float) -> str:
    return f"{v:.1f} ms" if v < 100 else f"{v:.0f} ms"


def fmt_mb(kb: float) -> str:
    return f"{kb / 1024:.0f} MiB"


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB: current and peak resident memory."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                fields[name] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


# ------------------------------------------------------------------------------------------ results


@dataclass
class Row:
    """One line of the results table."""

    bench: str
    metric: str
    bot: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, *args: Any, **kw: Any) -> None:
        row = Row(*args, **kw)
        self.rows.append(row)
        log(f"{row.bench}: {row.metric}: bot {row.bot} | baseline {row.baseline} | {row.ratio} {row.target}")

    def add_ping(self, bench: str, bot: Sequence[Any], baseline: Sequence[Any]) -> None:
        """The two PING rows every Redis benchmark reports: worst max (target < 10 ms), median p99.
        ``bot``/``baseline`` are runs with a ``ping`` attribute (max_ms, p99_ms)."""
        worst_bot = max(r.ping.max_ms for r in bot)
        self.add(
            bench,
            "concurrent PING max (worst run)",
            fmt_ms(worst_bot),
            fmt_ms(max(r.ping.max_ms for r in baseline)),
            "",
            "< 10 ms",
            worst_bot < 10,
        )
        self.add(
            bench,
            "concurrent PING p99 (median)",
            fmt_ms(median([r.ping.p99_ms for r in bot])),
            fmt_ms(median([r.ping.p99_ms for r in baseline])),
        )

    def table(self, markdown: bool = False) -> str:
        head = ["benchmark", "metric", "bot", "baseline", "ratio", "target", "met"]
        body = [
            [
                r.bench,
                r.metric,
                r.bot,
                r.baseline,
                r.ratio,
                r.target,
                "" if r.met is None else ("yes" if r.met else "NO"),
            ]
            for r in self.rows
        ]
        if markdown:
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
            return "\n".join(lines)
        widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
        out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
        out.append("  ".join("-" * w for w in widths))
        out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in body]
        return "\n".join(out)

    def notes(self) -> list[str]:
        return [f"{r.bench} / {r.metric}: {r.note}" for r in self.rows if r.note]


def machine() -> dict[str, str]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) // 1024 // 1024 + 1} GiB"
    import aiohttp
    import redis as redis_py

    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False).stdout
    return {
        "cpu": f"{cpu} x{os.cpu_count()}",
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis-server": out.split()[2].removeprefix("v=") if out else "?",
        "redis-py": redis_py.__version__,
        "aiohttp": aiohttp.__version__,
        "sqlite": __import__("sqlite3").sqlite_version,
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def dump_json(path: Path, data: Any, stream: IO[str] | None = None) -> None:
    path.write_text(json.dumps(data, indent=2, default=str))

"""Where the time goes: PING round trips, SLOWLOG, LATENCY and CPU, and a bounded MONITOR sample."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import redis.asyncio as aioredis
from redis import exceptions as rex

from bot.redisops.clients import client_names
from bot.redisops.common import (
    call,
    config_dict,
    int_or_none,
    iso_time,
    optional,
    prefix_label,
    prefix_of,
    text_of,
)

# Commands worth flagging when seen in live traffic: they block the server on large key spaces.
DANGEROUS_COMMANDS = frozenset({"KEYS", "FLUSHALL", "FLUSHDB"})

# Used when COMMAND is refused: commands whose first argument is not a key.
_KEYLESS_COMMANDS = frozenset(
    {
        "PING", "ECHO", "INFO", "SELECT", "MULTI", "EXEC", "DISCARD", "AUTH", "HELLO", "CLIENT", "CONFIG",
        "SCRIPT", "EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO", "FUNCTION", "PUBLISH",
        "SUBSCRIBE", "PSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SCAN", "DBSIZE", "TIME", "COMMAND", "QUIT",
        "FLUSHDB", "FLUSHALL", "KEYS", "RANDOMKEY", "WAIT", "SLOWLOG", "LATENCY", "MEMORY", "OBJECT",
        "CLUSTER", "READONLY", "READWRITE", "ROLE", "LASTSAVE", "XREAD", "XREADGROUP", "ACL", "RESET",
    }
)  # fmt: skip


# --------------------------------------------------------------------------------------------- ping


@dataclass
class PingStats:
    """Round trips of PING from the bot, in milliseconds (the network plus Redis' own delay)."""

    count: int
    min_ms: float
    avg_ms: float
    max_ms: float
    samples_ms: list[float]


async def ping_latency(client: aioredis.Redis, count: int = 3) -> PingStats:
    """PING ``count`` times after one untimed PING, so connection setup is not counted as latency."""
    await call(client, "PING")
    samples: list[float] = []
    for _ in range(count):
        start = time.perf_counter()
        await call(client, "PING")
        samples.append(round((time.perf_counter() - start) * 1000, 3))
    return PingStats(
        count=count,
        min_ms=min(samples),
        avg_ms=round(sum(samples) / len(samples), 3),
        max_ms=max(samples),
        samples_ms=samples,
    )


# ------------------------------------------------------------------------------------------ slowlog


@dataclass
class SlowlogEntry:
    """One SLOWLOG entry; arguments are shortened for display (the log itself truncates too)."""

    id: int
    time: str
    timestamp: int
    duration_ms: float
    command: str
    args: list[str]
    client_addr: str
    client_name: str
    node: str = ""
    """The cluster primary that logged it (empty on a single node)."""


@dataclass
class SlowlogReport:
    entries: list[SlowlogEntry]
    length: int | None
    log_slower_than_us: int | None
    max_len: int | None
    unavailable: dict[str, str] = field(default_factory=dict)


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marking the cut with its original length."""
    if len(text) <= limit:
        return text
    return f"{text[: max(limit - 12, 1)]}...({len(text)} ch)"


def format_command(args: Iterable[str], *, max_args: int = 8, max_arg_len: int = 40) -> str:
    """A readable one-line command: name upper-cased, long values and long argument lists cut."""
    items = list(args)
    if not items:
        return ""
    shown = [items[0].upper(), *(shorten(a, max_arg_len) for a in items[1:max_args])]
    if len(items) > max_args:
        shown.append(f"... (+{len(items) - max_args} args)")
    return " ".join(shown)


async def slowlog(client: aioredis.Redis, n: int = 10) -> SlowlogReport:
    """SLOWLOG GET ``n`` and SLOWLOG LEN, plus the logging threshold when CONFIG is allowed."""
    unavailable: dict[str, str] = {}
    raw = await call(client, "SLOWLOG", "GET", n)
    entries: list[SlowlogEntry] = []
    for item in raw:
        # Redis Enterprise puts a complexity figure before the arguments.
        offset = 1 if not isinstance(item[3], list) else 0
        args = [shorten(text_of(a), 120) for a in item[3 + offset]]
        rest = item[4 + offset :]
        entries.append(
            SlowlogEntry(
                id=int(item[0]),
                time=iso_time(int(item[1])),
                timestamp=int(item[1]),
                duration_ms=round(int(item[2]) / 1000, 3),
                command=format_command(args),
                args=args,
                client_addr=text_of(rest[0]) if len(rest) > 0 else "",
                client_name=text_of(rest[1]) if len(rest) > 1 else "",
            )
        )
    length = await optional(call(client, "SLOWLOG", "LEN"), "SLOWLOG LEN", unavailable)
    config = await optional(call(client, "CONFIG", "GET", "slowlog-*"), "CONFIG GET", unavailable)
    settings = config_dict(config)
    return SlowlogReport(
        entries=entries,
        length=int(length) if length is not None else None,
        log_slower_than_us=int_or_none(settings.get("slowlog-log-slower-than")),
        max_len=int_or_none(settings.get("slowlog-max-len")),
        unavailable=unavailable,
    )


def merge_slowlogs(reports: list[tuple[str, SlowlogReport]]) -> SlowlogReport:
    """Every primary's slow log as one, newest first (slowest first within a second), each entry
    naming its node; lengths added up, the logging threshold the lowest any node uses."""
    entries = [replace(e, node=addr) for addr, r in reports for e in r.entries]
    entries.sort(key=lambda e: (-e.timestamp, -e.duration_ms, e.node, -e.id))
    lengths = [r.length for _, r in reports]
    thresholds = [r.log_slower_than_us for _, r in reports if r.log_slower_than_us is not None]
    return SlowlogReport(
        entries=entries,
        length=None if any(n is None for n in lengths) else sum(n or 0 for n in lengths),
        log_slower_than_us=min(thresholds, default=None),
        max_len=reports[0][1].max_len,
        unavailable={f"{k} on {a}": v for a, r in reports for k, v in r.unavailable.items()},
    )


# ------------------------------------------------------------------------------------------ latency


@dataclass
class LatencyEvent:
    """A LATENCY LATEST row: the server's own record of a slow event (e.g. ``command``, ``fork``)."""

    event: str
    time: str
    timestamp: int
    latest_ms: int
    max_ms: int


@dataclass
class LatencyReport:
    ping: PingStats
    events: list[LatencyEvent] | None
    monitor_threshold_ms: int | None
    cpu_percent: float | None
    cpu_interval_s: float
    ops_per_sec: int | None
    unavailable: dict[str, str] = field(default_factory=dict)


async def latency_report(client: aioredis.Redis, *, interval: float = 1.0, pings: int = 5) -> LatencyReport:
    """The runbook's three latency checks: slow server events, network round trip, and CPU.

    CPU is the change of used_cpu_sys + used_cpu_user over ``interval`` seconds of wall time, as a
    percentage of one core (Redis executes commands on one thread, so near 100% means saturated).
    """
    unavailable: dict[str, str] = {}
    ping = await ping_latency(client, pings)
    raw_events = await optional(call(client, "LATENCY", "LATEST"), "LATENCY LATEST", unavailable)
    events = None
    if raw_events is not None:
        events = [
            LatencyEvent(
                event=text_of(e[0]),
                time=iso_time(int(e[1])),
                timestamp=int(e[1]),
                latest_ms=int(e[2]),
                max_ms=int(e[3]),
            )
            for e in raw_events
        ]
    config = await optional(
        call(client, "CONFIG", "GET", "latency-monitor-threshold"), "CONFIG GET", unavailable
    )
    threshold = int_or_none(config_dict(config).get("latency-monitor-threshold"))
    before = await client.info("cpu")
    t0 = time.monotonic()
    await asyncio.sleep(interval)
    after = await client.info("cpu")
    wall = time.monotonic() - t0
    used = (after["used_cpu_sys"] + after["used_cpu_user"]) - (
        before["used_cpu_sys"] + before["used_cpu_user"]
    )
    stats = await client.info("stats")
    return LatencyReport(
        ping=ping,
        events=events,
        monitor_threshold_ms=threshold,
        cpu_percent=round(100 * used / wall, 1) if wall > 0 else None,
        cpu_interval_s=round(wall, 3),
        ops_per_sec=int_or_none(str(stats.get("instantaneous_ops_per_sec"))),
        unavailable=unavailable,
    )


# ------------------------------------------------------------------------------------------ monitor


@dataclass
class MonitorClient:
    addr: str
    name: str | None
    commands: int


@dataclass
class MonitorReport:
    """What MONITOR saw in a bounded window: busiest commands, key prefixes and clients."""

    seconds: float
    commands: int
    capped: bool
    rate_per_sec: float
    top_commands: dict[str, int]
    top_prefixes: dict[str, int]
    top_clients: list[MonitorClient]
    dangerous: dict[str, int]
    key_positions: str
    unavailable: dict[str, str] = field(default_factory=dict)


def _quoted_arg(args: bytes, index: int) -> bytes | None:
    """The ``index``-th ``"quoted"`` token of a MONITOR line (escapes kept, as MONITOR shows them)."""
    pos = 0
    size = len(args)
    for i in range(index + 1):
        if pos >= size or args[pos] != 0x22:
            return None
        end = pos + 1
        while True:
            end = args.find(b'"', end)
            if end < 0:
                return None
            backslashes = 0
            k = end - 1
            while args[k] == 0x5C:
                backslashes += 1
                k -= 1
            if backslashes % 2 == 0:
                break
            end += 1
        if i == index:
            return args[pos + 1 : end]
        pos = end + 2
    return None


async def _key_positions(client: aioredis.Redis, unavailable: dict[str, str]) -> dict[bytes, int] | None:
    """Command name -> position of its first key, from COMMAND (None when COMMAND is refused)."""
    table = await optional(client.command(), "COMMAND", unavailable)
    if table is None:
        return None
    positions: dict[bytes, int] = {}
    for name, spec in table.items():
        first = spec.get("first_key_pos")
        if isinstance(first, int) and first > 0:
            positions[text_of(name).upper().encode()] = first
    return positions


async def monitor_sample(
    client: aioredis.Redis,
    *,
    seconds: float = 3.0,
    max_commands: int = 100_000,
    separator: bytes = b":",
    depth: int = 1,
    top: int = 10,
) -> MonitorReport:
    """Run MONITOR for at most ``seconds`` and ``max_commands`` lines on a connection of its own.

    The connection is never shared with other steps and is closed on every way out (end of the
    window, error, cancellation), so the server never keeps streaming to a forgotten monitor.
    Prefixes count the first key of each command.
    """
    unavailable: dict[str, str] = {}
    positions = await _key_positions(client, unavailable)
    commands: Counter[bytes] = Counter()
    prefix_counts: Counter[bytes] = Counter()
    clients: Counter[bytes] = Counter()
    seen = 0
    loop = asyncio.get_running_loop()
    conn = client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
    try:
        await conn.connect()
        await conn.send_command("MONITOR")
        reply = await conn.read_response()
        if reply not in (b"OK", "OK", True):
            raise rex.ResponseError(f"MONITOR answered {reply!r}")
        started = loop.time()
        deadline = started + seconds
        while seen < max_commands:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                line = await conn.read_response(disable_decoding=True, timeout=remaining)
            except rex.TimeoutError:
                break
            if not isinstance(line, bytes):
                continue
            seen += 1
            open_at = line.find(b" [")
            close_at = line.find(b"] ", open_at)
            if open_at < 0 or close_at < 0:
                continue
            clients[line[line.find(b" ", open_at + 2) + 1 : close_at]] += 1
            args = line[close_at + 2 :]
            name_end = args.find(b'"', 1)
            name = args[1:name_end].upper()
            commands[name] += 1
            if positions is not None:
                position = positions.get(name, 0)
            else:
                position = 0 if name.decode("ascii", "replace") in _KEYLESS_COMMANDS else 1
            if position:
                key = _quoted_arg(args, position)
                if key is not None:
                    prefix_counts[prefix_of(key, separator, depth)] += 1
        elapsed = loop.time() - started
    finally:
        await conn.disconnect(nowait=True)
    names = await client_names(client, unavailable)
    return MonitorReport(
        seconds=round(elapsed, 3),
        commands=seen,
        capped=seen >= max_commands,
        rate_per_sec=round(seen / elapsed, 1) if elapsed > 0 else 0.0,
        top_commands={text_of(k): v for k, v in commands.most_common(top)},
        top_prefixes={prefix_label(p)[0]: v for p, v in prefix_counts.most_common(top)},
        top_clients=[
            MonitorClient(addr=text_of(a), name=names.get(text_of(a)), commands=v)
            for a, v in clients.most_common(top)
        ],
        dangerous={text_of(k): v for k, v in commands.items() if text_of(k) in DANGEROUS_COMMANDS},
        key_positions="COMMAND" if positions is not None else "first argument (COMMAND refused)",
        unavailable=unavailable,
    )

"""Read-only Redis diagnostics: the runbook's ``redis-cli`` checks as registered steps.

Each step is a thin wrapper around :mod:`bot.redisops`: it validates parameters, calls the
algorithm inside :func:`bot.redisconn.redis_errors` (so a dead or refusing Redis becomes a clear
step error), and turns the typed result into a one-line summary for a phone screen, JSON data for
the audit trail, and an optional plain-text table. Nothing here writes to Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import Field

from bot import redisops
from bot.redisconn import redis_errors
from bot.steps.registry import StepContext, StepOutput, StepParams, step

MEMORY_WARN_RATIO = 0.8
HIT_RATIO_WARN = 0.5
CLIENTS_WARN_RATIO = 0.8


def human_bytes(n: float) -> str:
    """Bytes in binary units with one decimal (``512 B``, ``1.5 KiB``, ``2.0 GiB``)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def pct(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio * 100:.1f}%"


def human_duration(seconds: float) -> str:
    """A rough age (``45 s``, ``12 min``, ``3 h``, ``4 d``): precise enough for a 3 a.m. reader."""
    s = max(0.0, seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.0f} h"
    return f"{s / 86400:.0f} d"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width table: the first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _ago(timestamp: float) -> str:
    return f"{human_duration(time.time() - timestamp)} ago"


def _unavailable_note(unavailable: Mapping[str, str]) -> str:
    return f" ({', '.join(unavailable)} not allowed)" if unavailable else ""


def _unavailable_details(unavailable: Mapping[str, str]) -> str:
    return "\n".join(f"unavailable: {reason}" for reason in unavailable.values())


def _join_details(*blocks: str) -> str:
    return "\n\n".join(b for b in blocks if b)


# --------------------------------------------------------------------------------------------- ping


class PingParams(StepParams):
    count: int = Field(3, ge=1, le=100)
    threshold_ms: float = Field(10.0, gt=0, le=60_000)


@step("redis.ping", params=PingParams)
async def ping(ctx: StepContext, p: PingParams) -> StepOutput:
    """Check Redis answers PING and how fast (round trip from the bot, min/avg/max over a few pings).

    The runbook's health check (``redis-cli PING``); a round trip above ``threshold_ms`` is a warning.
    """
    async with redis_errors(ctx.target.name):
        stats = await redisops.ping_latency(ctx.target.client, p.count)
    slow = stats.max_ms >= p.threshold_ms
    summary = (
        f"PONG from {ctx.target.name} in {stats.avg_ms:.2f} ms avg "
        f"(min {stats.min_ms:.2f}, max {stats.max_ms:.2f}, {stats.count} pings)"
    )
    if slow:
        summary = f"slow PING: {summary}, threshold {p.threshold_ms:g} ms"
    return StepOutput(summary=summary, data=redisops.to_jsonable(stats), status="warning" if slow else "ok")


# --------------------------------------------------------------------------------------------- info


class InfoParams(StepParams):
    section: str = Field("memory", pattern=r"^[A-Za-z_]+$", max_length=32)


Summary = tuple[str, bool]


def _memory_summary(info: Mapping[str, Any]) -> Summary:
    m = redisops.memory_figures(info)
    frag = f"frag {m.fragmentation_ratio:.2f}" if m.fragmentation_ratio is not None else "frag n/a"
    policy = f"policy {m.policy}" if m.policy else "policy n/a"
    if m.ratio is None:
        return f"memory {m.used_memory_human} used, no maxmemory limit, {frag}, {policy}", False
    maxmem = info.get("maxmemory_human") or human_bytes(m.maxmemory)
    text = f"memory {m.used_memory_human} of {maxmem} maxmemory ({pct(m.ratio)}), {frag}, {policy}"
    if m.ratio >= MEMORY_WARN_RATIO:
        return f"memory high: {text}", True
    return text, False


def _stats_summary(info: Mapping[str, Any]) -> Summary:
    s = redisops.hit_stats(info)
    low = s.ratio is not None and s.ratio < HIT_RATIO_WARN
    text = (
        f"hit ratio {pct(s.ratio)} ({s.hits} hits / {s.misses} misses), {s.evicted_keys} evicted, "
        f"{s.expired_keys} expired, {s.rejected_connections} rejected connections, {s.ops_per_sec} ops/s"
    )
    if low:
        text = f"low {text}"
    return text, low or s.rejected_connections > 0


def _clients_summary(info: Mapping[str, Any]) -> Summary:
    connected = int(info.get("connected_clients", 0))
    blocked = int(info.get("blocked_clients", 0))
    maxclients = info.get("maxclients")
    text = f"{connected} clients connected ({blocked} blocked)"
    if isinstance(maxclients, int) and maxclients > 0:
        text += f" of maxclients {maxclients}"
        if connected >= CLIENTS_WARN_RATIO * maxclients:
            return f"clients near the limit: {text}", True
    return text, False


def _replication_summary(info: Mapping[str, Any]) -> Summary:
    role = str(info.get("role", "?"))
    if role == "master":
        return f"role master, {info.get('connected_slaves', 0)} replicas connected", False
    link = str(info.get("master_link_status", "?"))
    text = f"role replica of {info.get('master_host', '?')}:{info.get('master_port', '?')}, link {link}"
    io = info.get("master_last_io_seconds_ago")
    if isinstance(io, int) and io >= 0:
        text += f", last I/O {io} s ago"
    return text, link != "up"


def _persistence_summary(info: Mapping[str, Any]) -> Summary:
    status = str(info.get("rdb_last_bgsave_status", "?"))
    last = info.get("rdb_last_save_time")
    age = f"{human_duration(time.time() - last)} ago" if isinstance(last, int) else "at an unknown time"
    changes = info.get("rdb_changes_since_last_save", "?")
    text = f"last RDB save {age}, last bgsave {status}, {changes} changes since"
    if info.get("rdb_bgsave_in_progress"):
        text += ", bgsave running"
    bad = status != "ok"
    if info.get("aof_enabled"):
        aof = str(info.get("aof_last_write_status", "?"))
        text += f"; AOF on, last write {aof}"
        bad = bad or aof != "ok"
    else:
        text += "; AOF off"
    return (f"persistence problem: {text}" if bad else text), bad


def _server_summary(info: Mapping[str, Any]) -> Summary:
    uptime = info.get("uptime_in_seconds")
    up = f", up {human_duration(uptime)}" if isinstance(uptime, int) else ""
    mode = info.get("redis_mode", "")
    return f"Redis {info.get('redis_version', '?')} {mode}{up}", False


def _keyspace_summary(info: Mapping[str, Any]) -> Summary:
    dbs = [
        f"{name}: {v.get('keys', 0)} keys ({v.get('expires', 0)} with TTL)"
        for name, v in info.items()
        if isinstance(v, Mapping)
    ]
    return ("; ".join(dbs) if dbs else "no keys in any database"), False


def _cpu_summary(info: Mapping[str, Any]) -> Summary:
    sys_s, user_s = info.get("used_cpu_sys", 0), info.get("used_cpu_user", 0)
    return f"CPU used since start: {sys_s:.1f} s sys, {user_s:.1f} s user", False


_SECTION_SUMMARIES: dict[str, Callable[[Mapping[str, Any]], Summary]] = {
    "memory": _memory_summary,
    "stats": _stats_summary,
    "clients": _clients_summary,
    "replication": _replication_summary,
    "persistence": _persistence_summary,
    "server": _server_summary,
    "keyspace": _keyspace_summary,
    "cpu": _cpu_summary,
}
_WHOLE = ("all", "everything", "default")
_KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "memory": (
        "used_memory_human",
        "used_memory_rss_human",
        "used_memory_peak_human",
        "maxmemory_human",
        "maxmemory_policy",
        "mem_fragmentation_ratio",
        "used_memory_dataset_perc",
        "lazyfree_pending_objects",
    ),
    "stats": (
        "keyspace_hits",
        "keyspace_misses",
        "evicted_keys",
        "expired_keys",
        "rejected_connections",
        "instantaneous_ops_per_sec",
        "total_error_replies",
        "latest_fork_usec",
    ),
    "clients": ("connected_clients", "blocked_clients", "maxclients", "client_recent_max_output_buffer"),
    "persistence": (
        "rdb_last_save_time",
        "rdb_last_bgsave_status",
        "rdb_changes_since_last_save",
        "aof_enabled",
        "aof_last_write_status",
    ),
    "server": ("redis_version", "redis_mode", "uptime_in_days", "tcp_port", "config_file"),
    "replication": ("role", "connected_slaves", "master_link_status", "master_last_io_seconds_ago"),
}
_MAX_DETAIL_LINES = 40
"""Details are read on a phone: key fields for known sections, the rest stays in ``data``."""


@step("redis.info", params=InfoParams)
async def info(ctx: StepContext, p: InfoParams) -> StepOutput:
    """Read one INFO section (default ``memory``; ``all``/``everything`` for all) with its key figures.

    The runbook's ``redis-cli info memory``. Warns at 80% of maxmemory, a hit ratio below 50%,
    rejected connections, clients near maxclients, a broken replica link or a failed save.
    """
    section = p.section.lower()
    async with redis_errors(ctx.target.name):
        data = await redisops.read_info(ctx.target.client, section)
    if not data:
        return StepOutput(
            summary=f"INFO {section} returned nothing: not a section this Redis knows",
            data={"section": section, "info": {}, "figures": {}},
            status="warning",
        )
    if section in _WHOLE:
        parts = [_server_summary(data), _memory_summary(data), _stats_summary(data), _clients_summary(data)]
        parts.append(_replication_summary(data))
        summary = "; ".join(text for text, _ in parts)
        warn = any(w for _, w in parts)
        details = ""
    else:
        summarize = _SECTION_SUMMARIES.get(section)
        if summarize is not None:
            summary, warn = summarize(data)
        else:
            summary, warn = f"INFO {section}: {len(data)} fields", False
        keys = [k for k in _KEY_FIELDS.get(section, tuple(data)) if k in data][:_MAX_DETAIL_LINES]
        details = "\n".join(f"{k}: {data[k]}" for k in keys)
    figures: dict[str, Any] = {}
    if section in ("memory", *_WHOLE):
        figures["memory"] = redisops.to_jsonable(redisops.memory_figures(data))
    if section in ("stats", *_WHOLE):
        figures["stats"] = redisops.to_jsonable(redisops.hit_stats(data))
    return StepOutput(
        summary=summary,
        data={"section": section, "info": data, "figures": figures},
        status="warning" if warn else "ok",
        details=details,
    )


# ------------------------------------------------------------------------------------ memory report


class MemoryReportParams(StepParams):
    top: int = Field(10, ge=1, le=1000)
    count: int = Field(1000, ge=10, le=10_000)
    separator: str = Field(":", min_length=1, max_length=8)
    depth: int = Field(1, ge=1, le=10)
    samples: int = Field(5, ge=0, le=10_000)
    max_keys: int | None = Field(None, ge=1)
    max_prefixes: int = Field(10_000, ge=1, le=100_000)
    top_prefixes: int = Field(20, ge=1, le=1000)
    scripts: bool = True


@step("redis.memory_report", params=MemoryReportParams, timeout=900.0)
async def memory_report(ctx: StepContext, p: MemoryReportParams) -> StepOutput:
    """Find what uses the memory: bytes and elements by key prefix and type, and the biggest keys.

    The runbook's ``redis-cli --bigkeys`` (and ``--memkeys``), built on SCAN, never KEYS, with flat
    memory on any key count. ``samples`` is MEMORY USAGE's SAMPLES (0 = exact, slow on big keys);
    ``max_keys`` bounds the scan; ``scripts: false`` avoids Lua (slower). Reading the keys counts
    as keyspace hits, so run hit-ratio checks first.
    """

    async def progress(scanned: int, dbsize: int) -> None:
        await ctx.progress(f"memory report: {scanned:,} of ~{dbsize:,} keys scanned")

    async with redis_errors(ctx.target.name):
        r = await redisops.memory_report(
            ctx.target.client,
            top=p.top,
            count=p.count,
            separator=p.separator.encode(),
            depth=p.depth,
            samples=p.samples,
            max_keys=p.max_keys,
            max_prefixes=p.max_prefixes,
            top_prefixes=p.top_prefixes,
            use_script=p.scripts,
            progress=progress,
        )
    share = f" ({pct(r.share_of_used_memory)} of used_memory {human_bytes(r.used_memory)})"
    summary = f"{r.scanned_keys:,} keys use {human_bytes(r.total_bytes)}{share if r.used_memory else ''}"
    if r.max_keys_reached:
        summary += f", stopped at max_keys (~{r.dbsize:,} keys in db)"
    if r.prefixes:
        first = r.prefixes[0]
        summary += f"; top prefix {first.pattern or first.prefix} {pct(first.share)}"
    if r.top_keys:
        big = r.top_keys[0]
        unit = redisops.ELEMENT_UNITS.get(big.type, "elements")
        summary += f"; biggest key {big.key} ({big.type}, {big.elements} {unit}, {human_bytes(big.bytes)})"

    prefix_table = table(
        ["prefix", "keys", "memory", "share", "types"],
        [
            [
                x.pattern or x.prefix,
                x.keys,
                human_bytes(x.bytes),
                pct(x.share),
                ",".join(f"{t}:{n}" for t, n in x.types.items()),
            ]
            for x in r.prefixes
        ],
    )
    type_table = table(
        ["type", "keys", "memory", "share", "elements", "biggest (memory)", "biggest (elements)"],
        [
            [
                t.type,
                t.keys,
                human_bytes(t.bytes),
                pct(t.share),
                f"{t.elements} {t.element_unit}",
                f"{t.biggest_by_memory.key} {human_bytes(t.biggest_by_memory.bytes)}",
                f"{t.biggest_by_elements.key} {t.biggest_by_elements.elements}",
            ]
            for t in r.types
        ],
    )
    keys_table = table(
        ["biggest keys", "type", "memory", "elements"],
        [[k.key, k.type, human_bytes(k.bytes), k.elements] for k in r.top_keys],
    )
    notes = [f"scanned {r.scanned_keys} keys in {r.elapsed_s:.1f} s with {r.method}"]
    if r.vanished_keys:
        notes.append(f"{r.vanished_keys} keys vanished during the scan")
    if r.prefixes_overflowed:
        notes.append(f"more than {p.max_prefixes} prefixes: the rest are lumped as {redisops.OTHER_PREFIXES}")
    return StepOutput(
        summary=summary,
        data=redisops.to_jsonable(r),
        details=_join_details(
            prefix_table, keys_table, type_table, "; ".join(notes), _unavailable_details(r.unavailable)
        ),
    )


# ------------------------------------------------------------------------------------------ slowlog


class SlowlogParams(StepParams):
    n: int = Field(10, ge=1, le=1000)
    threshold_ms: float = Field(10.0, gt=0, le=60_000)


@step("redis.slowlog", params=SlowlogParams)
async def slowlog(ctx: StepContext, p: SlowlogParams) -> StepOutput:
    """List the slowest recent commands (SLOWLOG GET n) with duration, client and arguments.

    The runbook's ``redis-cli slowlog get 10``; any entry at or above ``threshold_ms`` is a warning.
    """
    async with redis_errors(ctx.target.name):
        r = await redisops.slowlog(ctx.target.client, p.n)
    slow = [e for e in r.entries if e.duration_ms >= p.threshold_ms]
    logged = f"{r.length} logged" if r.length is not None else "length unknown"
    if not r.entries:
        limit = f" (logs commands >= {r.log_slower_than_us / 1000:g} ms)" if r.log_slower_than_us else ""
        summary = f"slowlog is empty{limit}"
    else:
        worst = max(r.entries, key=lambda e: e.duration_ms)
        who = worst.client_addr + (f" ({worst.client_name})" if worst.client_name else "")
        head = (
            f"{len(slow)} commands >= {p.threshold_ms:g} ms"
            if slow
            else f"{len(r.entries)} entries, none >= {p.threshold_ms:g} ms"
        )
        summary = (
            f"slowlog: {head} ({logged}); slowest {worst.duration_ms:.1f} ms: {worst.command} from {who}"
        )
    details = table(
        ["id", "age", "ms", "client", "command"],
        [
            [e.id, _ago(e.timestamp), f"{e.duration_ms:.1f}", e.client_name or e.client_addr, e.command]
            for e in r.entries
        ],
    )
    return StepOutput(
        summary=summary + _unavailable_note(r.unavailable),
        data=redisops.to_jsonable(r) | {"threshold_ms": p.threshold_ms, "over_threshold": len(slow)},
        status="warning" if slow else "ok",
        details=_join_details(details if r.entries else "", _unavailable_details(r.unavailable)),
    )


# ------------------------------------------------------------------------------------------ clients


class ClientsParams(StepParams):
    top: int = Field(10, ge=1, le=1000)
    buffer_warn_mb: float = Field(64.0, gt=0)


@step("redis.clients", params=ClientsParams)
async def clients(ctx: StepContext, p: ClientsParams) -> StepOutput:
    """Who is connected (CLIENT LIST): counts by name, host and command, and the biggest buffers.

    Queue workers blocked on BRPOPLPUSH/BZPOPMIN are counted apart (idle BullMQ workers, normal).
    Warns near maxclients or when a client holds more than ``buffer_warn_mb`` of buffers. Falls
    back to INFO clients where CLIENT LIST is not allowed.
    """
    async with redis_errors(ctx.target.name):
        r = await redisops.clients_report(ctx.target.client, top=p.top)
    issues: list[str] = []
    if r.maxclients and r.total is not None and r.total >= CLIENTS_WARN_RATIO * r.maxclients:
        issues.append(f"near maxclients {r.maxclients}")
    limit = p.buffer_warn_mb * 1024 * 1024
    heavy = [c for c in r.top_memory if c.omem + c.qbuf >= limit]
    if heavy:
        c = heavy[0]
        issues.append(
            f"{c.name or c.addr} holds {human_bytes(c.omem)} output, {human_bytes(c.qbuf)} query buffer"
        )
    if r.source == "info":
        summary = (
            f"{r.total} clients connected, {r.blocked} blocked "
            "(CLIENT LIST not allowed: figures from INFO clients)"
        )
        details = ""
    else:
        blocked = f"{r.blocked} blocked"
        if r.blocked:
            blocked += f" ({r.blocked_queue_workers} queue workers waiting, normal)"
        names = ", ".join(f"{k} {v}" for k, v in list(r.by_name.items())[:3])
        summary = (
            f"{r.total} clients, {blocked}; by name: {names}; buffers {human_bytes(r.total_mem or 0)} total"
        )
        details = _join_details(
            table(
                ["client", "addr", "cmd", "idle s", "tot-mem", "omem", "qbuf"],
                [
                    [
                        c.name or "-",
                        c.addr,
                        c.cmd,
                        c.idle_s,
                        human_bytes(c.tot_mem),
                        human_bytes(c.omem),
                        human_bytes(c.qbuf),
                    ]
                    for c in r.top_memory
                ],
            ),
            table(["host", "clients"], list(r.by_host.items())),
            table(["last command", "clients"], list(r.by_cmd.items())),
        )
    if issues:
        summary = f"{'; '.join(issues)}: {summary}"
    return StepOutput(
        summary=summary,
        data=redisops.to_jsonable(r),
        status="warning" if issues else "ok",
        details=_join_details(details, _unavailable_details(r.unavailable)),
    )


# ------------------------------------------------------------------------------------------ latency


class LatencyParams(StepParams):
    interval: float = Field(1.0, ge=0.1, le=10.0)
    pings: int = Field(5, ge=1, le=100)
    threshold_ms: float = Field(10.0, gt=0, le=60_000)
    cpu_warn_percent: float = Field(80.0, gt=0, le=1000)


@step("redis.latency", params=LatencyParams)
async def latency(ctx: StepContext, p: LatencyParams) -> StepOutput:
    """Where latency comes from: server latency events, the network round trip, and Redis CPU use.

    The runbook's "High Latency" checks: LATENCY LATEST, PING from the bot, and CPU over
    ``interval`` seconds (percent of one core) with ops/s. Warns above ``threshold_ms`` or
    ``cpu_warn_percent``.
    """
    async with redis_errors(ctx.target.name):
        r = await redisops.latency_report(ctx.target.client, interval=p.interval, pings=p.pings)
    issues: list[str] = []
    if r.ping.max_ms > p.threshold_ms:
        issues.append(f"ping up to {r.ping.max_ms:.1f} ms")
    slow_events = [e for e in r.events or [] if e.latest_ms > p.threshold_ms]
    issues += [f"{e.event} event {e.latest_ms} ms {_ago(e.timestamp)}" for e in slow_events]
    if r.cpu_percent is not None and r.cpu_percent >= p.cpu_warn_percent:
        issues.append(f"CPU {r.cpu_percent:.0f}% of a core")
    if r.events is None:
        events = "latency events n/a"
    elif r.events:
        events = f"{len(r.events)} latency events (worst latest {max(e.latest_ms for e in r.events)} ms)"
    elif r.monitor_threshold_ms == 0:
        events = "latency monitor off"
    else:
        events = "no latency events"
    cpu = f"CPU {r.cpu_percent:.0f}% of a core" if r.cpu_percent is not None else "CPU n/a"
    summary = (
        f"ping {r.ping.avg_ms:.2f} ms avg / {r.ping.max_ms:.2f} max; {cpu}; {r.ops_per_sec} ops/s; {events}"
    )
    if issues:
        summary = f"latency high: {', '.join(issues)}; {summary}"
    details = ""
    if r.events:
        details = table(
            ["event", "latest", "latest ms", "max ms"],
            [[e.event, _ago(e.timestamp), e.latest_ms, e.max_ms] for e in r.events],
        )
    return StepOutput(
        summary=summary + _unavailable_note(r.unavailable),
        data=redisops.to_jsonable(r) | {"threshold_ms": p.threshold_ms},
        status="warning" if issues else "ok",
        details=_join_details(details, _unavailable_details(r.unavailable)),
    )


# ------------------------------------------------------------------------------------------ monitor


class MonitorParams(StepParams):
    seconds: float = Field(3.0, gt=0, le=30)
    max_commands: int = Field(100_000, ge=1, le=1_000_000)
    top: int = Field(10, ge=1, le=100)
    separator: str = Field(":", min_length=1, max_length=8)
    depth: int = Field(1, ge=1, le=10)


@step("redis.monitor_sample", params=MonitorParams, timeout=60.0)
async def monitor_sample(ctx: StepContext, p: MonitorParams) -> StepOutput:
    """Watch live traffic with MONITOR for a few seconds: busiest commands, key prefixes, clients.

    The runbook's ``redis-cli MONITOR``, bounded to ``seconds`` (at most 30) and ``max_commands``
    lines on its own connection, always closed afterwards. MONITOR costs Redis throughput while it
    runs. Warns when KEYS or FLUSHALL/FLUSHDB is seen.
    """
    async with redis_errors(ctx.target.name):
        r = await redisops.monitor_sample(
            ctx.target.client,
            seconds=p.seconds,
            max_commands=p.max_commands,
            separator=p.separator.encode(),
            depth=p.depth,
            top=p.top,
        )

    def shares(counts: Mapping[str, int]) -> str:
        return ", ".join(f"{k} {v / r.commands:.0%}" for k, v in list(counts.items())[:3]) or "none"

    capped = " (max_commands reached)" if r.capped else ""
    summary = f"{r.commands} commands in {r.seconds:.1f} s ({r.rate_per_sec:.0f}/s){capped}"
    if r.commands:
        summary += f"; top {shares(r.top_commands)}; prefixes {shares(r.top_prefixes)}"
        c = r.top_clients[0]
        summary += f"; busiest client {c.name or c.addr} {c.commands / r.commands:.0%}"
    if r.dangerous:
        summary = f"{', '.join(f'{k} x{v}' for k, v in r.dangerous.items())} seen live; {summary}"
    details = _join_details(
        table(["command", "count"], list(r.top_commands.items())),
        table(["prefix", "count"], list(r.top_prefixes.items())),
        table(["client", "name", "count"], [[c.addr, c.name or "-", c.commands] for c in r.top_clients]),
    )
    return StepOutput(
        summary=summary,
        data=redisops.to_jsonable(r),
        status="warning" if r.dangerous else "ok",
        details=_join_details(details if r.commands else "", _unavailable_details(r.unavailable)),
    )


# ----------------------------------------------------------------------------------------- keyspace


class KeyspaceParams(StepParams):
    sample: int = Field(2000, ge=1, le=100_000)
    count: int = Field(1000, ge=10, le=10_000)
    separator: str = Field(":", min_length=1, max_length=8)
    depth: int = Field(1, ge=1, le=10)
    top: int = Field(20, ge=1, le=1000)
    hit_ratio_warn: float = Field(HIT_RATIO_WARN, ge=0, le=1)


@step("redis.keyspace", params=KeyspaceParams, timeout=60.0)
async def keyspace(ctx: StepContext, p: KeyspaceParams) -> StepOutput:
    """Judge the caching strategy: hit ratio, evictions, eviction policy, and per-prefix idle time and TTLs.

    The runbook's "inefficient caching strategy" check behind RedisHitRateLow (warning below
    ``hit_ratio_warn``). A SCAN sample of ``sample`` keys shows, per prefix, how long keys sit
    unread (OBJECT IDLETIME, or OBJECT FREQ under an LFU policy) and how many have a TTL.
    """
    async with redis_errors(ctx.target.name):
        r = await redisops.keyspace_report(
            ctx.target.client,
            sample=p.sample,
            count=p.count,
            separator=p.separator.encode(),
            depth=p.depth,
            top=p.top,
        )
    low = r.hit_ratio is not None and r.hit_ratio < p.hit_ratio_warn
    with_ttl = sum(x.with_ttl for x in r.prefixes)
    summary = (
        f"hit ratio {pct(r.hit_ratio)} ({r.hits} hits / {r.misses} misses); {r.evicted_keys} evicted, "
        f"{r.expired_keys} expired; policy {r.policy or 'n/a'}"
    )
    if r.sampled:
        summary += f"; {with_ttl / r.sampled:.0%} of {r.sampled} sampled keys have a TTL"
    cause = likely_miss_cause(r.misses, r.evicted_keys, r.expired_keys, r.policy) if low else None
    if low:
        summary = f"low hit ratio (< {p.hit_ratio_warn:.0%}): {summary}"
        if cause:
            summary += f". Likely cause: {cause}"
    freq = r.activity_metric == "freq"
    rows = [
        [
            x.pattern or x.prefix,
            x.sampled,
            pct(x.ttl_share),
            _fmt(x.freq_median if freq else x.idle_median_s),
            _fmt(x.freq_p90 if freq else x.idle_p90_s),
            _fmt(x.ttl_median_s, 0),
        ]
        for x in r.prefixes
    ]
    label = "freq" if freq else "idle s"
    details = table(["prefix", "sampled", "with TTL", f"{label} p50", f"{label} p90", "TTL p50 s"], rows)
    return StepOutput(
        summary=summary + _unavailable_note(r.unavailable),
        data=redisops.to_jsonable(r) | {"hit_ratio_warn": p.hit_ratio_warn, "likely_cause": cause},
        status="warning" if low else "ok",
        details=_join_details(details if rows else "", _unavailable_details(r.unavailable)),
    )


def likely_miss_cause(misses: int, evicted: int, expired: int, policy: str | None) -> str:
    """Name the most likely reason for a low hit ratio from what Redis counts.

    Misses come from keys that were evicted (memory pressure), keys that expired (TTLs shorter
    than the read interval), or keys that were never written (a cold cache, a changed key scheme,
    or lookups of IDs that do not exist: cache penetration/poisoning).
    """
    if misses and evicted >= 0.1 * misses:
        return (
            f"evictions: {evicted} keys evicted under memory pressure (policy {policy or 'n/a'});"
            " raise maxmemory or give cold namespaces shorter TTLs"
        )
    if misses and expired >= 0.1 * misses:
        return f"expiry: {expired} keys expired; TTLs may be shorter than how often keys are read"
    return (
        "lookups of keys that were never cached (few evictions or expiries): a cold cache,"
        " a changed key scheme, or requests for IDs that do not exist (cache penetration)"
    )


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}".removesuffix(".0")

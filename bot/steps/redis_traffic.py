"""Read-only Redis diagnostics of load: slow commands, connected clients, latency sources, live traffic.

The runbook's ``redis-cli slowlog get``, ``CLIENT LIST``, "High Latency" checks and ``MONITOR``;
see :mod:`bot.steps.redis_info` for how these steps wrap :mod:`bot.redisops`.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field

from bot.formatting import ago, human_bytes, join_blocks, pct, table, unavailable_details, unavailable_note
from bot.redisconn import redis_errors
from bot.redisops import traffic
from bot.redisops.clients import ClientsReport, clients_report
from bot.redisops.common import to_jsonable
from bot.steps.redis_info import CLIENT_BUFFERS_FLOOR, CLIENT_BUFFERS_WARN_SHARE, CLIENTS_WARN_RATIO
from bot.steps.registry import StepContext, StepOutput, StepParams, step

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
        r = await traffic.slowlog(ctx.target.client, p.n)
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
            [e.id, ago(e.timestamp), f"{e.duration_ms:.1f}", e.client_name or e.client_addr, e.command]
            for e in r.entries
        ],
    )
    return StepOutput(
        summary=summary + unavailable_note(r.unavailable),
        data=to_jsonable(r) | {"threshold_ms": p.threshold_ms, "over_threshold": len(slow)},
        status="warning" if slow else "ok",
        details=join_blocks(details if r.entries else "", unavailable_details(r.unavailable)),
    )


# ------------------------------------------------------------------------------------------ clients


class ClientsParams(StepParams):
    top: int = Field(10, ge=1, le=1000)
    buffer_warn_mb: float = Field(64.0, gt=0)
    buffer_share_warn: float = Field(
        CLIENT_BUFFERS_WARN_SHARE,
        gt=0,
        le=1,
        description="warn when one client's buffers (at least 1 MiB) are this share of used memory",
    )


def buffer_hog(r: ClientsReport, p: ClientsParams) -> str | None:
    """The sentence naming the client whose buffers hold a notable share of memory, if one does.

    Output buffers grow when a client does not read its replies (a forgotten ``MONITOR``, a stuck
    subscriber, a consumer that stopped); query buffers when it sends more than Redis can parse.
    Both count in used_memory, so they push Redis towards maxmemory like data does.
    """
    if not r.top_buffers:
        return None
    c = r.top_buffers[0]
    share = c.buffers / r.used_memory if r.used_memory else None
    notable = c.buffers >= p.buffer_warn_mb * 1024 * 1024 or (
        share is not None and share >= p.buffer_share_warn and c.buffers >= CLIENT_BUFFERS_FLOOR
    )
    if not notable:
        return None
    kind = "output buffer (omem)" if c.omem >= c.qbuf else "query buffer (qbuf)"
    of_used = f", {pct(share)} of used memory" if share is not None else ""
    why = (
        "it does not read its replies (a forgotten MONITOR, a stuck subscriber)"
        if c.omem >= c.qbuf
        else "it sends commands faster or bigger than Redis parses them"
    )
    return (
        f"client {c.describe()} holds {human_bytes(c.buffers)} of {kind}{of_used}: {why};"
        f" disconnect it with redis.client_kill (id {c.id}), and cap such clients with"
        " CONFIG SET client-output-buffer-limit"
    )


@step("redis.clients", params=ClientsParams)
async def clients(ctx: StepContext, p: ClientsParams) -> StepOutput:
    """Who is connected (CLIENT LIST): counts by name, host and command, and the biggest buffers.

    Queue workers blocked on BRPOPLPUSH/BZPOPMIN are counted apart (idle BullMQ workers, normal).
    Warns near maxclients, and names the client (address, command, age, omem/qbuf) whose buffers
    hold more than ``buffer_warn_mb`` or ``buffer_share_warn`` of used memory. Falls back to INFO
    clients where CLIENT LIST is not allowed.
    """
    async with redis_errors(ctx.target.name):
        r = await clients_report(ctx.target.client, top=p.top)
    issues: list[str] = []
    if r.maxclients and r.total is not None and r.total >= CLIENTS_WARN_RATIO * r.maxclients:
        issues.append(f"near maxclients {r.maxclients}")
    hog = buffer_hog(r, p)
    if hog:
        issues.append(hog)
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
        details = join_blocks(
            table(
                ["biggest buffers", "addr", "id", "cmd", "age s", "idle s", "omem", "qbuf"],
                [
                    [
                        c.name or "-",
                        c.addr,
                        c.id,
                        c.cmd,
                        c.age_s,
                        c.idle_s,
                        human_bytes(c.omem),
                        human_bytes(c.qbuf),
                    ]
                    for c in r.top_buffers
                ],
            )
            if r.top_buffers
            else "",
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
        data=to_jsonable(r) | {"buffer_hog": hog} | ({"finding": hog} if hog else {}),
        status="warning" if issues else "ok",
        details=join_blocks(details, unavailable_details(r.unavailable)),
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
        r = await traffic.latency_report(ctx.target.client, interval=p.interval, pings=p.pings)
    issues: list[str] = []
    if r.ping.max_ms > p.threshold_ms:
        issues.append(f"ping up to {r.ping.max_ms:.1f} ms")
    slow_events = [e for e in r.events or [] if e.latest_ms > p.threshold_ms]
    issues += [f"{e.event} event {e.latest_ms} ms {ago(e.timestamp)}" for e in slow_events]
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
            [[e.event, ago(e.timestamp), e.latest_ms, e.max_ms] for e in r.events],
        )
    return StepOutput(
        summary=summary + unavailable_note(r.unavailable),
        data=to_jsonable(r) | {"threshold_ms": p.threshold_ms},
        status="warning" if issues else "ok",
        details=join_blocks(details, unavailable_details(r.unavailable)),
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
        r = await traffic.monitor_sample(
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
    details = join_blocks(
        table(["command", "count"], list(r.top_commands.items())),
        table(["prefix", "count"], list(r.top_prefixes.items())),
        table(["client", "name", "count"], [[c.addr, c.name or "-", c.commands] for c in r.top_clients]),
    )
    return StepOutput(
        summary=summary,
        data=to_jsonable(r),
        status="warning" if r.dangerous else "ok",
        details=join_blocks(details if r.commands else "", unavailable_details(r.unavailable)),
    )

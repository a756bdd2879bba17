"""Read-only Redis diagnostics of load: slow commands, connected clients, latency sources, live traffic.

The runbook's ``redis-cli slowlog get``, ``CLIENT LIST``, "High Latency" checks and ``MONITOR``;
see :mod:`bot.steps.redis_info` for how these steps wrap :mod:`bot.redisops`.
"""

from __future__ import annotations

from collections.abc import Mapping

import redis.asyncio as aioredis
from pydantic import Field

from bot.formatting import ago, human_bytes, join_blocks, pct, table, unavailable_details, unavailable_note
from bot.redisconn import redis_errors
from bot.redisops import traffic
from bot.redisops.clients import ClientsReport, clients_report, merge_clients
from bot.redisops.common import to_jsonable
from bot.steps.pernode import on_primaries, per_primary_step
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
    runs = await on_primaries(ctx.target, lambda c: traffic.slowlog(c, p.n))
    r = traffic.merge_slowlogs(runs.results) if runs.cluster else runs.results[0][1]
    slow = [e for e in r.entries if e.duration_ms >= p.threshold_ms]
    logged = f"{r.length} logged" if r.length is not None else "length unknown"
    if not r.entries:
        limit = f" (logs commands >= {r.log_slower_than_us / 1000:g} ms)" if r.log_slower_than_us else ""
        summary = f"slowlog is empty{limit}"
    else:
        worst = max(r.entries, key=lambda e: e.duration_ms)
        who = worst.client_addr + (f" ({worst.client_name})" if worst.client_name else "")
        if worst.node:
            who += f" on node {worst.node}"
        head = (
            f"{len(slow)} commands >= {p.threshold_ms:g} ms"
            if slow
            else f"{len(r.entries)} entries, none >= {p.threshold_ms:g} ms"
        )
        summary = (
            f"slowlog: {head} ({logged}); slowest {worst.duration_ms:.1f} ms: {worst.command} from {who}"
        )
    if runs.cluster:
        nodes = sorted({e.node for e in slow})
        summary += f"; {len(runs.results)} primaries read" + (
            f", slow on {', '.join(nodes)}" if nodes else ""
        )
    node = ["node"] if runs.cluster else []

    def node_of(e: traffic.SlowlogEntry) -> list[str]:
        return [e.node] if runs.cluster else []

    details = table(
        [*node, "id", "age", "ms", "client", "command"],
        [
            [
                *node_of(e),
                e.id,
                ago(e.timestamp),
                f"{e.duration_ms:.1f}",
                e.client_name or e.client_addr,
                e.command,
            ]
            for e in r.entries
        ],
    )
    return StepOutput(
        summary=summary + unavailable_note(r.unavailable) + runs.note(),
        data=to_jsonable(r)
        | {"threshold_ms": p.threshold_ms, "over_threshold": len(slow), "errors": runs.errors},
        status="warning" if slow or runs.errors else "ok",
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


def buffer_hog(
    r: ClientsReport, p: ClientsParams, node_buffers: Mapping[str, int] | None = None
) -> str | None:
    """The sentence naming the client whose buffers hold a notable share of memory, if one does.

    Output buffers grow when a client does not read its replies (a forgotten ``MONITOR``, a stuck
    subscriber, a consumer that stopped); query buffers when it sends more than Redis can parse.
    Both count in used_memory, so they push Redis towards maxmemory like data does. On a cluster
    (``node_buffers``: each primary's client buffers) the share is of the client's own node's used
    memory, and the sentence starts with that node and its share of all the clients' buffers.
    """
    if not r.top_buffers:
        return None
    c = r.top_buffers[0]
    used = r.node_used_memory.get(c.node) if c.node else r.used_memory
    share = c.buffers / used if used else None
    notable = c.buffers >= p.buffer_warn_mb * 1024 * 1024 or (
        share is not None and share >= p.buffer_share_warn and c.buffers >= CLIENT_BUFFERS_FLOOR
    )
    if not notable:
        return None
    kind = "output buffer (omem)" if c.omem >= c.qbuf else "query buffer (qbuf)"
    whose = "its node's " if c.node else ""
    of_used = f", {pct(share)} of {whose}used memory" if share is not None else ""
    why = (
        "it does not read its replies (a forgotten MONITOR, a stuck subscriber)"
        if c.omem >= c.qbuf
        else "it sends commands faster or bigger than Redis parses them"
    )
    where, on = "", ""
    if c.node and node_buffers:
        mine, everyone = node_buffers.get(c.node, 0), sum(node_buffers.values())
        what = "output buffers" if c.omem >= c.qbuf else "query buffers"
        where = f"node {c.node} holds {pct(mine / everyone if everyone else None)} of the clients' {what}: "
        on = f" on node {c.node}"
    return (
        f"{where}client {c.describe()} holds {human_bytes(c.buffers)} of {kind}{of_used}: {why};"
        f" disconnect it with redis.client_kill (id {c.id}{on}), and cap such clients with"
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
    runs = await on_primaries(ctx.target, lambda c: clients_report(c, top=p.top))
    issues: list[str] = []
    for addr, one in runs.results:
        if one.maxclients and one.total is not None and one.total >= CLIENTS_WARN_RATIO * one.maxclients:
            issues.append(f"near maxclients {one.maxclients}" + (f" on node {addr}" if runs.cluster else ""))
    if runs.cluster:
        r = merge_clients(runs.results, top=p.top)
        node_buffers = {a: (x.total_omem or 0) + (x.total_qbuf or 0) for a, x in runs.results}
        hog = buffer_hog(r, p, node_buffers)
    else:
        r, node_buffers = runs.results[0][1], {}
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
        if runs.cluster:
            summary += f" over {len(runs.results)} primaries"
        node = ["node"] if runs.cluster else []
        details = join_blocks(
            table(
                [*node, "biggest buffers", "addr", "id", "cmd", "age s", "idle s", "omem", "qbuf"],
                [
                    [
                        *([c.node] if runs.cluster else []),
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
    extra = {"cluster": True, "node_buffers": node_buffers, "errors": runs.errors} if runs.cluster else {}
    return StepOutput(
        summary=summary + runs.note(),
        data=to_jsonable(r) | {"buffer_hog": hog} | ({"finding": hog} if hog else {}) | extra,
        status="warning" if issues or runs.errors else "ok",
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
    return await per_primary_step(ctx, lambda c: _latency(c, p), "latency")


async def _latency(client: aioredis.Redis, p: LatencyParams) -> StepOutput:
    r = await traffic.latency_report(client, interval=p.interval, pings=p.pings)
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

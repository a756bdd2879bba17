"""Read-only Redis health checks: PING round trips and INFO sections with their key figures.

The runbook's ``redis-cli PING`` and ``redis-cli info memory``. The diagnostic steps are thin
wrappers around :mod:`bot.redisops`: each validates parameters, calls the algorithm inside
:func:`bot.redisconn.redis_errors` (so a dead or refusing Redis becomes a clear step error), and
turns the typed result into a one-line summary for a phone screen, JSON data for the audit trail,
and an optional plain-text table. The other diagnostics are in :mod:`bot.steps.redis_memory`
(memory report, keyspace) and :mod:`bot.steps.redis_traffic` (slowlog, clients, latency, monitor).
On a Redis Cluster, INFO is read on every primary (:mod:`bot.steps.pernode`): memory per node with
the totals and the fullest node named, keyspace summed, other sections per node. Nothing here
writes to Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import Field

from bot.formatting import human_bytes, human_duration, pct, table
from bot.redisconn import redis_errors
from bot.redisops.common import read_info, to_jsonable
from bot.redisops.keyspace import hit_stats
from bot.redisops.memory import memory_figures
from bot.redisops.roles import sum_keyspaces
from bot.redisops.traffic import ping_latency
from bot.steps.pernode import NodeRuns, merge_outputs, on_primaries
from bot.steps.registry import StepContext, StepOutput, StepParams, step

MEMORY_WARN_RATIO = 0.8
HIT_RATIO_WARN = 0.5
CLIENTS_WARN_RATIO = 0.8
CLIENT_BUFFERS_WARN_SHARE = 0.1
CLIENT_BUFFERS_FLOOR = 1 << 20


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
        stats = await ping_latency(ctx.target.client, p.count)
    slow = stats.max_ms >= p.threshold_ms
    summary = (
        f"PONG from {ctx.target.name} in {stats.avg_ms:.2f} ms avg "
        f"(min {stats.min_ms:.2f}, max {stats.max_ms:.2f}, {stats.count} pings)"
    )
    if slow:
        summary = f"slow PING: {summary}, threshold {p.threshold_ms:g} ms"
    return StepOutput(summary=summary, data=to_jsonable(stats), status="warning" if slow else "ok")


# --------------------------------------------------------------------------------------------- info


class InfoParams(StepParams):
    section: str = Field("memory", pattern=r"^[A-Za-z_]+$", max_length=32)


Summary = tuple[str, bool]


def _client_buffers(info: Mapping[str, Any], used: int) -> str:
    """A note when client buffers (INFO's mem_clients_normal) are a notable share of used memory:
    memory no key holds, which no eviction frees."""
    buffers = int(info.get("mem_clients_normal", 0) or 0)
    if not used or buffers < CLIENT_BUFFERS_FLOOR or buffers / used < CLIENT_BUFFERS_WARN_SHARE:
        return ""
    return (
        f"; client buffers hold {human_bytes(buffers)} ({pct(buffers / used)} of used memory):"
        " redis.clients names the client"
    )


def _memory_summary(info: Mapping[str, Any]) -> Summary:
    m = memory_figures(info)
    frag = f"frag {m.fragmentation_ratio:.2f}" if m.fragmentation_ratio is not None else "frag n/a"
    policy = f"policy {m.policy}" if m.policy else "policy n/a"
    buffers = _client_buffers(info, m.used_memory)
    if m.ratio is None:
        return f"memory {m.used_memory_human} used, no maxmemory limit, {frag}, {policy}{buffers}", bool(
            buffers
        )
    maxmem = info.get("maxmemory_human") or human_bytes(m.maxmemory)
    text = f"memory {m.used_memory_human} of {maxmem} maxmemory ({pct(m.ratio)}), {frag}, {policy}{buffers}"
    if m.ratio >= MEMORY_WARN_RATIO:
        return f"memory high: {text}", True
    return text, bool(buffers)


def _stats_summary(info: Mapping[str, Any]) -> Summary:
    s = hit_stats(info)
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
        "mem_clients_normal",
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
    runs = await on_primaries(ctx.target, lambda c: read_info(c, section))
    if not runs.cluster:
        return info_output(runs.results[0][1], section)
    if section == "memory":
        return cluster_memory(runs)
    if section == "keyspace":
        return cluster_keyspace(runs)
    if section == "stats":
        return cluster_stats(runs)
    outs = [(addr, info_output(data, section)) for addr, data in runs.results]
    return merge_outputs(NodeRuns(True, outs, runs.errors), f"INFO {section}")


def info_output(data: dict[str, Any], section: str) -> StepOutput:
    """One node's INFO ``section`` as a step result: summary, key figures, warnings."""
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
        figures["memory"] = to_jsonable(memory_figures(data))
    if section in ("stats", *_WHOLE):
        figures["stats"] = to_jsonable(hit_stats(data))
    return StepOutput(
        summary=summary,
        data={"section": section, "info": data, "figures": figures},
        status="warning" if warn else "ok",
        details=details,
    )


# ------------------------------------------------------------------------------------------ cluster


def cluster_memory(runs: NodeRuns[dict[str, Any]]) -> StepOutput:
    """INFO memory of every primary: used memory and maxmemory per node, the totals, and the fullest
    node named (one full primary rejects writes to its slots however empty the others are)."""
    figs = [(addr, memory_figures(info)) for addr, info in runs.results]
    used = sum(m.used_memory for _, m in figs)
    limited = all(m.maxmemory for _, m in figs)
    limit = sum(m.maxmemory for _, m in figs) if limited else 0
    node, w = max(figs, key=lambda f: (f[1].ratio or 0.0, f[1].used_memory))
    per_node = ", ".join(
        f"{a} {pct(m.ratio) if m.ratio is not None else human_bytes(m.used_memory)}" for a, m in figs
    )
    total = (
        f"{human_bytes(used)} of {human_bytes(limit)} maxmemory ({pct(used / limit)})"
        if limit
        else f"{human_bytes(used)}, {'not every node has' if any(m.maxmemory for _, m in figs) else 'no node has'}"
        " a maxmemory limit"
    )
    high = w.ratio is not None and w.ratio >= MEMORY_WARN_RATIO
    fullest = (
        f"node {node} at {pct(w.ratio)} of maxmemory ({w.used_memory_human} of {human_bytes(w.maxmemory)})"
        if w.ratio is not None
        else f"node {node} uses the most ({w.used_memory_human})"
    )
    summary = f"memory high on {fullest}" if high else f"fullest: {fullest}"
    summary += f"; {len(figs)} primaries use {total}; per node: {per_node}"
    buffers = [
        f"node {a}{note}"
        for a, info in runs.results
        if (note := _client_buffers(info, int(info.get("used_memory", 0))))
    ]
    if buffers:
        summary += "; " + "; ".join(b.replace("; client buffers", ": client buffers", 1) for b in buffers)
    nodes = {a: to_jsonable(m) for a, m in figs}
    return StepOutput(
        summary=summary + runs.note(),
        data={
            "section": "memory",
            "cluster": True,
            "nodes": nodes,
            "info": {a: info for a, info in runs.results},
            "totals": {
                "used_memory": used,
                "maxmemory": limit,
                "ratio": round(used / limit, 4) if limit else None,
            },
            "fullest": node,
            # The fullest node's figures: the before/after of an incident compares these.
            "figures": {"memory": nodes[node] | {"node": node}},
            "errors": runs.errors,
        },
        status="warning" if high or buffers or runs.errors else "ok",
        details=table(
            ["node", "used", "maxmemory", "share", "frag", "client buffers"],
            [
                [
                    a,
                    m.used_memory_human,
                    human_bytes(m.maxmemory) if m.maxmemory else "none",
                    pct(m.ratio),
                    f"{m.fragmentation_ratio:.2f}" if m.fragmentation_ratio is not None else "n/a",
                    human_bytes(int(info.get("mem_clients_normal", 0) or 0)),
                ]
                for (a, m), (_, info) in zip(figs, runs.results, strict=True)
            ],
        ),
    )


def cluster_keyspace(runs: NodeRuns[dict[str, Any]]) -> StepOutput:
    """INFO keyspace summed over every primary (a cluster has only db0), with keys per node."""
    total = sum_keyspaces([info for _, info in runs.results])
    text, _ = _keyspace_summary(total)
    per_node = ", ".join(
        f"{a} {sum(int(v.get('keys', 0)) for v in i.values() if isinstance(v, Mapping)):,}"
        for a, i in runs.results
    )
    return StepOutput(
        summary=f"{text} over {len(runs.results)} primaries (keys per node: {per_node}){runs.note()}",
        data={
            "section": "keyspace",
            "cluster": True,
            "info": total,
            "nodes": dict(runs.results),
            "errors": runs.errors,
        },
        status="warning" if runs.errors else "ok",
    )


_SUMMED_STATS = (
    "keyspace_hits",
    "keyspace_misses",
    "evicted_keys",
    "expired_keys",
    "rejected_connections",
    "instantaneous_ops_per_sec",
)


def cluster_stats(runs: NodeRuns[dict[str, Any]]) -> StepOutput:
    """INFO stats added up over every primary: the cluster's hit ratio is its hits over all lookups,
    wherever the keys live; the node with the lowest hit ratio is named when the total is low."""
    total = {k: sum(int(info.get(k, 0) or 0) for _, info in runs.results) for k in _SUMMED_STATS}
    text, warn = _stats_summary(total)
    ratios = [(a, s.ratio) for a, info in runs.results if (s := hit_stats(info)).ratio is not None]
    worst = min(ratios, key=lambda r: r[1], default=None)
    if warn and worst is not None:
        text += f"; lowest on node {worst[0]} ({pct(worst[1])})"
    return StepOutput(
        summary=f"{text} over {len(runs.results)} primaries{runs.note()}",
        data={
            "section": "stats",
            "cluster": True,
            "info": total,
            "nodes": dict(runs.results),
            "figures": {"stats": to_jsonable(hit_stats(total))},
            "errors": runs.errors,
        },
        status="warning" if warn or runs.errors else "ok",
    )

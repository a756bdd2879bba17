"""What an expert reads next: MEMORY/LATENCY DOCTOR, fragmentation, fork cost and replication.

Each function reads a few INFO sections (cheap) and returns a typed verdict with the sentence an
on-call engineer needs: what the figures mean and what to do about them. Nothing here writes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from bot.formatting import human_bytes, pct
from bot.redisops.common import call, config_dict, optional, text_of

MIB = 1 << 20

# -------------------------------------------------------------------------------------------- doctor


@dataclass
class DoctorReport:
    """MEMORY DOCTOR or LATENCY DOCTOR: Redis's own diagnosis, and its findings as short titles."""

    text: str | None
    findings: list[str]
    unavailable: dict[str, str] = field(default_factory=dict)


_FINDING = re.compile(r"^\s*(?:\*|\d+\.)\s+([^:\n]{3,80}):", re.MULTILINE)


def doctor_findings(text: str) -> list[str]:
    """The titles of a doctor report's bullet points (``* High total RSS: ...`` -> ``High total RSS``)."""
    return [m.group(1).strip() for m in _FINDING.finditer(text)]


async def doctor(client: aioredis.Redis, kind: str) -> DoctorReport:
    """``MEMORY DOCTOR`` or ``LATENCY DOCTOR``; refused on some managed services (noted, not raised)."""
    unavailable: dict[str, str] = {}
    reply = await optional(call(client, kind, "DOCTOR"), f"{kind} DOCTOR", unavailable)
    text = text_of(reply) if reply is not None else None
    return DoctorReport(text, doctor_findings(text) if text else [], unavailable)


# ------------------------------------------------------------------------------------ fragmentation


@dataclass
class Fragmentation:
    """Where RSS above used_memory comes from, and what would give it back."""

    used_memory: int
    rss: int
    ratio: float | None
    excess_bytes: int
    allocator: str
    allocator_frag_ratio: float | None
    allocator_frag_bytes: int
    allocator_rss_bytes: int
    rss_overhead_bytes: int
    activedefrag: str | None
    defrag_running: bool
    verdict: str
    advice: list[str]
    problem: bool


def fragmentation(
    info: Mapping[str, Any], activedefrag: str | None, *, ratio_warn: float = 1.5, min_bytes: int = 32 * MIB
) -> Fragmentation:
    """Judge INFO memory's fragmentation figures (see :func:`fragmentation_advice`)."""
    used = int(info.get("used_memory", 0))
    rss = int(info.get("used_memory_rss", 0))
    ratio = float(info["mem_fragmentation_ratio"]) if "mem_fragmentation_ratio" in info else None
    excess = int(info.get("mem_fragmentation_bytes", rss - used))
    afr = info.get("allocator_frag_ratio")
    f = Fragmentation(
        used_memory=used,
        rss=rss,
        ratio=ratio,
        excess_bytes=excess,
        allocator=str(info.get("mem_allocator", "?")),
        allocator_frag_ratio=float(afr) if afr is not None else None,
        allocator_frag_bytes=int(info.get("allocator_frag_bytes", 0)),
        allocator_rss_bytes=int(info.get("allocator_rss_bytes", 0)),
        rss_overhead_bytes=int(info.get("rss_overhead_bytes", 0)),
        activedefrag=activedefrag,
        defrag_running=bool(int(info.get("active_defrag_running", 0) or 0)),
        verdict="",
        advice=[],
        problem=False,
    )
    fragmentation_advice(f, ratio_warn, min_bytes)
    return f


def fragmentation_advice(f: Fragmentation, ratio_warn: float, min_bytes: int) -> None:
    """Fill ``verdict``, ``advice`` and ``problem``.

    RSS below used memory means the OS swapped part of Redis out (every access may hit the disk).
    Above it, the excess has three parts with three different remedies: fragmentation inside the
    allocator's pages (``allocator_frag``: active defragmentation compacts it), free pages the
    allocator keeps after a peak (``allocator_rss``: ``MEMORY PURGE`` returns them), and the rest of
    the process (``rss_overhead``: fork copy-on-write, Lua, modules).
    """
    if f.ratio is None or not f.used_memory:
        f.verdict = "fragmentation n/a (INFO memory has no mem_fragmentation_ratio)"
        return
    if f.ratio < 1 and f.used_memory - f.rss >= min_bytes:
        f.problem = True
        f.verdict = (
            f"RSS {human_bytes(f.rss)} is below used memory {human_bytes(f.used_memory)} (ratio"
            f" {f.ratio:.2f}): the OS swapped part of Redis out, so commands may wait on the disk"
        )
        f.advice.append("give the host or container more RAM, or lower maxmemory; disable swap for Redis")
        return
    if f.ratio < ratio_warn or f.excess_bytes < min_bytes:
        f.verdict = f"fragmentation {f.ratio:.2f} ({human_bytes(f.excess_bytes)} above used memory): fine"
        return
    f.problem = True
    f.verdict = (
        f"fragmentation {f.ratio:.2f}: RSS {human_bytes(f.rss)} for {human_bytes(f.used_memory)} of data,"
        f" {human_bytes(f.excess_bytes)} the OS counts but no key holds"
    )
    jemalloc = f.allocator.startswith("jemalloc")
    if f.allocator_frag_bytes >= min_bytes or (f.allocator_frag_ratio or 0) >= 1.1:
        defrag = (
            "CONFIG SET activedefrag yes compacts it in the background (some CPU)"
            if jemalloc
            else f"active defragmentation needs jemalloc (this Redis uses {f.allocator})"
        )
        if f.activedefrag == "yes":
            defrag = "activedefrag is on" + (" and running" if f.defrag_running else "; it may need time")
        f.advice.append(
            f"{human_bytes(f.allocator_frag_bytes)} is fragmentation inside the allocator's pages"
            f" (allocator_frag_ratio {f.allocator_frag_ratio or 0:.2f}): {defrag}"
        )
    if f.allocator_rss_bytes >= min_bytes:
        f.advice.append(
            f"{human_bytes(f.allocator_rss_bytes)} is free pages the allocator kept after a peak:"
            " MEMORY PURGE (redis.memory_purge) returns them to the OS"
        )
    if f.rss_overhead_bytes >= min_bytes:
        f.advice.append(
            f"{human_bytes(f.rss_overhead_bytes)} is other process memory (a fork's copy-on-write, Lua,"
            " modules): it goes when the child process or script ends"
        )
    if not f.advice:
        f.advice.append("the excess is spread thin; a restart of a replica first, then a failover, resets it")


# --------------------------------------------------------------------------------------- fork cost


@dataclass
class ForkCost:
    """What a BGSAVE (or AOF rewrite) would cost: the fork's pause and the copy-on-write memory."""

    rss: int
    latest_fork_ms: float | None
    estimated_fork_ms: float
    last_cow_bytes: int | None
    free_host_bytes: int | None
    maxmemory: int
    bgsave_in_progress: bool
    verdict: str
    problem: bool


FORK_MS_PER_GIB = 20.0
"""A fork copies the page tables: roughly 10-20 ms per GiB of RSS on Linux VMs (more on Xen)."""


def fork_cost(info: Mapping[str, Any], *, pause_warn_ms: float = 500.0) -> ForkCost:
    """From INFO (all sections): the last fork's pause, the last copy-on-write size, and host memory."""
    rss = int(info.get("used_memory_rss", 0))
    forks = int(info.get("total_forks", 0) or 0)
    latest = int(info.get("latest_fork_usec", 0) or 0) / 1000 if forks else None
    estimated = latest if latest is not None else rss / (1 << 30) * FORK_MS_PER_GIB
    cows = [int(info.get(k, 0) or 0) for k in ("rdb_last_cow_size", "aof_last_cow_size")]
    last_cow = max(cows) if forks and any(cows) else None
    total = int(info.get("total_system_memory", 0) or 0)
    free = total - rss if total else None
    # Worst case: every page is written during the save; seen so far: the last save's copy.
    need = int(last_cow * 1.5) if last_cow is not None else rss
    problems: list[str] = []
    if estimated >= pause_warn_ms:
        problems.append(f"the fork would pause Redis ~{estimated:.0f} ms")
    if free is not None and need > free:
        problems.append(
            f"copy-on-write may need up to {human_bytes(need)} and the host has {human_bytes(free)} free"
            " (the OOM killer may end Redis)"
        )
    pause = (
        f"last fork paused Redis {latest:.0f} ms"
        if latest is not None
        else f"a fork of {human_bytes(rss)} pauses Redis ~{estimated:.0f} ms"
    )
    cow = f", the last save copied {human_bytes(last_cow)} on write" if last_cow is not None else ""
    room = f"; {human_bytes(free)} free on the host" if free is not None else ""
    if problems:
        verdict = (
            f"BGSAVE is costly here: {'; '.join(problems)}. Snapshot from a replica, or at low write"
            f" traffic ({pause}{cow}{room})"
        )
    else:
        verdict = f"BGSAVE cost is fine: {pause}{cow}{room}"
    return ForkCost(
        rss=rss,
        latest_fork_ms=latest,
        estimated_fork_ms=round(estimated, 1),
        last_cow_bytes=last_cow,
        free_host_bytes=free,
        maxmemory=int(info.get("maxmemory", 0) or 0),
        bgsave_in_progress=bool(int(info.get("rdb_bgsave_in_progress", 0) or 0)),
        verdict=verdict,
        problem=bool(problems),
    )


# ------------------------------------------------------------------------------------- replication


@dataclass
class ReplicaLink:
    addr: str
    state: str
    lag_s: int | None
    behind_bytes: int | None


@dataclass
class Replication:
    role: str
    replicas: list[ReplicaLink]
    link_status: str | None
    last_io_s: int | None
    sync_in_progress: bool
    master: str | None
    backlog_size: int
    backlog_histlen: int
    verdict: str
    problems: list[str]


def replication(info: Mapping[str, Any], *, lag_warn_s: int = 10) -> Replication:
    """INFO replication judged: replicas' state, lag in seconds and bytes against the backlog."""
    role = str(info.get("role", "?"))
    offset = int(info.get("master_repl_offset", 0) or 0)
    backlog = int(info.get("repl_backlog_size", 0) or 0)
    histlen = int(info.get("repl_backlog_histlen", 0) or 0)
    replicas: list[ReplicaLink] = []
    for name, v in info.items():
        if name.startswith("slave") and name[5:].isdigit() and isinstance(v, Mapping):
            behind = offset - int(v["offset"]) if "offset" in v else None
            lag = int(v["lag"]) if "lag" in v else None
            replicas.append(ReplicaLink(f"{v.get('ip')}:{v.get('port')}", str(v.get("state")), lag, behind))
    problems: list[str] = []
    if role == "master":
        for r in replicas:
            if r.state != "online":
                problems.append(f"replica {r.addr} is {r.state}, not online")
            elif r.lag_s is not None and r.lag_s > lag_warn_s:
                problems.append(f"replica {r.addr} last acknowledged {r.lag_s} s ago")
            if r.behind_bytes is not None and backlog and r.behind_bytes > backlog:
                problems.append(
                    f"replica {r.addr} is {human_bytes(r.behind_bytes)} behind, more than the"
                    f" {human_bytes(backlog)} backlog: a broken link means a full resync; raise"
                    " repl-backlog-size"
                )
        links = ", ".join(
            f"{r.addr} {r.state}" + (f" {human_bytes(r.behind_bytes)} behind" if r.behind_bytes else "")
            for r in replicas
        )
        head = f"primary with {len(replicas)} replica(s)" + (f": {links}" if links else "")
        if not replicas:
            head += " (a failure loses what the last snapshot does not have)"
        verdict = (
            f"{head}; backlog {human_bytes(backlog)}, {pct(histlen / backlog if backlog else None)} filled"
        )
        link = io = master = None
        syncing = False
    else:
        link = str(info.get("master_link_status", "?"))
        io = int(info["master_last_io_seconds_ago"]) if "master_last_io_seconds_ago" in info else None
        master = f"{info.get('master_host')}:{info.get('master_port')}"
        syncing = bool(int(info.get("master_sync_in_progress", 0) or 0))
        if link != "up":
            problems.append(
                f"link to the primary {master} is {link}: this replica serves stale data; check that the"
                " primary is up and reachable and that masterauth is right"
            )
        elif io is not None and io > lag_warn_s:
            problems.append(f"no data from the primary for {io} s")
        if syncing:
            problems.append("a full synchronisation is in progress")
        verdict = f"replica of {master}, link {link}" + (f", last I/O {io} s ago" if io is not None else "")
    if problems:
        verdict = f"replication problem: {'; '.join(problems)} ({verdict})"
    return Replication(role, replicas, link, io, syncing, master, backlog, histlen, verdict, problems)


async def config_value(client: aioredis.Redis, name: str, unavailable: dict[str, str]) -> str | None:
    """One CONFIG GET value, or None where CONFIG is refused (noted in ``unavailable``)."""
    reply = await optional(call(client, "CONFIG", "GET", name), "CONFIG GET", unavailable)
    return config_dict(reply).get(name)

"""Who is connected: CLIENT LIST grouped by name, host and command, with the buffers clients hold."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import redis.asyncio as aioredis

from bot.redisops.common import call, int_or_none, optional

# Commands a BullMQ worker (or any queue consumer) blocks on while waiting for jobs: normal, not stuck.
QUEUE_BLOCKING_COMMANDS = frozenset(
    {
        "brpoplpush",
        "blmove",
        "bzpopmin",
        "bzpopmax",
        "brpop",
        "blpop",
        "blmpop",
        "bzmpop",
        "xread",
        "xreadgroup",
    }
)


@dataclass
class ClientEntry:
    """One connection from CLIENT LIST, with the memory it holds on the server."""

    id: int
    addr: str
    name: str
    user: str
    cmd: str
    flags: str
    age_s: int
    idle_s: int
    tot_mem: int
    omem: int
    qbuf: int
    node: str = ""
    """The cluster primary the client is connected to (empty on a single node)."""

    @property
    def buffers(self) -> int:
        """Output plus query buffer: what a client that does not read (MONITOR, a stuck subscriber)
        or sends a huge command makes the server hold for it."""
        return self.omem + self.qbuf

    @property
    def replication_link(self) -> bool:
        """A replica's or the primary's connection: killing it forces a full resynchronisation."""
        return "S" in self.flags or "M" in self.flags

    def describe(self) -> str:
        """The client as people find it: address, name, command and age."""
        name = f" ({self.name})" if self.name else ""
        return f"{self.addr}{name} cmd={self.cmd} id={self.id}, connected {self.age_s} s"


@dataclass
class ClientsReport:
    source: str
    total: int | None
    maxclients: int | None
    blocked: int | None
    blocked_queue_workers: int | None
    blocked_by_cmd: dict[str, int]
    pubsub: int | None
    monitors: int | None
    replicas: int | None
    by_name: dict[str, int]
    by_host: dict[str, int]
    by_cmd: dict[str, int]
    total_mem: int | None
    total_omem: int | None
    total_qbuf: int | None
    top_memory: list[ClientEntry]
    info: dict[str, Any]
    unavailable: dict[str, str] = field(default_factory=dict)
    top_buffers: list[ClientEntry] = field(default_factory=list)
    """Clients holding output or query buffers, biggest first (``omem + qbuf``)."""
    used_memory: int | None = None
    """INFO memory's used_memory, which counts client buffers: what a buffer's share is of."""
    node_used_memory: dict[str, int] = field(default_factory=dict)
    """On a cluster, each primary's used_memory: a client's buffer is a share of its own node's."""


def parse_client_list(raw: bytes | str) -> list[dict[str, str]]:
    """CLIENT LIST lines as dicts; a value with spaces (a unix socket path) is glued back together."""
    text = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw
    clients: list[dict[str, str]] = []
    for line in text.splitlines():
        entry: dict[str, str] = {}
        last = ""
        for token in line.split(" "):
            name, eq, value = token.partition("=")
            if eq:
                entry[name] = value
                last = name
            elif last:
                entry[last] += " " + token
        if entry:
            clients.append(entry)
    return clients


def _host(addr: str) -> str:
    host, sep, _port = addr.rpartition(":")
    return host if sep else addr


async def clients_report(client: aioredis.Redis, *, top: int = 10) -> ClientsReport:
    """CLIENT LIST grouped by name, host and last command; INFO clients when CLIENT LIST is refused.

    Queue workers blocked on BRPOPLPUSH/BZPOPMIN/... are counted apart: for BullMQ that is idle
    waiting, not a problem.
    """
    unavailable: dict[str, str] = {}
    info = dict(await client.info("clients"))
    used_memory = int((await client.info("memory")).get("used_memory", 0)) or None
    maxclients = int_or_none(str(info["maxclients"])) if "maxclients" in info else None
    raw = await optional(call(client, "CLIENT", "LIST"), "CLIENT LIST", unavailable)
    if raw is None:
        return ClientsReport(
            source="info",
            total=int(info.get("connected_clients", 0)),
            maxclients=maxclients,
            blocked=int(info.get("blocked_clients", 0)),
            blocked_queue_workers=None,
            blocked_by_cmd={},
            pubsub=None,
            monitors=None,
            replicas=None,
            by_name={},
            by_host={},
            by_cmd={},
            total_mem=None,
            total_omem=None,
            total_qbuf=None,
            top_memory=[],
            info=info,
            unavailable=unavailable,
            used_memory=used_memory,
        )
    entries = [client_entry(c) for c in parse_client_list(raw)]
    blocked = [e for e in entries if "b" in e.flags]
    return ClientsReport(
        source="client list",
        total=len(entries),
        maxclients=maxclients,
        blocked=len(blocked),
        blocked_queue_workers=sum(1 for e in blocked if e.cmd in QUEUE_BLOCKING_COMMANDS),
        blocked_by_cmd=dict(Counter(e.cmd for e in blocked).most_common()),
        pubsub=sum(1 for e in entries if "P" in e.flags),
        monitors=sum(1 for e in entries if "O" in e.flags),
        replicas=sum(1 for e in entries if "S" in e.flags),
        by_name=dict(Counter(e.name or "(unnamed)" for e in entries).most_common(top)),
        by_host=dict(Counter(_host(e.addr) for e in entries).most_common(top)),
        by_cmd=dict(Counter(e.cmd for e in entries).most_common(top)),
        total_mem=sum(e.tot_mem for e in entries),
        total_omem=sum(e.omem for e in entries),
        total_qbuf=sum(e.qbuf for e in entries),
        top_memory=heapq.nlargest(top, entries, key=lambda e: (e.tot_mem, e.omem, e.qbuf)),
        info=info,
        unavailable=unavailable,
        top_buffers=heapq.nlargest(
            top, (e for e in entries if e.buffers), key=lambda e: (e.buffers, e.omem, e.id)
        ),
        used_memory=used_memory,
    )


def client_entry(c: dict[str, str]) -> ClientEntry:
    """One parsed CLIENT LIST line as a :class:`ClientEntry` (absent figures are 0)."""
    return ClientEntry(
        id=int(c.get("id", 0)),
        addr=c.get("addr", ""),
        name=c.get("name", ""),
        user=c.get("user", ""),
        cmd=c.get("cmd", ""),
        flags=c.get("flags", ""),
        age_s=int(c.get("age", 0)),
        idle_s=int(c.get("idle", 0)),
        tot_mem=int(c.get("tot-mem", 0)),
        omem=int(c.get("omem", 0)),
        qbuf=int(c.get("qbuf", 0)),
    )


async def find_clients(client: aioredis.Redis) -> list[ClientEntry]:
    """Every connection, as CLIENT LIST gives it (raises when CLIENT LIST is refused)."""
    return [client_entry(c) for c in parse_client_list(await call(client, "CLIENT", "LIST"))]


async def client_names(client: aioredis.Redis, unavailable: dict[str, str]) -> dict[str, str]:
    """Address -> name of the named connections ({} when CLIENT LIST is refused)."""
    raw = await optional(call(client, "CLIENT", "LIST"), "CLIENT LIST", unavailable)
    if raw is None:
        return {}
    return {c["addr"]: c["name"] for c in parse_client_list(raw) if c.get("name") and "addr" in c}


def merge_clients(reports: list[tuple[str, ClientsReport]], *, top: int) -> ClientsReport:
    """Every primary's clients as one report: counts added up, the biggest buffers and memory of all
    nodes sorted together, each entry naming its node."""

    def total(get: Callable[[ClientsReport], int | None]) -> int | None:
        values = [get(r) for _, r in reports]
        return None if any(v is None for v in values) else sum(v or 0 for v in values)

    def counts(get: Callable[[ClientsReport], dict[str, int]]) -> dict[str, int]:
        c: Counter[str] = Counter()
        for _, r in reports:
            c.update(get(r))
        return dict(c.most_common(top))

    entries = [replace(e, node=addr) for addr, r in reports for e in r.top_buffers]
    heavy = [replace(e, node=addr) for addr, r in reports for e in r.top_memory]
    unavailable = {f"{k} on {addr}": v for addr, r in reports for k, v in r.unavailable.items()}
    return ClientsReport(
        source="client list" if all(r.source == "client list" for _, r in reports) else "info",
        total=total(lambda r: r.total),
        maxclients=min((r.maxclients for _, r in reports if r.maxclients), default=None),
        blocked=total(lambda r: r.blocked),
        blocked_queue_workers=total(lambda r: r.blocked_queue_workers),
        blocked_by_cmd=counts(lambda r: r.blocked_by_cmd),
        pubsub=total(lambda r: r.pubsub),
        monitors=total(lambda r: r.monitors),
        replicas=total(lambda r: r.replicas),
        by_name=counts(lambda r: r.by_name),
        by_host=counts(lambda r: r.by_host),
        by_cmd=counts(lambda r: r.by_cmd),
        total_mem=total(lambda r: r.total_mem),
        total_omem=total(lambda r: r.total_omem),
        total_qbuf=total(lambda r: r.total_qbuf),
        top_memory=heapq.nlargest(top, heavy, key=lambda e: (e.tot_mem, e.omem, e.qbuf)),
        info={},
        unavailable=unavailable,
        top_buffers=heapq.nlargest(top, entries, key=lambda e: (e.buffers, e.omem, e.id)),
        used_memory=total(lambda r: r.used_memory),
        node_used_memory={addr: r.used_memory or 0 for addr, r in reports},
    )

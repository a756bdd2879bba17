"""Diagnostics on every primary of a Redis Cluster: one read-only function, run on each primary at
once, merged into one step result.

On a cluster each primary has its own memory, clients, slow log, latency events and allocator, so a
diagnostic that reads only the node in the URL sees a third of the picture (and misses the node in
trouble). :func:`on_primaries` runs a function on every primary concurrently; a node that cannot be
read (down, refusing the command) is reported beside the others' results, not fatal, unless no
node answered. On a single node (or a Sentinel's primary) it runs the function once, on the target's
client, with errors translated as before, so single-node results are unchanged.

Steps whose figures add up (INFO memory and keyspace, client buffers, slow log, keys without TTL)
merge the nodes' results themselves; the others use :func:`merge_outputs`, which names the nodes
that have something to say.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as rex

from bot.errors import StepError
from bot.formatting import join_blocks
from bot.redisconn import RedisTarget, describe_redis_error, redis_errors
from bot.steps.registry import StepContext, StepOutput, StepStatus

T = TypeVar("T")

_RANK: dict[StepStatus, int] = {"skipped": 0, "ok": 1, "warning": 2, "failed": 3}


@dataclass
class NodeRuns(Generic[T]):
    """Each primary's result by address (topology order), and why the others could not be read."""

    cluster: bool
    results: list[tuple[str, T]]
    errors: dict[str, str] = field(default_factory=dict)
    replica: str | None = None
    """The replica a single-node read ran on (``prefer_replica``), if one did."""

    def note(self) -> str:
        """``; not read: node A (why)`` for the summary, empty when every node answered."""
        if not self.errors:
            return ""
        return "; not read: " + "; ".join(f"node {a} ({why})" for a, why in self.errors.items())


async def on_primaries(
    target: RedisTarget, fn: Callable[[aioredis.Redis], Awaitable[T]], *, read: bool = False
) -> NodeRuns[T]:
    """``fn`` on every primary of a cluster at once, else once on the target's client.

    ``read=True`` lets a single-node target hand the read to a healthy replica
    (:meth:`RedisTarget.read_client`); cluster reads go to the primaries, which hold the slots.
    Raises (as a :class:`StepError`) only when no node could be read.
    """
    async with redis_errors(target.name):
        if not await target.is_cluster():
            client, replica = await target.read_client() if read else (target.client, None)
            return NodeRuns(False, [(target.node or target.name, await fn(client))], replica=replica)
        primaries = await target.primaries()

    async def one(addr: str, client: aioredis.Redis) -> tuple[str, T | None, StepError | None]:
        try:
            return addr, await fn(client), None
        except (rex.RedisError, OSError) as exc:
            return addr, None, describe_redis_error(exc, addr)
        except StepError as exc:
            return addr, None, exc

    done = await asyncio.gather(*(one(a, c) for a, c in primaries))
    results = [(a, v) for a, v, e in done if e is None and v is not None]
    errors = {a: str(e) for a, _, e in done if e is not None}
    if not results:
        first = next(e for _, _, e in done if e is not None)
        raise type(first)(f"no primary of {target.name} could be read: {'; '.join(errors.values())}")
    return NodeRuns(True, results, errors)


async def per_primary_step(
    ctx: StepContext, run: Callable[[aioredis.Redis], Awaitable[StepOutput]], what: str
) -> StepOutput:
    """A step whose body reads one node, run on every primary of a cluster and merged
    (:func:`merge_outputs`); on a single node, the body's own result."""
    runs = await on_primaries(ctx.target, run)
    if not runs.cluster:
        return runs.results[0][1]
    return merge_outputs(runs, what)


def worst(statuses: Sequence[StepStatus]) -> StepStatus:
    return max(statuses, key=lambda s: _RANK[s], default="ok")


def merge_outputs(runs: NodeRuns[StepOutput], what: str) -> StepOutput:
    """One result from each primary's: the nodes with a problem named first with their summary (the
    others counted), or when none has one, the first node's summary as an example; every node's
    details and data kept under its address. A node that could not be read makes it a warning."""
    outs = runs.results
    flagged = [(a, o) for a, o in outs if o.status in ("warning", "failed")]
    n = len(outs) + len(runs.errors)
    if flagged:
        summary = "; ".join(f"node {a}: {o.summary}" for a, o in flagged)
        if len(flagged) < len(outs):
            summary += f" ({len(outs) - len(flagged)} other primaries: no problem)"
    else:
        a, o = outs[0]
        summary = f"{what}: no problem on any of the {len(outs)} primaries read; node {a}: {o.summary}"
    statuses: list[StepStatus] = [o.status for _, o in outs]
    status = worst([*statuses, "warning"] if runs.errors else statuses)
    findings = [
        f"node {a}: {o.data['finding']}" for a, o in flagged if isinstance(o.data.get("finding"), str)
    ]
    data = {
        "cluster": True,
        "primaries": n,
        "nodes": {a: o.data for a, o in outs},
        "errors": runs.errors,
    }
    if findings:
        data["finding"] = findings[0]
    return StepOutput(
        summary=summary + runs.note(),
        data=data,
        status=status,
        details=join_blocks(*(f"node {a}:\n{o.details or o.summary}" for a, o in outs)),
    )

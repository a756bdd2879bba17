"""Redis Cluster targets against a real 3-primary cluster started here (``redis-server
--cluster-enabled yes`` x3, ``redis-cli --cluster create``), data written through a cluster client:
the report counts every key of every primary, the approved eviction empties ``agent:*`` everywhere
and nothing else, with no KEYS, DEL or FLUSH* on any node, and a resharding during the eviction
neither fails it nor lets keys escape."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bot import cluster
from bot.alerts import Notification
from bot.config import load_config
from bot.engine import Engine
from bot.errors import PlanRefused
from bot.incidents import IncidentState
from bot.redisconn import RedisTarget
from bot.steps import REGISTRY, StepContext
from tests.conftest import RecordingNotifier, RedisServer, alert_payload, person
from tests.topology import ClusterSetup

AGENTS, SESSIONS, JOBS = 6000, 600, 300
PLAYBOOK = """\
name: cluster-evict
match: {alertname: TestEvict}
steps:
  - {id: estimate, run: redis.memory_estimate, with: {sample: 2000}}
  - {id: consumers, run: redis.memory_report}
  - {id: evict, run: redis.evict, with: {pattern: "agent:*", batch: 200}}
  - {id: check, run: redis.verify_key_count, with: {pattern: "agent:*", max: 0, within: 5s}}
"""


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    setup = ClusterSetup(tmp_path_factory.mktemp("cluster"))
    yield setup
    setup.stop()


@pytest.fixture
def rc(topo: ClusterSetup) -> Iterator[redis.RedisCluster]:
    for n in topo.nodes:
        n.sync_client().flushall()
        n.sync_client().config_resetstat()
    client = topo.client()
    pipe = client.pipeline()
    for i in range(AGENTS):
        pipe.set(f"agent:{i}", "x" * 100)
    for i in range(SESSIONS):
        pipe.hset(f"sess:{i}", mapping={"user": str(i)})
    for i in range(JOBS):
        pipe.hset(f"bull:email:{i}", mapping={"name": "send"})
    pipe.execute()
    yield client
    client.close()


@pytest.fixture
async def target(topo: ClusterSetup) -> AsyncIterator[RedisTarget]:
    t = RedisTarget(name="cluster", url=topo.url)
    yield t
    await t.close()


def count(node: RedisServer, pattern: str) -> int:
    return sum(1 for _ in node.sync_client().scan_iter(match=pattern, count=1000))


def forbidden_calls(node: RedisServer) -> dict[str, Any]:
    stats = node.sync_client().info("commandstats")
    return {
        k: v
        for k, v in stats.items()
        if k in ("cmdstat_keys", "cmdstat_del", "cmdstat_flushdb", "cmdstat_flushall")
    }


async def test_report_counts_every_key_and_the_approved_eviction_empties_agent_on_every_primary(
    tmp_path: Path, topo: ClusterSetup, rc: redis.RedisCluster
) -> None:
    per_node = {n.address: n.sync_client().dbsize() for n in topo.nodes}
    assert all(per_node.values()), "the keys are spread over the three primaries"
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "evict.yaml").write_text(PLAYBOOK)
    (tmp_path / "bot.yaml").write_text(
        f"targets:\n  - match: {{job: redis}}\n    url: {topo.url}\nplaybooks: playbooks\n"
        "protected_patterns: ['sess:*']\nscheduler: {enabled: false}\n"
    )
    engine = Engine(load_config(tmp_path / "bot.yaml"), notifier=RecordingNotifier())
    await engine.start()
    try:
        result = await engine.intake.receive(Notification.model_validate(alert_payload("TestEvict")))
        await engine.runner.drain()
        inc = await engine.store.get_incident(result.new[0])
        assert inc.status == IncidentState.AWAITING_APPROVAL, inc.note
        runs = {s.step_id: s for s in inc.steps}
        report = runs["consumers"].data
        assert report["scanned_keys"] == AGENTS + SESSIONS + JOBS == report["dbsize"]
        assert {n["node"]: n["keys"] for n in report["nodes"]} == per_node
        assert next(p["keys"] for p in report["prefixes"] if p["pattern"] == "agent:*") == AGENTS
        assert "3 primaries:" in runs["consumers"].summary
        estimate = runs["estimate"].data
        assert (
            estimate["dbsize"] == AGENTS + SESSIONS + JOBS
            and estimate["namespaces"][0]["pattern"] == "agent:*"
        )
        pending = inc.pending_step
        assert pending is not None and pending["plan"]["estimated_keys"] == AGENTS
        assert pending["plan"]["details"]["counted_by"].startswith("the memory report")

        done = await engine.runner.decide(inc.id, person("alice"), True)
        assert done.executed and done.result is not None, done.message
        assert done.result.data["deleted"] == AGENTS
        assert sorted(done.result.data["nodes"]) == sorted(per_node)
        final = await engine.store.get_incident(inc.id)
        assert final.status == IncidentState.VERIFIED, final.note
    finally:
        await engine.stop()
    for node in topo.nodes:
        assert count(node, "agent:*") == 0, node.address
        assert forbidden_calls(node) == {}, node.address
    assert sum(count(n, "sess:*") for n in topo.nodes) == SESSIONS
    assert sum(count(n, "bull:*") for n in topo.nodes) == JOBS


def tagged(
    topo: ClusterSetup, rc: redis.RedisCluster, owner: RedisServer, n: int, skip: int = 0
) -> tuple[int, list[bytes]]:
    """``n`` new agent keys sharing one hash tag, in a slot ``owner`` holds: (slot, keys)."""
    ranges = topo.slot_ranges()
    tags = (f"t{i}" for i in range(10_000))
    found = [t for t in tags if topo.owner(int(rc.keyslot(t)), ranges) is owner][skip]
    keys = [f"agent:{{{found}}}:{i}".encode() for i in range(n)]
    rc.mset(dict.fromkeys(keys, b"x"))
    return int(rc.keyslot(found)), keys


async def test_moved_and_ask_are_followed_key_by_key(topo: ClusterSetup, rc: redis.RedisCluster) -> None:
    """Keys of a slot that moved (MOVED) and of a slot half-way through a migration (ASK) are
    unlinked on their new node, without an error."""
    a, b = topo.nodes[0], topo.nodes[1]
    moved_slot, moved = tagged(topo, rc, a, 20)
    asked_slot, asked = tagged(topo, rc, a, 20, skip=1)
    topo.migrate(moved_slot, a, b)
    topo.migrate(asked_slot, a, b, keys=10, finish=False)
    node_a = redis.asyncio.Redis(port=a.port)
    made: list[redis.asyncio.Redis] = []

    def connect(host: str, port: int) -> redis.asyncio.Redis:
        made.append(redis.asyncio.Redis(host=host, port=port))
        return made[-1]

    try:
        with pytest.raises(redis.exceptions.ResponseError):  # what a multi-key UNLINK gets here
            await node_a.unlink(*moved[:2])
        removed = await cluster.unlink_each(node_a, moved + asked, connect)
    finally:
        topo.migrate(asked_slot, a, b)  # finish, so the cluster is whole for the next test
        await node_a.aclose()
        for c in made:
            await c.aclose()
    assert removed == len(moved) + len(asked)
    assert not any(rc.exists(k) for k in moved + asked)
    assert {c.connection_pool.connection_kwargs["port"] for c in made} == {b.port}


async def test_a_resharding_during_the_eviction_neither_fails_it_nor_lets_keys_escape(
    topo: ClusterSetup, rc: redis.RedisCluster, target: RedisTarget
) -> None:
    first, last = topo.nodes[0], topo.nodes[-1]
    half, _ = tagged(topo, rc, first, 50)
    late, _ = tagged(topo, rc, last, 50)
    agents = AGENTS + 100
    events: list[str] = []

    async def checkpoint(done: dict[str, object]) -> None:
        # While the first primary is walked: a slot of it starts migrating (its keys answer ASK).
        if not events:
            topo.migrate(half, first, topo.nodes[1], keys=5, finish=False)
            events.append("half")
        # Once the first primary is done: a slot moves from the last primary (not walked yet) to
        # it, so its keys are where the walk has already been.
        elif len(events) == 1 and count(first, "agent:*") == 0:
            topo.migrate(half, first, topo.nodes[1])
            topo.migrate(late, last, first)
            events.append("late")

    st = REGISTRY["redis.evict"]
    assert st.plan is not None and st.execute is not None
    params = st.params(pattern="agent:*", batch=100)
    ctx = StepContext(
        target=target,
        protected_patterns=("bull:*", "sess:*"),
        settings={"checkpoint": checkpoint, "plan_margin": 0.2},
    )
    plan = await st.plan(ctx, params)
    assert plan.estimated_keys == agents
    out = await st.execute(ctx, params, plan)
    assert events == ["half", "late"], "both migrations happened during the eviction"
    assert out.data["deleted"] == agents
    for node in topo.nodes:
        assert count(node, "agent:*") == 0, node.address
    assert sum(count(n, "sess:*") for n in topo.nodes) == SESSIONS
    topo.migrate(late, first, last)  # back where they were
    topo.migrate(half, topo.nodes[1], first)


async def test_flushdb_on_a_cluster_lists_every_primary_and_needs_two_approvers(
    topo: ClusterSetup, rc: redis.RedisCluster, target: RedisTarget
) -> None:
    st = REGISTRY["redis.flushdb"]
    assert st.plan is not None and st.execute is not None
    ctx = StepContext(target=target, protected_patterns=("bull:*", "sess:*"))
    with pytest.raises(PlanRefused, match="protected keys exist in db 0 of cluster"):
        await st.plan(ctx, st.params(snapshot_first=False))
    for n in topo.nodes:
        c = n.sync_client()
        for pattern in ("sess:*", "bull:*"):
            keys = list(c.scan_iter(match=pattern, count=1000))
            for k in keys:
                c.unlink(k)
    plan = await st.plan(ctx, st.params(snapshot_first=False))
    assert plan.approvers_required == 2
    assert sorted(c.name for c in plan.changes) == sorted(n.address for n in topo.nodes)
    assert {c.op for c in plan.changes} == {"flushdb"} and plan.estimated_keys == AGENTS
    out = await st.execute(ctx, st.params(snapshot_first=False), plan)
    assert out.data["deleted"] == AGENTS and len(out.data["nodes"]) == 3
    assert all(n.sync_client().dbsize() == 0 for n in topo.nodes)
    assert all("cmdstat_flushall" not in n.sync_client().info("commandstats") for n in topo.nodes)

"""Diagnostics on every primary of a real 3-primary Redis Cluster (``redis-server --cluster-enabled
yes`` x3, ``redis-cli --cluster create``), the target given by the first node's URL: slow commands
on two other primaries both appear in the slow log, named by node; a MONITOR client on a primary
that is not the URL's, never reading while traffic flows, is named with its node by the clients and
memory diagnostics, and ``redis.client_kill`` behind an approval disconnects it on that node; INFO
totals are the sums over the nodes; a node that cannot be read is reported, not fatal."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bot.alerts import Notification
from bot.config import load_config
from bot.engine import Engine
from bot.errors import PlanRefused, StepError
from bot.incidents import IncidentState, StepStatus
from bot.planview import describe_plan
from bot.redisconn import RedisTarget, with_address
from bot.steps import REGISTRY, StepContext, StepOutput
from tests.conftest import RecordingNotifier, RedisServer, alert_payload, person
from tests.test_client_buffers import HOG_BYTES, Monitor, monitor_entry
from tests.topology import ClusterSetup

KEYS, EXPIRING = 3000, 1000
PLAYBOOK = """\
name: cluster-clients
match: {alertname: TestClients}
steps:
  - {id: memory, run: redis.info, with: {section: memory}}
  - {id: clients, run: redis.clients, with: {top: 5}}
  - {id: kill, run: redis.client_kill, with: {buffers_over: 32mb}}
  - {id: check, run: redis.verify_memory_below, with: {ratio: 0.8, within: 20s}}
"""


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    setup = ClusterSetup(tmp_path_factory.mktemp("cluster"))
    yield setup
    setup.stop()


@pytest.fixture
def rc(topo: ClusterSetup) -> Iterator[redis.RedisCluster]:
    for n in topo.nodes:
        c = n.sync_client()
        c.flushall()
        c.config_set("maxmemory", 0)
        c.slowlog_reset()
    client = topo.client()
    pipe = client.pipeline()
    for i in range(KEYS):
        pipe.set(f"agent:{i}", "x" * 50, ex=3600 if i < EXPIRING else None)
    pipe.execute()
    yield client
    client.close()
    for n in topo.nodes:
        n.sync_client().config_set("maxmemory", 0)


@pytest.fixture
async def target(topo: ClusterSetup) -> AsyncIterator[RedisTarget]:
    t = RedisTarget(name="cluster", url=topo.url)
    yield t
    await t.close()


async def run(target: RedisTarget, name: str, **params: Any) -> StepOutput:
    st = REGISTRY[name]
    assert st.run is not None
    return await st.run(StepContext(target=target), st.params(**params))


async def test_slow_commands_on_two_primaries_both_appear_named_by_node(
    topo: ClusterSetup, rc: redis.RedisCluster, target: RedisTarget
) -> None:
    b, c = topo.nodes[1], topo.nodes[2]  # neither is the node in the URL
    for node, seconds in ((b, "0.03"), (c, "0.05")):
        node.sync_client().execute_command("DEBUG", "SLEEP", seconds)
    out = await run(target, "redis.slowlog", threshold_ms=20)
    slow = [(e["node"], e["command"]) for e in out.data["entries"] if e["duration_ms"] >= 20]
    assert sorted(slow) == sorted([(b.address, "DEBUG SLEEP 0.03"), (c.address, "DEBUG SLEEP 0.05")])
    assert out.status == "warning" and out.data["over_threshold"] == 2
    assert "DEBUG SLEEP 0.05 from" in out.summary and f"on node {c.address}" in out.summary, out.summary
    assert f"3 primaries read, slow on {', '.join(sorted([b.address, c.address]))}" in out.summary
    assert b.address in out.details and c.address in out.details


async def test_info_totals_and_keyspace_are_sums_over_the_nodes(
    topo: ClusterSetup, rc: redis.RedisCluster, target: RedisTarget
) -> None:
    limits = {n.address: (64 + 16 * i) << 20 for i, n in enumerate(topo.nodes)}
    for n in topo.nodes:
        n.sync_client().config_set("maxmemory", limits[n.address])
    memory = await run(target, "redis.info", section="memory")
    nodes = memory.data["nodes"]
    assert set(nodes) == set(limits)
    assert {a: f["maxmemory"] for a, f in nodes.items()} == limits
    totals = memory.data["totals"]
    assert totals["maxmemory"] == sum(limits.values())
    assert totals["used_memory"] == sum(f["used_memory"] for f in nodes.values())
    for n in topo.nodes:  # each node's figure is that node's own INFO (used memory moves a little)
        own = int(n.sync_client().info("memory")["used_memory"])
        assert abs(nodes[n.address]["used_memory"] - own) < 1 << 20, n.address
    assert "3 primaries use" in memory.summary and "per node:" in memory.summary
    assert memory.data["figures"]["memory"]["node"] == memory.data["fullest"]

    for n in topo.nodes:
        n.sync_client().config_resetstat()
    for i in range(30):
        assert rc.get(f"agent:{i * 97}") is not None
    for i in range(10):
        assert rc.get(f"missing:{i}") is None
    stats = await run(target, "redis.info", section="stats")
    assert stats.data["figures"]["stats"]["hits"] == 30 and stats.data["figures"]["stats"]["misses"] == 10
    assert (
        stats.summary.startswith("hit ratio 75.0% (30 hits / 10 misses)")
        and "over 3 primaries" in stats.summary
    )
    assert sum(int(i["keyspace_hits"]) for i in stats.data["nodes"].values()) == 30

    keyspace = await run(target, "redis.info", section="keyspace")
    assert keyspace.data["info"]["db0"] == {"keys": KEYS, "expires": EXPIRING}
    per_node = {n.address: n.sync_client().dbsize() for n in topo.nodes}
    assert sum(per_node.values()) == KEYS and all(per_node.values())
    assert f"db0: {KEYS} keys ({EXPIRING} with TTL) over 3 primaries" in keyspace.summary

    ttl = await run(target, "redis.keys_without_ttl")
    assert ttl.data["databases"]["db0"] == {"keys": KEYS, "expires": EXPIRING, "without_ttl": KEYS - EXPIRING}
    assert f"db0: {KEYS - EXPIRING:,} of {KEYS:,} keys without TTL (summed over 3 primaries)" in ttl.summary
    assert ttl.data["sampled"] == KEYS, "the sample is taken on every primary"
    assert "growth unknown: no earlier reading (no Prometheus configured)" in ttl.summary


async def test_the_other_diagnostics_run_on_every_primary(
    topo: ClusterSetup, rc: redis.RedisCluster, target: RedisTarget
) -> None:
    addrs = {n.address for n in topo.nodes}
    topo.nodes[2].sync_client().config_set("latency-monitor-threshold", 0)
    topo.nodes[1].sync_client().config_set("latency-monitor-threshold", 10)
    for name, params in (
        ("redis.memory_doctor", {}),
        ("redis.latency_doctor", {}),
        ("redis.fork_cost", {}),
        ("redis.replication", {}),
        ("redis.eviction_policy", {}),
        ("redis.latency", {"interval": 0.2, "pings": 2}),
    ):
        out = await run(target, name, **params)
        assert set(out.data["nodes"]) == addrs, name
        assert out.data["errors"] == {} and out.status != "failed", (name, out.summary)
    doctor = await run(target, "redis.latency_doctor")
    topo.nodes[1].sync_client().config_set("latency-monitor-threshold", 0)
    assert doctor.data["nodes"][topo.nodes[2].address]["monitor_off"] is True
    assert doctor.data["nodes"][topo.nodes[1].address]["monitor_off"] is False


async def test_a_node_that_refuses_is_reported_and_the_others_still_read(
    topo: ClusterSetup, rc: redis.RedisCluster
) -> None:
    """One primary whose ACL refuses INFO to the bot's user: named with the reason, not fatal."""
    refusing = topo.nodes[2]
    for n in topo.nodes:
        rules = ["on", ">pw", "~*", "&*", "+@all"] + (["-info"] if n is refusing else [])
        n.sync_client().execute_command("ACL", "SETUSER", "diag", "reset", *rules)
    t = RedisTarget(
        name="cluster", url=with_address("redis://diag:pw@x:1/0", "127.0.0.1", topo.nodes[0].port)
    )
    try:
        out = await run(t, "redis.fork_cost")
        assert set(out.data["nodes"]) == {n.address for n in topo.nodes[:2]}
        assert list(out.data["errors"]) == [refusing.address]
        assert out.status == "warning"
        assert f"not read: node {refusing.address} (Redis {refusing.address} does not allow" in out.summary
    finally:
        await t.close()
        for n in topo.nodes:
            n.sync_client().acl_deluser("diag")


def fill(node: RedisServer, hog: Monitor, size: int = HOG_BYTES) -> int:
    """Traffic on ``node`` (ECHO needs no slot) until the monitor holds ``size`` bytes of output."""
    r = node.sync_client()
    value = b"v" * (256 << 10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        entry = monitor_entry(r, hog.addr)
        assert entry is not None, "the monitor was disconnected"
        if int(entry["omem"]) >= size:
            return int(entry["omem"])
        pipe = r.pipeline(transaction=False)
        for _ in range(16):
            pipe.echo(value)
        pipe.execute()
    raise AssertionError("the monitor's output buffer did not grow")


async def test_a_monitor_on_another_primary_is_named_and_the_approved_kill_disconnects_it_there(
    tmp_path: Path, topo: ClusterSetup, rc: redis.RedisCluster
) -> None:
    url_node, node = topo.nodes[0], topo.nodes[1]
    sync = node.sync_client()
    hog = Monitor(node.port)
    bystander = redis.Redis(port=node.port, client_name="checkout-api")
    try:
        deadline = time.monotonic() + 5
        while (entry := monitor_entry(sync, hog.addr)) is None or "O" not in entry["flags"]:
            assert time.monotonic() < deadline, "MONITOR did not start"
            time.sleep(0.01)  # the server has not processed the MONITOR command yet
        omem = fill(node, hog)
        bystander.ping()
        used = int(sync.info("memory")["used_memory"])
        sync.config_set("maxmemory", int(used / 0.85))  # this primary is full of the monitor's buffer
        for other in (url_node, topo.nodes[2]):
            other.sync_client().config_set("maxmemory", 1 << 30)
        (tmp_path / "playbooks").mkdir()
        (tmp_path / "playbooks" / "clients.yaml").write_text(PLAYBOOK)
        (tmp_path / "bot.yaml").write_text(
            f"targets:\n  - match: {{job: redis}}\n    url: {topo.url}\nplaybooks: playbooks\n"
            "scheduler: {enabled: false}\n"
        )
        engine = Engine(load_config(tmp_path / "bot.yaml"), notifier=RecordingNotifier())
        await engine.start()
        try:
            result = await engine.intake.receive(Notification.model_validate(alert_payload("TestClients")))
            await engine.runner.drain()
            inc = await engine.store.get_incident(result.new[0])
            assert inc.status == IncidentState.AWAITING_APPROVAL, inc.note
            runs = {s.step_id: s for s in inc.steps}
            memory, clients = runs["memory"], runs["clients"]
            assert memory.status == StepStatus.WARNING
            assert memory.summary.startswith(f"memory high on node {node.address} at "), memory.summary
            assert f"node {node.address}: client buffers hold" in memory.summary
            assert clients.status == StepStatus.WARNING
            share = clients.data["node_buffers"][node.address] / sum(clients.data["node_buffers"].values())
            assert share > 0.99, "the monitor holds nearly every buffer byte of the cluster"
            assert clients.summary.startswith(
                f"node {node.address} holds {share * 100:.1f}% of the clients' output buffers:"
                f" client {hog.addr} cmd=monitor"
            ), clients.summary
            assert f"(id {entry['id']} on node {node.address})" in clients.summary
            top = clients.data["top_buffers"][0]
            assert (top["addr"], top["node"]) == (hog.addr, node.address) and top["omem"] >= omem * 0.9

            pending = inc.pending_step
            assert pending is not None and pending["id"] == "kill"
            plan = pending["plan"]
            assert plan["changes"] == [
                {
                    "op": "client_kill",
                    "name": str(entry["id"]),
                    "before": hog.addr,
                    "after": None,
                    "node": node.address,
                }
            ]
            assert (
                f"CLIENT KILL ID {entry['id']} on node {node.address}: disconnect the client at {hog.addr}"
                in (describe_plan(plan))
            )
            assert monitor_entry(sync, hog.addr) is not None, "nothing is disconnected before the approval"

            report = await engine.runner.decide(inc.id, person("alice"), True)
            assert report.executed and report.result is not None, report.message
            data = report.result.data
            assert (data["killed"], data["gone"], data["node"], data["addr"]) == (
                1,
                True,
                node.address,
                hog.addr,
            )
            assert monitor_entry(sync, hog.addr) is None, "the monitor is disconnected on its node"
            assert bystander.ping(), "other clients stay connected"
            final = await engine.store.get_incident(inc.id)
            assert final.status == IncidentState.VERIFIED, final.note
            check = {s.step_id: s for s in final.steps}["check"]
            assert check.data["node"] == node.address and f"on node {node.address}" in check.summary
        finally:
            await engine.stop()
    finally:
        hog.close()
        bystander.close()
        sync.config_set("maxmemory", 0)


def same_id(a: RedisServer, b: RedisServer) -> tuple[redis.Redis, redis.Redis]:
    """A connection to each node with the same client ID there (named worker-a, worker-b): the
    node whose counter is behind gets new connections until it catches up."""
    ca = redis.Redis(port=a.port, client_name="worker-a")
    cb = redis.Redis(port=b.port, client_name="worker-b")
    while (ia := int(ca.client_id())) != (ib := int(cb.client_id())):
        if ia < ib:
            ca.close()
            ca = redis.Redis(port=a.port, client_name="worker-a")
        else:
            cb.close()
            cb = redis.Redis(port=b.port, client_name="worker-b")
    return ca, cb


async def test_client_ids_are_per_node_and_the_kill_goes_only_to_a_current_primary(
    topo: ClusterSetup, rc: redis.RedisCluster, target: RedisTarget
) -> None:
    st = REGISTRY["redis.client_kill"]
    assert st.plan is not None and st.execute is not None
    ctx = StepContext(target=target)
    a, b = topo.nodes[1], topo.nodes[2]
    ca, cb = same_id(a, b)
    try:
        shared = int(ca.client_id())
        assert int(cb.client_id()) == shared, "each node numbers its clients: the same ID on two nodes"
        with pytest.raises(PlanRefused, match=f"with id {shared} is connected to several primaries"):
            await st.plan(ctx, st.params(id=shared))
        entry = next(c for c in b.sync_client().client_list() if c["name"] == "worker-b")
        plan = await st.plan(ctx, st.params(addr=entry["addr"]))
        assert plan.changes[0].node == b.address and plan.changes[0].name == entry["id"]
        assert plan.summary.startswith(f"CLIENT KILL ID {entry['id']} on node {b.address}: disconnect")

        elsewhere = plan.model_copy(
            update={"changes": [plan.changes[0].model_copy(update={"node": "127.0.0.1:1"})]}
        )
        with pytest.raises(StepError, match=r"127\.0\.0\.1:1 is not a primary of cluster now"):
            await st.execute(ctx, st.params(addr=entry["addr"]), elsewhere)
        assert cb.ping(), "nothing was killed"
        out = await st.execute(ctx, st.params(addr=entry["addr"]), plan)
        assert out.data["killed"] == 1 and out.data["node"] == b.address
        assert not any(c["name"] == "worker-b" for c in b.sync_client().client_list())
        assert ca.ping(), "the client of the other node is untouched"
    finally:
        ca.close()
        cb.close()

"""Sentinel targets against Debian's redis-sentinel with a primary and a replica started here: the
bot asks Sentinel for the primary before each step and action, a failover between approval and
execution makes a new plan on the new primary, and ``prefer_replica`` reads on the in-sync replica."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bot.alerts import Notification
from bot.config import load_config
from bot.engine import Engine
from bot.errors import ConfigError
from bot.incidents import IncidentState
from bot.steps import REGISTRY, StepContext, StepOutput
from tests.conftest import RecordingNotifier, alert_payload, person, seed_platform
from tests.topology import SentinelSetup, wait

PLAYBOOK = """\
name: sentinel-evict
match: {alertname: TestEvict}
steps:
  - {id: estimate, run: redis.memory_estimate}
  - {id: consumers, run: redis.memory_report}
  - {id: evict, run: redis.evict, with: {pattern: "agent:*", batch: 100}}
"""


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[SentinelSetup]:
    setup = SentinelSetup(tmp_path / "topology")
    yield setup
    setup.stop()


def write(tmp_path: Path, setup: SentinelSetup, extra: str = "") -> Path:
    (tmp_path / "playbooks").mkdir(exist_ok=True)
    (tmp_path / "playbooks" / "evict.yaml").write_text(PLAYBOOK)
    path = tmp_path / "bot.yaml"
    path.write_text(f"targets:\n{setup.config(extra)}playbooks: playbooks\nscheduler: {{enabled: false}}\n")
    return path


def calls(server_client: redis.Redis, command: str) -> int:
    return int(server_client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


@pytest.mark.slow  # a real Sentinel failover: about 15 s
async def test_a_failover_between_approval_and_execution_replans_on_the_new_primary(
    tmp_path: Path, sentinel_setup: SentinelSetup
) -> None:
    setup = sentinel_setup
    primary = setup.primary.sync_client()
    seed_platform(primary, agents=300)
    wait(lambda: setup.replica.sync_client().dbsize() == primary.dbsize(), what="replicated")
    engine = Engine(load_config(write(tmp_path, setup)), notifier=RecordingNotifier())
    await engine.start()
    try:
        result = await engine.intake.receive(Notification.model_validate(alert_payload("TestEvict")))
        await engine.runner.drain()
        inc = await engine.store.get_incident(result.new[0])
        assert inc.status == IncidentState.AWAITING_APPROVAL, inc.note
        assert inc.target == "cache"
        first = inc.pending_step
        assert first is not None and first["plan"]["node"] == f"127.0.0.1:{setup.primary.port}"

        new_primary = setup.failover()
        moved = await engine.runner.decide(inc.id, person("alice"), True)
        assert not moved.executed
        assert (
            f"the primary moved from 127.0.0.1:{setup.primary.port} to 127.0.0.1:{new_primary.port} (a failover)"
            in moved.message
        )
        assert primary.exists("agent:0"), "nothing deleted on the old primary"
        again = await engine.store.get_incident(inc.id)
        second = again.pending_step
        assert second is not None and second["plan"]["node"] == f"127.0.0.1:{new_primary.port}"
        assert second["plan_hash"] != first["plan_hash"] and second["plan"]["estimated_keys"] == 300

        done = await engine.runner.decide(inc.id, person("alice"), True)
        assert done.executed and done.result is not None and done.result.data["deleted"] == 300
        now = new_primary.sync_client()
        assert not any(now.scan_iter("agent:*")), "agent:* emptied on the new primary"
        assert now.exists("bull:email:wait") and now.exists("sess:1")
    finally:
        await engine.stop()


async def test_prefer_replica_reads_on_the_in_sync_replica_and_never_acts_there(
    tmp_path: Path, sentinel_setup: SentinelSetup
) -> None:
    setup = sentinel_setup
    primary, replica = setup.primary.sync_client(), setup.replica.sync_client()
    seed_platform(primary, agents=500)
    wait(lambda: replica.dbsize() == primary.dbsize(), what="replicated")
    config = load_config(write(tmp_path, setup, "    prefer_replica: true\n"))
    tcfg = config.targets[0]
    assert tcfg.resolve({}, action=True).prefer_replica is False, "actions never go to a replica"
    target = tcfg.resolve({})

    async def run(name: str) -> StepOutput:
        st = REGISTRY[name]
        assert st.run is not None
        return await st.run(StepContext(target=target), st.params())

    try:
        assert await target.locate() == f"127.0.0.1:{setup.primary.port}"
        primary.config_resetstat()
        replica.config_resetstat()
        report = await run("redis.memory_report")
        estimate = await run("redis.memory_estimate")
        ttl = await run("redis.keys_without_ttl")
        where = f"127.0.0.1:{setup.replica.port}"
        for out in (report, estimate, ttl):
            assert out.data["replica"] == where and f"(read on replica {where})" in out.summary
        assert report.data["scanned_keys"] == primary.dbsize()
        assert calls(primary, "scan") == 0 and calls(primary, "randomkey") == 0, "no scan on the primary"
        assert calls(replica, "scan") > 0 and calls(replica, "randomkey") > 0

        replica.execute_command("REPLICAOF", "NO", "ONE")  # no longer a replica in sync
        fallback = await run("redis.memory_report")
        assert fallback.data["replica"] is None and "read on replica" not in fallback.summary
        assert calls(primary, "scan") > 0
    finally:
        await target.close()


def test_a_target_is_a_url_or_a_sentinel(tmp_path: Path) -> None:
    path = tmp_path / "bot.yaml"
    path.write_text(
        "targets:\n  - match: {job: redis}\n    url: redis://127.0.0.1:6379/0\n"
        "    sentinel: {addresses: ['127.0.0.1:26379'], master: m}\n"
        "  - match: {job: other}\n    sentinel: {addresses: ['nohost'], master: m}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "give exactly one of `url` or `sentinel`" in text
    assert "'nohost' is not host:port" in text


async def test_prefer_replica_on_a_url_target_finds_the_replica_from_the_primary(
    tmp_path: Path, make_redis: Any
) -> None:
    primary = make_redis()
    replica = make_redis("--replicaof", "127.0.0.1", str(primary.port))
    p, r = primary.sync_client(), replica.sync_client()
    seed_platform(p, agents=100)
    wait(
        lambda: r.info("replication")["master_link_status"] == "up" and r.dbsize() == p.dbsize(), what="sync"
    )
    wait(lambda: p.info("replication").get("slave0", {}).get("state") == "online", what="online")
    path = tmp_path / "bot.yaml"
    path.write_text(
        f"targets:\n  - match: {{job: redis}}\n    url: {primary.url}\n    prefer_replica: true\n"
    )
    target = load_config(path).targets[0].resolve({})
    try:
        r.config_resetstat()
        st = REGISTRY["redis.memory_report"]
        assert st.run is not None
        out = await st.run(StepContext(target=target), st.params())
        assert out.data["replica"] == f"127.0.0.1:{replica.port}"
        assert out.data["scanned_keys"] == p.dbsize()
        assert int(r.info("commandstats").get("cmdstat_scan", {}).get("calls", 0)) > 0
    finally:
        await target.close()

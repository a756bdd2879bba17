"""Guarded remediation against a real redis-server: plans, approvals, guardrails, audit, restarts.

The tests of decisions, approvals, guardrails and restarts take ``backend``: they run on SQLite and
on PostgreSQL (``bot_config`` adds the store's line)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bot import approval_rules
from bot.alerts import Notification
from bot.config import ApprovalConfig, Config, load_config
from bot.engine import Engine
from bot.errors import ActionStopped, AlreadyDecided, ApprovalError, DecisionRefused, NotFound
from bot.eviction import evict
from bot.incidents import ApprovalState, IncidentState, StepStatus, iso
from bot.playbook import load_playbooks
from bot.runner import KILL_SWITCH
from tests.conftest import RecordingNotifier, RedisServer, alert_payload, person, seed_platform, wait_for
from tests.pg import RawDB

PLAYBOOK = """\
name: evict-test
match: {alertname: TestEvict}
steps:
  - {id: memory, run: redis.info, with: {section: memory}}
  - {id: evict, run: redis.evict, with: {pattern: "agent:*", batch: 100}}
  - {id: check, run: redis.verify_key_count, with: {pattern: "agent:*", max: 0, within: 5s}}
  - {id: raise, run: redis.set_maxmemory, with: {factor: 1.5}, when: unresolved}
"""
FLUSH = """\
name: flush-test
match: {alertname: TestFlush}
steps:
  - {id: flush, run: redis.flushdb, with: {snapshot_first: true}}
"""


class Bot:
    """The engine as the service builds it, minus HTTP."""

    def __init__(self, config: Config, notifier: RecordingNotifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or RecordingNotifier()
        self.engine = Engine(config, notifier=self.notifier)
        self.playbooks = self.engine.playbooks

    async def __aenter__(self) -> Bot:
        await self.engine.start()
        self.store = self.engine.store
        self.runner = self.engine.runner
        self.intake = self.engine.intake
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.engine.stop()

    async def fire(self, alertname: str, status: str = "firing", fingerprint: str = "fp-1") -> int:
        result = await self.intake.receive(
            Notification.model_validate(alert_payload(alertname, status, fingerprint=fingerprint))
        )
        await self.runner.drain()
        ids = result.new or result.resolved
        assert ids, result
        return ids[0]


async def approve_in_store(store: Any, approval_id: int, who: str) -> Any:
    """Record an approval with quorum straight in the store (as a process that then dies would)."""
    ap = await store.get_approval(approval_id)
    ruling = approval_rules.decide(
        ap, person(who), True, ApprovalConfig(), requested_by=None, at=iso(time.time()) or ""
    )
    return await store.decide(
        ap.id,
        who=who,
        approve=True,
        seen=len(ap.decisions),
        decisions=list(ruling.decisions),
        state=ruling.state,
        decided_by=ruling.decided_by,
        approvers=ruling.approver_ids,
        target=None,
    )


@pytest.fixture
def bot_config(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis, asked_database_line: str
) -> Any:
    """Config factory; the store is PostgreSQL as well for a test that takes ``backend``."""

    def make(extra: str = "") -> Config:
        pb = tmp_path / "playbooks"
        pb.mkdir(exist_ok=True)
        (pb / "evict.yaml").write_text(PLAYBOOK)
        (pb / "flush.yaml").write_text(FLUSH)
        path = tmp_path / "bot.yaml"
        path.write_text(
            f"targets:\n  - match: {{job: redis}}\n    url: {redis_server.url}\n    maxmemory_ceiling: 512mb\n"
            f"playbooks: playbooks\nprotected_patterns: ['sess:*']\n{extra}{asked_database_line}"
        )
        return load_config(path)

    return make


@pytest.fixture
async def bot(bot_config: Any) -> AsyncIterator[Bot]:
    async with Bot(bot_config()) as b:
        yield b


def counts(r: redis.Redis) -> dict[str, int]:
    out: dict[str, int] = {}
    for key in r.scan_iter(count=1000):
        prefix = key.split(b":")[0].decode()
        out[prefix] = out.get(prefix, 0) + 1
    return out


def commands_used(r: redis.Redis) -> set[str]:
    return {k.removeprefix("cmdstat_") for k in r.info("commandstats")}


async def test_evict_removes_exactly_the_unprotected_matches(target: Any, redis_sync: redis.Redis) -> None:
    seed_platform(redis_sync, agents=3000)
    redis_sync.set("agent:pinned:1", "keep")
    redis_sync.set("agentx", "not matched")
    before = counts(redis_sync)
    res = await evict(
        target.client, "agent:*", ["bull:*", "sess:*", "agent:pinned:*"], max_keys=10**6, batch=128
    )
    after = counts(redis_sync)
    assert res.deleted == 3000 and res.protected_skipped == 1
    assert after["agent"] == 1 and redis_sync.get("agent:pinned:1") == b"keep"
    assert {k: v for k, v in after.items() if k != "agent"} == {
        k: v for k, v in before.items() if k != "agent"
    }
    assert redis_sync.exists("agentx")
    used = commands_used(redis_sync)
    assert {"scan", "unlink"} <= used
    assert not used & {"keys", "del", "flushall", "flushdb"}


async def test_evict_never_touches_protected_keys_even_when_the_pattern_names_them(
    target: Any, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync)
    res = await evict(target.client, "bull:*", ["bull:*"], max_keys=100)
    assert res.deleted == 0 and res.protected_skipped == 4
    assert counts(redis_sync)["bull"] == 4


async def test_evict_over_the_cap_stops_instead_of_deleting_up_to_it(
    target: Any, redis_sync: redis.Redis
) -> None:
    """A cap is a safety stop: 1000 matches under a cap of 250 stop the run, they are not trimmed."""
    seed_platform(redis_sync, agents=1000)
    with pytest.raises(ActionStopped, match="more than 250 keys match") as stopped:
        await evict(target.client, "agent:*", ["bull:*"], max_keys=250, batch=100, count=50)
    deleted = stopped.value.done["deleted"]
    assert isinstance(deleted, int) and deleted < 250
    assert counts(redis_sync)["agent"] == 1000 - deleted


async def test_evict_reaching_the_cap_with_nothing_left_is_not_stopped(
    target: Any, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=1000)
    res = await evict(target.client, "agent:*", ["bull:*"], max_keys=1000, batch=100, count=50)
    assert res.deleted == 1000
    assert counts(redis_sync).get("agent", 0) == 0


async def test_evict_counts_only_what_unlink_removed_towards_the_cap(
    target: Any, redis_sync: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys deleted by someone else between SCAN and UNLINK do not count towards the cap."""
    seed_platform(redis_sync, agents=1000)
    real_unlink = target.client.unlink
    stolen = 0

    async def unlink_after_a_rival(*keys: bytes) -> Any:
        nonlocal stolen
        if stolen < 5:
            stolen += redis_sync.delete(keys[0])
        return await real_unlink(*keys)

    monkeypatch.setattr(target.client, "unlink", unlink_after_a_rival)
    res = await evict(target.client, "agent:*", ["bull:*"], max_keys=995, batch=100, count=50)
    assert stolen == 5
    assert res.deleted == 995
    assert counts(redis_sync).get("agent", 0) == 0


async def test_evict_failing_midway_leaves_the_client_usable(target: Any, redis_sync: redis.Redis) -> None:
    seed_platform(redis_sync, agents=2000)

    calls = 0

    async def boom(message: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise RuntimeError("chat is down")

    with pytest.raises(RuntimeError, match="chat is down"):
        await evict(
            target.client, "agent:*", ["bull:*"], max_keys=10**6, batch=100, count=100,
            progress=boom, progress_every_s=0,
        )  # fmt: skip
    for _ in range(5):
        assert await target.client.ping() is True
    left = counts(redis_sync)["agent"]
    assert 0 < left < 2000
    res = await evict(target.client, "agent:*", ["bull:*"], max_keys=10**6)
    assert res.deleted == left and counts(redis_sync).get("agent", 0) == 0


async def test_approved_eviction_runs_verifies_and_is_audited(
    backend: str, bot: Bot, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=2000)
    inc_id = await bot.fire("TestEvict")
    inc = await bot.store.get_incident(inc_id)
    assert inc.status == IncidentState.AWAITING_APPROVAL
    pending = inc.pending_step
    assert pending is not None and pending["id"] == "evict" and pending["type"] == "redis.evict"
    plan = pending["plan"]
    assert plan["estimated_keys"] == 2000 and plan["protected_excluded"] == 0
    assert plan["estimated_bytes"] > 2000 * 50
    assert plan["pattern"] == "agent:*" and plan["db"] == 0 and len(plan["sample_keys"]) == 5
    assert counts(redis_sync)["agent"] == 2000, "nothing is deleted before the approval"

    report = await bot.runner.decide(inc_id, person("alice"), True)
    assert report.executed and report.result is not None and report.result.data["deleted"] == 2000
    inc = await bot.store.get_incident(inc_id)
    assert inc.status == IncidentState.VERIFIED
    assert [s.step_id for s in inc.steps][-2:] == ["check", "raise"]
    assert inc.steps[-1].status == StepStatus.SKIPPED, "no further action once the check passed"
    assert counts(redis_sync) == {"sess": 50, "rl": 30, "bull": 4}

    audit = await bot.store.list_audit(incident_id=inc_id)
    kinds = [e.kind for e in audit]
    assert kinds[0] == "alert.received"
    for kind in ("approval.requested", "approval.decided", "action.executed"):
        assert kind in kinds
    executed = next(e for e in audit if e.kind == "action.executed")
    assert executed.actor == "slack:alice" and executed.plan_hash == pending["plan_hash"]
    assert executed.detail["keys_affected"] == 2000 and executed.detail["ok"] is True
    assert executed.detail["duration_s"] >= 0
    decided = next(e for e in audit if e.kind == "approval.decided")
    assert decided.actor == "slack:alice" and decided.plan_hash == pending["plan_hash"]
    steps = [e for e in audit if e.kind == "step.finished"]
    assert {e.detail["step"] for e in steps} >= {"memory", "evict", "check"}


async def test_second_decision_is_told_who_decided(backend: str, bot: Bot, redis_sync: redis.Redis) -> None:
    seed_platform(redis_sync, agents=100)
    inc_id = await bot.fire("TestEvict")
    await bot.runner.decide(inc_id, person("alice"), True)
    with pytest.raises(AlreadyDecided, match="already executed by slack:alice"):
        await bot.runner.decide(inc_id, person("bob"), True)
    executed = [e for e in await bot.store.list_audit(incident_id=inc_id) if e.kind == "action.executed"]
    assert len(executed) == 1


async def test_concurrent_decisions_in_one_process_execute_once(
    backend: str, bot: Bot, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=100)
    inc_id = await bot.fire("TestEvict")
    results = await asyncio.gather(
        *(bot.runner.decide(inc_id, person(f"user{i}"), True) for i in range(5)), return_exceptions=True
    )
    assert sum(1 for r in results if not isinstance(r, BaseException) and r.executed) == 1
    assert sum(1 for r in results if isinstance(r, AlreadyDecided)) == 4


async def test_concurrent_approvals_from_two_processes_execute_once(
    backend: str, bot: Bot, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=500)
    inc_id = await bot.fire("TestEvict")
    assert bot.config.source is not None
    cmd = [sys.executable, "-m", "bot", "approve", str(inc_id), "--config", str(bot.config.source), "--json"]
    procs = [
        subprocess.Popen([*cmd, "--as", who], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for who in ("carol", "dave")
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 3], outs
    winner = json.loads(next(o for o, _ in outs if o.strip()))
    assert winner["executed"] is True
    loser_err = next(e for (o, e), p in zip(outs, procs, strict=True) if p.returncode == 3)
    # The loser reads the approval as approved, executing or executed, depending on how far the
    # winner got: each names the winner and exits 3.
    assert any(f"already {state} by cli:" in loser_err for state in ("approved", "executing", "executed"))
    winner_name = next(who for who, p in zip(("carol", "dave"), procs, strict=True) if p.returncode == 0)
    assert f'(as "{winner_name}")' in loser_err, loser_err
    executed = [e for e in await bot.store.list_audit(incident_id=inc_id) if e.kind == "action.executed"]
    assert len(executed) == 1
    assert counts(redis_sync).get("agent", 0) == 0


async def test_plan_grown_past_margin_asks_again(backend: str, bot: Bot, redis_sync: redis.Redis) -> None:
    seed_platform(redis_sync, agents=1000)
    inc_id = await bot.fire("TestEvict")
    first = (await bot.store.get_incident(inc_id)).pending_step
    assert first is not None
    seed_platform(redis_sync, agents=3000)  # the cache grew well past the approved 1000 keys (+20%)
    report = await bot.runner.decide(inc_id, person("alice"), True)
    assert not report.executed and "grew from 1000 to 3000" in report.message
    assert counts(redis_sync)["agent"] == 3000, "nothing deleted on a stale approval"
    inc = await bot.store.get_incident(inc_id)
    assert inc.status == IncidentState.AWAITING_APPROVAL
    assert inc.pending_step is not None and inc.pending_step["plan"]["estimated_keys"] == 3000
    assert inc.pending_step["plan_hash"] != first["plan_hash"]
    old = await bot.store.get_approval(first["approval_id"])
    assert old.state == ApprovalState.SUPERSEDED
    report = await bot.runner.decide(inc_id, person("alice"), True)
    assert report.executed and report.result is not None and report.result.data["deleted"] == 3000


async def test_small_growth_within_margin_still_executes(bot: Bot, redis_sync: redis.Redis) -> None:
    seed_platform(redis_sync, agents=1000)
    inc_id = await bot.fire("TestEvict")
    for i in range(50):
        redis_sync.set(f"agent:new:{i}", "v")
    report = await bot.runner.decide(inc_id, person("alice"), True)
    assert report.executed and report.result is not None and report.result.data["deleted"] == 1050


async def test_expired_approval_is_closed_and_cannot_be_used(
    backend: str, bot_config: Any, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=100)
    async with Bot(bot_config("approvals: {ttl: 0.5s}\n")) as b:
        inc_id = await b.fire("TestEvict")
        # The expiry job's pass, run until the TTL has passed (earlier passes close nothing).
        assert await wait_for(b.runner.expire_approvals, timeout=10) == 1
        inc = await b.store.get_incident(inc_id)
        assert inc.pending_step is None and inc.status == IncidentState.DIAGNOSED
        assert any(s.status == StepStatus.EXPIRED for s in inc.steps)
        with pytest.raises(AlreadyDecided, match="already expired"):
            await b.runner.decide(inc_id, person("alice"), True)
        assert any(e.kind == "approval.expired" for e in await b.store.list_audit(incident_id=inc_id))
    assert counts(redis_sync)["agent"] == 100


async def test_deciding_after_the_deadline_expires_it(
    backend: str, bot_config: Any, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=10)
    async with Bot(bot_config("approvals: {ttl: 0.3s}\n")) as b:
        inc_id = await b.fire("TestEvict")
        pending = (await b.store.get_incident(inc_id)).pending_step
        assert pending is not None
        ap = await b.store.get_approval(pending["approval_id"])
        await wait_for(lambda: time.time() > ap.expires_ts, timeout=5)  # past its deadline, not expired yet
        assert (await b.store.get_approval(ap.id)).state == ApprovalState.PENDING
        with pytest.raises(AlreadyDecided, match="expired"):
            await b.runner.decide(inc_id, person("alice"), True)
        assert (await b.store.get_approval(ap.id)).state == ApprovalState.EXPIRED
    assert counts(redis_sync)["agent"] == 10


async def test_pending_approval_survives_a_restart(
    backend: str, bot_config: Any, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=200)
    config = bot_config()
    async with Bot(config) as b1:
        inc_id = await b1.fire("TestEvict")
    async with Bot(config) as b2:
        inc = await b2.store.get_incident(inc_id)
        assert inc.status == IncidentState.AWAITING_APPROVAL and inc.pending_step is not None
        report = await b2.runner.decide(inc_id, person("alice"), True)
        assert report.executed
    assert counts(redis_sync).get("agent", 0) == 0


async def test_interrupted_action_is_not_rerun_after_restart(
    backend: str, bot_config: Any, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=50)
    config = bot_config()
    async with Bot(config) as b1:
        inc_id = await b1.fire("TestEvict")
        pending = (await b1.store.get_incident(inc_id)).pending_step
        assert pending is not None
        ap = await approve_in_store(b1.store, pending["approval_id"], "alice")
        # The process dies right after claiming the action (its run says running, 7 keys deleted).
        run_id = await b1.store.claim(ap.id, summary="approved", actor="alice", target="t")
        assert run_id is not None
        await b1.store.checkpoint(run_id, {"deleted": 7})
    async with Bot(config) as b2:
        inc = await b2.store.get_incident(inc_id)
        assert inc.status == IncidentState.FAILED and "interrupted" in inc.note
        assert inc.steps[-1].status == StepStatus.INTERRUPTED
        assert inc.steps[-1].data == {"deleted": 7}
        ap = await b2.store.get_approval(pending["approval_id"])
        assert ap.state == ApprovalState.INTERRUPTED
        # The interruption is recorded with how far it got, and counts as a failed action.
        executed = [e for e in await b2.store.list_audit(incident_id=inc_id) if e.kind == "action.executed"]
        assert executed and executed[-1].detail["ok"] is False and executed[-1].detail["keys_affected"] == 7
        with pytest.raises(AlreadyDecided):
            await b2.runner.decide(inc_id, person("bob"), True)
        await b2.runner.drain()
    assert counts(redis_sync)["agent"] == 50


async def test_resolved_alert_cancels_the_pending_approval(
    backend: str, bot: Bot, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=100)
    inc_id = await bot.fire("TestEvict")
    await bot.fire("TestEvict", "resolved")
    closed = await wait_for(lambda: bot.notifier.of("closed"), timeout=5)  # the chat hears of it too
    assert closed[-1].state == ApprovalState.CANCELLED
    inc = await bot.store.get_incident(inc_id)
    assert inc.status == IncidentState.RESOLVED and inc.pending_step is None
    with pytest.raises(AlreadyDecided, match="cancelled"):
        await bot.runner.decide(inc_id, person("alice"), True)
    assert counts(redis_sync)["agent"] == 100


async def test_circuit_breaker_escalates_after_n_actions(
    backend: str, bot_config: Any, redis_sync: redis.Redis
) -> None:
    async with Bot(bot_config("guardrails: {max_actions_per_hour: 1}\n")) as b:
        seed_platform(redis_sync, agents=20)
        first = await b.fire("TestEvict", fingerprint="a")
        assert (await b.runner.decide(first, person("alice"), True)).executed
        seed_platform(redis_sync, agents=20)
        second = await b.fire("TestEvict", fingerprint="b")
        inc = await b.store.get_incident(second)
        assert inc.status == IncidentState.ESCALATED and inc.pending_step is None
        assert "circuit breaker" in inc.note
        assert any(e.kind == "incident.escalated" for e in await b.store.list_audit(incident_id=second))
    assert counts(redis_sync)["agent"] == 20


async def test_circuit_breaker_pauses_after_consecutive_failures(
    backend: str, bot: Bot, redis_sync: redis.Redis
) -> None:
    target = bot.config.targets[0].resolve({}).name
    for _ in range(2):
        await bot.store.audit("action.executed", target=target, detail={"ok": False})
    reason = await bot.runner.guardrails.reason(target)
    assert reason is not None and "the last 2 actions" in reason


async def test_kill_switch_stops_all_actions(backend: str, bot: Bot, redis_sync: redis.Redis) -> None:
    seed_platform(redis_sync, agents=20)
    inc_id = await bot.fire("TestEvict", fingerprint="k1")
    await bot.store.set_setting(KILL_SWITCH, "on: testing", actor="ops")
    # The decision is refused, audited, and the approval stays pending (approvable once lifted).
    with pytest.raises(DecisionRefused, match="kill switch"):
        await bot.runner.decide(inc_id, person("alice"), True)
    assert counts(redis_sync)["agent"] == 20
    inc = await bot.store.get_incident(inc_id)
    assert inc.status == IncidentState.AWAITING_APPROVAL and inc.pending_step is not None
    assert any(e.kind == "approval.refused" for e in await bot.store.list_audit(incident_id=inc_id))
    await bot.store.set_setting(KILL_SWITCH, None, actor="ops")
    assert (await bot.runner.decide(inc_id, person("alice"), True)).executed
    assert counts(redis_sync).get("agent", 0) == 0


async def test_kill_switch_escalates_new_incidents(bot: Bot, redis_sync: redis.Redis) -> None:
    seed_platform(redis_sync, agents=20)
    await bot.store.set_setting(KILL_SWITCH, "on: testing", actor="ops")
    second = await bot.fire("TestEvict", fingerprint="k2")
    inc = await bot.store.get_incident(second)
    assert inc.status == IncidentState.ESCALATED and "kill switch" in inc.note
    assert counts(redis_sync)["agent"] == 20


async def test_dry_run_changes_nothing(bot_config: Any, redis_sync: redis.Redis) -> None:
    seed_platform(redis_sync, agents=300)
    before = counts(redis_sync)
    async with Bot(bot_config("guardrails: {dry_run: true}\n")) as b:
        inc_id = await b.fire("TestEvict")
        inc = await b.store.get_incident(inc_id)
    planned = next(s for s in inc.steps if s.step_id == "evict")
    assert planned.status == StepStatus.PLANNED and planned.plan is not None
    assert planned.plan["estimated_keys"] == 300
    assert inc.pending_step is None
    assert counts(redis_sync) == before
    assert redis_sync.config_get("maxmemory")["maxmemory"] == "0"


async def test_flushdb_refused_while_queue_keys_exist(bot: Bot, redis_sync: redis.Redis) -> None:
    seed_platform(redis_sync, agents=10)
    inc_id = await bot.fire("TestFlush")
    inc = await bot.store.get_incident(inc_id)
    step = inc.steps[0]
    assert step.status == StepStatus.ERROR and inc.pending_step is None
    assert "protected keys exist in db 0" in (step.error or "")
    assert redis_sync.dbsize() == 94


async def test_flushdb_needs_two_distinct_approvers(backend: str, bot: Bot, redis_sync: redis.Redis) -> None:
    for i in range(100):
        redis_sync.set(f"agent:{i}", "v")
    inc_id = await bot.fire("TestFlush")
    pending = (await bot.store.get_incident(inc_id)).pending_step
    assert pending is not None and pending["required_approvals"] == 2
    first = await bot.runner.decide(inc_id, person("alice"), True)
    assert not first.executed and "needs 1 more" in first.message
    with pytest.raises(ApprovalError, match="needs 2 different approvers"):
        await bot.runner.decide(inc_id, person("alice"), True)
    assert redis_sync.dbsize() == 100
    second = await bot.runner.decide(inc_id, person("bob"), True)
    assert second.executed, second.message
    assert redis_sync.dbsize() == 0
    assert "flushdb" in commands_used(redis_sync) and "flushall" not in commands_used(redis_sync)
    executed = next(e for e in await bot.store.list_audit(incident_id=inc_id) if e.kind == "action.executed")
    assert executed.detail["approvers"] == ["slack:alice", "slack:bob"]


async def test_flushdb_refused_on_a_replica(
    make_redis: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    from bot.errors import PlanRefused
    from bot.redisconn import RedisTarget
    from bot.steps import REGISTRY, StepContext

    replica = make_redis("--replicaof", "127.0.0.1", str(redis_server.port))
    t = RedisTarget("replica", replica.url)
    st = REGISTRY["redis.flushdb"]
    assert st.plan is not None
    try:
        with pytest.raises(PlanRefused, match="is a replica"):
            await st.plan(StepContext(target=t), st.params.model_validate({}))
    finally:
        await t.close()


async def test_set_maxmemory_is_bounded(target: Any, redis_sync: redis.Redis) -> None:
    from bot.errors import PlanRefused
    from bot.steps import REGISTRY, StepContext

    st = REGISTRY["redis.set_maxmemory"]
    assert st.plan is not None and st.execute is not None
    used = int(redis_sync.info("memory")["used_memory"])
    redis_sync.config_set("maxmemory", used * 2)
    ctx = StepContext(target=target, settings={"maxmemory_ceiling": used * 3})
    plan = await st.plan(ctx, st.params.model_validate({"factor": 4}))
    assert plan.params["to"] == used * 3, "capped at the ceiling"
    out = await st.execute(ctx, st.params.model_validate({"factor": 4}), plan)
    assert int(redis_sync.config_get("maxmemory")["maxmemory"]) == used * 3
    assert "Helm" in out.summary
    with pytest.raises(PlanRefused, match="ceiling"):
        await st.plan(ctx, st.params.model_validate({"factor": 1.5}))
    with pytest.raises(PlanRefused, match="not be above used memory"):
        await st.plan(
            StepContext(target=target, settings={"maxmemory_ceiling": 10**12}),
            st.params.model_validate({"to": 1024}),
        )
    with pytest.raises(PlanRefused, match="no ceiling"):
        await st.plan(StepContext(target=target), st.params.model_validate({"factor": 1.5}))
    seed_platform(redis_sync)
    with pytest.raises(PlanRefused, match="noeviction"):
        await st.plan(
            StepContext(target=target, settings={"maxmemory_ceiling": 10**12}),
            st.params.model_validate({"factor": 1.5, "policy": "allkeys-lru"}),
        )


async def test_set_maxmemory_on_managed_redis_says_what_to_do(make_redis: Any) -> None:
    from bot.errors import PlanRefused
    from bot.redisconn import RedisTarget
    from bot.steps import REGISTRY, StepContext

    managed = make_redis("--rename-command", "CONFIG", "")
    t = RedisTarget("managed", managed.url)
    st = REGISTRY["redis.set_maxmemory"]
    assert st.plan is not None
    try:
        with pytest.raises(PlanRefused, match=r"CONFIG is not allowed.*Helm"):
            await st.plan(
                StepContext(target=t, settings={"maxmemory_ceiling": 10**9}),
                st.params.model_validate({"factor": 1.5}),
            )
    finally:
        await t.close()


async def test_bgsave_waits_for_lastsave(target: Any, redis_sync: redis.Redis) -> None:
    from bot.eviction import bgsave_and_wait

    redis_sync.set("x", "1")
    before = redis_sync.lastsave()
    ts = await bgsave_and_wait(target.client, timeout=30)
    assert ts >= int(before.timestamp())
    assert redis_sync.info("persistence")["rdb_last_bgsave_status"] == "ok"
    assert redis_sync.info("persistence")["rdb_changes_since_last_save"] == 0


async def test_deciding_an_incident_without_pending_step(bot: Bot, redis_sync: redis.Redis) -> None:
    with pytest.raises(NotFound):
        await bot.runner.decide(999, person("alice"), True)


@pytest.mark.parametrize("pattern", ["", "   ", "*", "**", "?*", "[a-z]*", "*:*"])
def test_match_all_patterns_are_refused_at_load(pattern: str, tmp_path: Path) -> None:
    from bot.errors import ConfigError

    (tmp_path / "p.yaml").write_text(
        f"name: p\nmatch: {{alertname: X}}\nsteps:\n  - {{id: e, run: redis.evict, with: {{pattern: '{pattern}'}}}}\n"
    )
    with pytest.raises(ConfigError, match=r"steps\[0\].with.pattern"):
        load_playbooks(tmp_path)


async def test_actions_use_the_action_credentials(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    """Diagnostics run as a read-only ACL user; only the approved action uses the privileged one."""
    redis_sync.acl_setuser(
        "reader",
        enabled=True,
        passwords=["+readpw"],
        keys=["~*"],
        commands=["+@read", "+@connection", "+info", "+memory", "+config|get", "+scan"],
    )
    try:
        seed_platform(redis_sync, agents=100)
        pb = tmp_path / "playbooks"
        pb.mkdir()
        (pb / "evict.yaml").write_text(PLAYBOOK)
        path = tmp_path / "bot.yaml"
        path.write_text(
            "targets:\n  - match: {job: redis}\n"
            f"    url: redis://reader:readpw@127.0.0.1:{redis_server.port}/0\n"
            f"    action_url: redis://127.0.0.1:{redis_server.port}/0\n"
            "playbooks: playbooks\n"
        )
        async with Bot(load_config(path)) as b:
            inc_id = await b.fire("TestEvict")
            inc = await b.store.get_incident(inc_id)
            assert inc.pending_step is not None and inc.pending_step["plan"]["estimated_keys"] == 100
            assert "readpw" not in json.dumps(inc.model_dump(mode="json"))
            report = await b.runner.decide(inc_id, person("alice"), True)
            assert report.executed and report.result is not None and report.result.data["deleted"] == 100
            audit = json.dumps([e.model_dump(mode="json") for e in await b.store.list_audit()])
            assert "readpw" not in audit
    finally:
        redis_sync.acl_deluser("reader")


async def test_eviction_reports_progress_while_it_runs(target: Any, redis_sync: redis.Redis) -> None:
    seed_platform(redis_sync, agents=2000)
    messages: list[str] = []

    async def progress(message: str) -> None:
        messages.append(message)

    res = await evict(
        target.client,
        "agent:*",
        ["bull:*"],
        max_keys=10**6,
        batch=100,
        count=200,
        progress=progress,
        progress_every_s=0,
    )
    assert res.deleted == 2000
    assert len(messages) >= 5
    assert messages[0].startswith("deleted ") and "protected skipped" in messages[0]


# -- findings of the safety review ----------------------------------------------------------------


def test_alert_labels_cannot_redirect_a_target(tmp_path: Path) -> None:
    from bot.errors import TargetError

    path = tmp_path / "bot.yaml"
    path.write_text(
        "targets:\n  - name: 'cache-{{ labels.db }}'\n    url: 'redis://:pw@127.0.0.1:6379/{{ labels.db }}'\n"
    )
    t = load_config(path).targets[0]
    assert t.resolve({"db": "2"}).url.endswith("/2")
    assert t.resolve({"db": "2"}).name == "cache-2"
    for evil in ("evil.example:7777/0#", "x@evil", "1/../0", "a b"):
        with pytest.raises(TargetError, match="not a plain host"):
            t.resolve({"db": evil})


def test_action_url_may_only_change_credentials(tmp_path: Path) -> None:
    from bot.errors import ConfigError

    path = tmp_path / "bot.yaml"
    path.write_text(
        "targets:\n  - url: redis://reader:x@127.0.0.1:6379/1\n    action_url: redis://10.0.0.9:6380/0\n"
    )
    with pytest.raises(ConfigError, match="same host, port and db"):
        load_config(path)


async def test_each_templated_target_gets_its_own_client(
    bot_config: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    path = tmp_path / "templated.yaml"
    path.write_text(
        "targets:\n  - name: cache\n    match: {job: redis}\n"
        f"    url: 'redis://127.0.0.1:{redis_server.port}/{{{{ labels.db }}}}'\nplaybooks: playbooks\n"
    )
    bot_config()  # writes the playbooks folder
    async with Bot(load_config(path)) as b:
        from bot.incidents import Incident

        one = Incident(
            id=1,
            fingerprint="a",
            starts_at="x",
            alertname="A",
            alert_status="firing",
            status="new",
            target="cache",
            target_index=0,
            labels={"db": "1"},
        )
        two = one.model_copy(update={"id": 2, "labels": {"db": "2"}})
        assert b.runner.target_for(one).db == 1
        assert b.runner.target_for(two).db == 2


async def test_an_approval_cannot_be_claimed_after_the_alert_resolved(
    backend: str, bot: Bot, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=10)
    inc_id = await bot.fire("TestEvict")
    pending = (await bot.store.get_incident(inc_id)).pending_step
    assert pending is not None
    await approve_in_store(bot.store, pending["approval_id"], "alice")
    await bot.fire("TestEvict", "resolved")
    assert await bot.store.claim(pending["approval_id"], summary="s", actor="alice", target="t") is None
    assert counts(redis_sync)["agent"] == 10


async def test_a_decision_is_bound_to_the_plan_that_was_shown(
    backend: str, bot: Bot, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=10)
    inc_id = await bot.fire("TestEvict")
    with pytest.raises(ApprovalError, match="plan changed since you looked"):
        await bot.runner.decide(inc_id, person("alice"), True, plan_hash="0" * 64)
    assert counts(redis_sync)["agent"] == 10


async def test_restart_leaves_work_of_a_live_process_alone(bot_config: Any, redis_sync: redis.Redis) -> None:
    """SQLite: a process on this host is alive while its pid is (on PostgreSQL its lease decides:
    tests/test_leases.py)."""
    import socket

    seed_platform(redis_sync, agents=10)
    config = bot_config()
    other = subprocess.Popen(["sleep", "30"])  # a live pid: stands for another bot process
    try:
        async with Bot(config) as b1:
            inc_id = await b1.fire("TestEvict")
            run_id = await b1.store.start_step(inc_id, 1, "evict", "redis.evict", True)
            await b1.store._run(
                b1.store.conn.execute,
                "UPDATE step_runs SET owner = ? WHERE id = ?",
                (f"{socket.gethostname()}:{other.pid}", run_id),
            )
        async with Bot(config) as b2:
            inc = await b2.store.get_incident(inc_id)
            assert next(s for s in inc.steps if s.id == run_id).status == StepStatus.RUNNING
            assert inc.status == IncidentState.AWAITING_APPROVAL
    finally:
        other.kill()
        other.wait()
    async with Bot(config) as b3:  # now its owner is gone: interrupted, never re-run
        inc = await b3.store.get_incident(inc_id)
        assert next(s for s in inc.steps if s.id == run_id).status == StepStatus.INTERRUPTED


async def test_eviction_growing_past_the_approved_size_stops(target: Any, redis_sync: redis.Redis) -> None:
    from bot.steps import REGISTRY, Change, Plan, StepContext

    seed_platform(redis_sync, agents=1000)
    st = REGISTRY["redis.evict"]
    assert st.execute is not None
    params = st.params.model_validate({"pattern": "agent:*"})
    plan = Plan(
        action="redis.evict",
        target=target.name,
        db=0,
        summary="s",
        pattern="agent:*",
        estimated_keys=100,
        changes=[Change(op="unlink", name="agent:*")],
        params={"max_keys": 10**6, "protected": ["bull:*"]},
    )
    with pytest.raises(
        ActionStopped, match=r"more than 220 keys match agent:\* now \(the approved ~100 keys"
    ) as stopped:
        await st.execute(StepContext(target=target, settings={"plan_margin": 0.2}), params, plan)
    deleted = stopped.value.done["deleted"]
    assert isinstance(deleted, int) and deleted <= 220
    assert counts(redis_sync)["agent"] == 1000 - deleted


async def test_a_decided_but_unstarted_action_is_interrupted_after_a_restart(
    backend: str, bot_config: Any, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=10)
    config = bot_config()
    async with Bot(config) as b1:
        inc_id = await b1.fire("TestEvict")
        pending = (await b1.store.get_incident(inc_id)).pending_step
        assert pending is not None
        await approve_in_store(b1.store, pending["approval_id"], "alice")
        db = RawDB(config.database_url or f"sqlite://{config.state_file}")
        await db.awrite("UPDATE approvals SET owner = 'elsewhere:1' WHERE id = ?", pending["approval_id"])
    async with Bot(config) as b2:  # the process that claimed it is gone
        inc = await b2.store.get_incident(inc_id)
        assert inc.status == IncidentState.FAILED and "interrupted" in inc.note
        assert (await b2.store.get_approval(pending["approval_id"])).state == ApprovalState.INTERRUPTED
    assert counts(redis_sync)["agent"] == 10

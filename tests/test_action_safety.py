"""Mutating actions under attack, against a real redis-server: each README safety claim of these
items and the test that holds it to it (issue 10, items 2-5 and the eviction part of 11).

- "The kill switch stops a running action within one batch" (asked before every UNLINK batch,
  before BGSAVE and FLUSHDB, before CONFIG SET; records how far it got):
  ``test_kill_switch_stops_an_eviction_at_the_next_batch``,
  ``test_kill_switch_turned_on_from_outside_lets_at_most_one_batch_finish``,
  ``test_an_unreadable_kill_switch_stops_the_eviction``,
  ``test_kill_switch_stops_flushdb_after_the_snapshot``,
  ``test_kill_switch_stops_set_maxmemory_before_config_set``.
- "An eviction records its deleted count after every batch" (``settings["checkpoint"]``):
  ``test_eviction_checkpoints_the_exact_count_after_every_batch``,
  ``test_a_failing_checkpoint_stops_the_eviction``.
- "A plan lists every change its action makes, the hash covers each, execute makes exactly those":
  ``test_a_policy_change_is_shown_to_the_approver_everywhere``,
  ``test_the_plan_hash_covers_the_policy``,
  ``test_execute_applies_the_planned_changes_not_the_step_parameters``,
  ``test_execute_refuses_a_change_the_action_does_not_make``,
  ``test_execute_never_lowers_or_invents_a_limit_even_from_a_tampered_plan``,
  ``test_execute_refuses_when_a_setting_moved_since_the_plan``,
  ``test_the_changes_are_applied_all_or_nothing``.
- "set_maxmemory never lowers or invents a limit":
  ``test_raising_maxmemory_on_an_unlimited_redis_is_refused``,
  ``test_set_maxmemory_never_plans_below_the_current_limit``.
- "A cap is a safety stop, not a quota" (keys and bytes, at plan and mid-run):
  ``test_a_plan_over_the_key_cap_is_refused_with_the_numbers``,
  ``test_the_step_cap_is_named_when_it_is_the_smaller``,
  ``test_a_plan_over_the_byte_cap_is_refused``,
  ``test_keys_growing_past_the_cap_mid_run_stop_the_eviction``,
  ``test_bytes_growing_past_the_byte_cap_mid_run_stop_the_eviction``,
  ``test_max_bytes_per_run_is_a_byte_size_in_the_config``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from bot.chat.slack_blocks import approval_message
from bot.config import load_config
from bot.errors import ActionStopped, ConfigError, OverCap, PlanRefused, StepError
from bot.incidents import Approval, ApprovalState, Incident, IncidentState
from bot.planview import describe_plan
from bot.redisconn import RedisTarget
from bot.steps import REGISTRY, Change, Plan, StepContext

KEYS = 200_000
BATCH = 500


def populate(r: redis.Redis, n: int, prefix: str = "agent", size: int = 10) -> None:
    """``n`` keys ``prefix:0`` .. ``prefix:n-1`` in one server-side call (DEBUG is enabled in tests)."""
    r.execute_command("DEBUG", "POPULATE", n, prefix, size)


def agent_keys(r: redis.Redis) -> int:
    return sum(1 for _ in r.scan_iter(match="agent:*", count=5000))


async def plan_of(step: str, ctx: StepContext, params: dict[str, Any]) -> Plan:
    st = REGISTRY[step]
    assert st.plan is not None
    return await st.plan(ctx, st.params.model_validate(params))


async def execute(step: str, ctx: StepContext, params: dict[str, Any], plan: Plan) -> Any:
    st = REGISTRY[step]
    assert st.execute is not None
    return await st.execute(ctx, st.params.model_validate(params), plan)


EVICT = {"pattern": "agent:*", "batch": BATCH}


@pytest.fixture(autouse=True)
def noeviction(redis_sync: redis.Redis) -> Iterator[None]:
    """Tests here change maxmemory-policy; the shared server goes back to the default after each."""
    yield
    redis_sync.config_set("maxmemory-policy", "noeviction")


# -- item 2: the kill switch stops a running action within one batch ----------------------------


async def test_kill_switch_stops_an_eviction_at_the_next_batch(
    target: RedisTarget, redis_sync: redis.Redis
) -> None:
    populate(redis_sync, KEYS)
    flip_after = 20
    switch: list[str] = []
    asked = 0

    async def should_stop() -> str | None:
        nonlocal asked
        asked += 1
        return switch[0] if switch else None

    async def checkpoint(done: dict[str, object]) -> None:
        if done["batches"] == flip_after:
            switch.append("the kill switch is on (test)")

    settings: dict[str, Any] = {"max_keys_per_run": 10**6, "checkpoint": checkpoint}
    plan = await plan_of("redis.evict", StepContext(target=target, settings=settings), EVICT)
    assert plan.estimated_keys == KEYS
    ctx = StepContext(target=target, settings=settings, should_stop=should_stop)
    with pytest.raises(ActionStopped, match="kill switch is on") as stopped:
        await execute("redis.evict", ctx, EVICT, plan)
    done = stopped.value.done
    # Turned on after batch 20 finished: batch 21 is never sent, and the count is exact.
    assert done["deleted"] == flip_after * BATCH
    assert done["deleted"] == KEYS - redis_sync.dbsize()
    assert agent_keys(redis_sync) == KEYS - flip_after * BATCH
    assert asked == flip_after + 1, "asked before every batch"


async def test_kill_switch_turned_on_from_outside_lets_at_most_one_batch_finish(
    target: RedisTarget, redis_sync: redis.Redis
) -> None:
    """The switch is flipped by another task watching DBSIZE on its own connection, at whatever
    moment it sees a quarter of the keys gone: at most the batch already sent completes."""
    populate(redis_sync, KEYS)
    switch = asyncio.Event()
    left_at_flip = 0
    asked_after_flip = 0

    async def should_stop() -> str | None:
        nonlocal asked_after_flip
        if not switch.is_set():
            return None
        asked_after_flip += 1
        return "the kill switch is on (test)"

    async def watch(watcher: aioredis.Redis) -> None:
        nonlocal left_at_flip
        while (left := int(await watcher.dbsize())) > KEYS * 3 // 4:
            await asyncio.sleep(0)
        left_at_flip = left
        switch.set()

    settings: dict[str, Any] = {"max_keys_per_run": 10**6}
    plan = await plan_of("redis.evict", StepContext(target=target, settings=settings), EVICT)
    watcher = aioredis.Redis.from_url(target.url)
    try:
        watching = asyncio.create_task(watch(watcher))
        ctx = StepContext(target=target, settings=settings, should_stop=should_stop)
        with pytest.raises(ActionStopped) as stopped:
            await execute("redis.evict", ctx, EVICT, plan)
        await watching
    finally:
        await watcher.aclose()
    left = redis_sync.dbsize()
    assert stopped.value.done["deleted"] == KEYS - left
    # The eviction stops at its first check after the flip: only the batch already sent completes.
    assert asked_after_flip == 1
    # DBSIZE is read on another connection, so it may be one batch stale when the switch flips.
    assert 0 <= left_at_flip - left <= 2 * BATCH, f"{left_at_flip - left} keys deleted after the flip"
    assert left > 0


async def test_an_unreadable_kill_switch_stops_the_eviction(
    target: RedisTarget, redis_sync: redis.Redis
) -> None:
    populate(redis_sync, 5_000)

    async def broken() -> str | None:
        raise OSError("disk I/O error")

    settings: dict[str, Any] = {"max_keys_per_run": 10**6}
    plan = await plan_of("redis.evict", StepContext(target=target, settings=settings), EVICT)
    ctx = StepContext(target=target, settings=settings, should_stop=broken)
    with pytest.raises(ActionStopped, match=r"could not read the kill switch.*disk I/O error") as stopped:
        await execute("redis.evict", ctx, EVICT, plan)
    assert stopped.value.done["deleted"] == 0
    assert redis_sync.dbsize() == 5_000


async def test_kill_switch_stops_flushdb_after_the_snapshot(
    target: RedisTarget, redis_sync: redis.Redis
) -> None:
    populate(redis_sync, 1_000)
    asked = 0

    async def on_after_first_ask() -> str | None:
        nonlocal asked
        asked += 1
        return "the kill switch is on (test)" if asked > 1 else None

    plan = await plan_of("redis.flushdb", StepContext(target=target), {"snapshot_first": True})
    ctx = StepContext(target=target, should_stop=on_after_first_ask)
    with pytest.raises(ActionStopped, match="kill switch") as stopped:
        await execute("redis.flushdb", ctx, {"snapshot_first": True}, plan)
    assert asked == 2, "asked before BGSAVE and again right before FLUSHDB"
    assert stopped.value.done["deleted"] == 0 and stopped.value.done["snapshot_lastsave"]
    assert redis_sync.dbsize() == 1_000


async def test_kill_switch_stops_set_maxmemory_before_config_set(
    target: RedisTarget, redis_sync: redis.Redis
) -> None:
    redis_sync.config_set("maxmemory", 64 << 20)

    async def on() -> str | None:
        return "the kill switch is on (test)"

    params = {"factor": 2, "policy": "allkeys-lru"}
    plan = await plan_of(
        "redis.set_maxmemory", StepContext(target=target, settings={"maxmemory_ceiling": 1 << 30}), params
    )
    with pytest.raises(ActionStopped, match="kill switch"):
        await execute("redis.set_maxmemory", StepContext(target=target, should_stop=on), params, plan)
    assert redis_sync.config_get("maxmemory")["maxmemory"] == str(64 << 20)
    assert redis_sync.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"


# -- item 11 (eviction part): progress survives a kill -9 -----------------------------------------


async def test_eviction_checkpoints_the_exact_count_after_every_batch(
    target: RedisTarget, redis_sync: redis.Redis
) -> None:
    populate(redis_sync, 10_000)
    seen: list[dict[str, object]] = []

    async def checkpoint(done: dict[str, object]) -> None:
        # Between batches nothing is in flight: the count must match Redis exactly.
        assert done["deleted"] == 10_000 - redis_sync.dbsize()
        seen.append(done)

    settings: dict[str, Any] = {"max_keys_per_run": 10**6, "checkpoint": checkpoint}
    plan = await plan_of("redis.evict", StepContext(target=target, settings=settings), EVICT)
    out = await execute("redis.evict", StepContext(target=target, settings=settings), EVICT, plan)
    assert out.data["deleted"] == 10_000 and redis_sync.dbsize() == 0
    assert len(seen) == out.data["batches"] == 10_000 // BATCH
    assert [d["deleted"] for d in seen] == [BATCH * (i + 1) for i in range(len(seen))]


async def test_a_failing_checkpoint_stops_the_eviction(target: RedisTarget, redis_sync: redis.Redis) -> None:
    populate(redis_sync, 5_000)

    async def disk_full(done: dict[str, object]) -> None:
        raise OSError("database or disk is full")

    settings: dict[str, Any] = {"max_keys_per_run": 10**6, "checkpoint": disk_full}
    plan = await plan_of("redis.evict", StepContext(target=target, settings=settings), EVICT)
    with pytest.raises(ActionStopped, match="could not record progress") as stopped:
        await execute("redis.evict", StepContext(target=target, settings=settings), EVICT, plan)
    assert stopped.value.done["deleted"] == BATCH == 5_000 - redis_sync.dbsize()


# -- item 3: no hidden plan changes -------------------------------------------------------------


def _approval(plan: Plan) -> tuple[Incident, Approval]:
    inc = Incident(
        id=7, fingerprint="fp", starts_at="2026-01-01T00:00:00Z", alertname="RedisMemoryHigh",
        alert_status="firing", status=IncidentState.AWAITING_APPROVAL,
    )  # fmt: skip
    ap = Approval(
        id=1, incident_id=7, step_run_id=1, step_id="raise", step_index=0, step_type=plan.action,
        plan=plan.model_dump(mode="json"), plan_hash=plan.digest(), state=ApprovalState.PENDING, required=1,
    )  # fmt: skip
    return inc, ap


MAXMEM_CTX = {"maxmemory_ceiling": 1 << 30}


async def test_a_policy_change_is_shown_to_the_approver_everywhere(
    target: RedisTarget,
    redis_sync: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bot.__main__ import _confirm

    redis_sync.config_set("maxmemory", 64 << 20)
    ctx = StepContext(target=target, settings=MAXMEM_CTX)
    plan = await plan_of("redis.set_maxmemory", ctx, {"factor": 1.5, "policy": "allkeys-random"})
    assert [(c.name, c.before, c.after) for c in plan.changes] == [
        ("maxmemory", str(64 << 20), str(96 << 20)),
        ("maxmemory-policy", "noeviction", "allkeys-random"),
    ]
    assert "maxmemory-policy noeviction -> allkeys-random" in plan.summary
    text = describe_plan(plan.model_dump(mode="json"))
    assert "CONFIG SET maxmemory: 64.0 MiB" in text and "-> 96.0 MiB" in text
    assert "CONFIG SET maxmemory-policy: noeviction -> allkeys-random" in text
    _, blocks = approval_message(*_approval(plan))
    slack = str(blocks)
    assert "CONFIG SET maxmemory-policy: noeviction -&gt; allkeys-random" in slack
    assert "CONFIG SET maxmemory: 64.0 MiB" in slack
    monkeypatch.setattr("builtins.input", lambda _prompt: "n")
    assert _confirm("raise", plan.model_dump(mode="json"), plan.digest()) is False
    assert "CONFIG SET maxmemory-policy: noeviction -> allkeys-random" in capsys.readouterr().out


async def test_the_plan_hash_covers_the_policy(target: RedisTarget, redis_sync: redis.Redis) -> None:
    redis_sync.config_set("maxmemory", 64 << 20)
    ctx = StepContext(target=target, settings=MAXMEM_CTX)
    digests = {
        policy: (await plan_of("redis.set_maxmemory", ctx, {"factor": 1.5, "policy": policy})).digest()
        for policy in ("allkeys-random", "allkeys-lru")
    }
    plain = await plan_of("redis.set_maxmemory", ctx, {"factor": 1.5})
    assert len({*digests.values(), plain.digest()}) == 3
    # Only the changes differ: the same plan with another policy change is another hash.
    swapped = plain.model_copy(
        update={
            "changes": [
                *plain.changes,
                Change(op="config_set", name="maxmemory-policy", before="noeviction", after="allkeys-lru"),
            ]
        }
    )
    assert swapped.digest() != plain.digest()


async def test_execute_applies_the_planned_changes_not_the_step_parameters(
    target: RedisTarget, redis_sync: redis.Redis
) -> None:
    redis_sync.config_set("maxmemory", 64 << 20)
    ctx = StepContext(target=target, settings=MAXMEM_CTX)
    plan = await plan_of("redis.set_maxmemory", ctx, {"factor": 1.5})
    # The step's parameters ask for a policy the approved plan never listed: it is not applied.
    out = await execute("redis.set_maxmemory", ctx, {"factor": 3, "policy": "allkeys-random"}, plan)
    assert redis_sync.config_get("maxmemory")["maxmemory"] == str(96 << 20)
    assert redis_sync.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    assert out.data["applied"] == {"maxmemory": str(96 << 20)}
    # With the policy in the plan, both are applied.
    plan = await plan_of("redis.set_maxmemory", ctx, {"factor": 1.5, "policy": "allkeys-lru"})
    out = await execute("redis.set_maxmemory", ctx, {"factor": 1.5}, plan)
    assert redis_sync.config_get("maxmemory")["maxmemory"] == str(144 << 20)
    assert redis_sync.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
    assert "maxmemory-policy is now allkeys-lru (was noeviction)" in out.summary


async def test_execute_refuses_a_change_the_action_does_not_make(
    target: RedisTarget, redis_sync: redis.Redis
) -> None:
    redis_sync.config_set("maxmemory", 64 << 20)
    ctx = StepContext(target=target, settings=MAXMEM_CTX)
    plan = await plan_of("redis.set_maxmemory", ctx, {"factor": 1.5})
    sneaky = plan.model_copy(
        update={
            "changes": [*plan.changes, Change(op="config_set", name="appendonly", before="no", after="yes")]
        }
    )
    with pytest.raises(StepError, match="does not make"):
        await execute("redis.set_maxmemory", ctx, {"factor": 1.5}, sneaky)
    evict_plan = Plan(
        action="redis.evict", target=target.name, db=0, summary="s", pattern="agent:*", estimated_keys=1,
        changes=[Change(op="unlink", name="agent:*"), Change(op="flushdb")],
    )  # fmt: skip
    with pytest.raises(StepError, match="does not make"):
        await execute("redis.evict", ctx, EVICT, evict_plan)
    assert redis_sync.config_get("maxmemory")["maxmemory"] == str(64 << 20)
    assert redis_sync.config_get("appendonly")["appendonly"] == "no"


async def test_execute_never_lowers_or_invents_a_limit_even_from_a_tampered_plan(
    target: RedisTarget, redis_sync: redis.Redis
) -> None:
    redis_sync.config_set("maxmemory", 64 << 20)
    ctx = StepContext(target=target, settings=MAXMEM_CTX)
    plan = await plan_of("redis.set_maxmemory", ctx, {"factor": 1.5})
    for before, after in ((str(64 << 20), str(32 << 20)), ("0", str(96 << 20))):
        forged = plan.model_copy(
            update={"changes": [Change(op="config_set", name="maxmemory", before=before, after=after)]}
        )
        with pytest.raises(StepError, match="does not raise an existing limit"):
            await execute("redis.set_maxmemory", ctx, {"factor": 1.5}, forged)
    assert redis_sync.config_get("maxmemory")["maxmemory"] == str(64 << 20)


async def test_the_changes_are_applied_all_or_nothing(target: RedisTarget, redis_sync: redis.Redis) -> None:
    redis_sync.config_set("maxmemory", 64 << 20)
    ctx = StepContext(target=target, settings=MAXMEM_CTX)
    plan = await plan_of("redis.set_maxmemory", ctx, {"factor": 1.5, "policy": "allkeys-lru"})
    bad = Change(op="config_set", name="maxmemory-policy", before="noeviction", after="no-such-policy")
    broken = plan.model_copy(update={"changes": [plan.changes[0], bad]})
    with pytest.raises(StepError):
        await execute("redis.set_maxmemory", ctx, {"factor": 1.5}, broken)
    assert redis_sync.config_get("maxmemory")["maxmemory"] == str(64 << 20), "no half-applied plan"


async def test_execute_refuses_when_a_setting_moved_since_the_plan(
    target: RedisTarget, redis_sync: redis.Redis
) -> None:
    redis_sync.config_set("maxmemory", 64 << 20)
    ctx = StepContext(target=target, settings=MAXMEM_CTX)
    plan = await plan_of("redis.set_maxmemory", ctx, {"factor": 1.5, "policy": "allkeys-lru"})
    redis_sync.config_set("maxmemory-policy", "volatile-ttl")  # someone else, after the approval
    with pytest.raises(StepError, match="maxmemory-policy is volatile-ttl now, not noeviction"):
        await execute("redis.set_maxmemory", ctx, {"factor": 1.5}, plan)
    assert redis_sync.config_get("maxmemory")["maxmemory"] == str(64 << 20)


# -- item 4: never lower or invent a memory limit -----------------------------------------------


async def test_raising_maxmemory_on_an_unlimited_redis_is_refused(
    target: RedisTarget, redis_sync: redis.Redis
) -> None:
    assert redis_sync.config_get("maxmemory")["maxmemory"] == "0"
    ctx = StepContext(target=target, settings=MAXMEM_CTX)
    for params in ({"factor": 1.25}, {"to": "512mb"}):
        with pytest.raises(
            PlanRefused, match=r"no memory limit \(maxmemory 0\): there is nothing to raise.*Helm"
        ):
            await plan_of("redis.set_maxmemory", ctx, params)
    assert redis_sync.config_get("maxmemory")["maxmemory"] == "0"


async def test_set_maxmemory_never_plans_below_the_current_limit(
    target: RedisTarget, redis_sync: redis.Redis
) -> None:
    redis_sync.config_set("maxmemory", 256 << 20)
    ctx = StepContext(target=target, settings=MAXMEM_CTX)
    with pytest.raises(PlanRefused, match=r"not above the current 256\.0 MiB: this step only raises"):
        await plan_of("redis.set_maxmemory", ctx, {"to": "128mb"})
    low_ceiling = StepContext(target=target, settings={"maxmemory_ceiling": 200 << 20})
    with pytest.raises(PlanRefused, match=r"already at 256\.0 MiB; the ceiling 200\.0 MiB allows no more"):
        await plan_of("redis.set_maxmemory", low_ceiling, {"factor": 2})
    plan = await plan_of("redis.set_maxmemory", ctx, {"to": "300mb"})
    assert plan.changes[0].before == str(256 << 20) and plan.changes[0].after == str(300 << 20)
    assert redis_sync.config_get("maxmemory")["maxmemory"] == str(256 << 20)


# -- item 5: a cap is a safety stop --------------------------------------------------------------


async def test_a_plan_over_the_key_cap_is_refused_with_the_numbers(
    target: RedisTarget, redis_sync: redis.Redis
) -> None:
    populate(redis_sync, 30_000)
    ctx = StepContext(target=target, settings={"max_keys_per_run": 1000})
    with pytest.raises(OverCap) as refused:
        await plan_of("redis.evict", ctx, EVICT)
    assert str(refused.value) == (
        "agent:* matches ~30,000 keys, cap 1,000 (guardrails.max_keys_per_run): narrow the pattern or raise the cap"
    )
    assert isinstance(refused.value, PlanRefused)
    assert redis_sync.dbsize() == 30_000


async def test_the_step_cap_is_named_when_it_is_the_smaller(
    target: RedisTarget, redis_sync: redis.Redis
) -> None:
    populate(redis_sync, 3_000)
    ctx = StepContext(target=target, settings={"max_keys_per_run": 10_000})
    with pytest.raises(OverCap, match=r"~3,000 keys, cap 2,000 \(max_keys of the step\)"):
        await plan_of("redis.evict", ctx, {**EVICT, "max_keys": 2000})
    plan = await plan_of("redis.evict", ctx, EVICT)
    assert plan.estimated_keys == 3_000 and plan.params["max_keys"] == 10_000


async def test_a_plan_over_the_byte_cap_is_refused(target: RedisTarget, redis_sync: redis.Redis) -> None:
    populate(redis_sync, 2_000, size=1000)  # ~2 MB of values
    ctx = StepContext(target=target, settings={"max_keys_per_run": 10**6, "max_bytes_per_run": 1 << 20})
    with pytest.raises(
        OverCap, match=r"matches ~2,000 keys of ~\S+ MiB, cap 1.0 MiB \(guardrails.max_bytes_per_run\)"
    ):
        await plan_of("redis.evict", ctx, EVICT)
    roomy = StepContext(target=target, settings={"max_keys_per_run": 10**6, "max_bytes_per_run": 8 << 20})
    plan = await plan_of("redis.evict", roomy, EVICT)
    assert plan.estimated_bytes is not None and 2_000_000 < plan.estimated_bytes < 8 << 20
    assert redis_sync.dbsize() == 2_000


async def test_keys_growing_past_the_cap_mid_run_stop_the_eviction(
    target: RedisTarget, redis_sync: redis.Redis
) -> None:
    populate(redis_sync, 900)
    settings: dict[str, Any] = {"max_keys_per_run": 1000, "plan_margin": 10.0}
    params = {**EVICT, "batch": 100, "count": 50}
    plan = await plan_of("redis.evict", StepContext(target=target, settings=settings), params)
    assert plan.estimated_keys == 900
    populate(redis_sync, 1_500)  # the application writes 600 more after the approval
    with pytest.raises(
        ActionStopped, match=r"more than 1,000 keys match agent:\* now \(guardrails.max_keys_per_run\)"
    ) as stopped:
        await execute("redis.evict", StepContext(target=target, settings=settings), params, plan)
    deleted = stopped.value.done["deleted"]
    assert isinstance(deleted, int) and 0 < deleted < 1000, "stopped when the count passed the cap, not at it"
    assert redis_sync.dbsize() == 1_500 - deleted


async def test_bytes_growing_past_the_byte_cap_mid_run_stop_the_eviction(
    target: RedisTarget, redis_sync: redis.Redis
) -> None:
    populate(redis_sync, 1_000, size=1000)
    settings: dict[str, Any] = {"max_keys_per_run": 10**6, "max_bytes_per_run": 3 << 20, "plan_margin": 10.0}
    params = {**EVICT, "batch": 100, "count": 50}
    plan = await plan_of("redis.evict", StepContext(target=target, settings=settings), params)
    populate(redis_sync, 5_000, size=1000)  # ~5 MB now, the cap is 3 MiB
    with pytest.raises(
        ActionStopped, match=r"guardrails.max_bytes_per_run 3.0 MiB at ~\d+ B a key"
    ) as stopped:
        await execute("redis.evict", StepContext(target=target, settings=settings), params, plan)
    deleted = stopped.value.done["deleted"]
    assert isinstance(deleted, int) and deleted < 5_000
    assert redis_sync.dbsize() == 5_000 - deleted


def test_max_bytes_per_run_is_a_byte_size_in_the_config(tmp_path: Path) -> None:
    path = tmp_path / "bot.yaml"
    path.write_text("targets: [{url: 'redis://127.0.0.1:6379/0'}]\nguardrails: {max_bytes_per_run: 4gb}\n")
    assert load_config(path).guardrails.max_bytes_per_run == 4 << 30
    path.write_text("targets: [{url: 'redis://127.0.0.1:6379/0'}]\n")
    assert load_config(path).guardrails.max_bytes_per_run is None
    path.write_text("targets: [{url: 'redis://127.0.0.1:6379/0'}]\nguardrails: {max_bytes_per_run: lots}\n")
    with pytest.raises(ConfigError, match=r"guardrails.max_bytes_per_run"):
        load_config(path)

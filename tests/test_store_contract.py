"""The store contract, on both backends: what the engine relies on whichever store it runs on.

Every test here takes the parametrised ``store`` (or ``database_url``) fixture of ``tests/pg.py`` and
runs once on SQLite and once on a real PostgreSQL. Races are real: concurrent calls go through two
stores opened on the same database (two "replicas"; on SQLite two connections to one file), so the
compare-and-sets are checked across connections, not inside one. PostgreSQL-only guarantees
(migrations racing, the database going away) are at the end.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bot.alerts import Alert
from bot.errors import AlreadyDecided, DecisionConflict, LeaseLost, StoreError
from bot.incidents import Approval, ApprovalState, Decision, IncidentState, StepStatus
from bot.localpg import PostgresServer
from bot.store import IngestItem, StepResult, Store, open_store
from bot.store.postgres import PostgresStore
from bot.store.postgres.base import lock_key
from bot.store.postgres.schema import JOIN_LOCK_NAMESPACE, MIGRATIONS
from tests.conftest import alert_payload, wait_for

TARGET = "cache"
A, I, S = ApprovalState, IncidentState, StepStatus  # noqa: E741


def item(
    fp: str, status: str = "firing", *, playbook: str | None = "evict", target: str | None = TARGET
) -> IngestItem:
    raw = alert_payload("RedisMemoryHigh", status, fingerprint=fp)["alerts"][0]
    return IngestItem(Alert.model_validate(raw), playbook, target, 0 if target else None)


def decision(who: str) -> Decision:
    return Decision(who=who, at="2026-01-01T00:00:00Z", approve=True, identity=f"slack:{who}")


async def waiting(store: Store, fp: str = "fp-1", required: int = 1) -> Approval:
    """An incident of its own waiting for approval of a mutating step."""
    (inc_id,) = (await store.ingest([item(fp, target=f"{TARGET}-{fp}")])).new
    assert await store.begin(inc_id)
    run_id = await store.start_step(inc_id, 1, "evict", "redis.evict", True)
    return await store.request_approval(
        inc_id, run_id, step_id="evict", step_index=1, step_type="redis.evict", plan={"action": "evict"},
        plan_hash="h-1", summary="evict agent:*", required=required, ttl=600, target=TARGET,
    )  # fmt: skip


async def approve(store: Store, ap: Approval, who: str = "alice") -> Approval:
    return await store.decide(
        ap.id, who=who, approve=True, seen=len(ap.decisions), decisions=[*ap.decisions, decision(who)],
        state=A.APPROVED, decided_by=who, approvers=[who], target=TARGET,
    )  # fmt: skip


@pytest.fixture
async def other(database_url: str) -> AsyncIterator[Store]:
    """A second store on the same database: another replica (or, on SQLite, another process)."""
    s = await open_store(database_url)
    try:
        yield s
    finally:
        await s.close()


async def kinds(store: Store, incident_id: int | None = None) -> list[str]:
    return [e.kind for e in await store.list_audit(limit=1000, incident_id=incident_id)]


# -- ingest ----------------------------------------------------------------------------------------


async def test_20_concurrent_deliveries_of_one_alert_make_one_incident(store: Store, other: Store) -> None:
    """Alertmanager re-sends; behind a Service the repeats land on different replicas at once."""
    results = await asyncio.gather(*((store, other)[i % 2].ingest([item("dup")]) for i in range(20)))
    assert sum(len(r.new) for r in results) == 1
    assert sum(r.duplicates for r in results) == 19
    assert len(await store.list_incidents(steps=False)) == 1
    received = [e for e in await store.list_audit() if e.kind == "alert.received"]
    assert len(received) == 20 and sum(e.detail["duplicate"] for e in received) == 19


async def test_a_notification_is_stored_whole_with_repeats_and_resolutions_in_order(store: Store) -> None:
    first = await store.ingest([item("a", target="t-a"), item("a", target="t-a"), item("b", target="t-b")])
    assert len(first.new) == 2 and first.duplicates == 1
    second = await store.ingest(
        [item("b", "resolved", target="t-b"), item("c", target="t-c"), item("z", "resolved")]
    )
    assert second.resolved == [first.new[1]] and len(second.new) == 1 and second.duplicates == 0
    incs = {i.fingerprint: i for i in await store.list_incidents(steps=False)}
    assert incs["b"].status == I.RESOLVED and incs["b"].alert_status == "resolved"
    assert incs["z"].status == I.RESOLVED and incs["z"].note == "resolved before the bot saw it firing"
    assert (await store.ingest([item("b", "resolved", target="t-b")])).duplicates == 1
    unmatched = await store.ingest([item("u", playbook=None, target=None)])
    assert unmatched.new == [] and (await store.list_incidents(limit=1, steps=False))[0].status == I.UNMATCHED


async def test_the_links_an_alert_came_with_are_kept(store: Store) -> None:
    """The card links to the alert's graph and to Alertmanager, whichever store holds it."""
    links = {"generator": "http://prom:9090/graph?g0.expr=up", "alertmanager": "http://am:9093"}
    with_links = item("linked")
    with_links.links.update(links)
    (inc_id,) = (await store.ingest([with_links])).new
    assert (await store.get_incident(inc_id)).links == links
    (plain,) = (await store.ingest([item("plain", target="other")])).new
    assert (await store.get_incident(plain)).links == {}


async def test_alerts_of_one_playbook_and_target_join_the_open_incident(store: Store) -> None:
    (parent,) = (await store.ingest([item("s1")])).new
    more = await store.ingest([item("s2"), item("s3")])
    assert more.new == [] and more.merged == {parent: 2}
    inc = await store.get_incident(parent, steps=False)
    assert inc.alert_count == 3 and inc.status == I.NEW
    merged = [i for i in await store.list_incidents(steps=False) if i.status == I.MERGED]
    assert sorted(i.fingerprint for i in merged) == ["s2", "s3"] and {i.merged_into for i in merged} == {
        parent
    }
    assert (await store.ingest([item("other", target="elsewhere")])).new, "another target opens its own"


async def test_a_storm_spread_over_replicas_opens_one_incident(store: Store, other: Store) -> None:
    """10 distinct alerts for one playbook and target, ingested at once through two stores: exactly
    one incident runs, the nine others joined it (PostgreSQL: the advisory lock per pair). Five
    rounds, each on its own target, so the race has its chances."""
    for round_ in range(5):
        target = f"storm-{round_}"
        results = await asyncio.gather(
            *((store, other)[i % 2].ingest([item(f"storm{round_}-{i}", target=target)]) for i in range(10))
        )
        new = [n for r in results for n in r.new]
        assert len(new) == 1, (round_, results)
        assert sum(sum(r.merged.values()) for r in results) == 9
        assert (await store.get_incident(new[0], steps=False)).alert_count == 10
    assert sum(i.status == I.MERGED for i in await store.list_incidents(limit=100, steps=False)) == 45


async def test_a_resolved_alert_cancels_its_pending_approval(store: Store) -> None:
    ap = await waiting(store, "r1")
    result = await store.ingest([item("r1", "resolved", target=f"{TARGET}-r1")])
    assert result.resolved == [ap.incident_id] and result.cancelled == [ap.id]
    assert (await store.get_approval(ap.id)).state == A.CANCELLED
    inc = await store.get_incident(ap.incident_id)
    assert inc.status == I.RESOLVED and inc.pending_step is None
    assert next(s for s in inc.steps if s.id == ap.step_run_id).status == S.CANCELLED
    assert "approval.cancelled" in await kinds(store, ap.incident_id)


async def test_text_with_nul_is_stored_and_still_deduplicated(store: Store) -> None:
    """Labels and Redis key names may hold NUL, which PostgreSQL text cannot: stored as U+FFFD there
    (kept on SQLite), never a 503 that Alertmanager would retry forever."""
    raw = alert_payload("Redis\x00Down", fingerprint="f\x00p", labels={"x": "a\x00b"})["alerts"][0]
    nul = IngestItem(Alert.model_validate(raw), "evict", TARGET, 0, note="n\x00")
    (inc_id,) = (await store.ingest([nul])).new
    assert (await store.ingest([nul])).duplicates == 1
    assert await store.begin(inc_id)
    run_id = await store.start_step(inc_id, 0, "memory", "redis.info", False)
    await store.finish_step(run_id, StepResult(S.OK, "big key agent:\x00x", details="\x00"), next_step=1)
    inc = await store.get_incident(inc_id)
    assert inc.fingerprint.replace("\ufffd", "\x00") == "f\x00p" and inc.labels["x"] == "a\x00b"
    assert inc.steps[0].summary.replace("\ufffd", "\x00") == "big key agent:\x00x"


# -- decisions and execution -----------------------------------------------------------------------


@pytest.mark.parametrize("required", [1, 2])
async def test_two_concurrent_deciders_one_wins(store: Store, other: Store, required: int) -> None:
    """A compare-and-set on the decisions seen: the loser is told (conflict, or already decided)."""
    ap = await waiting(store, "d1", required=required)
    state = A.APPROVED if required == 1 else A.PENDING

    async def decide(s: Store, who: str) -> Approval:
        return await s.decide(
            ap.id, who=who, approve=True, seen=0, decisions=[decision(who)], state=state,
            decided_by=who if state == A.APPROVED else None, approvers=[who], target=TARGET,
        )  # fmt: skip

    outcomes = await asyncio.gather(decide(store, "alice"), decide(other, "bob"), return_exceptions=True)
    won = [o for o in outcomes if isinstance(o, Approval)]
    lost = [o for o in outcomes if not isinstance(o, Approval)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    assert isinstance(lost[0], AlreadyDecided if required == 1 else DecisionConflict), lost
    final = await store.get_approval(ap.id)
    assert final.state == state and len(final.decisions) == 1
    assert (await kinds(store, ap.incident_id)).count("approval.decided") == 1


async def test_a_refused_event_rolls_back_cleanly(store: Store) -> None:
    """A refused event (already decided, wrong state) is common under concurrent clicks: it rolls
    back its transaction itself, leaving nothing for the connection pool to complain about."""
    loop = asyncio.get_running_loop()
    complaints: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: complaints.append(context))
    try:
        ap = await approve(store, await waiting(store, "rb"))
        for _ in range(3):
            with pytest.raises(AlreadyDecided):
                await approve(store, ap, who="bob")
        assert await store.get_setting("x") is None, "the connection is usable"
    finally:
        loop.set_exception_handler(None)
    assert complaints == []


async def test_an_approval_is_claimed_once_by_10_concurrent_claimers(store: Store, other: Store) -> None:
    ap = await approve(store, await waiting(store, "c1"))
    claims = await asyncio.gather(
        *((store, other)[i % 2].claim(ap.id, summary="go", actor=f"p{i}", target=TARGET) for i in range(10))
    )
    winners = [c for c in claims if c is not None]
    assert len(winners) == 1, claims
    assert (await store.get_approval(ap.id)).state == A.EXECUTING
    inc = await store.get_incident(ap.incident_id)
    assert [s.status for s in inc.steps if s.mutating and s.id != ap.step_run_id] == [S.RUNNING]
    run = await store.executed(
        ap.id, winners[0], StepResult(S.OK, "evicted 10 keys"), ok=True, incident_state=I.REMEDIATING,
        note=None, next_step=2, actor="alice", target=TARGET, detail={"keys_affected": 10},
    )  # fmt: skip
    assert run.status == S.OK and (await store.get_approval(ap.id)).state == A.EXECUTED
    assert await store.claim(ap.id, summary="again", actor="eve", target=TARGET) is None
    assert await store.action_history(TARGET, 0) == (1, 0)


async def test_no_claim_once_the_alert_resolved(store: Store) -> None:
    ap = await approve(store, await waiting(store, "c2"))
    await store.ingest([item("c2", "resolved", target=f"{TARGET}-c2")])
    assert await store.claim(ap.id, summary="go", actor="alice", target=TARGET) is None


async def test_expire_and_cancel_happen_once_and_only_from_the_right_state(
    store: Store, other: Store
) -> None:
    ap = await waiting(store, "e1")
    expired = await asyncio.gather(*((store, other)[i % 2].expire(ap.id) for i in range(6)))
    assert sum(e is not None for e in expired) == 1
    assert await store.cancel(ap.id, "late", incident_state=None) is None, "expired is final"
    assert (await store.get_incident(ap.incident_id, steps=False)).status == I.DIAGNOSED
    assert (await kinds(store, ap.incident_id)).count("approval.expired") == 1

    ap2 = await waiting(store, "e2")
    cancels = await asyncio.gather(
        *((store, other)[i % 2].cancel(ap2.id, "refused", incident_state=I.ESCALATED) for i in range(6))
    )
    assert sum(c is not None for c in cancels) == 1
    assert await store.expire(ap2.id) is None
    assert (await store.get_approval(ap2.id)).state == A.CANCELLED
    assert (await store.get_incident(ap2.incident_id, steps=False)).status == I.ESCALATED


async def test_a_new_request_supersedes_the_pending_one(store: Store) -> None:
    ap = await waiting(store, "p1")
    await approve(store, ap)
    await store.cancel(ap.id, "plan drifted", incident_state=I.REMEDIATING, state=A.SUPERSEDED)
    run_id = await store.start_step(ap.incident_id, 1, "evict", "redis.evict", True)
    again = await store.request_approval(
        ap.incident_id, run_id, step_id="evict", step_index=1, step_type="redis.evict", plan={"a": 2},
        plan_hash="h-2", summary="again", required=1, ttl=60, target=TARGET,
    )  # fmt: skip
    assert [a.id for a in await store.open_approvals(incident_id=ap.incident_id)] == [again.id]
    assert (await store.pending_approval(ap.incident_id)) == again
    assert (await store.latest_approval(ap.incident_id)) == again
    assert (await store.get_approval(ap.id)).state == A.SUPERSEDED


# -- orphans ---------------------------------------------------------------------------------------


def _own_as(monkeypatch: pytest.MonkeyPatch, owner: str) -> None:
    """Record ``owner`` as the process that starts and claims work, on both backends."""
    from bot.store import sqlite_approvals, sqlite_events
    from bot.store.postgres.base import PGBase

    monkeypatch.setattr(sqlite_events, "process_owner", lambda: owner)
    monkeypatch.setattr(sqlite_approvals, "process_owner", lambda: owner)
    monkeypatch.setattr(PGBase, "_owner", staticmethod(lambda: owner))


async def test_interrupt_orphans_closes_dead_work_once_and_leaves_live_work(
    store: Store, other: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Work whose process is gone is interrupted once (two stores asking at once); an action is never
    re-run: its approval is interrupted and the incident fails. Work of a live process stays."""
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _own_as(monkeypatch, f"{socket.gethostname()}:{alive.pid}")
        live = await approve(store, await waiting(store, "o-live"))
        live_run = await store.claim(live.id, summary="go", actor="alice", target=TARGET)
        monkeypatch.undo()  # the rest is owned by this process: dead to interrupt_orphans
        dead = await approve(store, await waiting(store, "o-dead"))
        dead_run = await store.claim(dead.id, summary="go", actor="alice", target=TARGET)
        assert dead_run is not None and live_run is not None
        await store.checkpoint(dead_run, {"deleted": 7})
        (diag,) = (await store.ingest([item("o-diag", target="t-diag")])).new
        await store.begin(diag)
        diag_run = await store.start_step(diag, 0, "memory", "redis.info", False)

        first, second = await asyncio.gather(store.interrupt_orphans(), other.interrupt_orphans())
        assert sorted([*first, *second]) == [dead.incident_id]
        assert (await store.get_approval(dead.id)).state == A.INTERRUPTED
        inc = await store.get_incident(dead.incident_id)
        assert inc.status == I.FAILED
        action = next(s for s in inc.steps if s.id == dead_run)
        assert action.status == S.INTERRUPTED and action.data == {"deleted": 7}
        audit = [
            e for e in await store.list_audit(incident_id=dead.incident_id) if e.kind == "action.executed"
        ]
        assert len(audit) == 1 and audit[0].detail["interrupted"] and audit[0].detail["keys_affected"] == 7
        assert (await store.get_step_run(diag_run)).status == S.INTERRUPTED
        assert (await store.get_approval(live.id)).state == A.EXECUTING
        assert (await store.get_step_run(live_run)).status == S.RUNNING
        assert await store.action_history(f"{TARGET}-o-dead", 0) == (1, 1), "a failed action for the breaker"

        alive.kill()
        alive.wait()
        assert await store.interrupt_orphans() == [live.incident_id]
        assert await store.interrupt_orphans() == []
    finally:
        alive.kill()
        alive.wait()


async def test_work_of_another_host_is_left_alone_while_its_lease_lives(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replicas on several hosts: a start-up sweep cannot see another host's processes, so their
    work counts as alive while the incident's lease is theirs and live; once it lapsed, it is not."""
    foreign = "another-pod:4242"
    _own_as(monkeypatch, foreign)
    ap = await approve(store, await waiting(store, "foreign"))
    assert await store.acquire(ap.incident_id, foreign, 0.5) is not None
    run_id = await store.claim(ap.id, summary="go", actor="alice", target=TARGET)
    assert run_id is not None
    assert await store.interrupt_orphans() == []
    assert (await store.get_step_run(run_id)).status == S.RUNNING
    await _lapse(0.6)
    assert await store.interrupt_orphans() == [ap.incident_id]
    assert (await store.get_approval(ap.id)).state == A.INTERRUPTED


# -- leases ----------------------------------------------------------------------------------------


async def _lapse(seconds: float) -> None:
    """Let a short lease run out (a condition on the clock, not a fixed sleep)."""
    until = time.time() + seconds
    await wait_for(lambda: time.time() > until, timeout=5)


async def test_a_lease_is_exclusive_until_it_lapses_and_fences_the_old_holder(
    store: Store, other: Store
) -> None:
    (inc_id,) = (await store.ingest([item("lease")])).new
    grabs = await asyncio.gather(
        *((store, other)[i % 2].acquire(inc_id, f"host-{i}:1", 30) for i in range(10))
    )
    held = [g for g in grabs if g is not None]
    assert len(held) == 1 and held[0].token == 1, grabs
    owner = held[0].owner
    assert await other.acquire(inc_id, "host-x:9", 30) is None, "a live lease is exclusive"
    a = await store.acquire(inc_id, owner, 0.05)  # re-taken by its holder: a new token
    assert a is not None and a.token == 2
    assert await store.lapsed() == []
    await _lapse(0.1)
    assert await store.lapsed() == [inc_id]
    takes = await asyncio.gather(
        *((store, other)[i % 2].take_over(inc_id, f"new-{i}:2", 30) for i in range(6))
    )
    (b,) = [t for t in takes if t is not None]
    assert b.token == 3
    assert not await store.renew(inc_id, a, 30), "the old holder learns it lost the lease"
    assert await store.renew(inc_id, b, 30)
    with pytest.raises(LeaseLost):
        await store.begin(inc_id, fence=a)
    assert await store.begin(inc_id, fence=b)
    run_id = await store.start_step(inc_id, 0, "memory", "redis.info", False, fence=b)
    with pytest.raises(LeaseLost, match="lease lost"):
        await store.start_step(inc_id, 1, "ping", "redis.ping", False, fence=a)
    with pytest.raises(LeaseLost):
        await store.finish_step(run_id, StepResult(S.OK, "late"), next_step=1, fence=a)
    run = await store.finish_step(run_id, StepResult(S.OK, "mine"), next_step=1, fence=b)
    assert run.summary == "mine"
    await store.release(inc_id, b)
    assert (await other.acquire(inc_id, "host-y:3", 30)) is not None, "released: anyone may continue"
    taken = [e for e in await store.list_audit(incident_id=inc_id) if e.kind == "incident.taken_over"]
    assert [(e.detail["from"], e.detail["token"]) for e in taken] == [(owner, 3)]


async def test_taking_over_interrupts_the_dead_holders_action_and_never_reruns_it(store: Store) -> None:
    ap = await approve(store, await waiting(store, "to1"))
    fence = await store.acquire(ap.incident_id, "dead:1", 0.05)
    assert fence is not None
    run_id = await store.claim(ap.id, summary="go", actor="alice", target=TARGET)
    assert run_id is not None
    await store.checkpoint(run_id, {"deleted": 3})
    await _lapse(0.1)
    assert await store.take_over(ap.incident_id, "alive:2", 30) is not None
    assert (await store.get_approval(ap.id)).state == A.INTERRUPTED
    inc = await store.get_incident(ap.incident_id)
    assert inc.status == I.FAILED
    assert (await store.get_step_run(run_id)).status == S.INTERRUPTED
    executed = [e for e in await store.list_audit(incident_id=inc.id) if e.kind == "action.executed"]
    assert (
        len(executed) == 1 and executed[0].detail["interrupted"] and executed[0].detail["keys_affected"] == 3
    )
    assert await store.claim(ap.id, summary="again", actor="alice", target=TARGET) is None


async def test_one_scheduler_leader_at_a_time(store: Store, other: Store) -> None:
    leaders = await asyncio.gather(
        *((store, other)[i % 2].lead("scheduler", f"host-{i}:1", 0.05) for i in range(8))
    )
    (first,) = [f for f in leaders if f is not None]
    assert first.token == 1
    assert await store.lead("scheduler", first.owner, 0.05) == first, "the leader renews"
    await _lapse(0.1)
    takers = await asyncio.gather(
        *((store, other)[i % 2].lead("scheduler", f"next-{i}:2", 30) for i in range(8))
    )
    (second,) = [t for t in takers if t is not None]
    assert second.token == 2
    assert await store.lead("scheduler", first.owner, 30) is None, "the old leader does not come back"
    elected = [e for e in await store.list_audit() if e.kind == "leader.elected"]
    assert [e.detail["token"] for e in elected] == [1, 2]


# -- records without state -------------------------------------------------------------------------


async def test_a_setting_default_is_kept_by_the_first_writer_and_never_audited(store: Store) -> None:
    """The incident page's link key: generated once, the same for every process, never in the audit."""
    first, second = await asyncio.gather(
        store.setting_default("ui.link_key", "secret-one"), store.setting_default("ui.link_key", "secret-two")
    )
    assert first == second and first in ("secret-one", "secret-two")
    assert await store.setting_default("ui.link_key", "secret-three") == first
    created = [e for e in await store.list_audit() if e.kind == "setting.created"]
    assert [e.detail for e in created] == [{"key": "ui.link_key"}]
    assert "secret-" not in json.dumps([e.model_dump(mode="json") for e in await store.list_audit()])


async def test_settings_chat_refs_and_firing_look_up(store: Store) -> None:
    assert await store.get_setting("kill_switch") is None
    await store.set_setting("kill_switch", "on", actor="alice")
    await store.set_setting("kill_switch", "on again", actor="alice")
    assert await store.get_setting("kill_switch") == "on again"
    await store.set_setting("kill_switch", None, actor="bob")
    assert await store.get_setting("kill_switch") is None
    assert (await kinds(store)).count("setting.changed") == 3

    (inc_id,) = (await store.ingest([item("f1")])).new
    await store.set_incident_chat_ref(inc_id, {"ts": "1.2"})
    found = await store.firing_incident(TARGET, "RedisMemoryHigh")
    assert found is not None and found.id == inc_id and found.chat_ref == {"ts": "1.2"}
    assert await store.firing_incident(TARGET, "RedisMemoryHigh", source="health-probe") is None
    assert await store.incidents_to_resume() == [inc_id]
    await store.ingest([item("f1", "resolved")])
    assert await store.firing_incident(TARGET, "RedisMemoryHigh") is None
    await store.ping()


async def _raw(database_url: str, sql: str) -> None:
    """Run one statement on the database directly, as a person with the app's credentials would."""
    if database_url.startswith("sqlite://"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite://"))
        try:
            conn.execute(sql)
            conn.commit()
        finally:
            conn.close()
        return
    pg = await asyncpg.connect(database_url)
    try:
        await pg.execute(sql)
    finally:
        await pg.close()


@pytest.mark.parametrize(
    "sql",
    ["UPDATE audit SET actor = 'mallory'", "DELETE FROM audit", "TRUNCATE audit"],
    ids=["update", "delete", "truncate"],
)
async def test_the_audit_trail_is_append_only_in_the_database(
    store: Store, database_url: str, sql: str
) -> None:
    await store.audit("breaker.reset", actor="alice", target=TARGET)
    if sql.startswith("TRUNCATE") and database_url.startswith("sqlite://"):
        sql = "DELETE FROM audit"  # SQLite has no TRUNCATE
    with pytest.raises((sqlite3.Error, asyncpg.PostgresError), match="append-only"):
        await _raw(database_url, sql)
    assert [(e.kind, e.actor) for e in await store.list_audit()] == [("breaker.reset", "alice")]


# -- PostgreSQL only -------------------------------------------------------------------------------


async def test_replicas_starting_at_once_migrate_once(pg_url: str) -> None:
    """Four stores open a fresh database at the same moment: the advisory lock lets one migrate."""
    stores = await asyncio.gather(*(PostgresStore(pg_url).open() for _ in range(4)))
    try:
        applied = sorted(s.migrations_applied for s in stores)
        assert applied == [[], [], [], list(range(1, len(MIGRATIONS) + 1))]
        conn = await asyncpg.connect(pg_url)
        try:
            versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_version")]
        finally:
            await conn.close()
        assert versions == list(range(1, len(MIGRATIONS) + 1))
        assert (await stores[1].ingest([item("m1")])).new
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def _hold_first_group(store: PostgresStore, blocker: Any, queued: int) -> asyncio.Future[Any]:
    """Keep the store's only ingest transaction waiting (another session holds the join lock its
    notification needs) until ``queued`` notifications wait behind it; then let it go. Returns the
    held notification's call."""
    key = (JOIN_LOCK_NAMESPACE, lock_key("evict\nt-first"))
    await blocker.execute("SELECT pg_advisory_lock($1, $2)", *key)
    first = asyncio.ensure_future(store.ingest([item("first", target="t-first")]))
    await wait_for(lambda: store._ingest_running == 1 and not store._ingest_queue)

    async def released() -> Any:
        await wait_for(lambda: len(store._ingest_queue) >= queued)
        await blocker.execute("SELECT pg_advisory_unlock($1, $2)", *key)
        return await first

    return asyncio.ensure_future(released())


async def test_notifications_that_wait_together_commit_together_each_with_its_own_result(
    pg_url: str,
) -> None:
    """Group commit on PostgreSQL: the notifications that waited while an ingest transaction ran
    go into ONE transaction, each with the result it would have had alone (arrival order, repeats
    within and across notifications, a resolve of what the same group opened)."""
    store = await PostgresStore(pg_url, ingest_groups=1).open()
    blocker = await asyncpg.connect(pg_url)
    try:
        (known,) = (await store.ingest([item("known", target="t-known")])).new
        before = store.ingest_transactions
        first = await _hold_first_group(store, blocker, 23)
        calls = [
            store.ingest([item(f"n{i}a", target=f"t{i}a"), item(f"n{i}b", target=f"t{i}b")])
            for i in range(20)
        ]
        calls += [
            store.ingest([item("known", target="t-known"), item("n3a", target="t3a")]),  # both stored by then
            store.ingest([item("twice", target="t-twice"), item("twice", target="t-twice")]),
            store.ingest([item("n5b", "resolved", target="t5b")]),  # resolves what the group opened
        ]
        results = await asyncio.gather(*calls)
        assert len((await first).new) == 1
        assert store.ingest_transactions == before + 2, "the held one, then all the others at once"
        for i, r in enumerate(results[:20]):
            assert len(r.new) == 2 and r.duplicates == 0 and r.resolved == [], i
        new_ids = [n for r in results[:20] for n in r.new]
        assert new_ids == sorted(new_ids) and new_ids[0] > known  # arrival order
        assert results[20].new == [] and results[20].duplicates == 2
        assert len(results[21].new) == 1 and results[21].duplicates == 1
        assert results[22].resolved == [results[5].new[1]]
        incs = {i.fingerprint: i for i in await store.list_incidents(limit=100, steps=False)}
        assert len(incs) == 1 + 1 + 40 + 1 and incs["n5b"].alert_status == "resolved"
        received = [e for e in await store.list_audit(limit=1000) if e.kind == "alert.received"]
        assert len(received) == 1 + 1 + 40 + 2 + 2 + 1
        assert sorted(e.detail["fingerprint"] for e in received if e.detail["duplicate"]) == [
            "known",
            "n3a",
            "twice",
        ]
    finally:
        await blocker.close()
        await store.close()


async def test_two_ingest_transactions_at_most_and_groups_of_64_at_most(pg_url: str) -> None:
    """Per store: a third notification waits while two ingest transactions run; a queue of 70
    waiting notifications is written as 64 + 6."""
    store = await PostgresStore(pg_url).open()
    blocker = await asyncpg.connect(pg_url)
    keys = [(JOIN_LOCK_NAMESPACE, lock_key(f"evict\nt-{n}")) for n in ("one", "two")]
    try:
        for key in keys:
            await blocker.execute("SELECT pg_advisory_lock($1, $2)", *key)
        held = [asyncio.ensure_future(store.ingest([item(n, target=f"t-{n}")])) for n in ("one", "two")]
        await wait_for(lambda: store._ingest_running == 2)
        waiting = [asyncio.ensure_future(store.ingest([item(f"w{i}", target=f"t-w{i}")])) for i in range(70)]
        await wait_for(lambda: len(store._ingest_queue) == 70)
        assert store._ingest_running == 2, "the others wait"
        before = store.ingest_transactions
        for key in keys:
            await blocker.execute("SELECT pg_advisory_unlock($1, $2)", *key)
        await asyncio.gather(*held, *waiting)
        assert store.ingest_transactions == before + 2 + 2, "the two held, then 64 + 6"
        assert all(len(w.result().new) == 1 for w in waiting)
    finally:
        await blocker.close()
        await store.close()


async def test_one_failing_notification_does_not_fail_its_group_on_postgresql(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await PostgresStore(pg_url, ingest_groups=1).open()
    blocker = await asyncpg.connect(pg_url)
    real = PostgresStore._resolve_alert

    async def refuse_bad(self: PostgresStore, conn: Any, it: IngestItem, now: float, result: Any) -> Any:
        if it.alert.fingerprint == "bad":
            raise asyncpg.exceptions.DataError("bad data")
        return await real(self, conn, it, now, result)

    monkeypatch.setattr(PostgresStore, "_resolve_alert", refuse_bad)
    try:
        first = await _hold_first_group(store, blocker, 3)
        before = store.ingest_transactions
        calls = [
            store.ingest([item("g1", target="t-g1")]),
            store.ingest([item("bad", "resolved")]),
            store.ingest([item("g2", target="t-g2")]),
        ]
        ok1, bad, ok2 = await asyncio.gather(*calls, return_exceptions=True)
        await first
        assert isinstance(bad, StoreError) and "bad data" in str(bad)
        assert not isinstance(ok1, BaseException) and len(ok1.new) == 1
        assert not isinstance(ok2, BaseException) and len(ok2.new) == 1
        assert store.ingest_transactions == before + 1 + 2, "the held one, then g1 and g2 alone"
        assert {i.fingerprint for i in await store.list_incidents(steps=False)} == {"first", "g1", "g2"}
    finally:
        await blocker.close()
        await store.close()


@pytest.fixture
def own_pg(tmp_path: Path, pg_server: PostgresServer) -> Any:
    """A PostgreSQL of this test's own, to stop and start (``pg_server`` only proves it can run)."""
    server = PostgresServer()
    server.start()
    yield server
    server.cleanup()


async def test_database_down_is_a_store_error_and_the_store_recovers(own_pg: PostgresServer) -> None:
    """Every call is bounded and fails as StoreError (webhook 503, /readyz not ready) while the
    database is down; once it is back, the same store works again without being reopened."""
    store = await PostgresStore(
        own_pg.url, connect_timeout=1.0, acquire_timeout=1.0, command_timeout=2.0, pool_min=2
    ).open()
    try:
        assert (await store.ingest([item("before")])).new
        own_pg.stop()
        loop = asyncio.get_running_loop()
        for call in (store.ping(), store.ingest([item("during")]), store.get_incident(1)):
            t0 = loop.time()
            with pytest.raises(StoreError, match=r"state store postgresql://"):
                await call
            assert loop.time() - t0 < 5.0
        own_pg.start()
        await wait_for(lambda: _pings(store), timeout=20)
        result = await store.ingest([item("during"), item("after")])
        assert len(result.new) + sum(result.merged.values()) == 2
    finally:
        await store.close()


async def test_a_group_fails_at_once_when_the_database_goes_away(own_pg: PostgresServer) -> None:
    """Retrying a group one notification at a time is for a statement the server refused: with the
    database gone, the waiting notifications fail together (503s now, not one timeout each)."""
    store = await PostgresStore(
        own_pg.url, ingest_groups=1, connect_timeout=1.0, acquire_timeout=1.0, command_timeout=2.0
    ).open()
    blocker = await asyncpg.connect(own_pg.url)
    tried: list[int] = []
    real = store._ingest_tx

    async def counted(batches: Any) -> Any:
        tried.append(len(batches))
        return await real(batches)

    store._ingest_tx = counted  # type: ignore[method-assign]
    try:
        key = (JOIN_LOCK_NAMESPACE, lock_key("evict\nt-first"))
        await blocker.execute("SELECT pg_advisory_lock($1, $2)", *key)
        first = asyncio.ensure_future(store.ingest([item("first", target="t-first")]))
        await wait_for(lambda: tried == [1])
        waiting = [store.ingest([item(f"w{i}", target=f"t-w{i}")]) for i in range(10)]
        queued = asyncio.gather(*waiting, return_exceptions=True)
        await wait_for(lambda: len(store._ingest_queue) == 10)
        await asyncio.to_thread(own_pg.stop)
        outcomes = [await asyncio.gather(first, return_exceptions=True), *await queued]
        assert all(isinstance(o, StoreError) for o in [outcomes[0][0], *outcomes[1:]]), outcomes
        assert tried == [1, 10], "the group once, not again one by one"
    finally:
        await store.close()
        blocker.terminate()


async def _pings(store: Store) -> bool:
    try:
        await store.ping()
    except StoreError:
        return False
    return True


async def test_an_unreachable_database_fails_open_with_a_clear_error() -> None:
    from bot.localstack import free_port

    url = f"postgresql://bot:secret@127.0.0.1:{free_port()}/bot"
    with pytest.raises(StoreError) as err:
        await PostgresStore(url, connect_timeout=1.0).open()
    assert "secret" not in str(err.value) and "bot:***@127.0.0.1" in str(err.value)


async def test_the_service_answers_503_and_is_not_ready_while_the_database_is_down(
    own_pg: PostgresServer, aiohttp_client: Any, config_path: Path
) -> None:
    """The webhook's 503 makes Alertmanager retry; /readyz takes the replica out of the Service.
    Both come back by themselves when the database does."""
    from bot.app import create_app
    from bot.config import load_config
    from tests.conftest import RecordingNotifier

    config_path.write_text(config_path.read_text() + f"database_url: {own_pg.url}\n")
    client = await aiohttp_client(create_app(load_config(config_path), notifier=RecordingNotifier()))
    payload = alert_payload("RedisHitRateLow", fingerprint="down-1")
    assert (await client.post("/alerts", json=payload)).status == 200
    own_pg.stop()
    assert (await client.get("/readyz")).status == 503
    resp = await client.post("/alerts", json=alert_payload("RedisHitRateLow", fingerprint="down-2"))
    assert resp.status == 503 and "retry" in (await resp.json())["error"]
    own_pg.start()
    await wait_for(lambda: _ready(client), timeout=20)
    again = await client.post("/alerts", json=alert_payload("RedisHitRateLow", fingerprint="down-2"))
    assert again.status == 200 and (await again.json())["accepted"] == 1


async def _ready(client: Any) -> bool:
    return bool((await client.get("/readyz")).status == 200)

"""The lifecycle under random event sequences: a Hypothesis state machine against the real engine.

Why: the unit tests each walk one path through incident, step-run and approval states; the defects
of issue 11 lived on paths nobody wrote down (a decision after the TTL, the kill switch between the
request and the decision, a restart between claim and execution). Here Hypothesis drives random
interleavings of everything that can happen to an incident, against the real store (SQLite, and
PostgreSQL: the same rules and invariants on both, fewer examples on PostgreSQL), the real engine
(``Engine(workers=False)``: the test runs incidents itself, so every rule ends with the engine
quiet) and a real ``redis-server``, and after EVERY step checks the invariants the issue names, by
reading the tables directly (:class:`tests.pg.RawDB`: the same SQL on both backends) and Redis:

1. an incident is ``awaiting_approval`` iff exactly one of its approvals is ``pending``;
2. no action ran without an approved plan whose hash matches, with enough distinct approvers
   (checked on the audit trail AND on Redis: agent/tmp keys only ever disappear in a step in which
   an ``action.executed`` record appears, and protected keys never do), never in a step that began
   with the kill switch on or the breaker open (worked out from the tables, not by the
   engine's code), and no decision is added to an approval after its deadline;
3. each approval executes at most once (audit records per plan, and what the engine reported);
4. every state change has its audit record (exact counts per approval and per step status);
5. every record is in a state the machine allows, and consistent with its siblings (an approval's
   gate step run mirrors the approval's state); nothing is left running, approved or executing, and
   no incident is left open without a pending approval, except work a simulated dead process owns
   (until the simulated recovery).

Events (rules): alerts firing (new fingerprint), re-sent, resolved and firing again (new startsAt);
approve and deny (by several people; a two-approver FLUSHDB playbook), decisions twice, by the same
person twice, on a stale plan, late (``expires_at`` moved into the past: time passing), under the
kill switch or the breaker; the expiry job; the keyspace changing under a pending approval (plans
drift, go over the key cap, a protected queue appears); a process that dies before running an
incident, in its first step, or after deciding or claiming an approval (or whose claim comes after
the alert resolved); recovery: restarts (step by step, or through the real ``Runner.start``), or
another replica taking the dead process's lapsed leases over (``Runner.sweep``).
Documented refusals (:class:`ApprovalError` and its subclasses, :class:`NotFound`) are legal
outcomes; any other exception fails the test, :class:`IllegalTransition` in particular.

Below the machine: regression tests for what it found.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from bot import approval_rules
from bot.alerts import Notification
from bot.config import ApprovalConfig, Config, load_config
from bot.engine import Engine
from bot.errors import ApprovalError, NotFound
from bot.incidents import ApprovalState, IncidentState, StepStatus, iso
from bot.lifecycle import AlertStatus
from bot.localpg import PostgresServer
from bot.runner import KILL_SWITCH, DecisionReport
from bot.steps import Plan
from tests.conftest import RecordingNotifier, RedisServer, alert_payload, person
from tests.pg import RawDB

T = TypeVar("T")
Row = Mapping[str, Any]

DEAD_OWNER = "otherhost:1"
"""Owner of the work a simulated process left when it died (another host's, holding no lease:
never alive here)."""

EVICT = """\
name: sm-evict
match: {alertname: SmEvict}
steps:
  - {id: ping, run: redis.ping, with: {threshold_ms: 1000}}  # ok (not a slow-PING warning) on a loaded machine
  - {id: evict, run: redis.evict, with: {pattern: "agent:*", batch: 50}}
  - {id: check, run: redis.verify_key_count, with: {pattern: "agent:*", max: 0, within: 10ms}}
"""
FLUSH = """\
name: sm-flush
match: {alertname: SmFlush}
steps:
  - {id: info, run: redis.info, with: {section: keyspace}}
  - {id: flush, run: redis.flushdb, with: {snapshot_first: false}}
  - {id: check, run: redis.verify_key_count, with: {pattern: "tmp:*", max: 0, within: 10ms}}
"""
ALERTNAME = {"evict": "SmEvict", "flush": "SmFlush"}
TARGET = {"evict": "cache", "flush": "scratch"}
MAX_KEYS = 500
"""``guardrails.max_keys_per_run``: the cache growing past it puts the eviction's plan over the cap."""
PEOPLE = ("alice", "bob", "carol")
CACHE_KEYS, TMP_KEYS = 40, 20
DECISIONS = [
    "approve",
    "approve",
    "approve",
    "deny",
    "approve after cache +300",
    "approve after cache +700",
    "approve after queue appears",
    "approve after kill switch on",
    "approve after breaker trips",
]
DEATHS = [
    "before running",
    "in the first step",
    "after deciding",
    "after claiming",
    "claiming after the alert resolved",
]
WORLD_CHANGES = [
    "cache +300",
    "cache +700",
    "tmp +200",
    "queue appears",
    "queue goes",
    "kill switch on",
    "kill switch off",
    "kill switch off",
    "breaker trips",
    "breaker reset",
    "breaker reset",
]

OPEN_STATES = {"new", "diagnosing", "awaiting_approval", "remediating"}
GATE_STATUS = {
    # the status an approval's gate step run has, by the approval's state
    "pending": {"awaiting_approval"},
    "approved": {"awaiting_approval"},
    "executing": {"approved"},
    "executed": {"approved"},
    "denied": {"denied"},
    "expired": {"expired"},
    "cancelled": {"cancelled"},
    "superseded": {"cancelled"},
    "interrupted": {"approved", "interrupted"},  # claimed (then its action run is interrupted) or not
}
STEP_FINISHED_AUDITED = {
    "ok",
    "warning",
    "failed",
    "error",
    "timeout",
    "skipped",
    "planned",
    "escalated",
    "approved",
}
"""Step statuses whose every run has exactly one ``step.finished`` record (the others are written
by an approval event, which has its own record)."""
INTERRUPTED_BY = {"step.interrupted", "incident.taken_over"}
"""Audit kinds that record work interrupted by a restart, or by another replica's takeover."""
ENDED_BY = {
    # audit kinds, one of which must exist for an incident in this state
    "diagnosed": {
        "incident.finished",
        "approval.decided",
        "approval.expired",
        "approval.cancelled",
        "approval.superseded",
    },
    "verified": {"incident.finished"},
    "failed": {"incident.finished", "incident.failed", "action.executed", *INTERRUPTED_BY},
    "escalated": {"incident.escalated", "approval.cancelled"},
}


@dataclass(frozen=True)
class AlertRef:
    """One alert occurrence as Alertmanager identifies it: (fingerprint, startsAt)."""

    kind: str
    fingerprint: str
    starts_at: str

    @property
    def starts_key(self) -> str:
        """startsAt as the store keys incidents by it."""
        return self.notification().alerts[0].starts_key

    def notification(self, status: str = "firing") -> Notification:
        labels = {"bucket": "scratch"} if self.kind == "flush" else None
        return Notification.model_validate(
            alert_payload(
                ALERTNAME[self.kind],
                status,
                fingerprint=self.fingerprint,
                starts_at=self.starts_at,
                labels=labels,
            )
        )


def make_config(workdir: Path, port: int, database_url: str | None = None) -> Config:
    """Two targets on one redis-server: ``cache`` (db 0: the agent cache plus protected sessions and
    queues) and ``scratch`` (db 1: throwaway ``tmp:*`` keys that the FLUSHDB playbook may flush).
    The store: ``database_url`` (PostgreSQL), else the default SQLite ``state_file``."""
    pb = workdir / "playbooks"
    pb.mkdir(parents=True, exist_ok=True)
    (pb / "evict.yaml").write_text(EVICT)
    (pb / "flush.yaml").write_text(FLUSH)
    path = workdir / "bot.yaml"
    path.write_text(
        "targets:\n"
        f"  - {{name: scratch, match: {{job: redis, bucket: scratch}}, url: 'redis://127.0.0.1:{port}/1'}}\n"
        f"  - {{name: cache, match: {{job: redis}}, url: 'redis://127.0.0.1:{port}/0'}}\n"
        "playbooks: playbooks\n"
        "protected_patterns: ['sess:*']\n"
        "approvals: {ttl: 1h}\n"
        f"guardrails: {{max_actions_per_hour: 6, pause_after_failures: 2, max_keys_per_run: {MAX_KEYS}}}\n"
        "runner: {redis_timeout: 5s}\n" + (f"database_url: {database_url}\n" if database_url else "")
    )
    return load_config(path)


def seed(r0: redis.Redis, r1: redis.Redis) -> None:
    """db 0: the agent cache, 5 sessions and a BullMQ queue (protected); db 1: tmp keys."""
    r0.flushdb()
    r1.flushdb()
    pipe = r0.pipeline(transaction=False)
    for i in range(CACHE_KEYS):
        pipe.set(f"agent:{i}", "x" * 64)
    for i in range(5):
        pipe.hset(f"sess:{i}", mapping={"user": str(i)})
    pipe.rpush("bull:email:wait", "1", "2")
    pipe.execute()
    r1.mset({f"tmp:{i}": "y" for i in range(TMP_KEYS)})


def count(r: redis.Redis, pattern: str) -> int:
    return sum(1 for _ in r.scan_iter(match=pattern, count=1000))


def approvers(decisions_json: str) -> set[str]:
    """Distinct identities that approved (what the two-person rule counts)."""
    return {d.get("identity") or d["who"] for d in json.loads(decisions_json) if d["approve"]}


async def decide_elsewhere(engine: Engine, approval_id: int, names: list[str]) -> None:
    """Decisions recorded by ANOTHER process (the store's compare-and-set, with the real rules), as
    a CLI ``approve`` would before it dies: the approval reaches quorum here without executing.
    Like the engine, it records nothing on an approval past its deadline."""
    store = engine.store
    for name in names:
        ap = await store.get_approval(approval_id)
        if ap.state != ApprovalState.PENDING or time.time() >= ap.expires_ts:
            return
        ruling = approval_rules.decide(
            ap, person(name), True, ApprovalConfig(), requested_by=None, at=iso(time.time()) or ""
        )
        await store.decide(
            ap.id,
            who=name,
            approve=True,
            seen=len(ap.decisions),
            decisions=list(ruling.decisions),
            state=ruling.state,
            decided_by=ruling.decided_by,
            approvers=ruling.approver_ids,
            target=None,
        )


_databases = itertools.count(1)


class LifecycleMachine(RuleBasedStateMachine):
    """Random lifecycle events against one engine (restarted now and then) and one store: a fresh
    SQLite file, or (``pg`` given) a fresh PostgreSQL database, for every example."""

    def __init__(self, server: RedisServer, pg: PostgresServer | None = None) -> None:
        super().__init__()
        self.server = server
        self.pg = pg
        self.workdir = Path(tempfile.mkdtemp(prefix="lifecycle-sm-"))
        self.database = f"lifecycle_sm_{next(_databases)}"
        url = pg.create_database(self.database) if pg else None
        self.config = make_config(self.workdir, server.port, url)
        self.db = RawDB(url or f"sqlite://{self.config.state_file}")
        self.notifier = RecordingNotifier()
        self.engine = Engine(self.config, notifier=self.notifier, workers=False)
        self.loop = asyncio.new_event_loop()
        self.r0 = server.sync_client(0)
        self.r1 = server.sync_client(1)
        self.started = False
        self.alerts: list[AlertRef] = []
        self.serial = 0
        self.unrun: set[int] = set()
        """Incidents persisted by a process that crashed before running them (until recovered)."""
        self.dead_approvals: set[int] = set()
        self.dead_runs: set[int] = set()
        """Approvals and step runs a crashed process left approved, executing or running: the only
        ones allowed in those states, and only until the recovery that must clean them up."""
        self.past_deadline: dict[int, int] = {}
        """Approval id -> decisions it had when its deadline passed (it may get no more)."""
        self.guard: dict[str, str | None] = {}
        """Target -> why no action may run on it (kill switch, breaker) when the step began."""
        self.reported_executed: Counter[int] = Counter()
        """Approval id -> decisions whose report said the plan was executed."""
        self.before: dict[str, int] = {}

    # -- plumbing -------------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    async def settle(self) -> None:
        """Let the background notifications the intake spawned finish, so the next step starts quiet
        (a task still running after 30 s fails the step: nothing here should take that long)."""
        me = asyncio.current_task()
        for _ in range(10):  # a task may spawn another
            tasks = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            if not tasks:
                return
            _, still = await asyncio.wait(tasks, timeout=30)
            assert not still, f"background tasks did not finish: {still}"
        raise AssertionError("background tasks keep spawning others")

    def q(self, sql: str, *args: Any) -> list[Row]:
        """Read the store's tables as another process would (SQL with ``?`` placeholders)."""
        assert self.started
        return self.db.q(sql, *args)

    def write(self, sql: str, *args: Any) -> None:
        """A direct write to the store (another process, or time passing: said at each use)."""
        self.db.write(sql, *args)

    def deadline_passes(self, approvals: list[Row]) -> None:
        """Simulates time passing beyond these approvals' deadlines: each ``expires_at`` is moved
        one second into the past in the store, as the clock would. From now on nobody may add
        a decision to them (the model remembers how many they had)."""
        for ap in approvals:
            self.write("UPDATE approvals SET expires_at = ? WHERE id = ?", time.time() - 1, ap["id"])
            self.past_deadline[ap["id"]] = len(json.loads(ap["decisions"]))

    def serial_no(self) -> int:
        self.serial += 1
        return self.serial

    def starts_at(self) -> str:
        n = self.serial_no()
        return f"2026-11-25T{10 + n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}.000Z"

    def pending(self) -> list[Row]:
        return self.q("SELECT * FROM approvals WHERE state = 'pending' ORDER BY id")

    def matched_incidents(self) -> list[int]:
        return [r["id"] for r in self.q("SELECT id FROM incidents WHERE playbook IS NOT NULL ORDER BY id")]

    async def _receive(self, alert: AlertRef, status: str, *, run: bool = True) -> list[int]:
        result = await self.engine.intake.receive(alert.notification(status))
        if run:
            for inc_id in result.new:
                await self.engine.runner.run_incident(inc_id)
        else:
            self.unrun.update(result.new)
        await self.settle()
        return result.new

    async def _decide(self, inc_id: int, who: str, approve: bool, **kw: Any) -> DecisionReport | None:
        try:
            report = await self.engine.runner.decide(inc_id, person(who), approve, **kw)
        except (ApprovalError, NotFound):  # AlreadyDecided, DecisionRefused, NotAllowed...: legal
            await self.settle()
            return None
        if report.executed:
            self.reported_executed[report.approval.id] += 1
        await self.settle()
        return report

    # -- set-up and tear-down -------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        """A fresh store and a freshly seeded Redis for every example."""
        seed(self.r0, self.r1)
        self.run(self.engine.start())
        self.started = True

    def teardown(self) -> None:
        try:
            if self.engine.started:
                self.run(self.engine.stop())
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()
            self.db.close()
            self.r0.close()
            self.r1.close()
            shutil.rmtree(self.workdir, ignore_errors=True)
            if self.pg:
                self.pg.drop_database(self.database)

    # -- alerts ---------------------------------------------------------------------------------

    def _fire(self, kind: str) -> None:
        alert = AlertRef(kind, f"fp-{kind}-{self.serial_no()}", self.starts_at())
        self.alerts.append(alert)
        self.run(self._receive(alert, "firing"))

    # No arguments: Hypothesis picks rules with fewer arguments more often, and these make the work.
    @rule()
    def fire(self) -> None:
        """The agent cache holds its usual keys (again) and a memory alert fires (new
        fingerprint): a new incident, or it joins the open one of its playbook. (Keys the test
        itself removes here are not counted against the engine.)"""
        self.r0.mset({f"agent:{i}": "x" * 64 for i in range(CACHE_KEYS)})
        extra = [
            k for k in self.r0.scan_iter(match="agent:*", count=1000) if int(k.split(b":")[1]) >= CACHE_KEYS
        ]
        if extra:
            self.r0.delete(*extra)
        if self.before:
            self.before["agent"] = CACHE_KEYS
        self._fire("evict")

    @rule()
    def fire_flush(self) -> None:
        """Scratch keys pile up and an alert fires whose playbook is a two-approver FLUSHDB."""
        self.r1.mset({f"tmp:{i}": "y" for i in range(TMP_KEYS)})
        self._fire("flush")

    @precondition(lambda self: self.alerts)
    @rule(data=st.data(), what=st.sampled_from(["resolves", "resolves", "is re-sent", "fires again"]))
    def alert_again(self, data: st.DataObject, what: str) -> None:
        """A known alert resolves (or its resolution is re-sent); Alertmanager re-sends a firing
        notification it already delivered (a no-op); or the same alert fires again later: same
        fingerprint, new startsAt, a new occurrence."""
        old = data.draw(st.sampled_from(self.alerts))
        if what == "resolves":
            self.run(self._receive(old, "resolved"))
        elif what == "is re-sent":
            assert self.run(self._receive(old, "firing")) == [], "a repeat opened an incident"
        else:
            alert = AlertRef(old.kind, old.fingerprint, self.starts_at())
            self.alerts.append(alert)
            self.run(self._receive(alert, "firing"))

    # -- decisions ------------------------------------------------------------------------------

    def _approve_newest(self, *, all_but_last: bool = False) -> None:
        """The next people who have not approved the newest pending step approve it, one by one:
        only the first, or (``all_but_last``) all but the one whose approval completes it."""
        ap = self.pending()[-1]
        done = approvers(ap["decisions"])
        people = [p for p in PEOPLE if f"slack:{p}" not in done]
        needed = max(1, ap["required"] - len(done))
        for who in people[: needed - 1] if all_but_last else people[:1]:
            self.run(self._decide(ap["incident_id"], who, True, approval_id=ap["id"]))

    @rule(how=st.sampled_from(DECISIONS))
    def decide(self, how: str) -> None:
        """The newest pending step is decided: approved by the next person who has not approved it
        yet, or denied. ``approve after X``: the world changes between the request and the deciding
        approval (the pairs that matter most, so they are one step): the plan drifted past the
        margin (asked again), the re-check finds it over the key cap or a protected queue (refused,
        closed), or a guardrail is on (refused, still pending). Nothing pending: an alert fires
        first (no precondition: Hypothesis picks rules with preconditions far less often, and a
        decision is what this machine is about)."""
        if not self.pending():
            (self.fire if self.serial % 3 else self.fire_flush)()
            if not self.pending():
                return
        if how == "deny":
            ap = self.pending()[-1]
            self.run(self._decide(ap["incident_id"], "carol", False))
            return
        if how.startswith("approve after "):
            self._approve_newest(all_but_last=True)
            if not self.pending():
                return
            self.world_changes(how.removeprefix("approve after "))
        self._approve_newest()

    @precondition(lambda self: self.q("SELECT id FROM approvals"))
    @rule(
        data=st.data(),
        how=st.sampled_from(
            ["someone, any pending", "the same person twice", "old card", "any incident", "stale plan"]
        ),
    )
    def decide_other(self, data: st.DataObject, how: str) -> None:
        """Decisions other than the next approver's: a random person on a random pending step, the
        same person twice (the two-person rule), a click on an old card (a given approval, whatever
        became of it: decided twice, late), a decision on any incident (most have nothing pending),
        an approve of a plan other than the pending one (refused, changes nothing)."""
        who, approve = data.draw(st.sampled_from(PEOPLE)), data.draw(st.booleans())
        pending = self.pending()
        if how == "old card" or not pending:
            ap = data.draw(st.sampled_from(self.q("SELECT id, incident_id FROM approvals ORDER BY id")))
            self.run(self._decide(ap["incident_id"], who, approve, approval_id=ap["id"]))
        elif how == "any incident":
            self.run(self._decide(data.draw(st.sampled_from(self.matched_incidents())), who, approve))
        elif how == "stale plan":
            ap = data.draw(st.sampled_from(pending))
            report = self.run(self._decide(ap["incident_id"], who, True, plan_hash="0" * 64))
            assert report is None, "a decision on another plan was taken"
        elif how == "the same person twice":
            ap = data.draw(st.sampled_from(pending))
            self.run(self._decide(ap["incident_id"], who, True, approval_id=ap["id"]))
            self.run(self._decide(ap["incident_id"], who, True, approval_id=ap["id"]))
        else:
            ap = data.draw(st.sampled_from(pending))
            self.run(self._decide(ap["incident_id"], who, approve))

    @rule(then=st.sampled_from(["nobody looks", "approve", "deny", "the expiry job runs"]))
    def time_passes(self, then: str) -> None:
        """The newest pending approval's TTL (``approvals.ttl`` is 1h) runs out, and the expiry job
        has not run yet; then someone decides (refused as expired: the approval closes with its
        step run and incident, defect 1 of issue 11), or the scheduler's expiry job runs (every
        pending approval past its deadline closes). Nothing pending: the expiry job runs alone."""
        if not self.pending() or then == "the expiry job runs":
            self.deadline_passes(self.pending())
            self.run(self.engine.runner.expire_approvals())
            self.run(self.settle())
            return
        ap = self.pending()[-1]
        self.deadline_passes([ap])
        if then != "nobody looks":
            self.run(self._decide(ap["incident_id"], "alice", then == "approve"))

    # -- guardrails and the keyspace ------------------------------------------------------------

    @rule(change=st.sampled_from(WORLD_CHANGES))
    def world_changes(self, change: str) -> None:
        """The keyspace or a guardrail changes: the cache grows past an approved plan's margin
        (asked again) or past the key cap (re-check fails, or escalated); tmp keys pile up; a
        protected queue appears in db 1 or goes (FLUSHDB is refused while it exists, at planning
        and again right before flushing); the kill switch goes on or off; a breaker trips (two
        failed actions on both targets, as another process's would be recorded:
        ``pause_after_failures: 2``; marked synthetic, no approval stands behind them) or is reset.
        Guardrails are lifted more often than set, so that most steps can still act."""
        store = self.engine.store
        if change.startswith("cache"):
            self.r0.mset({f"agent:{i}": "z" * 64 for i in range(int(change[-3:]))})
        elif change.startswith("tmp"):
            self.r1.mset({f"tmp:{i}": "y" for i in range(int(change[-3:]))})
        elif change == "queue appears":
            self.r1.rpush("bull:jobs:wait", "1")
        elif change == "queue goes":
            self.r1.delete("bull:jobs:wait")
        elif change.startswith("kill switch"):
            value = "on by test" if change.endswith("on") else None
            self.run(store.set_setting(KILL_SWITCH, value, actor="test"))
        elif change == "breaker reset":
            for target in TARGET.values():
                self.run(self.engine.runner.guardrails.reset_breaker(target, "test", "looked at it"))
        else:
            for target in TARGET.values():
                for _ in range(2):
                    detail = {"ok": False, "synthetic": True}
                    self.run(store.audit("action.executed", target=target, actor="test", detail=detail))
        # A guardrail set in the middle of a step (``decide("approve after kill switch on")``)
        # holds for the rest of it: no action may run after it.
        self.guard = {t: self.guard.get(t) or self.guard_reason(t) for t in TARGET.values()}

    # -- processes that die, and recovery ---------------------------------------------------------

    @rule(how=st.sampled_from(DEATHS))
    def a_process_dies(self, how: str) -> None:
        """A process dies half-way, leaving its work to be recovered (:meth:`recover`):

        - ``before running``: an alert is on disk (Alertmanager got its 200), then the process dies
          before a worker ran the incident: it stays ``new``;
        - ``in the first step``: ... or while its first read-only step ran (``diagnosing``, the run
          owned by the dead process);
        - ``after deciding`` / ``after claiming``: another process (a CLI ``approve``) records the
          deciding approvals of the newest pending step (and claims the action), then dies before
          running it: its approval (and run) stay with a dead owner;
        - ``claiming after the alert resolved``: the alert resolves between that process's decision
          and its claim: the claim must fail (compare-and-set on the alert's state).

        The last three need a pending step; without one, the process dies before running.
        """
        if how in ("before running", "in the first step") or not self.pending():
            self._dies_before_running("evict" if self.serial % 2 else "flush", how == "in the first step")
            return
        ap = self.pending()[-1]
        names = [p for p in PEOPLE if f"slack:{p}" not in approvers(ap["decisions"])]
        self.run(decide_elsewhere(self.engine, ap["id"], names))
        state = self.q("SELECT state FROM approvals WHERE id = ?", ap["id"])[0]["state"]
        if state != "approved":
            return
        run_id = None
        if how == "claiming after the alert resolved":
            inc = self.q("SELECT fingerprint, starts_at FROM incidents WHERE id = ?", ap["incident_id"])[0]
            alert = next(
                a
                for a in self.alerts
                if (a.fingerprint, a.starts_key) == (inc["fingerprint"], inc["starts_at"])
            )
            self.run(self._receive(alert, "resolved"))
        if how != "after deciding":
            run_id = self.run(self.engine.store.claim(ap["id"], summary="approved", actor="cli", target=None))
            if how == "claiming after the alert resolved":
                assert run_id is None, "an approval was claimed after its alert resolved"
        # the process that decided (and claimed) is the dead one, not this test's
        self.write("UPDATE approvals SET owner = ? WHERE id = ?", DEAD_OWNER, ap["id"])
        self.dead_approvals.add(ap["id"])
        if run_id is not None:
            self.write("UPDATE step_runs SET owner = ? WHERE id = ?", DEAD_OWNER, run_id)
            self.dead_runs.add(run_id)

    def _dies_before_running(self, kind: str, mid_step: bool) -> None:
        alert = AlertRef(kind, f"fp-{kind}-{self.serial_no()}", self.starts_at())
        self.alerts.append(alert)
        new = self.run(self._receive(alert, "firing", run=False))
        if not mid_step:
            return
        first = self.engine.playbooks.get(f"sm-{kind}")
        assert first is not None
        step = first.steps[0]
        for inc_id in new:
            assert self.run(self.engine.store.begin(inc_id))
            run_id = self.run(self.engine.store.start_step(inc_id, 0, step.id, step.type.name, False))
            # the process that ran the step is the dead one, not this test's
            self.write("UPDATE step_runs SET owner = ? WHERE id = ?", DEAD_OWNER, run_id)
            self.dead_runs.add(run_id)

    @rule(
        how=st.sampled_from(["restart, step by step", "restart, Runner.start", "another replica takes over"])
    )
    def recover(self, how: str) -> None:
        """What a dead process left is recovered:

        - ``restart``: the bot stops and starts again on the same store: what a dead process
          left running is interrupted (never re-run), unfinished diagnostics resume; either the
          real ``Runner.start`` does it (its workers run the resumed incidents; they are stopped
          once the queue is drained, so the test drives the engine alone again), or the test does
          what it would, step by step;
        - ``another replica takes over``: the dead process held the leases of the incidents it
          worked on; they lapse (simulated: ``lease_until`` and ``updated_at`` moved into the past)
          and this engine's lease sweep (``Runner.sweep``) takes them over, as another replica
          would; the test runs what the sweep queued. Work on incidents that ended meanwhile holds
          no lease and waits for a restart.
        """
        if how.startswith("restart"):
            self.run(self._restart(with_workers=how.endswith("Runner.start")))
            self.unrun.clear()
            self.dead_approvals.clear()
            self.dead_runs.clear()
            return
        dead = {
            r["incident_id"]
            for r in self.q("SELECT id, incident_id FROM approvals")
            if r["id"] in self.dead_approvals
        }
        dead |= {
            r["incident_id"]
            for r in self.q("SELECT id, incident_id FROM step_runs")
            if r["id"] in self.dead_runs
        }
        past = time.time() - 10 * self.config.runner.lease_ttl
        for inc_id in dead:
            self.write(
                "UPDATE incidents SET lease_owner = ?, lease_until = ?, updated_at = ? WHERE id = ?",
                DEAD_OWNER,
                past,
                past,
                inc_id,
            )
        for inc_id in self.unrun:  # accepted, never started: no lease, untouched for long
            self.write("UPDATE incidents SET updated_at = ? WHERE id = ?", past, inc_id)
        taken = self.run(self._take_over())
        self.unrun -= set(taken)
        self.dead_approvals -= {
            r["id"] for r in self.q("SELECT id, incident_id FROM approvals") if r["incident_id"] in taken
        }
        self.dead_runs -= {
            r["id"] for r in self.q("SELECT id, incident_id FROM step_runs") if r["incident_id"] in taken
        }

    async def _restart(self, *, with_workers: bool) -> None:
        await self.engine.stop()
        self.engine = Engine(self.config, notifier=self.notifier, workers=with_workers)
        await self.engine.start()
        if with_workers:
            await self.engine.runner.drain()
            await self.engine.runner.stop()
        else:
            await self.engine.store.interrupt_orphans()
            for inc_id in await self.engine.store.incidents_to_resume():
                await self.engine.runner.run_incident(inc_id)
        await self.settle()

    async def _take_over(self) -> list[int]:
        taken = await self.engine.runner.sweep()
        for inc_id in taken:  # what the sweep queued for the workers
            await self.engine.runner.run_incident(inc_id)
        await self.settle()
        return taken

    # -- invariants -----------------------------------------------------------------------------

    def _snapshot(self) -> dict[str, int]:
        return {
            "agent": count(self.r0, "agent:*"),
            "tmp": count(self.r1, "tmp:*"),
            "sess": count(self.r0, "sess:*"),
            "bull0": count(self.r0, "bull:*"),
            "audit": self.q("SELECT coalesce(max(id), 0) AS m FROM audit")[0]["m"],
        }

    @invariant()
    def keys_go_only_with_an_approved_action(self) -> None:
        """Invariant 2 on Redis: keys disappear only in a step that recorded an action on their
        target (and no more than it says it deleted); protected keys never do; and no action
        runs in a step that began with the kill switch on or the target's breaker open."""
        if not self.started:
            return
        now = self._snapshot()
        if self.before:
            assert now["sess"] == self.before["sess"] == 5, "a protected session key was touched"
            assert now["bull0"] == self.before["bull0"] == 1, "a protected queue key was touched"
            new = self.q(
                "SELECT * FROM audit WHERE id > ? AND kind = 'action.executed'", self.before["audit"]
            )
            for rec in new:
                d = json.loads(rec["detail"])
                if not d.get("synthetic") and not d.get("interrupted"):  # a run of this step, not a record
                    assert self.guard.get(rec["target"]) is None, (
                        f"an action ran on {rec['target']} although {self.guard.get(rec['target'])}"
                    )
            for name, key in (("cache", "agent"), ("scratch", "tmp")):
                gone = self.before[key] - now[key]
                if gone <= 0:
                    continue
                acts = [
                    json.loads(r["detail"])
                    for r in new
                    if r["target"] == name and not json.loads(r["detail"]).get("synthetic")
                ]
                assert acts, f"{gone} {key} keys of {name} disappeared with no action recorded"
                affected = [a.get("keys_affected") for a in acts]
                if all(isinstance(n, int) for n in affected):
                    assert sum(affected) >= gone, f"{gone} keys gone, actions recorded {affected}"
        self.before = now
        self.guard = {t: self.guard_reason(t) for t in TARGET.values()}

    def guard_reason(self, target: str) -> str | None:
        """Why no action may run on ``target`` now, worked out from the tables by the rules the
        README states (not by the engine's own code, which is what is under test)."""
        if self.q("SELECT value FROM settings WHERE key = ?", KILL_SWITCH):
            return "the kill switch is on"
        g = self.config.guardrails
        reset = self.q(
            "SELECT coalesce(max(ts), 0) AS ts FROM audit WHERE target = ? AND kind = 'breaker.reset'", target
        )[0]["ts"]
        since = max(time.time() - 3600, reset)
        recent = self.q(
            "SELECT COUNT(*) AS n FROM audit WHERE target = ? AND kind = 'action.executed' AND ts >= ?",
            target,
            since,
        )[0]["n"]
        if recent >= g.max_actions_per_hour:
            return "too many actions in the last hour"
        actions = self.q(
            "SELECT detail FROM audit WHERE target = ? AND kind IN ('action.executed', 'breaker.reset')"
            " ORDER BY id DESC",
            target,
        )
        failed = 0
        for a in actions:
            if json.loads(a["detail"]).get("ok") is not False:
                break
            failed += 1
        return "the last actions failed" if failed >= g.pause_after_failures else None

    @invariant()
    def awaiting_approval_iff_one_pending(self) -> None:
        """Invariant 1."""
        if not self.started:
            return
        for inc in self.q(
            "SELECT i.id, i.state, (SELECT COUNT(*) FROM approvals a WHERE a.incident_id = i.id"
            " AND a.state = 'pending') AS pending, (SELECT COUNT(*) FROM approvals a WHERE"
            " a.incident_id = i.id) AS approvals FROM incidents i"
        ):
            assert inc["pending"] <= 1, f"incident {inc['id']} has {inc['pending']} pending approvals"
            assert (inc["state"] == "awaiting_approval") == (inc["pending"] == 1), (
                f"incident {inc['id']} is {inc['state']} with {inc['pending']} pending approval(s)"
            )
            if inc["state"] in ("merged", "unmatched"):
                assert inc["approvals"] == 0, f"{inc['state']} incident {inc['id']} has approvals"

    @invariant()
    def actions_only_on_approved_plans_and_once(self) -> None:
        """Invariants 2 and 3 on the audit trail and the approvals."""
        if not self.started:
            return
        approvals = self.q("SELECT * FROM approvals")
        for ap in approvals:
            plan = Plan.model_validate(json.loads(ap["plan"]))
            assert plan.digest() == ap["plan_hash"], f"approval {ap['id']}: stored plan != its hash"
            assert ap["required"] >= plan.approvers_required, f"approval {ap['id']} asks too few"
            if ap["state"] in ("approved", "executing", "executed"):
                have = approvers(ap["decisions"])
                assert len(have) >= ap["required"], f"approval {ap['id']} {ap['state']} by only {have}"
            if ap["id"] in self.past_deadline:
                n = len(json.loads(ap["decisions"]))
                assert n == self.past_deadline[ap["id"]], f"approval {ap['id']} decided after its deadline"
        executed = Counter((a["incident_id"], a["plan_hash"]) for a in approvals if a["state"] == "executed")
        records: Counter[tuple[int, str]] = Counter()
        for rec in self.q("SELECT * FROM audit WHERE kind = 'action.executed'"):
            d = json.loads(rec["detail"])
            if d.get("synthetic"):
                continue
            assert rec["plan_hash"], f"action.executed {rec['id']} names no plan"
            if d.get("interrupted"):
                # a dead process's action: its approval was claimed, and is now interrupted
                assert any(
                    a["incident_id"] == rec["incident_id"]
                    and a["plan_hash"] == rec["plan_hash"]
                    and a["state"] == "interrupted"
                    for a in approvals
                ), f"interrupted action {rec['id']} has no interrupted approval"
                continue
            records[(rec["incident_id"], rec["plan_hash"])] += 1
        assert records == executed, f"action records {dict(records)} != executed approvals {dict(executed)}"
        for ap_id, n in self.reported_executed.items():
            assert n == 1, f"approval {ap_id} reported executed {n} times"
            state = self.q("SELECT state FROM approvals WHERE id = ?", ap_id)[0]["state"]
            assert state == "executed", f"approval {ap_id} reported executed but is {state}"

    @invariant()
    def every_change_is_audited(self) -> None:
        """Invariant 4: exact counts where every event writes one record."""
        if not self.started:
            return
        by_approval: Counter[tuple[str, int, str]] = Counter()
        by_incident: dict[int | None, set[str]] = {}
        finished: Counter[tuple[int | None, str, str]] = Counter()
        for rec in self.q("SELECT * FROM audit"):
            d = json.loads(rec["detail"])
            by_incident.setdefault(rec["incident_id"], set()).add(rec["kind"])
            if "approval_id" in d:
                by_approval[(rec["kind"], d["approval_id"], str(d.get("state", "")))] += 1
            if rec["kind"] == "step.finished":
                finished[(rec["incident_id"], d["step"], d["status"])] += 1
            if rec["kind"] == "alert.received" and d["status"] == "resolved" and not d["duplicate"]:
                by_incident[rec["incident_id"]].add("alert.resolved")
        for ap in self.q("SELECT * FROM approvals"):
            i, state = ap["id"], ap["state"]
            decisions = json.loads(ap["decisions"])
            assert by_approval[("approval.requested", i, "")] == 1, f"approval {i}: requests audited"
            decided = sum(n for (k, a, _), n in by_approval.items() if k == "approval.decided" and a == i)
            assert decided == len(decisions), f"approval {i}: {len(decisions)} decisions, {decided} records"
            quorum = len(approvers(ap["decisions"])) >= ap["required"] and all(
                d["approve"] for d in decisions
            )
            assert by_approval[("approval.decided", i, "approved")] == int(quorum), f"approval {i} ({state})"
            assert by_approval[("approval.decided", i, "denied")] == int(state == "denied"), f"approval {i}"
            for kind in ("expired", "cancelled", "superseded"):
                assert by_approval[(f"approval.{kind}", i, "")] == int(state == kind), (
                    f"approval {i} is {state}: {by_approval[(f'approval.{kind}', i, '')]} approval.{kind} records"
                )
            if state == "interrupted":
                assert by_incident.get(ap["incident_id"], set()) & INTERRUPTED_BY, f"approval {i}"
        runs: Counter[tuple[int | None, str, str]] = Counter()
        for sr in self.q("SELECT * FROM step_runs"):
            if sr["status"] in STEP_FINISHED_AUDITED:
                runs[(sr["incident_id"], sr["step_id"], sr["status"])] += 1
            if sr["status"] == "interrupted":
                assert by_incident.get(sr["incident_id"], set()) & INTERRUPTED_BY, (
                    f"step run {sr['id']} ({sr['step_id']}) was interrupted without an audit record"
                )
        assert runs == finished, f"finished step runs {dict(runs)} != step.finished records {dict(finished)}"
        for inc in self.q("SELECT id, state, alert_status FROM incidents"):
            kinds = by_incident.get(inc["id"], set())
            assert "alert.received" in kinds, f"incident {inc['id']} has no alert.received record"
            if inc["state"] == "resolved":
                assert "alert.resolved" in kinds, f"incident {inc['id']} resolved without the alert resolving"
            elif inc["state"] in ENDED_BY:
                assert kinds & ENDED_BY[inc["state"]], f"incident {inc['id']} {inc['state']}: {sorted(kinds)}"

    @invariant()
    def records_in_states_the_machine_allows(self) -> None:
        """Invariant 5: known states, siblings consistent, nothing left half-way except what a dead
        process (simulated, until it is recovered) owns."""
        if not self.started:
            return
        dead_incidents = {
            r["incident_id"]
            for r in self.q("SELECT id, incident_id FROM approvals")
            if r["id"] in self.dead_approvals
        } | {
            r["incident_id"]
            for r in self.q("SELECT id, incident_id FROM step_runs")
            if r["id"] in self.dead_runs
        }
        for inc in self.q("SELECT * FROM incidents"):
            assert inc["state"] in set(IncidentState), inc["state"]
            assert inc["alert_status"] in set(AlertStatus), inc["alert_status"]
            if inc["state"] in OPEN_STATES - {"awaiting_approval"}:
                assert inc["id"] in self.unrun | dead_incidents, (
                    f"incident {inc['id']} left {inc['state']} with nothing pending and nobody working on it"
                )
            if inc["state"] == "new":
                assert inc["id"] in self.unrun, f"incident {inc['id']} new but the test ran it"
        for sr in self.q("SELECT * FROM step_runs"):
            assert sr["status"] in set(StepStatus), sr["status"]
            if sr["status"] == "running":
                assert sr["id"] in self.dead_runs, f"step run {sr['id']} left running by {sr['owner']}"
            else:
                assert sr["finished_at"] is not None or sr["status"] == "awaiting_approval", (
                    f"step run {sr['id']} {sr['status']} has no end time"
                )
        for ap in self.q(
            "SELECT a.*, s.status AS gate FROM approvals a JOIN step_runs s ON s.id = a.step_run_id"
        ):
            assert ap["state"] in set(ApprovalState), ap["state"]
            if ap["state"] in ("approved", "executing"):
                assert ap["id"] in self.dead_approvals, (
                    f"approval {ap['id']} left {ap['state']} by {ap['owner']}"
                )
            assert ap["gate"] in GATE_STATUS[ap["state"]], (
                f"approval {ap['id']} is {ap['state']} but its step run is {ap['gate']}"
            )
        gates = self.q(
            "SELECT id FROM step_runs WHERE status = 'awaiting_approval' AND id NOT IN"
            " (SELECT step_run_id FROM approvals WHERE state IN ('pending', 'approved'))"
        )
        assert not gates, f"step runs {[g['id'] for g in gates]} wait for an approval nobody can give"


EXAMPLES = {"sqlite": 40, "postgres": 15}
"""Examples per run, by backend (PostgreSQL: a database per example and a round trip per
statement make each example slower; the rules and invariants are the same)."""


def machine_settings(backend: str) -> settings:
    return settings(
        max_examples=EXAMPLES[backend],
        stateful_step_count=20,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


@pytest.mark.slow  # 15 to 40 s per backend; `make test` runs it, `make test-fast` does not
@pytest.mark.timeout(600)  # passes in ~15 s per backend; a failure is shrunk (Hypothesis stops after 5 min)
def test_lifecycle_holds_its_invariants_under_random_events(
    redis_server: RedisServer, backend: str, request: pytest.FixtureRequest
) -> None:
    pg: PostgresServer | None = request.getfixturevalue("pg_server") if backend == "postgres" else None

    class OnThisServer(LifecycleMachine):
        def __init__(self) -> None:
            super().__init__(redis_server, pg)

    run_state_machine_as_test(OnThisServer, settings=machine_settings(backend))


# -- regressions found by the machine ------------------------------------------------------------


@pytest.fixture
async def engine(tmp_path: Path, redis_server: RedisServer, database_url: str) -> Any:
    """An engine on each backend (``database_url`` is parametrised)."""
    r0, r1 = redis_server.sync_client(0), redis_server.sync_client(1)
    seed(r0, r1)
    r0.close()
    r1.close()
    pg_url = database_url if not database_url.startswith("sqlite://") else None
    config = make_config(tmp_path, redis_server.port, pg_url)
    async with Engine.open(config, RecordingNotifier(), workers=False) as e:
        yield e


async def died_elsewhere(engine: Engine, table: str, row_id: int) -> None:
    """Make a record's owner a process that is gone (another host's), as the store of a process
    that died would show it."""
    db = RawDB(engine.config.database_url or f"sqlite://{engine.config.state_file}")
    await db.awrite(f"UPDATE {table} SET owner = ? WHERE id = ?", DEAD_OWNER, row_id)


async def fire_evict(engine: Engine) -> int:
    alert = AlertRef("evict", "fp-1", "2026-11-25T10:00:00.000Z")
    (inc_id,) = (await engine.intake.receive(alert.notification())).new
    await engine.runner.run_incident(inc_id)
    return inc_id


async def test_restart_closes_the_step_of_an_approved_action_that_never_started(engine: Engine) -> None:
    """Found by the machine (fire, another process approves and dies before claiming, restart):
    the approval became ``interrupted`` and the incident ``failed``, but the gate's step run stayed
    ``awaiting_approval`` for good, a step waiting for a decision nobody can give any more."""
    inc_id = await fire_evict(engine)
    pending = await engine.store.pending_approval(inc_id)
    assert pending is not None
    await decide_elsewhere(engine, pending.id, ["alice"])
    await died_elsewhere(engine, "approvals", pending.id)
    assert await engine.store.interrupt_orphans() == [inc_id]  # what the restarted bot does first
    inc = await engine.store.get_incident(inc_id)
    assert (await engine.store.get_approval(pending.id)).state == ApprovalState.INTERRUPTED
    assert inc.status == IncidentState.FAILED
    gate = next(s for s in inc.steps if s.id == pending.step_run_id)
    assert gate.status == StepStatus.INTERRUPTED and gate.finished_at is not None


async def test_a_diagnostic_step_interrupted_by_a_restart_is_audited(engine: Engine) -> None:
    """Found by the machine (an alert persisted, the process dies while its first read-only step
    runs, restart): the step run became ``interrupted`` with no audit record at all; only an
    interrupted action was audited. The incident itself resumes: diagnostics are safe to re-run."""
    alert = AlertRef("evict", "fp-1", "2026-11-25T10:00:00.000Z")
    (inc_id,) = (await engine.intake.receive(alert.notification())).new
    assert await engine.store.begin(inc_id)
    run_id = await engine.store.start_step(inc_id, 0, "ping", "redis.ping", False)
    await died_elsewhere(engine, "step_runs", run_id)
    assert await engine.store.interrupt_orphans() == []  # no action was interrupted
    assert (await engine.store.get_step_run(run_id)).status == StepStatus.INTERRUPTED
    records = [a for a in await engine.store.list_audit(incident_id=inc_id) if a.kind == "step.interrupted"]
    assert [r.detail.get("step") for r in records] == ["ping"]
    assert await engine.store.incidents_to_resume() == [inc_id]
    inc = await engine.runner.run_incident(inc_id)
    assert inc.status == IncidentState.AWAITING_APPROVAL
    assert [(s.step_id, s.status) for s in inc.steps][:2] == [
        ("ping", StepStatus.INTERRUPTED),
        ("ping", StepStatus.OK),
    ]

"""Regression tests for the lifecycle defects of issue 11, and the state machine's own guarantees.

Each defect the issue lists has one test here (real redis-server, the engine built by
:class:`bot.engine.Engine`, the ``remediation-bot`` CLI as a real subprocess where a person would use
it); each docstring says what the old design did.

1. A decision after the TTL, before the expiry job ran:
   :func:`test_a_late_cli_approval_closes_the_expired_approval_everywhere`,
   :func:`test_a_late_decision_replaces_the_buttons`.
2. Kill switch or breaker turned on between the request and the decision:
   :func:`test_kill_switch_between_request_and_decision_refuses_and_keeps_it_pending`,
   :func:`test_breaker_between_request_and_decision_refuses_and_keeps_it_pending`.
3. A failure after the claim: :func:`test_an_action_that_raises_is_executed_and_failed_not_refused`.
4. Operating the breaker: :func:`test_breaker_status_and_reset_from_the_cli`.
5. ``check`` reports a broken config and a broken playbook together:
   ``tests/test_target_safety.py::test_check_reports_a_broken_config_and_a_broken_playbook_together``
   (not repeated here).

Plus: an event on a record in the wrong state raises :class:`~bot.errors.IllegalTransition` and
changes nothing; every transition table names only states the records have.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from bot import lifecycle
from bot.alerts import Notification
from bot.config import Config, load_config
from bot.engine import Engine
from bot.errors import AlreadyDecided, IllegalTransition
from bot.identity import cli_actor
from bot.incidents import ApprovalState, Incident, IncidentState, StepRun, StepStatus
from bot.lifecycle import Event
from bot.notifier import NoticeLevel
from bot.playbook import PlaybookSet, load_playbooks
from bot.steps import REGISTRY, Plan, StepContext, StepOutput, StepParams, action
from bot.store import StepResult
from tests.conftest import RecordingNotifier, RedisServer, alert_payload, person, seed_platform, wait_for

TARGET = "cache"

PLAYBOOKS = {
    "evict.yaml": """\
name: evict-test
match: {alertname: TestEvict}
steps:
  - {id: memory, run: redis.info, with: {section: memory}}
  - {id: evict, run: redis.evict, with: {pattern: "agent:*", batch: 100}}
  - {id: check, run: redis.verify_key_count, with: {pattern: "agent:*", max: 0, within: 5s}}
""",
    "other.yaml": """\
name: evict-other
match: {alertname: TestOther}
steps:
  - {id: evict-other, run: redis.evict, with: {pattern: "other:*", batch: 100}}
""",
}

EXPLODE = """\
name: explode-test
match: {alertname: TestExplode}
steps:
  - {id: boom, run: test.explode}
"""
"""A playbook whose action raises: only this test process knows the step type, so it is given to
the in-process engine and never put where the CLI loads playbooks from."""


# -- a test-only action that fails after the claim ------------------------------------------------


class ExplodeParams(StepParams):
    pass


async def _explode_plan(ctx: StepContext, params: ExplodeParams) -> Plan:
    return Plan(
        action="test.explode",
        target=ctx.target.name,
        db=ctx.target.db,
        summary="run an action that crashes",
        estimated_keys=1,
    )


if "test.explode" not in REGISTRY:

    @action("test.explode", params=ExplodeParams, plan=_explode_plan, timeout=10.0)
    async def _explode(ctx: StepContext, params: ExplodeParams, plan: Plan) -> StepOutput:
        """Raise an unexpected error once the action runs (a bug in a step, a library surprise)."""
        raise RuntimeError("boom: the action crashed")


# -- harness ---------------------------------------------------------------------------------------


@dataclass
class Setup:
    """The config file the CLI reads and the config the in-process engine runs with."""

    path: Path
    config: Config
    playbooks: PlaybookSet


class Recorder(RecordingNotifier):
    """The conftest recorder, complete as a :class:`~bot.notifier.Notifier` (channel notices too)."""

    async def notice(self, text: str, level: NoticeLevel = "info") -> None:
        self._add("notice", (level, text))


class Bot:
    """The engine as ``serve`` builds it (minus HTTP), with helpers that act as Alertmanager."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.notifier = Recorder()
        self.engine = Engine(setup.config, setup.playbooks, self.notifier)

    async def __aenter__(self) -> Bot:
        await self.engine.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.engine.stop()

    async def fire(self, alertname: str, fingerprint: str = "fp-1") -> Incident:
        result = await self.engine.intake.receive(
            Notification.model_validate(alert_payload(alertname, fingerprint=fingerprint))
        )
        assert result.new, result
        await self.engine.runner.drain()
        return await self.engine.store.get_incident(result.new[0])

    async def waiting(self, alertname: str, fingerprint: str = "fp-1") -> Incident:
        inc = await self.fire(alertname, fingerprint)
        assert inc.status == IncidentState.AWAITING_APPROVAL, inc.note
        return inc

    async def run_of(self, inc_id: int, run_id: int) -> StepRun:
        inc = await self.engine.store.get_incident(inc_id)
        return next(s for s in inc.steps if s.id == run_id)

    async def audit(self, kind: str, inc_id: int | None = None) -> list[Any]:
        return [e for e in await self.engine.store.list_audit(incident_id=inc_id) if e.kind == kind]

    async def cli(self, *args: str) -> tuple[int, str, str]:
        """``remediation-bot ARGS --config FILE`` in its own process (no Slack in its environment)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", *args, "--config", str(self.setup.path),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()


MakeSetup = Callable[..., Setup]


@pytest.fixture
def make_setup(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis, database_line: str
) -> MakeSetup:
    """The config, on SQLite and then on PostgreSQL (``database_line``, parametrised in
    ``tests/pg.py``): every test here runs on both stores, the CLI subprocesses included."""

    def make(extra: str = "") -> Setup:
        pb = tmp_path / "playbooks"
        pb.mkdir(exist_ok=True)
        for name, text in PLAYBOOKS.items():
            (pb / name).write_text(text)
        only_here = tmp_path / "test-only-playbooks"
        only_here.mkdir(exist_ok=True)
        (only_here / "explode.yaml").write_text(EXPLODE)
        path = tmp_path / "bot.yaml"
        path.write_text(
            f"targets:\n  - match: {{job: redis}}\n    name: {TARGET}\n    url: {redis_server.url}\n"
            f"playbooks: playbooks\nprotected_patterns: ['sess:*', 'bull:*']\n{database_line}{extra}"
        )
        config = load_config(path)
        everything = [*load_playbooks(config.playbooks).playbooks, *load_playbooks(only_here).playbooks]
        return Setup(path, config, PlaybookSet(everything))

    return make


@pytest.fixture
async def bot(make_setup: MakeSetup) -> AsyncIterator[Bot]:
    async with Bot(make_setup()) as b:
        yield b


def keys(r: redis.Redis, pattern: str) -> int:
    return sum(1 for _ in r.scan_iter(match=pattern, count=1000))


# -- 1. a decision after the TTL, before the expiry job ------------------------------------------


async def test_a_late_cli_approval_closes_the_expired_approval_everywhere(
    make_setup: MakeSetup, redis_sync: redis.Redis
) -> None:
    """Old design: ``approve`` after the deadline said "expired" and exited 3 but wrote nothing, so the
    incident stayed ``awaiting_approval`` (for as long as the alert fired), its step run stayed open,
    the approval stayed ``pending`` and the Slack buttons stayed live until the expiry job came by.
    Now the late decision expires the approval, its step run and the incident in one event and tells
    the chat (here the CLI's console notifier, which prints the closed approval)."""
    seed_platform(redis_sync, agents=30)
    async with Bot(make_setup("approvals: {ttl: 1s}\n")) as b:  # the engine runs no expiry job
        inc = await b.waiting("TestEvict")
        ap = await b.engine.store.pending_approval(inc.id)
        assert ap is not None
        await wait_for(lambda: time.time() >= ap.expires_ts + 0.05, timeout=5)

        code, out, err = await b.cli("approve", str(inc.id), "--yes")
        assert code == 3, (out, err)
        assert "expired" in err
        assert f"#{inc.id} evict: EXPIRED" in out, "the notifier was told the approval closed"

        inc = await b.engine.store.get_incident(inc.id)
        assert inc.status == IncidentState.DIAGNOSED and inc.pending_step is None
        assert inc.note == "approval for evict expired"
        assert (await b.run_of(inc.id, ap.step_run_id)).status == StepStatus.EXPIRED
        assert (await b.engine.store.get_approval(ap.id)).state == ApprovalState.EXPIRED
        assert len(await b.audit("approval.expired", inc.id)) == 1
    assert keys(redis_sync, "agent:*") == 30


async def test_a_late_decision_replaces_the_buttons(make_setup: MakeSetup, redis_sync: redis.Redis) -> None:
    """The same late decision through the engine (a Slack click): the notifier gets
    ``approval_closed`` with the approval expired, which is what replaces the buttons in the thread.
    Old design: nothing was sent, the buttons stayed."""
    seed_platform(redis_sync, agents=10)
    async with Bot(make_setup("approvals: {ttl: 1s}\n")) as b:
        inc = await b.waiting("TestEvict")
        ap = await b.engine.store.pending_approval(inc.id)
        assert ap is not None and not b.notifier.of("closed")
        await wait_for(lambda: time.time() >= ap.expires_ts + 0.05, timeout=5)
        with pytest.raises(AlreadyDecided, match="expired"):
            await b.engine.runner.decide(inc.id, person("alice"), True)
        closed = b.notifier.of("closed")
        assert [(c.id, c.state) for c in closed] == [(ap.id, ApprovalState.EXPIRED)]
        assert b.notifier.of("updated")[-1].status == IncidentState.DIAGNOSED
    assert keys(redis_sync, "agent:*") == 10


# -- 2. kill switch / breaker between the request and the decision --------------------------------


async def test_kill_switch_between_request_and_decision_refuses_and_keeps_it_pending(
    bot: Bot, redis_sync: redis.Redis
) -> None:
    """Old design: ``approve`` printed "not executed" and exited 0, the approval was cancelled with no
    audit record, and the gating step run stayed ``awaiting_approval`` under a closed approval.
    Now: exit 4 with the reason, an ``approval.refused`` record, every record as it was, and the
    same approval approvable (and executed) once the switch is off."""
    seed_platform(redis_sync, agents=40)
    inc = await bot.waiting("TestEvict")
    ap = await bot.engine.store.pending_approval(inc.id)
    assert ap is not None

    code, out, err = await bot.cli("kill-switch", "on", "--reason", "investigating")
    assert code == 0, err
    code, out, err = await bot.cli("approve", str(inc.id), "--yes")
    assert code == 4, (out, err)
    assert "kill switch" in err and "still pending" in err
    assert "not executed" not in out + err

    refused = await bot.audit("approval.refused", inc.id)
    assert len(refused) == 1 and "kill switch" in refused[0].detail["reason"]
    assert refused[0].actor == cli_actor().label and refused[0].detail["approval_id"] == ap.id
    assert (await bot.engine.store.get_approval(ap.id)).state == ApprovalState.PENDING
    assert (await bot.run_of(inc.id, ap.step_run_id)).status == StepStatus.AWAITING_APPROVAL
    assert (await bot.engine.store.get_incident(inc.id)).status == IncidentState.AWAITING_APPROVAL
    assert keys(redis_sync, "agent:*") == 40

    code, _, err = await bot.cli("kill-switch", "off")
    assert code == 0, err
    code, out, err = await bot.cli("approve", str(inc.id), "--yes")
    assert code == 0, (out, err)
    assert "executed: deleted 40 keys" in out
    assert (await bot.engine.store.get_approval(ap.id)).state == ApprovalState.EXECUTED
    assert keys(redis_sync, "agent:*") == 0


async def test_breaker_between_request_and_decision_refuses_and_keeps_it_pending(
    make_setup: MakeSetup, redis_sync: redis.Redis
) -> None:
    """Two incidents on one target wait for approval; executing the first reaches the hourly limit,
    which opens the breaker for the second one, already requested. Old design: as with the kill
    switch, "not executed", exit 0, the approval cancelled unaudited. Now: exit 4 naming the breaker,
    audited, still pending, and approvable after ``breaker reset``."""
    seed_platform(redis_sync, agents=20)
    redis_sync.mset({f"other:{i}": "v" for i in range(15)})
    async with Bot(make_setup("guardrails: {max_actions_per_hour: 1}\n")) as b:
        first = await b.waiting("TestOther", fingerprint="o")
        second = await b.waiting("TestEvict", fingerprint="e")
        ap = await b.engine.store.pending_approval(second.id)
        assert ap is not None

        code, out, err = await b.cli("approve", str(first.id), "--yes")
        assert code == 0 and "deleted 15 keys" in out, (out, err)
        code, out, err = await b.cli("approve", str(second.id), "--yes")
        assert code == 4, (out, err)
        assert "circuit breaker" in err and f"breaker reset {TARGET}" in err

        refused = await b.audit("approval.refused", second.id)
        assert len(refused) == 1 and "circuit breaker" in refused[0].detail["reason"]
        assert (await b.engine.store.get_approval(ap.id)).state == ApprovalState.PENDING
        assert (await b.run_of(second.id, ap.step_run_id)).status == StepStatus.AWAITING_APPROVAL
        assert (await b.engine.store.get_incident(second.id)).status == IncidentState.AWAITING_APPROVAL
        assert keys(redis_sync, "agent:*") == 20

        code, out, err = await b.cli("breaker", "reset", TARGET, "--reason", "one more is fine")
        assert code == 0, err
        code, out, err = await b.cli("approve", str(second.id), "--yes")
        assert code == 0, (out, err)
        assert (await b.engine.store.get_approval(ap.id)).state == ApprovalState.EXECUTED
    assert keys(redis_sync, "agent:*") == 0


# -- 3. a failure after the claim -----------------------------------------------------------------


async def test_an_action_that_raises_is_executed_and_failed_not_refused(bot: Bot) -> None:
    """Old design: the exception went through the broad ``except`` in ``Runner.decide`` to
    ``_refuse``, which recorded "not executed" (the action had run!) and left the approval
    ``executing`` for ever. Now the action's outcome is recorded by the ``executed`` event: the
    approval is ``executed``, the action's run ``error``, the incident ``failed`` with the error, and
    the breaker sees a failed action."""
    inc = await bot.waiting("TestExplode")
    ap = await bot.engine.store.pending_approval(inc.id)
    assert ap is not None

    report = await bot.engine.runner.decide(inc.id, person("alice"), True)
    assert report.executed and "RuntimeError: boom" in report.message
    assert "not executed" not in report.message and not report.extra.get("refused")

    assert (await bot.engine.store.get_approval(ap.id)).state == ApprovalState.EXECUTED
    inc = await bot.engine.store.get_incident(inc.id)
    gate = next(s for s in inc.steps if s.id == ap.step_run_id)
    act = inc.steps[-1]
    assert gate.status == StepStatus.APPROVED
    assert act.id != gate.id and act.step_id == "boom" and act.status == StepStatus.ERROR
    assert "RuntimeError: boom: the action crashed" in (act.error or "")
    assert inc.status == IncidentState.FAILED and "RuntimeError: boom" in inc.note

    executed = await bot.audit("action.executed", inc.id)
    assert len(executed) == 1 and executed[0].detail["ok"] is False
    assert executed[0].actor == "slack:alice" and executed[0].plan_hash == ap.plan_hash
    audit = await bot.engine.store.list_audit(incident_id=inc.id)
    assert not [e for e in audit if e.kind in ("approval.cancelled", "approval.refused")]
    assert "not executed" not in json.dumps([e.model_dump(mode="json") for e in audit])
    assert [r.status for r in bot.notifier.of("step") if r.id == act.id] == [StepStatus.ERROR]
    breaker = await bot.engine.runner.guardrails.breaker(TARGET)
    assert breaker.failures_in_a_row == 1


# -- 4. the breaker can be operated ----------------------------------------------------------------


async def test_breaker_status_and_reset_from_the_cli(make_setup: MakeSetup, redis_sync: redis.Redis) -> None:
    """Old design: the breaker's message named a ``breaker-reset`` command that did not exist, and
    nothing wrote ``breaker.reset``, so ``pause_after_failures`` paused a target for good. Now
    ``breaker status [TARGET]`` shows it and ``breaker reset TARGET --reason`` closes it, audited
    with the OS account, and the next incident is offered an approval again."""
    seed_platform(redis_sync, agents=10)
    setup = make_setup("guardrails: {pause_after_failures: 2, max_actions_per_hour: 10}\n")
    async with Bot(setup) as b:
        for fp in ("x1", "x2"):  # two failed actions in a row
            inc = await b.waiting("TestExplode", fingerprint=fp)
            assert (await b.engine.runner.decide(inc.id, person("alice"), True)).executed

        code, out, err = await b.cli("breaker", "status", TARGET)
        assert code == 0, err
        assert f"{TARGET}: OPEN" in out and f"the last 2 actions on {TARGET} failed" in out
        assert f"remediation-bot breaker reset {TARGET}" in out, "it names a command that exists"
        code, out, _ = await b.cli("breaker", "status")  # every target of the config
        assert f"{TARGET}: OPEN" in out
        escalated = await b.fire("TestEvict", fingerprint="e1")
        assert escalated.status == IncidentState.ESCALATED and "circuit breaker" in escalated.note

        code, out, err = await b.cli("breaker", "reset")
        assert code != 0 and "say which target" in out + err
        code, out, err = await b.cli("breaker", "reset", TARGET, "--reason", "fixed the step")
        assert code == 0, err
        me = cli_actor().label
        assert f"breaker of {TARGET} reset by {me}" in out and f"{TARGET}: closed" in out
        resets = await b.audit("breaker.reset")
        assert len(resets) == 1 and resets[0].actor == me and resets[0].target == TARGET
        assert resets[0].detail["reason"] == "fixed the step"

        code, out, _ = await b.cli("breaker", "status", TARGET, "--json")
        (status,) = json.loads(out)
        assert status["open"] is False and status["failures_in_a_row"] == 0

        again = await b.fire("TestEvict", fingerprint="e2")
        assert again.status == IncidentState.AWAITING_APPROVAL and again.pending_step is not None
    assert keys(redis_sync, "agent:*") == 10


# -- the state machine itself ----------------------------------------------------------------------


async def test_an_event_on_a_record_in_the_wrong_state_raises_and_changes_nothing(bot: Bot) -> None:
    """``claim`` is a compare-and-set (a pending approval is simply not claimed: None), but recording
    an action as executed for an approval nobody approved is a bug the machine refuses loudly, and
    its transaction writes nothing. Old design: raw UPDATEs wrote whatever state they were given."""
    inc = await bot.waiting("TestExplode")
    ap = await bot.engine.store.pending_approval(inc.id)
    assert ap is not None
    store = bot.engine.store
    assert await store.claim(ap.id, summary="s", actor="alice", target=TARGET) is None
    with pytest.raises(IllegalTransition, match=r"approval .*executed cannot move it from pending"):
        await store.executed(
            ap.id,
            ap.step_run_id,
            StepResult(StepStatus.OK, "done"),
            ok=True,
            incident_state=IncidentState.REMEDIATING,
            note=None,
            next_step=ap.step_index + 1,
            actor="alice",
            target=TARGET,
            detail={},
        )
    assert (await store.get_approval(ap.id)).state == ApprovalState.PENDING
    assert (await bot.run_of(inc.id, ap.step_run_id)).status == StepStatus.AWAITING_APPROVAL
    assert (await store.get_incident(inc.id)).status == IncidentState.AWAITING_APPROVAL
    assert not await bot.audit("action.executed", inc.id)
    assert (await bot.engine.runner.decide(inc.id, person("alice"), True)).executed, "still usable"


def test_lifecycle_move_refuses_what_the_tables_do_not_allow() -> None:
    assert lifecycle.move("approval", Event.CLAIM, "approved", "executing") == "executing"
    with pytest.raises(IllegalTransition, match="approval 7: executed cannot move it from pending"):
        lifecycle.move("approval", Event.EXECUTED, "pending", "executed", 7)
    with pytest.raises(IllegalTransition):
        lifecycle.move("incident", Event.BEGIN, "resolved", "diagnosing")


KNOWN = {
    "incident": {str(s) for s in IncidentState},
    "approval": {str(s) for s in ApprovalState},
    "step": {str(s) for s in StepStatus},
}


@pytest.mark.parametrize("kind", sorted(KNOWN))
def test_every_transition_table_names_only_known_states(kind: str) -> None:
    """A typo in a table ("diagnosd") would make a move impossible or invent a state no reader knows."""
    table = lifecycle.TABLES[kind]
    assert table, kind
    for event, moves in table.items():
        assert isinstance(event, Event)
        for current, allowed in moves.items():
            assert current is None or current in KNOWN[kind], (kind, event, current)
            assert allowed, f"{kind} {event.value} from {current}: an empty entry allows nothing"
            unknown = set(allowed) - KNOWN[kind]
            assert not unknown, (kind, event, current, unknown)
    assert set(lifecycle.TABLES) == set(KNOWN)

"""The README's safety model, claim by claim, and the tests that hold each claim (issue 10).

This docstring is the one place that maps claims to tests: each heading is the bold lead of a
bullet of README.md's "Safety model" section; under it, ``module::test`` names tests in ``tests/``
(some here, most beside the code they exercise). ``test_the_mapping_names_every_claim_and_real_tests``
fails when a README bullet has no entry here or an entry names a test that does not exist.

Nothing mutating runs without an approval bound to its exact plan
    test_safety_model::test_the_numbers_the_safety_model_quotes_are_the_defaults
    test_remediation::test_approved_eviction_runs_verifies_and_is_audited (plan fields, hash, nothing before)
    test_remediation::test_an_approval_cannot_be_claimed_after_the_alert_resolved
    test_remediation::test_plan_grown_past_margin_asks_again
    test_remediation::test_small_growth_within_margin_still_executes
    test_safety_model::test_an_approved_plan_for_another_redis_is_not_executed
    test_remediation::test_action_url_may_only_change_credentials
    test_remediation::test_actions_use_the_action_credentials
A plan lists every change its action makes
    test_action_safety::test_a_policy_change_is_shown_to_the_approver_everywhere (console, Slack, prompt)
    test_action_safety::test_the_plan_hash_covers_the_policy
    test_action_safety::test_execute_applies_the_planned_changes_not_the_step_parameters
    test_action_safety::test_execute_refuses_a_change_the_action_does_not_make
    test_action_safety::test_the_changes_are_applied_all_or_nothing
    test_action_safety::test_execute_refuses_when_a_setting_moved_since_the_plan
    test_slack::test_flushdb_needs_two_different_approvers (FLUSHDB ASYNC on the card)
Protected namespaces are never touched
    test_config::test_protected_patterns_extend_and_keep_bullmq
    test_remediation::test_evict_removes_exactly_the_unprotected_matches
    test_remediation::test_evict_never_touches_protected_keys_even_when_the_pattern_names_them
    test_keypatterns::test_key_matcher_agrees_with_redis_scan_match
    test_remediation::test_match_all_patterns_are_refused_at_load
    test_keypatterns::test_patterns_matching_everything_are_refused
No KEYS, no DEL, no FLUSHALL
    test_remediation::test_evict_removes_exactly_the_unprotected_matches (INFO commandstats)
    test_safety_model::test_an_eviction_waits_as_long_again_after_a_slow_answer
    test_safety_model::test_flushdb_is_always_async
    test_remediation::test_flushdb_refused_on_a_replica
    test_remediation::test_flushdb_refused_while_queue_keys_exist
    test_remediation::test_flushdb_needs_two_distinct_approvers
    test_action_safety::test_kill_switch_stops_flushdb_after_the_snapshot (the BGSAVE comes first)
A cap is a safety stop, not a quota
    test_action_safety::test_a_plan_over_the_key_cap_is_refused_with_the_numbers
    test_action_safety::test_the_step_cap_is_named_when_it_is_the_smaller
    test_action_safety::test_a_plan_over_the_byte_cap_is_refused
    test_action_safety::test_keys_growing_past_the_cap_mid_run_stop_the_eviction
    test_action_safety::test_bytes_growing_past_the_byte_cap_mid_run_stop_the_eviction
    test_action_safety::test_max_bytes_per_run_is_a_byte_size_in_the_config
    test_remediation::test_evict_over_the_cap_stops_instead_of_deleting_up_to_it
    test_remediation::test_eviction_growing_past_the_approved_size_stops
redis.set_maxmemory only raises a limit
    test_action_safety::test_raising_maxmemory_on_an_unlimited_redis_is_refused
    test_action_safety::test_set_maxmemory_never_plans_below_the_current_limit
    test_action_safety::test_execute_never_lowers_or_invents_a_limit_even_from_a_tampered_plan
    test_remediation::test_set_maxmemory_is_bounded (the ceiling)
Decisions are compare-and-set in the store
    test_remediation::test_second_decision_is_told_who_decided
    test_remediation::test_concurrent_decisions_in_one_process_execute_once
    test_remediation::test_concurrent_approvals_from_two_processes_execute_once
    test_slack::test_double_click_executes_once_and_the_second_clicker_is_told
    test_remediation::test_an_approval_cannot_be_claimed_after_the_alert_resolved
    test_remediation::test_a_decision_is_bound_to_the_plan_that_was_shown
    test_slack::test_stale_button_of_a_replaced_plan_cannot_approve_the_new_one
Approvals expire
    test_safety_model::test_the_numbers_the_safety_model_quotes_are_the_defaults
    test_remediation::test_expired_approval_is_closed_and_cannot_be_used
    test_remediation::test_deciding_after_the_deadline_expires_it
    test_lifecycle::test_a_late_cli_approval_closes_the_expired_approval_everywhere
    test_remediation::test_resolved_alert_cancels_the_pending_approval
Approvers are verified identities, never declared ones
    test_slack::test_unauthorized_click_changes_nothing_and_group_members_may_approve
    test_slack::test_bad_signatures_are_refused_and_nothing_runs
    test_identity::test_the_cli_identity_is_the_os_account_and_sudo_only_counts_for_root
    test_identity::test_as_only_adds_a_display_name
    test_identity::test_a_display_name_that_could_pass_for_someone_else_is_refused
    test_identity::test_one_account_cannot_reach_a_two_person_quorum_with_two_names
    test_identity::test_a_two_person_step_needs_cli_approvers_listed
    test_identity::test_two_listed_accounts_complete_the_quorum_and_others_are_refused
    test_identity::test_cli_run_records_its_requester_who_may_not_approve_it
    test_identity::test_slack_requester_cannot_approve_their_own_eviction (ephemeral, audited)
    test_identity::test_allow_self_approval_lets_the_requester_approve
    test_approval_rules::test_no_sequence_of_decisions_by_one_identity_reaches_a_quorum_of_two
    test_approval_rules::test_an_approval_completes_once_and_only_by_allowed_distinct_people
A crafted alert label cannot send the bot, or its password, elsewhere
    test_target_safety::test_a_crafted_label_connects_nowhere_and_sends_no_password
    test_target_safety::test_check_refuses_a_templated_host_without_allowed_addresses
    test_target_safety::test_allowed_address_matching
    test_target_safety::test_the_check_and_the_client_agree
    test_target_safety::test_the_refusal_also_holds_for_actions_and_stored_incidents
    test_remediation::test_alert_labels_cannot_redirect_a_target
    test_safety_model::test_a_label_pointing_outside_allowed_addresses_is_audited_and_a_human_is_warned
No open door by accident
    test_target_safety::test_serve_refuses_an_open_webhook_on_the_network
    test_target_safety::test_serve_starts_open_when_the_config_says_so_or_on_loopback
    test_target_safety::test_serve_refuses_half_configured_slack
    test_target_safety::test_no_slack_route_without_a_signing_secret
    test_target_safety::test_check_warns_about_a_redis_without_password
    test_target_safety::test_check_offline_connects_nowhere (TLS without verification)
Slow or bad requests cannot hold or break the webhook
    test_webhook_robustness::test_stalled_body_gets_408_within_the_body_timeout
    test_webhook_robustness::test_unfinished_headers_are_disconnected_after_the_header_timeout
    test_webhook_robustness::test_an_idle_keep_alive_connection_is_closed_after_the_header_timeout
    test_webhook_robustness::test_one_bad_alert_is_rejected_and_the_others_stored
    test_webhook_robustness::test_an_unusable_label_value_stores_the_alert_unmatched
    test_webhook_robustness::test_no_alert_or_label_value_gives_a_5xx
Kill switch
    test_safety_model::test_the_numbers_the_safety_model_quotes_are_the_defaults
    test_safety_model::test_kill_switch_from_another_process_stops_an_eviction_the_cli_is_running
    test_safety_model::test_the_kill_switch_in_the_config_stops_actions_before_they_are_offered
    test_remediation::test_kill_switch_stops_all_actions
    test_remediation::test_kill_switch_escalates_new_incidents
    test_lifecycle::test_kill_switch_between_request_and_decision_refuses_and_keeps_it_pending
    test_action_safety::test_kill_switch_stops_an_eviction_at_the_next_batch
    test_action_safety::test_kill_switch_turned_on_from_outside_lets_at_most_one_batch_finish
    test_action_safety::test_kill_switch_stops_flushdb_after_the_snapshot
    test_action_safety::test_kill_switch_stops_set_maxmemory_before_config_set
    test_action_safety::test_an_unreadable_kill_switch_stops_the_eviction
Circuit breaker
    test_safety_model::test_the_numbers_the_safety_model_quotes_are_the_defaults
    test_remediation::test_circuit_breaker_escalates_after_n_actions
    test_remediation::test_circuit_breaker_pauses_after_consecutive_failures
    test_lifecycle::test_breaker_status_and_reset_from_the_cli
    test_safety_model::test_kill_switch_from_another_process_stops_an_eviction_the_cli_is_running (stopped)
    test_safety_model::test_an_eviction_killed_mid_run_is_recorded_counted_and_told_after_a_restart
Alert storms make one incident
    test_safety_model::test_the_numbers_the_safety_model_quotes_are_the_defaults
    test_alert_storms::test_two_thousand_alerts_in_one_notification_are_one_incident_one_diagnosis_one_card
    test_alert_storms::test_a_later_alert_joins_the_open_incident_and_after_it_resolves_a_new_one_opens
    test_alert_storms::test_fair_queue_takes_targets_in_turn_and_bounds_each
    test_alert_storms::test_a_new_target_is_run_before_another_targets_backlog_drains
    test_alert_storms::test_an_incident_beyond_the_per_target_bound_is_closed_with_a_note
A RedisDown flood is cheap
    test_safety_model::test_a_redisdown_flood_joins_the_probe_incident_without_waiting_on_redis
    test_scheduler::test_alertmanager_redisdown_merges_into_the_probe_incident
A diagnosis that could not run says so
    test_safety_model::test_a_redis_the_bot_cannot_use_ends_the_incident_as_a_failed_diagnosis
Readiness tells the truth
    test_safety_model::test_readyz_is_503_while_the_store_cannot_write_and_200_once_it_can
Dry run
    test_remediation::test_dry_run_changes_nothing
    test_safety_model::test_a_dry_run_playbook_only_reports_its_plan
    test_cli::test_run_dry_run_then_incidents_and_audit
    test_cli::test_a_dry_run_at_85_percent_skips_the_checks_of_actions_that_did_not_run
Audit
    test_safety_model::test_the_audit_trail_is_append_only
    test_remediation::test_approved_eviction_runs_verifies_and_is_audited
    test_remediation::test_expired_approval_is_closed_and_cannot_be_used
    test_identity::test_one_account_cannot_reach_a_two_person_quorum_with_two_names (approval.refused)
    test_lifecycle_stateful::test_lifecycle_holds_its_invariants_under_random_events (every change audited)
    test_remediation::test_actions_use_the_action_credentials (no passwords)
Restart safety
    test_remediation::test_pending_approval_survives_a_restart
    test_remediation::test_interrupted_action_is_not_rerun_after_restart
    test_remediation::test_a_decided_but_unstarted_action_is_interrupted_after_a_restart
    test_remediation::test_restart_leaves_work_of_a_live_process_alone
    test_safety_model::test_an_eviction_killed_mid_run_is_recorded_counted_and_told_after_a_restart

Tests here run against real servers: redis-server (one with ``requirepass``), ``python -m bot``
processes (``serve``, ``approve``, ``kill-switch``), a listener standing in for a hostile host.
They wait for conditions (the store's own records, DBSIZE), never for a fixed time.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from bot.alerts import Notification
from bot.config import Config, load_config
from bot.engine import Engine
from bot.eviction import evict
from bot.incidents import ApprovalState, IncidentState, StepStatus
from bot.intake import match_alert
from bot.playbook import load_playbooks
from bot.redisconn import RedisTarget
from bot.runner.core import QUEUE_PER_TARGET
from bot.steps import REGISTRY, Plan
from tests.conftest import RecordingNotifier, RedisServer, alert_payload, free_port, person, wait_for

ROOT = Path(__file__).resolve().parent.parent
ENV = {k: v for k, v in os.environ.items() if k != "SUDO_USER"}
"""The environment of a plain login shell: the CLI's identity is the OS account running the tests."""


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m bot ARGS`` as an operator runs it: a process of its own, no terminal."""
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


def playbook_config(tmp_path: Path, url: str, playbook: str, extra: str = "") -> Path:
    """A config whose only playbook is ``playbook`` (YAML text), for the target ``url``."""
    pb = tmp_path / "playbooks"
    pb.mkdir(exist_ok=True)
    (pb / "only.yaml").write_text(playbook)
    path = tmp_path / "bot.yaml"
    path.write_text(
        f"targets:\n  - match: {{job: redis}}\n    url: {url}\nplaybooks: playbooks\n"
        f"scheduler: {{enabled: false}}\n{extra}"
    )
    return path


async def diagnose(config: Config, payload: dict[str, Any], notifier: RecordingNotifier | None = None) -> int:
    """An alert arrives and the engine carries its incident as far as it goes (here: to a pending
    approval); then the process ends, as the service would hand over to an ``approve`` command."""
    async with Engine.open(config, notifier or RecordingNotifier(), workers=False) as engine:
        result = await engine.intake.receive(Notification.model_validate(payload))
        (inc_id,) = result.new
        await engine.runner.run_incident(inc_id)
        inc = await engine.store.get_incident(inc_id)
        assert inc.status == IncidentState.AWAITING_APPROVAL, (inc.status, inc.note, inc.steps)
    return inc_id


def read_state(path: Path, sql: str, *args: object) -> list[sqlite3.Row]:
    """Read the state file as another process sees it (read-only; WAL readers never block writers)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def audit_of(cfg: Path, kind: str) -> list[dict[str, Any]]:
    out = cli("audit", "--config", str(cfg), "--json")
    assert out.returncode == 0, out.stderr
    return [e for e in json.loads(out.stdout) if e["kind"] == kind]


# -- item 2: the kill switch stops a running action, across processes ---------------------------

KEYS = 200_000
BATCH = 500
EVICT = f"""\
name: evict-test
match: {{alertname: TestEvict}}
steps:
  - {{id: evict, run: redis.evict, with: {{pattern: "agent:*", batch: {BATCH}}}}}
"""


PROTECTED = 2


def agents_left(r: redis.Redis) -> int:
    """``agent:*`` keys still in db 0: DBSIZE minus the protected keys (DBSIZE is a read, answered
    while writes are paused)."""
    return int(r.dbsize()) - PROTECTED


class Eviction:
    """A 200k-key eviction approved with ``python -m bot approve ID --yes``, which runs the action in
    its own process (the CLI executes what it approves)."""

    def __init__(self, cfg: Path, config: Config, incident: int) -> None:
        self.cfg, self.config, self.incident = cfg, config, incident
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "approve", str(incident), "--config", str(cfg), "--yes"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=ENV,
            cwd=ROOT,
        )

    @classmethod
    async def start(cls, tmp_path: Path, url: str, r: redis.Redis) -> Eviction:
        r.execute_command("DEBUG", "POPULATE", KEYS, "agent", 10)  # type: ignore[no-untyped-call]
        r.rpush("bull:email:wait", "1", "2")
        r.set("bull:email:id", 2)
        cfg = playbook_config(tmp_path, url, EVICT)
        config = load_config(cfg)
        return cls(cfg, config, await diagnose(config, alert_payload("TestEvict")))

    def checkpoint(self) -> int:
        """Keys deleted so far by the running action, as its process last recorded them in the store."""
        rows = read_state(
            self.config.state_file,
            "SELECT data FROM step_runs WHERE incident_id = ? AND mutating = 1 AND status = 'running'",
            self.incident,
        )
        return int(json.loads(rows[0]["data"]).get("deleted", 0)) if rows else 0

    async def progressed(self) -> int:
        """Wait until the store shows keys deleted (the action's own record, not a timer)."""
        done: int = await wait_for(self.checkpoint, timeout=30, interval=0.005)
        return done

    def communicate(self) -> tuple[str, str]:
        out, err = self.proc.communicate(timeout=60)
        return out, err

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


async def test_kill_switch_from_another_process_stops_an_eviction_the_cli_is_running(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    """The README's kill-switch claim end to end: ``approve`` (a process of its own) runs a 200k-key
    eviction; once the store shows progress, ``kill-switch on`` runs in a third process.

    Redis's writes are paused (``CLIENT PAUSE WRITE``) while the switch is turned on, so an UNLINK
    batch is in flight at that moment: the worst case the claim allows ("at most the batch already
    sent completes") is exercised every run, and the test does not race the eviction's speed.
    """
    ev = await Eviction.start(tmp_path, redis_server.url, redis_sync)
    cfg, inc_id = ev.cfg, ev.incident
    try:
        checkpointed = await ev.progressed()
        redis_sync.client_pause(30_000, all=False)  # WRITE: the next (or current) UNLINK waits
        try:
            switched = cli("kill-switch", "on", "--config", str(cfg), "--reason", "test")
            assert switched.returncode == 0, switched.stderr
            left_at_switch = agents_left(redis_sync)
        finally:
            redis_sync.client_unpause()
        out, err = ev.communicate()
    finally:
        ev.close()

    left = agents_left(redis_sync)
    deleted = KEYS - left
    assert checkpointed <= KEYS - left_at_switch, "the checkpoint never runs ahead of Redis"
    assert 0 < deleted < KEYS, f"stopped part-way, not before or after: {deleted} deleted"
    assert deleted - (KEYS - left_at_switch) <= BATCH, "at most the batch in flight completed"
    assert int(redis_sync.llen("bull:email:wait")) == 2, "protected keys untouched"

    assert ev.proc.returncode == 4, (ev.proc.returncode, out, err)
    assert "kill switch is on" in out, out
    assert f"#{inc_id} is now failed" in out, "the chat (console) was told the incident's new state"

    inc = json.loads(cli("incidents", str(inc_id), "--config", str(cfg), "--json").stdout)
    assert inc["status"] == IncidentState.FAILED and "kill switch is on" in inc["note"], inc["note"]
    assert inc["pending_step"] is None
    gate, run = [s for s in inc["steps"] if s["mutating"]]  # the approval's run, then the action's
    assert gate["status"] == StepStatus.APPROVED
    assert run["status"] == StepStatus.FAILED
    assert run["data"]["deleted"] == deleted, "the run records exactly what Redis lost"
    assert "kill switch is on" in run["data"]["stopped"]
    (ap,) = read_state(ev.config.state_file, "SELECT state FROM approvals WHERE incident_id = ?", inc_id)
    assert ap["state"] == ApprovalState.EXECUTED, "no approval left half-way (executing)"

    (executed,) = audit_of(cfg, "action.executed")
    assert executed["detail"]["ok"] is False
    assert executed["detail"]["keys_affected"] == deleted == KEYS - left
    assert "kill switch is on" in executed["detail"]["stopped"]
    status = cli("breaker", "status", inc["target"], "--config", str(cfg), "--json")
    (breaker,) = json.loads(status.stdout)
    assert breaker["failures_in_a_row"] == 1, "a stopped action counts as failed for the breaker"


async def test_an_eviction_killed_mid_run_is_recorded_counted_and_told_after_a_restart(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    """``kill -9`` of the ``approve`` process mid-eviction (writes paused, so it dies with a batch in
    flight). The next engine to start (as ``serve`` does) marks the action interrupted with the
    keys it had recorded (a lower bound of what it deleted), counts it as a failed action for the
    breaker, tells the chat, and never runs it again."""
    ev = await Eviction.start(tmp_path, redis_server.url, redis_sync)
    try:
        await ev.progressed()
        redis_sync.client_pause(30_000, all=False)
        try:
            ev.proc.kill()
            ev.proc.wait(10)
        finally:
            redis_sync.client_unpause()
    finally:
        ev.close()
    recorded = ev.checkpoint()
    left = agents_left(redis_sync)
    # Progress is saved beside the action as batches finish (one write in flight at a time): the
    # record is a lower bound of what Redis lost, never more, and at most two batches behind.
    assert 0 < recorded <= KEYS - left < KEYS, (recorded, KEYS - left)
    assert KEYS - left - recorded <= 2 * 500, (recorded, KEYS - left)

    notifier = RecordingNotifier()
    async with Engine.open(ev.config, notifier) as engine:
        told = await wait_for(lambda: [i for i in notifier.of("updated") if i.id == ev.incident])
        assert told[-1].status == IncidentState.FAILED and "interrupted" in told[-1].note
        inc = await engine.store.get_incident(ev.incident)
        assert inc.status == IncidentState.FAILED and inc.pending_step is None
        assert inc.steps[-1].status == StepStatus.INTERRUPTED and inc.steps[-1].data["deleted"] == recorded
        executed = [
            e for e in await engine.store.list_audit(incident_id=ev.incident) if e.kind == "action.executed"
        ]
        assert [(e.detail["ok"], e.detail["interrupted"], e.detail["keys_affected"]) for e in executed] == [
            (False, True, recorded)
        ]
        breaker = await engine.runner.guardrails.breaker(inc.target or "")
        assert (breaker.actions_last_hour, breaker.failures_in_a_row) == (1, 1)
        await engine.runner.drain()
    assert agents_left(redis_sync) == left, "never re-run without a new approval"


# -- the service as a process -------------------------------------------------------------------


class Served:
    """``python -m bot serve`` on a free loopback port, its log in a file; stopped by its pid."""

    def __init__(self, cfg: Path, log: Path, token: str = "") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "serve", "--config", str(cfg), "--port", str(self.port)],
            env={**ENV, "BOT_WEBHOOK_TOKEN": token},
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.log = log

    async def ready(self, session: aiohttp.ClientSession) -> None:
        async def up() -> bool:
            assert self.proc.poll() is None, f"serve exited: {self.log.read_text()}"
            try:
                async with session.get(f"{self.url}/readyz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                    return r.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        await wait_for(up, timeout=30)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# -- item 9: a RedisDown flood while the health probe's incident is open -------------------------

FLOOD_RATE = 100  # notifications per second
FLOOD_SECONDS = 3
OLDER = 3_000


async def older_incidents(config: Config, n: int) -> None:
    """``n`` RedisDown incidents that fired and resolved before, on the same target: the history a
    look-up that lists incidents instead of using an index would have to walk."""
    items = []
    playbooks = load_playbooks(config.playbooks)
    for i in range(n):
        for status in ("firing", "resolved"):
            payload = alert_payload(
                "RedisDown",
                status,
                fingerprint=f"old-{i}",
                starts_at=f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
            )
            notification = Notification.model_validate(payload)
            items.append(match_alert(notification.alerts[0], config, playbooks))
    async with Engine.open(config, workers=False) as engine:
        result = await engine.store.ingest(items)
    assert len(result.resolved) == n, "each older alert fired and resolved on its own"


async def test_a_redisdown_flood_joins_the_probe_incident_without_waiting_on_redis(tmp_path: Path) -> None:
    """The README: "an Alertmanager RedisDown for the same target joins the probe's incident", and
    the webhook keeps its latency while it happens. Redis is down (a closed port), the bot's own
    health probe opens RedisDown, 3,000 older incidents are on file, and Alertmanager sends 100
    RedisDown notifications a second for 3 s to a real ``serve``; latency is measured client-side
    from the moment each request is sent (an open-loop generator: a slow answer does not slow the
    offered rate). The p99 is printed (under 100 ms on a quiet machine); the test fails when it
    reaches 0.5 s, the probe's timeout: a request that waited on the dead Redis would take that long,
    while a loaded CI machine was seen to move a healthy p99 to 160 ms."""
    down = free_port()  # nothing listens here: Redis is down
    cfg = tmp_path / "bot.yaml"
    cfg.write_text(
        f"targets:\n  - match: {{job: redis}}\n    url: redis://127.0.0.1:{down}/0\n"
        "scheduler:\n  health_probe: {every: 200ms, timeout: 500ms, failures: 2}\n"
        "  backup_check: {enabled: false}\n  digest: {enabled: false}\n"
    )
    config = load_config(cfg)
    await older_incidents(config, OLDER)
    served = Served(cfg, tmp_path / "serve.log", token="flood-token")
    headers = {"Authorization": "Bearer flood-token"}
    try:
        async with aiohttp.ClientSession() as session:
            await served.ready(session)

            def probe_incident() -> int | None:
                rows = read_state(
                    config.state_file,
                    "SELECT id FROM incidents WHERE source = 'probe' AND alertname = 'RedisDown'"
                    " AND alert_status = 'firing'",
                )
                return int(rows[0]["id"]) if rows else None

            probe = await wait_for(probe_incident, timeout=15)
            latencies: list[float] = []
            statuses: list[int] = []

            async def send(i: int) -> None:
                payload = alert_payload(
                    "RedisDown", fingerprint=f"flood-{i}", starts_at=f"2026-11-25T20:00:{i % 60:02d}.{i:03d}Z"
                )
                started = time.perf_counter()
                async with session.post(f"{served.url}/alerts", json=payload, headers=headers) as r:
                    await r.read()
                    statuses.append(r.status)
                latencies.append(time.perf_counter() - started)

            loop = asyncio.get_running_loop()
            t0 = loop.time()
            sends = []
            for i in range(FLOOD_RATE * FLOOD_SECONDS):
                await asyncio.sleep(max(0.0, t0 + i / FLOOD_RATE - loop.time()))
                sends.append(asyncio.create_task(send(i)))
            async with asyncio.timeout(30):
                await asyncio.gather(*sends)
    finally:
        served.stop()

    assert statuses == [200] * len(sends), sorted(set(statuses))
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"RedisDown flood: p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    assert p99 < 0.5, f"p99 {p99 * 1000:.1f} ms (p50 {latencies[len(latencies) // 2] * 1000:.1f} ms)"
    joined = read_state(
        config.state_file,
        "SELECT state, note FROM incidents WHERE fingerprint LIKE 'flood-%'",
    )
    assert len(joined) == len(sends)
    note = f"merged into incident #{probe}, which the bot's health probe opened for 127.0.0.1:{down}/0"
    assert {(r["state"], r["note"]) for r in joined} == {(IncidentState.UNMATCHED, note)}
    step_runs = read_state(config.state_file, "SELECT DISTINCT incident_id FROM step_runs")
    assert {r["incident_id"] for r in step_runs} == {probe}, "only the probe's incident ran a playbook"


# -- item 11: a diagnosis that could not run says so --------------------------------------------


class LockedRedis(RedisServer):
    """A redis-server with ``requirepass``: ready once it answers, if only with NOAUTH."""

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False


async def finished(config: Config, payload: dict[str, Any]) -> Any:
    """Run the alert's playbook to its end with the engine as ``serve`` builds it."""
    async with Engine.open(config, RecordingNotifier()) as engine:
        result = await engine.intake.receive(Notification.model_validate(payload))
        (inc_id,) = result.new
        await engine.runner.drain()
        return await engine.store.get_incident(inc_id)


@pytest.mark.parametrize("fault", ["closed port", "wrong password"])
async def test_a_redis_the_bot_cannot_use_ends_the_incident_as_a_failed_diagnosis(
    tmp_path: Path, fault: str
) -> None:
    """Every diagnostic step errored, so the incident is ``failed`` with the first step's error,
    never "diagnosed: diagnostics complete" (which reads as if the bot had looked)."""
    if fault == "closed port":
        url, why = f"redis://127.0.0.1:{free_port()}/0", "cannot reach Redis"
    else:
        locked = LockedRedis(tmp_path / "locked", "--requirepass", "the-right-one").start()
        url, why = f"redis://:not-the-password@127.0.0.1:{locked.port}/0", "rejected the credentials"
    cfg = tmp_path / "bot.yaml"
    cfg.write_text(f"targets:\n  - match: {{job: redis}}\n    url: {url}\nscheduler: {{enabled: false}}\n")
    try:
        inc = await finished(load_config(cfg), alert_payload("RedisMemoryUsageHigh"))
    finally:
        if fault == "wrong password":
            locked.stop()
    assert inc.status == IncidentState.FAILED, (inc.status, inc.note)
    assert inc.note.startswith("diagnosis failed: every step errored (estimate: "), inc.note
    assert why in inc.note and "not-the-password" not in inc.note, inc.note
    assert not any(s.status == StepStatus.OK for s in inc.steps)


async def test_readyz_is_503_while_the_store_cannot_write_and_200_once_it_can(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    """A full disk, for the ``serve`` process alone: ``RLIMIT_FSIZE`` of 1 byte (set from outside with
    prlimit) makes every write to its state file fail with EFBIG while reads still work, exactly as
    ENOSPC does, and it binds root too (unlike a read-only file). Readiness must report it, and the
    webhook must answer 503 so Alertmanager retries; both recover when writes work again."""
    cfg = tmp_path / "bot.yaml"
    cfg.write_text(
        f"targets:\n  - match: {{job: redis}}\n    url: {redis_server.url}\nscheduler: {{enabled: false}}\n"
    )
    served = Served(cfg, tmp_path / "serve.log")
    pid = served.proc.pid
    try:
        async with aiohttp.ClientSession() as session:
            await served.ready(session)
            _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, hard))
            try:
                async with session.get(f"{served.url}/readyz") as r:
                    body = await r.json()
                    assert r.status == 503, body
                    assert body["status"] == "unavailable" and "state store" in body["error"], body
                alert = alert_payload("RedisHitRateLow", fingerprint="while-full")
                async with session.post(f"{served.url}/alerts", json=alert) as r:
                    assert r.status == 503, await r.text()
            finally:
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))
            async with session.get(f"{served.url}/readyz") as r:
                assert r.status == 200, await r.text()
            async with session.post(f"{served.url}/alerts", json=alert) as r:
                body = await r.json()
                assert r.status == 200 and len(body["new_incidents"]) == 1, body
    finally:
        served.stop()


# -- item 1, the part a human sees: a refused label is audited and someone is told -------------------


async def test_a_label_pointing_outside_allowed_addresses_is_audited_and_a_human_is_warned(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No connection is made (``tests/test_target_safety.py`` proves it with a hostile listener);
    here: the refusal is in the audit trail, twice over (the alert's own ``alert.received`` says
    ``refused``, and a ``target.refused`` record stands out), and the channel gets a warning."""
    connections = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    hostile = await asyncio.start_server(count, "127.0.0.1", 0)
    hostile_port = hostile.sockets[0].getsockname()[1]
    cfg = tmp_path / "bot.yaml"
    cfg.write_text(
        "targets:\n  - match: {job: redis-exporter}\n"
        '    url: "redis://:${REDIS_PASSWORD}@{{ labels.redis_addr }}/0"\n'
        f'    allowed_addresses: ["127.0.0.1:{redis_server.port}"]\n'
        "scheduler: {enabled: false}\n"
    )
    monkeypatch.setenv("REDIS_PASSWORD", "never-sent")
    config = load_config(cfg)
    notifier = RecordingNotifier()
    payload = alert_payload(
        "RedisMemoryUsageHigh", labels={"job": "redis-exporter", "redis_addr": f"127.0.0.1:{hostile_port}"}
    )
    try:
        async with Engine.open(config, notifier) as engine:
            result = await engine.intake.receive(Notification.model_validate(payload))
            assert result.new == [] and len(result.refused) == 1
            (inc_id,) = result.refused
            (level, text), *_ = await wait_for(lambda: notifier.of("notice"))
            await engine.runner.drain()
            inc = await engine.store.get_incident(inc_id)
            audit = await engine.store.list_audit(incident_id=inc_id)
    finally:
        hostile.close()
        await hostile.wait_closed()
    assert level == "warning"
    assert (
        f"incident #{inc_id}" in text and f"127.0.0.1:{hostile_port}" in text and "allowed_addresses" in text
    )
    assert "never-sent" not in text
    assert inc.status == IncidentState.UNMATCHED and inc.target is None and inc.steps == []
    (received,) = [e for e in audit if e.kind == "alert.received"]
    assert received.detail["refused"] == inc.note and inc.note.startswith("refused: ")
    (refused,) = [e for e in audit if e.kind == "target.refused"]
    assert refused.detail["reason"] == inc.note
    assert all("never-sent" not in json.dumps(e.detail) for e in audit)
    assert connections == 0, "nothing connected to the address the label named"


# -- README claims that had no test of their own ----------------------------------------------------

FLUSH = """\
name: flush-test
match: {alertname: TestFlush}
steps:
  - {id: flush, run: redis.flushdb, with: {snapshot_first: false}}
"""


async def decide_in(config: Config, inc_id: int, *people: str) -> Any:
    """Approve the pending step of ``inc_id`` by each of ``people`` (distinct verified identities)."""
    async with Engine.open(config, RecordingNotifier(), workers=False) as engine:
        report = None
        for who in people:
            report = await engine.runner.decide(inc_id, person(who), True)
        return report


async def test_flushdb_is_always_async(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    """The action's user may run ``FLUSHDB ASYNC`` and nothing else of FLUSHDB (an ACL first-argument
    rule): a blocking FLUSHDB would be refused by Redis and the action would fail."""
    redis_sync.execute_command(  # type: ignore[no-untyped-call]
        "ACL",
        "SETUSER",
        "flusher",
        "reset",
        "on",
        ">flushpw",
        "~*",
        "&*",
        "+@all",
        "-flushdb",
        "+flushdb|async",
    )
    try:
        for i in range(100):
            redis_sync.set(f"agent:{i}", "v")
        cfg = playbook_config(tmp_path, redis_server.url, FLUSH)
        cfg.write_text(
            cfg.read_text().replace(
                f"url: {redis_server.url}",
                f"url: {redis_server.url}\n    action_url: redis://flusher:flushpw@127.0.0.1:{redis_server.port}/0",
            )
        )
        config = load_config(cfg)
        inc_id = await diagnose(config, alert_payload("TestFlush"))
        report = await decide_in(config, inc_id, "alice", "bob")
        assert report.executed and report.result.status == StepStatus.OK, report.message
        assert redis_sync.dbsize() == 0
    finally:
        redis_sync.acl_deluser("flusher")


async def test_an_approved_plan_for_another_redis_is_not_executed(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    """A stored plan rewritten (with a matching hash) to name another target: the executing process
    compares the plan's target and db with the incident's resolved target and refuses."""
    for i in range(50):
        redis_sync.set(f"agent:{i}", "v")
    cfg = playbook_config(tmp_path, redis_server.url, EVICT)
    config = load_config(cfg)
    inc_id = await diagnose(config, alert_payload("TestEvict"))
    (row,) = read_state(config.state_file, "SELECT id, plan FROM approvals WHERE incident_id = ?", inc_id)
    plan = Plan.model_validate({**json.loads(row["plan"]), "db": 3})
    conn = sqlite3.connect(config.state_file)
    with conn:
        conn.execute(
            "UPDATE approvals SET plan = ?, plan_hash = ? WHERE id = ?",
            (plan.model_dump_json(), plan.digest(), row["id"]),
        )
    conn.close()
    report = await decide_in(config, inc_id, "alice")
    assert not report.executed and report.extra.get("refused")
    assert f"the plan is for {plan.target} db 3, not {plan.target} db 0" in report.message
    assert sum(1 for _ in redis_sync.scan_iter(match="agent:*")) == 50


async def test_the_kill_switch_in_the_config_stops_actions_before_they_are_offered(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    for i in range(50):
        redis_sync.set(f"agent:{i}", "v")
    cfg = playbook_config(tmp_path, redis_server.url, EVICT, "guardrails: {kill_switch: true}\n")
    async with Engine.open(load_config(cfg), RecordingNotifier(), workers=False) as engine:
        result = await engine.intake.receive(Notification.model_validate(alert_payload("TestEvict")))
        inc = await engine.runner.run_incident(result.new[0])
    assert inc.status == IncidentState.ESCALATED and "guardrails.kill_switch" in inc.note, inc.note
    assert inc.pending_step is None
    assert sum(1 for _ in redis_sync.scan_iter(match="agent:*")) == 50


async def test_a_dry_run_playbook_only_reports_its_plan(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    for i in range(50):
        redis_sync.set(f"agent:{i}", "v")
    cfg = playbook_config(tmp_path, redis_server.url, EVICT + "dry_run: true\n")
    async with Engine.open(load_config(cfg), RecordingNotifier(), workers=False) as engine:
        result = await engine.intake.receive(Notification.model_validate(alert_payload("TestEvict")))
        inc = await engine.runner.run_incident(result.new[0])
    (step,) = inc.steps
    assert step.status == StepStatus.PLANNED and step.summary.startswith("dry run, would: delete 50 keys")
    assert inc.pending_step is None
    assert sum(1 for _ in redis_sync.scan_iter(match="agent:*")) == 50


async def test_an_eviction_waits_as_long_again_after_a_slow_answer(
    target: RedisTarget, redis_sync: redis.Redis
) -> None:
    """Redis stalls (every client paused for 0.3 s): the eviction's first call takes that long, and
    the eviction then pauses as long again before its next call, leaving Redis to the application."""
    redis_sync.execute_command("DEBUG", "POPULATE", 5_000, "agent", 10)  # type: ignore[no-untyped-call]
    redis_sync.client_pause(300)
    res = await evict(target.client, "agent:*", ["bull:*"], max_keys=10**6)
    assert res.deleted == 5_000
    assert res.pauses >= 1 and res.slowest_call_ms >= 250
    assert res.duration_s >= 2 * 0.25, "the slow call, then as long again"


def test_the_numbers_the_safety_model_quotes_are_the_defaults(tmp_path: Path) -> None:
    """15-minute approvals, a 20% plan margin, 3 actions an hour, a pause after 2 failures, UNLINK
    batches of 500 keys, 100 queued incidents per target: what the README says, the code does."""
    cfg = tmp_path / "bot.yaml"
    cfg.write_text("targets:\n  - url: redis://127.0.0.1:1/0\n")
    config = load_config(cfg)
    assert (config.approvals.ttl, config.approvals.plan_margin) == (900, 0.2)
    assert (config.guardrails.max_actions_per_hour, config.guardrails.pause_after_failures) == (3, 2)
    assert REGISTRY["redis.evict"].params.model_validate({"pattern": "agent:*"}).batch == 500  # type: ignore[attr-defined]
    assert QUEUE_PER_TARGET == 100


def test_the_audit_trail_is_append_only(tmp_path: Path) -> None:
    """Enforced in the database itself (triggers), so no code path (or a hand-run sqlite3 shell
    without dropping the triggers) can rewrite history."""

    async def one_record() -> Path:
        cfg = tmp_path / "bot.yaml"
        cfg.write_text("targets:\n  - url: redis://127.0.0.1:1/0\n")
        config = load_config(cfg)
        async with Engine.open(config, workers=False) as engine:
            await engine.store.audit("breaker.reset", actor="cli:alice", target="t", detail={"reason": "x"})
        return config.state_file

    state = asyncio.run(one_record())
    conn = sqlite3.connect(state)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE audit SET actor = 'someone else'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM audit")
        assert conn.execute("SELECT actor FROM audit").fetchall() == [("cli:alice",)]
    finally:
        conn.close()


# -- the mapping itself ---------------------------------------------------------------------------


def _claims_in_readme() -> list[str]:
    """The bold lead of every bullet of README.md's "Safety model" section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Safety model") : text.index("\n## ", text.index("### Safety model"))]
    return [_plain(m) for m in re.findall(r"^- \*\*(.+?)\*\*", section, flags=re.MULTILINE)]


def _plain(claim: str) -> str:
    return claim.replace("`", "").rstrip(".:").strip()


def test_the_mapping_names_every_claim_and_real_tests() -> None:
    """Every README safety claim has an entry in this module's docstring, every entry is a README
    claim, and every test an entry names exists (a renamed or deleted test breaks the mapping)."""
    mapping: dict[str, list[str]] = {}
    heading = ""
    for line in (__doc__ or "").splitlines():
        if re.match(r"^\S", line) and "::" not in line and not line.endswith(('"""', ".")):
            heading = line.strip()
            mapping[heading] = []
        elif m := re.match(r"^\s+(test_\w+)::(test_\w+)", line):
            mapping[heading].append(f"{m[1]}::{m[2]}")
    mapping = {k: v for k, v in mapping.items() if v}
    claims = _claims_in_readme()
    assert len(claims) >= 20
    assert sorted(claims) == sorted(mapping), "README safety bullets and this docstring's headings differ"
    missing = []
    for refs in mapping.values():
        for ref in refs:
            module, name = ref.split("::")
            source = (ROOT / "tests" / f"{module}.py").read_text()
            if not re.search(rf"^(async )?def {name}\(", source, flags=re.MULTILINE):
                missing.append(ref)
    assert missing == [], f"tests named in the mapping that do not exist: {missing}"

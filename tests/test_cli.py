"""The command line as users script against it: check, run, incidents, approve/deny, audit, kill-switch.

Approving from another process (the CLI's decision, claim and action through the store) runs on both
stores (``database_line``); the other commands' store calls are covered on both by the store contract.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import redis

from bot.identity import cli_actor
from tests.conftest import RedisServer, seed_platform, write_config


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_the_commands() -> None:
    out = cli("--help")
    assert out.returncode == 0
    for command in ("serve", "check", "run", "incidents", "approve", "deny", "audit", "kill-switch"):
        assert command in out.stdout
    assert "BOT_WEBHOOK_TOKEN" in out.stdout


def test_check_accepts_the_minimal_config(config_path: Path) -> None:
    out = cli("check", "--config", str(config_path))
    assert out.returncode == 0, out.stderr
    assert "config OK" in out.stdout and "redis-memory-high" in out.stdout


def test_check_lists_every_problem_and_fails(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("targets:\n  - url: http://x\n    colour: red\nserver: {port: -1}\n")
    out = cli("check", "--config", str(path))
    assert out.returncode == 1
    assert "3 problems found" in out.stderr
    assert f"{path}: targets[0].url: must start with" in out.stderr
    assert f"{path}: targets[0].colour: unknown field" in out.stderr
    assert f"{path}: server.port:" in out.stderr
    assert "Traceback" not in out.stderr


def test_check_reports_config_and_playbook_problems_together(tmp_path: Path) -> None:
    pb = tmp_path / "pb"
    pb.mkdir()
    (pb / "x.yaml").write_text("name: x\nmatch: {alertname: X}\nsteps:\n  - {id: a, run: redis.nope}\n")
    path = tmp_path / "bot.yaml"
    path.write_text("targets:\n  - url: redis://127.0.0.1/0\nplaybooks: pb\n")
    out = cli("check", "--config", str(path))
    assert out.returncode == 1
    assert "x.yaml: steps[0].run: unknown step 'redis.nope'" in out.stderr


def test_run_dry_run_then_incidents_and_audit(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=500)
    cfg = write_config(tmp_path, redis_server.url)
    out = cli("run", "redis-memory-high", "--config", str(cfg), "--target", redis_server.url, "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "dry run, would: delete 500 keys matching agent:*" in out.stdout
    assert redis_sync.dbsize() == 584, "a dry run changes nothing"

    listing = cli("incidents", "--config", str(cfg), "--json")
    incidents = json.loads(listing.stdout)
    assert len(incidents) == 1
    inc = incidents[0]
    assert {"id", "alertname", "status", "target", "steps", "pending_step"} <= set(inc)
    assert inc["alertname"] == "RedisMemoryUsageHigh" and inc["source"] == "cli"
    assert inc["pending_step"] is None
    assert [s["step_id"] for s in inc["steps"]][:4] == ["estimate", "memory", "clients", "doctor"]

    one = cli("incidents", str(inc["id"]), "--config", str(cfg))
    assert f"Incident #{inc['id']}" in one.stdout and "[planned] evict-agent-cache" in one.stdout

    audit = cli("audit", "--config", str(cfg), "--json")
    kinds = {e["kind"] for e in json.loads(audit.stdout)}
    assert {"incident.opened", "step.finished"} <= kinds


def test_a_dry_run_at_85_percent_skips_the_checks_of_actions_that_did_not_run(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    """Nothing acted, so a check after an action would only wait out its ``within`` for a change
    nothing made and then fail: in a dry run those checks are skipped, saying why, while the plans
    are all shown and the eviction's counts come from the incident's memory report (no second scan)."""
    seed_platform(redis_sync, agents=3000)
    redis_sync.config_set("maxmemory", int(redis_sync.info("memory")["used_memory"] / 0.85))
    cfg = write_config(tmp_path, redis_server.url)
    out = cli(
        "run", "redis-memory-high", "--config", str(cfg), "--target", redis_server.url, "--dry-run", "--json"
    )
    assert out.returncode == 0, out.stderr
    steps = {s["step_id"]: s for s in json.loads(out.stdout)["steps"]}
    evict = steps["evict-agent-cache"]
    assert evict["status"] == "planned" and evict["plan"]["estimated_keys"] == 3000
    assert evict["plan"]["details"]["counted_by"].startswith("the memory report (consumers, ")
    for check in ("check-after-evict", "check-after-raise", "check-after-flush"):
        assert steps[check]["status"] == "skipped", steps[check]
        assert "dry run, no action ran" in steps[check]["summary"]
    assert steps["raise-maxmemory"]["status"] == "planned"
    assert redis_sync.dbsize() == 3084, "a dry run changes nothing"


def test_run_then_approve_from_another_process(
    database_line: str, tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=3000)
    redis_sync.config_set("maxmemory", int(redis_sync.info("memory")["used_memory"] / 0.85))
    # One operator without Slack: who runs the playbook may approve it (see test_identity for the rule).
    cfg = write_config(tmp_path, redis_server.url, "approvals: {allow_self_approval: true}\n" + database_line)
    out = cli("run", "redis-memory-high", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "APPROVAL NEEDED for evict-agent-cache" in out.stdout
    assert f"approve: remediation-bot approve 1 --config {cfg}" in out.stdout
    pending = json.loads(cli("incidents", "--config", str(cfg), "--json").stdout)[0]["pending_step"]
    assert pending["type"] == "redis.evict" and pending["plan"]["estimated_keys"] == 3000

    approved = cli("approve", "1", "--config", str(cfg), "--as", "oncall-alice")
    assert approved.returncode == 0, approved.stderr
    alice = cli_actor("oncall-alice").label  # the OS account running the tests, with the name shown
    assert f"approving as {alice}" in approved.stdout
    assert "deleted 3,000 keys matching agent:*" in approved.stdout
    assert "helped: memory at" in approved.stdout
    inc = json.loads(cli("incidents", "1", "--config", str(cfg), "--json").stdout)
    assert inc["status"] == "verified" and inc["pending_step"] is None
    assert sum(1 for _ in redis_sync.scan_iter(match="agent:*")) == 0
    assert sum(1 for _ in redis_sync.scan_iter(match="bull:*")) == 4

    again = cli("deny", "1", "--config", str(cfg), "--as", "bob")
    assert again.returncode == 3
    assert f"already executed by {alice}" in again.stderr

    audit = json.loads(cli("audit", "--config", str(cfg), "--json").stdout)
    executed = [e for e in audit if e["kind"] == "action.executed"]
    assert len(executed) == 1 and executed[0]["actor"] == alice


def test_deny_records_who_and_changes_nothing(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=50)
    cfg = write_config(tmp_path, redis_server.url)
    cli("run", "redis-memory-high", "--config", str(cfg))
    out = cli("deny", "1", "--config", str(cfg), "--as", "bob")
    bob = cli_actor("bob").label
    assert out.returncode == 0 and f"denied by {bob}" in out.stdout, "the requester may deny"
    assert sum(1 for _ in redis_sync.scan_iter(match="agent:*")) == 50
    inc = json.loads(cli("incidents", "1", "--config", str(cfg), "--json").stdout)
    assert inc["status"] == "diagnosed" and f"denied by {bob}" in inc["note"]


def test_kill_switch_round_trip(tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis) -> None:
    seed_platform(redis_sync, agents=50)
    cfg = write_config(tmp_path, redis_server.url)
    assert "kill switch: off" in cli("kill-switch", "status", "--config", str(cfg)).stdout
    on = cli("kill-switch", "on", "--config", str(cfg), "--reason", "investigating")
    assert "kill switch: ON" in on.stdout and "investigating" in on.stdout
    out = cli("run", "redis-memory-high", "--config", str(cfg))
    assert "escalated: the kill switch is on" in out.stdout
    assert sum(1 for _ in redis_sync.scan_iter(match="agent:*")) == 50
    assert "kill switch: off" in cli("kill-switch", "off", "--config", str(cfg)).stdout


def test_unknown_incident_and_playbook_are_clear_errors(config_path: Path) -> None:
    out = cli("approve", "42", "--config", str(config_path))
    assert out.returncode == 3 and "no incident 42" in out.stderr
    out = cli("run", "nope", "--config", str(config_path))
    assert out.returncode == 1 and "no playbook named 'nope'" in out.stderr
    assert "Traceback" not in out.stderr


def test_unreachable_redis_is_a_message_not_a_hang(tmp_path: Path) -> None:
    from tests.conftest import free_port

    cfg = write_config(tmp_path, f"redis://127.0.0.1:{free_port()}/0", "runner: {redis_timeout: 1s}\n")
    out = cli("run", "redis-latency-high", "--config", str(cfg), timeout=60)
    assert out.returncode == 0
    assert "cannot reach Redis" in out.stdout

"""Identities under attack: one shell posing as two people, a requester approving their own action.

The command line is driven as a subprocess against a real redis-server, Slack through signed
requests to the real service (see ``tests/test_slack.py``). Who a CLI user is comes from the OS
account; tests running as root stand in for another account with ``SUDO_USER``, exactly as sudo sets it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from bot.alerts import Alert, Notification
from bot.config import load_config
from bot.errors import ConfigError, IdentityError
from bot.identity import Actor, cli_actor, os_account, slack_actor
from bot.incidents import IncidentState
from bot.intake import Intake
from bot.playbook import load_playbooks
from bot.runner import Runner
from bot.store import IngestItem, SQLiteStore
from tests import test_slack
from tests.conftest import RecordingNotifier, RedisServer, alert_payload, seed_platform, wait_for
from tests.test_slack import ALICE, BOB, MakeBot, agent_keys

# The Slack harness's fixtures: the real service against a fake Slack Web API, signed requests.
fake = test_slack.fake
make_bot = test_slack.make_bot

FLUSH = """\
name: flush-test
match: {alertname: TestFlush}
steps:
  - {id: flush, run: redis.flushdb, with: {snapshot_first: false}}
"""
ENV = {k: v for k, v in os.environ.items() if k != "SUDO_USER"}
"""The test process's environment as a plain login shell has it: the identity is the OS account."""
ME = os_account(environ=ENV)
as_root = pytest.mark.skipif(
    os.getuid() != 0, reason="standing in for another account needs root (SUDO_USER)"
)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or ENV,
        stdin=subprocess.DEVNULL,
    )


def as_account(account: str) -> dict[str, str]:
    """The environment of ``sudo -u root`` run by ``account``."""
    return {**ENV, "SUDO_USER": account}


def flush_config(tmp_path: Path, url: str, approvals: str = "") -> Path:
    pb = tmp_path / "playbooks"
    pb.mkdir(exist_ok=True)
    (pb / "flush.yaml").write_text(FLUSH)
    path = tmp_path / "bot.yaml"
    path.write_text(
        f"targets:\n  - match: {{job: redis}}\n    url: {url}\nplaybooks: playbooks\n"
        f"approvals: {{{approvals}}}\n"
    )
    return path


async def fire_flush_alert(cfg: Path) -> int:
    """Alertmanager's TestFlush arrives; the bot plans FLUSHDB and waits for two approvers."""
    config = load_config(cfg)
    playbooks = load_playbooks(config.playbooks)
    store = await SQLiteStore(config.state_file).open()
    runner = Runner(config, playbooks, store, RecordingNotifier())
    await runner.start()
    try:
        result = await Intake(config, playbooks, store, runner).receive(
            Notification.model_validate(alert_payload("TestFlush"))
        )
        await runner.drain()
        inc = await store.get_incident(result.new[0])
        assert inc.pending_step is not None and inc.pending_step["required_approvals"] == 2
        assert inc.requested_by is None, "an alert has no requester"
        return inc.id
    finally:
        await runner.stop()
        await store.close()


def fill(r: redis.Redis, n: int = 100) -> None:
    for i in range(n):
        r.set(f"agent:{i}", "v")


def incident(cfg: Path, inc_id: int = 1) -> dict[str, object]:
    out: dict[str, object] = json.loads(cli("incidents", str(inc_id), "--config", str(cfg), "--json").stdout)
    return out


def audit(cfg: Path, kind: str) -> list[dict[str, object]]:
    entries = json.loads(cli("audit", "--config", str(cfg), "--json").stdout)
    return [e for e in entries if e["kind"] == kind]


# -- who the command line is ----------------------------------------------------------------------


def test_the_cli_identity_is_the_os_account_and_sudo_only_counts_for_root() -> None:
    nobody = 65534
    assert os_account(0, {}) == "root"
    assert os_account(0, {"SUDO_USER": "alice"}) == "alice", "behind sudo, the person who ran sudo"
    assert os_account(0, {"SUDO_USER": "root"}) == "root"
    assert os_account(nobody, {"SUDO_USER": "alice"}) == "nobody", "anyone else could set SUDO_USER"
    assert os_account(987_654, {}) == "987654", "an account missing from passwd is named by its uid"


def test_as_only_adds_a_display_name() -> None:
    actor = cli_actor("Alice  Smith", uid=0, environ={})
    assert actor == Actor(kind="cli", id="root", display="Alice Smith")
    assert actor.key == "cli:root" and actor.label == 'cli:root (as "Alice Smith")'
    assert cli_actor("Bob", uid=0, environ={}).key == actor.key, "a second name is not a second person"
    assert cli_actor("Al\nFaked line", uid=0, environ={}).display == "Al Faked line", "one line in the audit"
    assert slack_actor("U012AB").label == "slack:U012AB"


@pytest.mark.parametrize(
    "name", ["cli:bob", "slack:UBOB", "<@UBOB>", "alice, bob", "", " ", "x" * 65, "Bob`", "@here"]
)
def test_a_display_name_that_could_pass_for_someone_else_is_refused(name: str) -> None:
    with pytest.raises(IdentityError, match="display name"):
        cli_actor(name)


def test_cli_refuses_a_display_name_that_looks_like_an_identity(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    cfg = flush_config(tmp_path, redis_server.url)
    out = cli("approve", "1", "--config", str(cfg), "--as", "slack:UBOB")
    assert out.returncode == 2 and "--as 'slack:UBOB'" in out.stderr and "only a name" in out.stderr


def test_cli_approvers_are_checked_when_the_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "bot.yaml"
    path.write_text(
        "targets:\n  - url: redis://127.0.0.1/0\napprovals: {cli_approvers: [cli:alice, 'bo b']}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert f"{path}: approvals.cli_approvers" in text and "write the OS account name alone ('alice')" in text


# -- one shell is one person ----------------------------------------------------------------------


async def test_one_account_cannot_reach_a_two_person_quorum_with_two_names(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    fill(redis_sync)
    cfg = flush_config(tmp_path, redis_server.url, f"cli_approvers: [{ME}, oncall-bob]")
    await fire_flush_alert(cfg)

    first = cli("approve", "1", "--config", str(cfg), "--as", "alice", "--yes")
    assert first.returncode == 0, first.stderr
    assert f'approving as cli:{ME} (as "alice")' in first.stdout and "needs 1 more approver" in first.stdout

    second = cli("approve", "1", "--config", str(cfg), "--as", "bob", "--yes")
    assert second.returncode == 4, (second.stdout, second.stderr)
    assert (
        f"refused: cli:{ME} already approved (a display name does not make another person)" in second.stderr
    )
    assert redis_sync.dbsize() == 100, "nothing executed"
    inc = incident(cfg)
    assert inc["status"] == "awaiting_approval"
    assert inc["pending_step"]["approved_by"] == [f'cli:{ME} (as "alice")']  # type: ignore[index]
    refused = audit(cfg, "approval.refused")
    assert [e["actor"] for e in refused] == [f'cli:{ME} (as "bob")']
    assert not audit(cfg, "action.executed")


async def test_a_two_person_step_needs_cli_approvers_listed(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    fill(redis_sync)
    cfg = flush_config(
        tmp_path, redis_server.url
    )  # cli_approvers empty: any local account, one-approver steps only
    await fire_flush_alert(cfg)
    out = cli("approve", "1", "--config", str(cfg), "--yes")
    assert out.returncode == 4
    assert "needs 2 different approvers" in out.stderr and "approvals.cli_approvers is empty" in out.stderr
    assert incident(cfg)["pending_step"]["approved_by"] == []  # type: ignore[index]
    assert redis_sync.dbsize() == 100


@as_root
async def test_two_listed_accounts_complete_the_quorum_and_others_are_refused(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    fill(redis_sync)
    cfg = flush_config(tmp_path, redis_server.url, "cli_approvers: [oncall-alice, oncall-bob]")
    await fire_flush_alert(cfg)
    mallory = cli("approve", "1", "--config", str(cfg), "--yes", env=as_account("mallory"))
    assert mallory.returncode == 4 and "'mallory' is not in approvals.cli_approvers" in mallory.stderr
    assert cli("approve", "1", "--config", str(cfg), "--yes", env=as_account("oncall-alice")).returncode == 0
    assert redis_sync.dbsize() == 100
    bob = cli("approve", "1", "--config", str(cfg), "--yes", env=as_account("oncall-bob"))
    assert bob.returncode == 0, bob.stderr
    assert "approving as cli:oncall-bob" in bob.stdout and "executed" in bob.stdout
    assert redis_sync.dbsize() == 0
    executed = audit(cfg, "action.executed")
    assert executed[0]["detail"]["approvers"] == ["cli:oncall-alice", "cli:oncall-bob"]  # type: ignore[index]


# -- the requester is not the approver ------------------------------------------------------------


def test_cli_run_records_its_requester_who_may_not_approve_it(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=40)
    cfg = tmp_path / "bot.yaml"
    cfg.write_text(f"targets:\n  - match: {{job: redis}}\n    url: {redis_server.url}\n")
    assert cli("run", "redis-memory-high", "--config", str(cfg)).returncode == 0
    assert incident(cfg)["requested_by"] == f"cli:{ME}"
    assert audit(cfg, "incident.opened")[0]["actor"] == f"cli:{ME}"

    own = cli("approve", "1", "--config", str(cfg), "--as", "Someone Else", "--yes")
    assert own.returncode == 4
    assert f"refused: cli:{ME} asked for this action, so someone else must approve it" in own.stderr
    assert "approvals.allow_self_approval: true" in own.stderr
    assert agent_keys(redis_sync) == 40

    cfg.write_text(cfg.read_text() + "approvals: {allow_self_approval: true}\n")
    allowed = cli("approve", "1", "--config", str(cfg), "--yes")
    assert allowed.returncode == 0, allowed.stderr
    assert agent_keys(redis_sync) == 0


async def test_slack_requester_cannot_approve_their_own_eviction(
    make_bot: MakeBot, redis_sync: redis.Redis
) -> None:
    bot = await make_bot()
    seed_platform(redis_sync, agents=60)
    await bot.command(ALICE, "evict agent:*")
    approval = await bot.approval_message()
    inc = await bot.incident()
    assert inc.requested_by == f"slack:{ALICE}"

    await bot.click(ALICE, "approve", approval)
    said = await bot.ephemeral(ALICE)
    assert "Not allowed to approve" in said and f"<@{ALICE}> asked for this action" in said
    assert "Nothing was changed" in said
    assert agent_keys(redis_sync) == 60 and approval.buttons
    inc = await bot.incident()
    assert inc.status == IncidentState.AWAITING_APPROVAL and inc.pending_step["approved_by"] == []
    refused = [e for e in await bot.store.list_audit(incident_id=1) if e.kind == "approval.refused"]
    assert [e.actor for e in refused] == [f"slack:{ALICE}"] and "asked for this action" in refused[0].detail[
        "reason"
    ]

    await bot.click(BOB, "approve", approval)
    await bot.wait_status(IncidentState.VERIFIED)
    assert agent_keys(redis_sync) == 0
    await wait_for(lambda: not approval.buttons)
    assert f"*Approved* by <@{BOB}>" in approval.all_text

    await bot.command(BOB, "run diag-test", "run")  # a playbook run by hand has its requester too
    await bot.response("run")
    assert (await bot.incident(2)).requested_by == f"slack:{BOB}"


async def test_allow_self_approval_lets_the_requester_approve(
    make_bot: MakeBot, redis_sync: redis.Redis
) -> None:
    bot = await make_bot("approvals: {allow_self_approval: true}\n")
    seed_platform(redis_sync, agents=25)
    await bot.command(ALICE, "evict agent:*")
    approval = await bot.approval_message()
    await bot.click(ALICE, "approve", approval)
    await bot.wait_status(IncidentState.VERIFIED)
    assert agent_keys(redis_sync) == 0


# -- the record -----------------------------------------------------------------------------------


async def test_a_state_file_from_before_requesters_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    store = await SQLiteStore(path).open()
    await store.close()
    with sqlite3.connect(path) as conn:  # the file as earlier versions wrote it
        conn.execute("ALTER TABLE incidents DROP COLUMN requested_by")
        conn.execute("PRAGMA user_version = 0")  # versions before the migrations were numbered
        conn.execute(
            "INSERT INTO incidents (fingerprint, starts_at, alertname, alert_status, state, labels, annotations,"
            " created_at, updated_at) VALUES ('fp', 's', 'Old', 'firing', 'diagnosed', '{}', '{}', 0, 0)"
        )
    store = await SQLiteStore(path).open()
    try:
        assert (await store.get_incident(1)).requested_by is None
        alert = Alert.model_validate(alert_payload("TestEvict")["alerts"][0])
        new = await store.open_incident(
            IngestItem(alert, "p", "t", 0, source="slack"), requested_by="slack:UA"
        )
        assert (await store.get_incident(new)).requested_by == "slack:UA"
    finally:
        await store.close()

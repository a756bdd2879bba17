"""The runner: steps in order, timeouts and failures recorded, stop-or-continue, unmatched alerts, resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from bot.alerts import Notification
from bot.config import load_config
from bot.incidents import IncidentState, StepStatus
from bot.intake import Intake
from bot.playbook import load_playbooks
from bot.runner import Runner
from bot.store import SQLiteStore, Store
from tests.conftest import RecordingNotifier, RedisServer, alert_payload, seed_platform

PLAYBOOKS = {
    "flow.yaml": """\
name: flow
match: {alertname: Flow}
steps:
  - {id: ping, run: redis.ping}
  - {id: slow, run: redis.verify_hit_rate, with: {window: 5s}, timeout: 300ms}
  - {id: info, run: redis.info, with: {section: memory}}
""",
    "stop.yaml": """\
name: stop
match: {alertname: Stop}
steps:
  - {id: slow, run: redis.verify_hit_rate, with: {window: 5s}, timeout: 200ms, on_failure: stop}
  - {id: never, run: redis.ping}
""",
}


async def make(tmp_path: Path, url: str) -> tuple[Store, Runner, Intake, RecordingNotifier]:
    pb = tmp_path / "playbooks"
    pb.mkdir(exist_ok=True)
    for name, text in PLAYBOOKS.items():
        (pb / name).write_text(text)
    path = tmp_path / "bot.yaml"
    path.write_text(
        f"targets:\n  - match: {{job: redis}}\n    url: {url}\nplaybooks: playbooks\nrunner: {{redis_timeout: 1s}}\n"
    )
    config = load_config(path)
    playbooks = load_playbooks(config.playbooks)
    store = await SQLiteStore(config.state_file).open()
    notifier = RecordingNotifier()
    runner = Runner(config, playbooks, store, notifier)
    return store, runner, Intake(config, playbooks, store, runner), notifier


async def fire(intake: Intake, alertname: str, **labels: str) -> list[int]:
    result = await intake.receive(
        Notification.model_validate(alert_payload(alertname, labels=labels or None))
    )
    await intake.runner.drain()
    return result.new


async def test_steps_run_in_order_and_a_timeout_is_recorded(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    store, runner, intake, notifier = await make(tmp_path, redis_server.url)
    await runner.start()
    try:
        (inc_id,) = await fire(intake, "Flow")
        inc = await store.get_incident(inc_id)
    finally:
        await runner.stop()
        await store.close()
    assert [s.step_id for s in inc.steps] == ["ping", "slow", "info"]
    assert [s.status for s in inc.steps] == [StepStatus.OK, StepStatus.TIMEOUT, StepStatus.OK]
    assert inc.steps[1].error == "timed out after 300ms"
    assert inc.status == IncidentState.DIAGNOSED
    assert [k for k, _ in notifier.events if k in ("opened", "step", "updated")] == [
        "opened",
        "step",
        "step",
        "step",
        "updated",
    ]


async def test_on_failure_stop_ends_the_playbook(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    store, runner, intake, _ = await make(tmp_path, redis_server.url)
    await runner.start()
    try:
        (inc_id,) = await fire(intake, "Stop")
        inc = await store.get_incident(inc_id)
    finally:
        await runner.stop()
        await store.close()
    assert [s.step_id for s in inc.steps] == ["slow"]
    assert inc.status == IncidentState.FAILED and inc.note == "stopped: step slow timeout"


async def test_unmatched_alerts_are_recorded_with_the_reason(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    store, runner, intake, _ = await make(tmp_path, redis_server.url)
    await runner.start()
    try:
        assert await fire(intake, "NobodyHandlesThis") == []
        assert await fire(intake, "Flow", job="postgres") == []
        incidents = await store.list_incidents()
    finally:
        await runner.stop()
        await store.close()
    notes = sorted(i.note for i in incidents)
    assert all(i.status == IncidentState.UNMATCHED for i in incidents)
    assert notes == [
        "no playbook handles alertname='NobodyHandlesThis'",
        "no target in the config matches the alert's labels",
    ]


async def test_unfinished_diagnostics_resume_after_a_restart(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync)
    store, runner, intake, _ = await make(tmp_path, redis_server.url)
    # Persisted, but the process "dies" before any worker picks the incident up.
    result = await intake.receive(Notification.model_validate(alert_payload("Flow")))
    await store.close()
    store, runner, intake, _ = await make(tmp_path, redis_server.url)
    await runner.start()
    try:
        await runner.drain()
        inc = await store.get_incident(result.new[0])
    finally:
        await runner.stop()
        await store.close()
    assert inc.status == IncidentState.DIAGNOSED and len(inc.steps) == 3


async def test_redis_going_away_is_an_error_per_step_not_a_crash(tmp_path: Path, make_redis: Any) -> None:
    server = make_redis()
    store, runner, intake, _ = await make(tmp_path, server.url)
    server.stop()
    await runner.start()
    try:
        (inc_id,) = await fire(intake, "Flow")
        inc = await store.get_incident(inc_id)
    finally:
        await runner.stop()
        await store.close()
    assert all(s.status in (StepStatus.ERROR, StepStatus.TIMEOUT) for s in inc.steps)
    assert "cannot reach Redis" in (inc.steps[0].error or "")

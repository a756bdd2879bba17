"""The runner: steps in order, timeouts and failures recorded, stop-or-continue, unmatched alerts, resume.

What the store records (step runs, unmatched alerts, a resume after a restart) is checked on both
backends (``database_line``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis

from bot.alerts import Notification
from bot.config import Config, load_config
from bot.engine import Engine
from bot.incidents import IncidentState, StepStatus
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


def make_config(tmp_path: Path, url: str, database_line: str = "") -> Config:
    pb = tmp_path / "playbooks"
    pb.mkdir(exist_ok=True)
    for name, text in PLAYBOOKS.items():
        (pb / name).write_text(text)
    path = tmp_path / "bot.yaml"
    path.write_text(
        f"targets:\n  - match: {{job: redis}}\n    url: {url}\nplaybooks: playbooks\nrunner: {{redis_timeout: 1s}}\n{database_line}"
    )
    return load_config(path)


@asynccontextmanager
async def running(
    tmp_path: Path, url: str, *, workers: bool = True, database_line: str = ""
) -> AsyncIterator[tuple[Engine, RecordingNotifier]]:
    """The engine as ``serve`` builds it (store, runner, intake); ``workers=False`` persists alerts
    without working on them, like a process that dies before a worker picks them up."""
    notifier = RecordingNotifier()
    async with Engine.open(make_config(tmp_path, url, database_line), notifier, workers=workers) as engine:  # type: ignore[arg-type]
        yield engine, notifier


async def fire(engine: Engine, alertname: str, **labels: str) -> list[int]:
    result = await engine.intake.receive(
        Notification.model_validate(alert_payload(alertname, labels=labels or None))
    )
    await engine.runner.drain()
    return result.new


async def test_steps_run_in_order_and_a_timeout_is_recorded(
    database_line: str, tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    async with running(tmp_path, redis_server.url, database_line=database_line) as (engine, notifier):
        (inc_id,) = await fire(engine, "Flow")
        inc = await engine.store.get_incident(inc_id)
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
    database_line: str, tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    async with running(tmp_path, redis_server.url, database_line=database_line) as (engine, _):
        (inc_id,) = await fire(engine, "Stop")
        inc = await engine.store.get_incident(inc_id)
    assert [s.step_id for s in inc.steps] == ["slow"]
    assert inc.status == IncidentState.FAILED and inc.note == "stopped: step slow timeout"


async def test_unmatched_alerts_are_recorded_with_the_reason(
    database_line: str, tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    async with running(tmp_path, redis_server.url, database_line=database_line) as (engine, _):
        assert await fire(engine, "NobodyHandlesThis") == []
        assert await fire(engine, "Flow", job="postgres") == []
        incidents = await engine.store.list_incidents()
    notes = sorted(i.note for i in incidents)
    assert all(i.status == IncidentState.UNMATCHED for i in incidents)
    assert notes == [
        "no playbook handles alertname='NobodyHandlesThis'",
        "no target in the config matches the alert's labels",
    ]


async def test_unfinished_diagnostics_resume_after_a_restart(
    database_line: str, tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync)
    # Persisted, but the process "dies" before any worker picks the incident up.
    async with running(tmp_path, redis_server.url, workers=False, database_line=database_line) as (engine, _):
        result = await engine.intake.receive(Notification.model_validate(alert_payload("Flow")))
        assert (await engine.store.get_incident(result.new[0])).status == IncidentState.NEW
    async with running(tmp_path, redis_server.url, database_line=database_line) as (engine, _):
        await engine.runner.drain()
        inc = await engine.store.get_incident(result.new[0])
    assert inc.status == IncidentState.DIAGNOSED and len(inc.steps) == 3


async def test_redis_going_away_is_an_error_per_step_not_a_crash(tmp_path: Path, make_redis: Any) -> None:
    server = make_redis()
    url = server.url
    server.stop()
    async with running(tmp_path, url) as (engine, _):
        (inc_id,) = await fire(engine, "Flow")
        inc = await engine.store.get_incident(inc_id)
    assert all(s.status in (StepStatus.ERROR, StepStatus.TIMEOUT) for s in inc.steps)
    assert "cannot reach Redis" in (inc.steps[0].error or "")

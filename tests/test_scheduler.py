"""Scheduled jobs in the running service: health probe (open, merge, resolve), approval expiry,
backup freshness, digest, and a failing job that is counted without stopping the scheduler. The
probe's incidents and the expiry job are checked on both stores (``database_line``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient

from bot.app import ENGINE, SCHEDULER, create_app
from bot.config import load_config
from bot.config_jobs import JobSchedule, cron_trigger
from bot.errors import ConfigError
from bot.incidents import ApprovalState, Incident, IncidentState
from bot.intake import PROBE_SOURCE
from bot.localstack import Alertmanager
from bot.scheduler import Scheduler
from bot.store import Store
from tests.conftest import RecordingNotifier, RedisServer, alert_payload, wait_for, write_config

FAST_PROBE = """\
scheduler:
  health_probe: {every: 200ms, timeout: 500ms, failures: 2}
  approval_expiry: {enabled: false}
  backup_check: {enabled: false}
  digest: {enabled: false}
"""


async def start_app(
    aiohttp_client: Any, tmp_path: Path, url: str, extra: str = FAST_PROBE, database_line: str = ""
) -> TestClient:
    cfg = load_config(write_config(tmp_path, url, extra + database_line))
    return await aiohttp_client(create_app(cfg, notifier=RecordingNotifier(), webhook_token=""))  # type: ignore[no-any-return]


def store_of(client: TestClient) -> Store:
    """The store of the one engine the app built (the scheduler's jobs act through that engine)."""
    return client.app[ENGINE].store


def scheduler_of(client: TestClient) -> Scheduler:
    return client.app[SCHEDULER]


def job_runs(client: TestClient, job: str, outcome: str = "ok") -> float:
    """How often a scheduled job has finished so far (its ``job_runs_total`` counter): the positive
    signal that a scheduler run happened, for tests that check that a run did *not* do something."""
    value: float = scheduler_of(client).metrics.job_runs.labels(job, outcome)._value.get()
    return value


async def probe_runs(client: TestClient, n: int) -> None:
    """Wait for ``n`` more complete health-probe runs (each records its findings before it ends)."""
    start = job_runs(client, "health_probe")
    await wait_for(lambda: job_runs(client, "health_probe") >= start + n, timeout=10)


async def incidents(client: TestClient) -> list[Incident]:
    return await store_of(client).list_incidents(limit=100, steps=True)


async def probe_incident(client: TestClient) -> Incident | None:
    return next((i for i in await incidents(client) if i.source == PROBE_SOURCE), None)


def when(predicate: Callable[[Incident], bool]) -> Callable[[TestClient], Any]:
    async def check(client: TestClient) -> Incident | None:
        inc = await probe_incident(client)
        return inc if inc is not None and predicate(inc) else None

    return check


# -- the health probe --------------------------------------------------------------------------------


async def test_probe_opens_and_resolves_redis_down(
    database_line: str, aiohttp_client: Any, tmp_path: Path, make_redis: Any
) -> None:
    server: RedisServer = make_redis()
    client = await start_app(aiohttp_client, tmp_path, server.url, database_line=database_line)
    await probe_runs(client, 3)  # one more than the 2 failures that would open RedisDown
    assert await incidents(client) == [], "a healthy target opens nothing"

    await asyncio.to_thread(server.stop)
    opened = await wait_for(lambda: when(lambda i: i.status == IncidentState.FAILED)(client), timeout=10)
    assert opened.alertname == "RedisDown" and opened.alert_status == "firing"
    assert opened.playbook == "redis-down" and opened.target == f"127.0.0.1:{server.port}/0"
    assert opened.fingerprint == f"probe:{opened.target}"
    assert opened.labels["job"] == "redis", "the target's match labels ride along (selectors)"
    assert "did not answer 2 PINGs in a row" in opened.annotations["summary"]
    assert opened.steps[0].step_id == "ping" and opened.steps[0].status == "error", "the playbook ran"
    await probe_runs(client, 3)  # more failed PINGs than it takes to open an incident
    assert len(await incidents(client)) == 1, "still down: no second incident"
    notifier = client.app[SCHEDULER].notifier.inner
    assert any(i.id == opened.id for i in notifier.of("opened"))

    await asyncio.to_thread(server.start)
    resolved = await wait_for(lambda: when(lambda i: i.alert_status == "resolved")(client), timeout=10)
    assert resolved.id == opened.id and resolved.status == IncidentState.RESOLVED
    metrics = client.app[SCHEDULER].metrics
    assert metrics.probe_up.labels(opened.target)._value.get() == 1
    assert metrics.call_errors.labels("redis")._value.get() >= 2


async def test_alertmanager_redisdown_merges_into_the_probe_incident(
    database_line: str, aiohttp_client: Any, tmp_path: Path, make_redis: Any
) -> None:
    """A real Alertmanager delivers RedisDown for the target the probe already reported."""
    server: RedisServer = make_redis()
    client = await start_app(aiohttp_client, tmp_path, server.url, database_line=database_line)
    await asyncio.to_thread(server.stop)
    probe = await wait_for(lambda: when(lambda i: i.status != IncidentState.NEW)(client), timeout=10)

    am = Alertmanager(tmp_path / "am", webhook_url=str(client.make_url("/alerts")))
    with am:
        labels = {
            "alertname": "RedisDown",
            "job": "redis",
            "instance": "127.0.0.1:9121",
            "severity": "critical",
        }
        starts = datetime.now(UTC) - timedelta(minutes=1)
        am.post_alerts([{"labels": labels, "startsAt": starts.isoformat()}])
        merged = await wait_for(lambda: first(client, source="alertmanager"), timeout=10)
        assert merged.status == IncidentState.UNMATCHED and merged.steps == []
        assert (
            merged.note
            == f"merged into incident #{probe.id}, which the bot's health probe opened for {probe.target}"
        )
        open_ones = [i for i in await incidents(client) if i.status != IncidentState.UNMATCHED]
        assert [i.id for i in open_ones] == [probe.id], "one incident for one outage"

        await asyncio.to_thread(server.start)
        await wait_for(lambda: when(lambda i: i.status == IncidentState.RESOLVED)(client), timeout=10)
        am.post_alerts(
            [{"labels": labels, "startsAt": starts.isoformat(), "endsAt": datetime.now(UTC).isoformat()}]
        )
        done = await wait_for(
            lambda: first(client, source="alertmanager", predicate=lambda i: i.alert_status == "resolved"),
            timeout=10,
        )
        assert done.id == merged.id
    assert len(await incidents(client)) == 2


async def first(
    client: TestClient, *, source: str, predicate: Callable[[Incident], bool] = lambda i: True
) -> Incident | None:
    return next((i for i in await incidents(client) if i.source == source and predicate(i)), None)


async def test_probe_joins_an_alertmanager_incident(
    database_line: str, aiohttp_client: Any, tmp_path: Path, make_redis: Any
) -> None:
    server: RedisServer = make_redis()
    client = await start_app(aiohttp_client, tmp_path, server.url, database_line=database_line)
    await asyncio.to_thread(server.stop)
    resp = await client.post("/alerts", json=alert_payload("RedisDown", fingerprint="am-down"))
    am_id = (await resp.json())["new_incidents"][0]
    store = store_of(client)

    async def audited(kind: str) -> bool:
        return any(e.kind == kind for e in await store.list_audit(incident_id=am_id))

    await wait_for(lambda: audited("probe.down"), timeout=10)
    assert [i.id for i in await incidents(client)] == [am_id], "the probe opened nothing of its own"
    await asyncio.to_thread(server.start)
    await wait_for(lambda: audited("probe.recovered"), timeout=10)
    inc = await store.get_incident(am_id)
    assert inc.alert_status == "firing", "Alertmanager's incident is Alertmanager's to resolve"


async def test_probe_sweeps_its_incident_left_from_a_restart(
    database_line: str, aiohttp_client: Any, tmp_path: Path, make_redis: Any
) -> None:
    server: RedisServer = make_redis()
    cfg_extra = FAST_PROBE
    first_app = await start_app(aiohttp_client, tmp_path, server.url, cfg_extra, database_line=database_line)
    await asyncio.to_thread(server.stop)
    left = await wait_for(lambda: when(lambda i: i.status != IncidentState.NEW)(first_app), timeout=10)
    await first_app.close()
    await asyncio.to_thread(server.start)
    again = await start_app(aiohttp_client, tmp_path, server.url, cfg_extra, database_line=database_line)
    swept = await wait_for(lambda: when(lambda i: i.alert_status == "resolved")(again), timeout=10)
    assert swept.id == left.id


# -- approval expiry, backups, digest -----------------------------------------------------------------

EVICT = """\
name: evict-test
match: {alertname: TestEvict}
steps:
  - {id: evict, run: redis.evict, with: {pattern: "agent:*"}}
"""


async def test_approval_expiry_job(
    database_line: str,
    aiohttp_client: Any,
    tmp_path: Path,
    redis_server: RedisServer,
    redis_sync: redis.Redis,
) -> None:
    redis_sync.set("agent:1", "x")
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "evict.yaml").write_text(EVICT)
    extra = (
        "playbooks: playbooks\napprovals: {ttl: 1s}\n"
        "scheduler:\n  health_probe: {enabled: false}\n  approval_expiry: {every: 200ms}\n"
    )
    client = await start_app(aiohttp_client, tmp_path, redis_server.url, extra, database_line=database_line)
    resp = await client.post("/alerts", json=alert_payload("TestEvict"))
    inc_id = (await resp.json())["new_incidents"][0]
    store = store_of(client)

    async def expired() -> bool:
        return (await store.get_incident(inc_id, steps=False)).status == IncidentState.DIAGNOSED

    await wait_for(expired, timeout=10)
    inc = await store.get_incident(inc_id)
    assert inc.note == "approval for evict expired" and inc.pending_step is None
    assert inc.steps[-1].status == "expired"
    assert client.app[SCHEDULER].metrics.approvals.labels(str(ApprovalState.EXPIRED))._value.get() == 1
    assert redis_sync.exists("agent:1"), "nothing ran"


async def test_backup_check_warns_once_and_when_healthy_again(
    aiohttp_client: Any, tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    extra = "scheduler:\n  health_probe: {enabled: false}\n  backup_check: {cron: '0 0 1 1 *', max_age: 1s}\n"
    client = await start_app(aiohttp_client, tmp_path, redis_server.url, extra)
    sched = scheduler_of(client)
    notices = sched.notifier.inner
    lastsave = redis_sync.lastsave()

    def save_age() -> float:  # as the backup check computes it (Redis keeps whole seconds)
        return time.time() - int(redis_sync.info("persistence")["rdb_last_save_time"])

    # The last save (at least the server's start) older than max_age: the job compares the age
    # rounded to whole seconds, so wait until it rounds to more than 1 s.
    await wait_for(lambda: save_age() >= 1.6, timeout=10)
    await sched.backups.run()
    await sched.backups.run()
    warnings = [t for lvl, t in notices.of("notice") if lvl == "warning"]
    assert len(warnings) == 1, "warned once, not on every run"
    assert warnings[0].startswith(
        f"Backups of 127.0.0.1:{redis_server.port}/0: backup not fresh: last snapshot"
    )

    sched.backups.cfg = sched.backups.cfg.model_copy(update={"max_age": 3600.0})
    redis_sync.bgsave()
    await wait_for(lambda: redis_sync.lastsave() != lastsave, timeout=10)
    await sched.backups.run()
    assert notices.of("notice")[-1][0] == "info" and "healthy again" in notices.of("notice")[-1][1]


async def test_digest(
    aiohttp_client: Any, tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    redis_sync.set("k", "v")
    redis_sync.get("k")
    redis_sync.get("missing")
    extra = "scheduler:\n  health_probe: {enabled: false}\n  digest: {cron: '0 9 * * 1-5', period: 24h}\n"
    client = await start_app(aiohttp_client, tmp_path, redis_server.url, extra)
    await client.post("/alerts", json=alert_payload("NoSuchPlaybook"))
    text = await scheduler_of(client).send_digest()
    lines = text.splitlines()
    assert lines[0].startswith("Digest of the last 24 h (since ")
    assert lines[1] == "- incidents: 1 (NoSuchPlaybook 1); now unmatched 1; 0 still open"
    assert lines[2] == "- actions: 0 executed (0 ok, 0 failed), 0 keys deleted"
    assert lines[3].startswith("- approvals: 0 asked;")
    assert lines[4].startswith(f"- 127.0.0.1:{redis_server.port}/0: hit rate 50.0%, memory peak ")
    assert lines[4].endswith("(Redis, since its start)")
    assert ("info", text) in scheduler_of(client).notifier.inner.of("notice")


# -- the scheduler itself -----------------------------------------------------------------------------


async def test_failing_job_is_counted_and_the_scheduler_keeps_running(
    aiohttp_client: Any,
    tmp_path: Path,
    redis_server: RedisServer,
    redis_sync: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failing job is logged and counted and runs again at its next time; the other jobs go on;
    a run still busy at the job's next time makes that time be skipped (max_instances=1). The test
    waits for those runs to happen, however slowly the machine schedules them."""
    extra = "scheduler:\n  health_probe: {enabled: false}\n"
    client = await start_app(aiohttp_client, tmp_path, redis_server.url, extra)
    sched = scheduler_of(client)
    assert set(sched.job_ids()) == {"approval_expiry", "backup_check", "digest", "leadership"}
    ticks: list[float] = []
    release = asyncio.Event()

    async def boom() -> None:
        raise RuntimeError("this job always fails")

    async def tick() -> None:
        ticks.append(time.monotonic())

    slow_started: list[float] = []

    async def slow() -> None:
        slow_started.append(time.monotonic())
        await release.wait()  # busy until the test has seen a later time of it skipped

    every = JobSchedule(every=0.1)
    sched.add("boom", boom, every)
    sched.add("tick", tick, every)
    sched.add("slow", slow, every)

    # boom fails and runs again; the other jobs go on beside it.
    await wait_for(lambda: job_runs(client, "boom", "error") >= 2, timeout=10)
    await wait_for(lambda: len(ticks) >= 2 and job_runs(client, "tick") >= 2, timeout=10)
    await wait_for(lambda: job_runs(client, "slow", "skipped") >= 1, timeout=10)
    assert job_runs(client, "slow") == 0, "the first run of slow is still busy"
    assert len(slow_started) == 1, "max_instances=1: no second run while the first one is busy"
    release.set()
    await wait_for(lambda: job_runs(client, "slow") >= 1, timeout=10)
    assert sched.running

    failed = [
        r.getMessage()
        for r in caplog.records
        if r.name == "bot.scheduler"
        and r.levelname == "ERROR"
        and "scheduled job boom failed" in r.getMessage()
    ]
    assert len(failed) >= 2, "every failed run is logged"
    assert failed[0] == (
        "scheduled job boom failed (it runs again at its next time): RuntimeError: this job always fails"
    )
    body = await (await client.get("/metrics")).text()
    assert 'remediation_bot_scheduler_job_runs_total{job="boom",outcome="error"}' in body
    assert 'remediation_bot_scheduler_job_runs_total{job="slow",outcome="skipped"}' in body


async def test_scheduler_off_and_on(aiohttp_client: Any, tmp_path: Path, redis_server: RedisServer) -> None:
    off = await start_app(aiohttp_client, tmp_path, redis_server.url, "scheduler: {enabled: false}\n")
    assert SCHEDULER not in off.app
    (tmp_path / "on").mkdir()
    on = await start_app(aiohttp_client, tmp_path / "on", redis_server.url, "")
    assert set(scheduler_of(on).job_ids()) == {
        "health_probe",
        "approval_expiry",
        "backup_check",
        "digest",
        "leadership",
    }


# -- config ------------------------------------------------------------------------------------------


def test_cron_uses_crontab_weekdays() -> None:
    # APScheduler 3's own from_crontab would read 1-5 as Tuesday..Saturday.
    assert str(cron_trigger("0 9 * * 1-5").fields[4]) == "mon,tue,wed,thu,fri"
    assert str(cron_trigger("0 9 * * 0").fields[4]) == "sun"
    assert str(cron_trigger("0 9 * * 7").fields[4]) == "sun"
    assert str(cron_trigger("0 9 * * sat,sun").fields[4]) == "sun,sat"
    nxt = cron_trigger("0 9 * * 1").get_next_fire_time(
        None, datetime(2026, 11, 25, tzinfo=UTC)
    )  # a Wednesday
    assert nxt is not None and nxt.weekday() == 0 and nxt.day == 30


def test_scheduler_config_problems_are_all_reported(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "redis://127.0.0.1:6379/0",
        "scheduler:\n  timezone: Mars/Olympus\n  digest: {cron: '0 9 * *'}\n"
        "  backup_check: {cron: '0 * * * *', every: 5m}\n  health_probe: {failures: 0}\n"
        "prometheus: {url: 'prometheus:9090', selector: '{job=\"redis\"}'}\n",
    )
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    text = str(exc.value)
    assert "6 problems found" in text
    for expected in (
        "scheduler.timezone: unknown time zone 'Mars/Olympus'",
        "scheduler.digest.cron: expected 5 fields (minute hour day month weekday), got 4",
        "scheduler.backup_check: give either cron or every, not both",
        "scheduler.health_probe.failures: Input should be greater than or equal to 1",
        "prometheus.url: must start with http:// or https://",
        'prometheus.selector: write the matchers without braces, e.g. instance="{{ labels.instance }}"',
    ):
        assert expected in text, text

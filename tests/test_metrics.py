"""GET /metrics: the bot's own metrics are exposed, count what happened, and stay per app."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from bot.app import RUNNER, STORE, create_app
from bot.config import load_config
from bot.engine import Engine
from bot.incidents import IncidentState
from bot.logs import JsonFormatter
from bot.store import open_store
from tests.conftest import (
    RecordingNotifier,
    RedisServer,
    alert_payload,
    free_port,
    person,
    wait_for,
    write_config,
)

PLAYBOOK = """\
name: metrics-test
match: {alertname: TestMetrics}
steps:
  - {id: ping, run: redis.ping}
  - {id: trend, run: prometheus.query, with: {query: up}}
  - {id: evict, run: redis.evict, with: {pattern: "agent:*"}}
  - {id: check, run: redis.verify_key_count, with: {pattern: "agent:*", max: 0, within: 5s}}
"""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain; version=")
    return samples(await resp.text())


@pytest.fixture
async def client(
    aiohttp_client: Any, tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> TestClient:
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "m.yaml").write_text(PLAYBOOK)
    cfg = load_config(
        write_config(tmp_path, redis_server.url, "playbooks: playbooks\nscheduler: {enabled: false}\n")
    )
    return await aiohttp_client(create_app(cfg, notifier=RecordingNotifier(), webhook_token="tok"))  # type: ignore[no-any-return]


async def test_metrics_count_alerts_steps_approvals_actions(
    client: TestClient, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    for i in range(25):
        redis_sync.set(f"agent:{i}", "x")
    auth = {"Authorization": "Bearer tok"}
    assert (await client.post("/alerts", json=alert_payload("TestMetrics"))).status == 401
    resp = await client.post("/alerts", json=alert_payload("TestMetrics", fingerprint="m1"), headers=auth)
    inc_id = (await resp.json())["new_incidents"][0]
    store = client.app[STORE]

    async def waiting() -> bool:
        return (await store.get_incident(inc_id, steps=False)).status == IncidentState.AWAITING_APPROVAL

    await wait_for(waiting, timeout=10)
    report = await client.app[RUNNER].decide(inc_id, person("alice"), True)
    assert report.executed
    assert (await store.get_incident(inc_id, steps=False)).status == IncidentState.VERIFIED

    found = await scrape(client)
    assert value(found, "remediation_bot_alerts_received_total", status="firing", source="alertmanager") == 1
    assert value(found, "remediation_bot_webhook_request_seconds_count", code="200") == 1
    assert value(found, "remediation_bot_webhook_request_seconds_count", code="401") == 1
    assert value(found, "remediation_bot_step_runs_total", type="redis.ping", outcome="ok") == 1
    assert value(found, "remediation_bot_step_runs_total", type="prometheus.query", outcome="skipped") == 1
    assert value(found, "remediation_bot_step_runs_total", type="redis.evict", outcome="ok") == 1
    assert value(found, "remediation_bot_step_runs_total", type="redis.verify_key_count", outcome="ok") == 1
    assert value(found, "remediation_bot_step_duration_seconds_count", type="redis.ping") == 1
    assert value(found, "remediation_bot_approvals_total", outcome="approved") == 1
    assert value(found, "remediation_bot_approval_decision_seconds_count") == 1
    assert value(found, "remediation_bot_actions_executed_total", type="redis.evict", outcome="ok") == 1
    assert value(found, "remediation_bot_keys_deleted_total") == 25
    assert value(found, "remediation_bot_incidents", state="verified") == 1
    assert value(found, "remediation_bot_incidents", state="new") == 0
    target = f"127.0.0.1:{redis_server.port}/0"
    assert value(found, "remediation_bot_circuit_breaker_open", target=target) == 0
    for service in ("slack", "redis", "prometheus"):
        assert ("remediation_bot_call_errors_total", (("service", service),)) in found, "zero, but present"


async def test_each_app_has_its_own_registry(aiohttp_client: Any, client: TestClient, tmp_path: Path) -> None:
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    cfg = load_config(
        write_config(other_dir, f"redis://127.0.0.1:{free_port()}/0", "scheduler: {enabled: false}\n")
    )
    other = await aiohttp_client(create_app(cfg, webhook_token=""))
    await other.post("/alerts", json=alert_payload("NoPlaybookHere"))
    assert (
        value(
            await scrape(other),
            "remediation_bot_alerts_received_total",
            status="firing",
            source="alertmanager",
        )
        == 1
    )
    assert (
        value(
            await scrape(client),
            "remediation_bot_alerts_received_total",
            status="firing",
            source="alertmanager",
        )
        == 0
    )


async def test_redis_errors_are_counted(aiohttp_client: Any, tmp_path: Path) -> None:
    cfg = load_config(
        write_config(
            tmp_path,
            f"redis://127.0.0.1:{free_port()}/0",
            "runner: {redis_timeout: 1s}\nscheduler: {enabled: false}\n",
        )
    )
    client = await aiohttp_client(create_app(cfg, webhook_token=""))
    inc_id = (await (await client.post("/alerts", json=alert_payload("RedisDown"))).json())["new_incidents"][
        0
    ]

    async def failed() -> bool:
        return (await client.app[STORE].get_incident(inc_id, steps=False)).status == IncidentState.FAILED

    await wait_for(failed, timeout=10)
    found = await scrape(client)
    assert value(found, "remediation_bot_call_errors_total", service="redis") == 1
    assert value(found, "remediation_bot_step_runs_total", type="redis.ping", outcome="error") == 1
    assert value(found, "remediation_bot_incidents", state="failed") == 1


async def test_runner_logs_carry_incident_ids(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A step that was running when the bot died: the restart's warning names the incident."""
    cfg = load_config(write_config(tmp_path, redis_server.url))
    from bot.alerts import Alert
    from bot.store import IngestItem

    alert = Alert.model_validate(
        {"status": "firing", "labels": {"alertname": "X"}, "startsAt": "2026-01-01T00:00:00Z"}
    )
    store = await open_store(cfg.state_file)  # the state a process left when it died mid-step
    inc_id = await store.open_incident(IngestItem(alert, "redis-memory-high", "t", 0))
    await store.start_step(inc_id, 0, "evict", "redis.evict", True)
    await store.close()
    with caplog.at_level(logging.WARNING, logger="bot.runner"):
        async with Engine(cfg):  # the restart
            pass
    record = next(r for r in caplog.records if "interrupted" in r.getMessage())
    line = json.loads(JsonFormatter().format(record))
    assert line["incident"] == inc_id and line["level"] == "warning"

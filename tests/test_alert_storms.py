"""Alert storms (issue 10, item 10), against a real redis-server and the webhook on a real socket.

An alert of the same playbook on the same target as an open incident joins it (state ``merged``,
``merged_into`` the open one, whose ``alert_count`` goes up): one diagnosis, one approval card,
like Alertmanager's own grouping. The run queue is fair across targets and bounded per target;
an incident that does not fit is closed with a note saying so. The README's claims about this are
listed with these tests in ``tests/test_safety_model.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient

from bot.alerts import Alert, Notification
from bot.app import RUNNER, STORE, create_app
from bot.config import Config, load_config
from bot.engine import Engine
from bot.incidents import IncidentState, StepStatus
from bot.runner.core import QUEUE_PER_TARGET
from bot.runner.queue import FairQueue
from bot.store import IngestItem
from tests.conftest import RecordingNotifier, RedisServer, alert_payload, seed_platform, wait_for

TOKEN = "storm-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STORM = """\
name: storm-test
match: {alertname: TestStorm}
steps:
  - {id: report, run: redis.memory_report, with: {top: 5}}
  - {id: evict, run: redis.evict, with: {pattern: "agent:*"}}
"""
OTHER = """\
name: other-test
match: {alertname: TestOther}
steps:
  - {id: ping, run: redis.ping}
"""
ALERTS = 2_000


def storm_config(tmp_path: Path, url: str, extra: str = "") -> Config:
    """Two targets on one redis-server (db 0 and db 1, so two names and two queues), two playbooks."""
    pb = tmp_path / "playbooks"
    pb.mkdir()
    (pb / "storm.yaml").write_text(STORM)
    (pb / "other.yaml").write_text(OTHER)
    db1 = url.rsplit("/", 1)[0] + "/1"
    path = tmp_path / "bot.yaml"
    path.write_text(
        f"targets:\n  - match: {{job: redis}}\n    url: {url}\n  - match: {{job: redis-b}}\n    url: {db1}\n"
        f"playbooks: playbooks\nscheduler: {{enabled: false}}\n{extra}"
    )
    return load_config(path)


def storm(n: int, *, first: int = 0, job: str = "redis", alertname: str = "TestStorm") -> dict[str, Any]:
    """One Alertmanager notification carrying ``n`` alerts of one group: same alert name and target,
    each its own series (a ``pod`` label, so its own fingerprint)."""
    base = alert_payload(alertname, labels={"job": job})
    template = base["alerts"][0]
    alerts = [
        {
            **template,
            "labels": {**template["labels"], "pod": f"worker-{i}"},
            "fingerprint": f"storm-{alertname}-{job}-{i:05d}",
        }
        for i in range(first, first + n)
    ]
    return {**base, "alerts": alerts}


def scans(r: redis.Redis) -> int:
    """SCAN calls Redis has served since the stats were reset (``INFO commandstats``)."""
    stats: dict[str, Any] = r.info("commandstats")
    return int(stats.get("cmdstat_scan", {}).get("calls", 0))


@pytest.fixture
async def storm_app(
    aiohttp_client: Any,
    tmp_path: Path,
    redis_server: RedisServer,
    redis_sync: redis.Redis,
    database_line: str,
) -> tuple[TestClient[Any, Any], RecordingNotifier]:
    """The service on each backend (storms are joined by the store's ingest)."""
    seed_platform(redis_sync, agents=300)
    notifier = RecordingNotifier()
    app = create_app(
        storm_config(tmp_path, redis_server.url, database_line), notifier=notifier, webhook_token=TOKEN
    )
    client: TestClient[Any, Any] = await aiohttp_client(app)
    return client, notifier


async def settled(client: TestClient[Any, Any], inc_id: int) -> IncidentState:
    """Wait until the runner has nothing queued and the incident is no longer being diagnosed."""
    await client.app[RUNNER].drain()

    async def state() -> IncidentState | None:
        inc = await client.app[STORE].get_incident(inc_id, steps=False)
        return None if inc.status in (IncidentState.NEW, IncidentState.DIAGNOSING) else inc.status

    result: IncidentState = await wait_for(state, timeout=30)
    return result


# -- one notification, 2,000 alerts -------------------------------------------------------------


async def test_two_thousand_alerts_in_one_notification_are_one_incident_one_diagnosis_one_card(
    storm_app: tuple[TestClient[Any, Any], RecordingNotifier], redis_sync: redis.Redis
) -> None:
    client, notifier = storm_app
    scans_before = scans(redis_sync)
    resp = await client.post("/alerts", json=storm(ALERTS), headers=AUTH)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["accepted"] == ALERTS
    (parent,) = body["new_incidents"]
    assert body["joined"] == {str(parent): ALERTS - 1}, "the answer says where the others went"
    assert await settled(client, parent) == IncidentState.AWAITING_APPROVAL

    store = client.app[STORE]
    incidents = await store.list_incidents(limit=ALERTS + 10, steps=False)
    assert len(incidents) == ALERTS, "every alert is on record"
    head = await store.get_incident(parent)
    assert head.alert_count == ALERTS
    merged = [i for i in incidents if i.id != parent]
    assert {(i.status, i.merged_into) for i in merged} == {(IncidentState.MERGED, parent)}
    assert {i.note for i in merged} == {f"joined incident #{parent} (same playbook and target)"}

    # One diagnosis: the parent's steps ran once each, nothing else ran; Redis saw one run's SCANs.
    assert [(s.step_id, s.status) for s in head.steps] == [
        ("report", StepStatus.OK),
        ("evict", StepStatus.AWAITING_APPROVAL),
    ]
    for i in merged[:50]:
        assert not (await store.get_incident(i.id)).steps
    assert 0 < scans(redis_sync) - scans_before <= 6, "one memory report and one eviction plan"
    # One approval card, one thread; the thread is told the count.
    assert len(notifier.of("approval")) == 1
    assert [i.id for i in notifier.of("opened")] == [parent]
    await wait_for(lambda: any(i.id == parent and i.alert_count == ALERTS for i in notifier.of("updated")))


async def test_a_later_alert_joins_the_open_incident_and_after_it_resolves_a_new_one_opens(
    storm_app: tuple[TestClient[Any, Any], RecordingNotifier],
) -> None:
    client, notifier = storm_app
    store = client.app[STORE]
    first = await (await client.post("/alerts", json=storm(3), headers=AUTH)).json()
    (parent,) = first["new_incidents"]
    assert await settled(client, parent) == IncidentState.AWAITING_APPROVAL

    later = await (await client.post("/alerts", json=storm(1, first=10), headers=AUTH)).json()
    assert later["new_incidents"] == [] and later["joined"] == {str(parent): 1}
    assert (await store.get_incident(parent, steps=False)).alert_count == 4
    # Another target's alert of the same playbook is not absorbed: it is its own incident (db 1 has
    # no agent keys, so its diagnosis ends without an approval).
    other = await (await client.post("/alerts", json=storm(1, job="redis-b"), headers=AUTH)).json()
    assert len(other["new_incidents"]) == 1 and other["joined"] == {}
    assert await settled(client, other["new_incidents"][0]) == IncidentState.DIAGNOSED

    resolved = storm(1)
    resolved["alerts"][0] = {**resolved["alerts"][0], "status": "resolved", "endsAt": "2026-11-25T20:00:00Z"}
    gone = await (await client.post("/alerts", json=resolved, headers=AUTH)).json()
    assert gone["resolved_incidents"] == [parent]
    assert (await store.get_incident(parent, steps=False)).status == IncidentState.RESOLVED
    assert (await store.pending_approval(parent)) is None, "its approval card was closed with it"

    again = await (await client.post("/alerts", json=storm(1, first=20), headers=AUTH)).json()
    assert len(again["new_incidents"]) == 1 and again["joined"] == {}
    assert await settled(client, again["new_incidents"][0]) == IncidentState.AWAITING_APPROVAL
    assert [a.incident_id for a in notifier.of("approval")] == [parent, again["new_incidents"][0]]


# -- the run queue: fair across targets, bounded per target ----------------------------------------


def test_fair_queue_takes_targets_in_turn_and_bounds_each() -> None:
    q = FairQueue(per_target=3)
    assert [q.put("a", i) for i in (1, 2, 3, 4)] == [True, True, True, False], "a's bound is 3"
    assert q.put("a", 2), "an incident already queued is not queued twice (and not refused)"
    assert q.put("b", 10) and q.put("c", 20) and q.put("b", 11)
    assert q.queued("a") == 3 and q.queued("b") == 2

    async def drain() -> list[int]:
        order = []
        for _ in range(6):
            order.append(await q.get())
            q.task_done()
        await q.join()
        return order

    assert asyncio.run(drain()) == [1, 10, 20, 2, 11, 3], "round-robin: nobody waits behind a backlog"
    assert q.put("a", 4), "room again once a's queue drained"


def item(config: Config, alertname: str, playbook: str, job: str, fingerprint: str) -> IngestItem:
    alert = Alert.model_validate(
        alert_payload(alertname, fingerprint=fingerprint, labels={"job": job})["alerts"][0]
    )
    index = next(i for i, t in enumerate(config.targets) if t.matches(alert.labels))
    return IngestItem(alert, playbook, config.targets[index].target_name(alert.labels), index, "", "test")


async def test_a_new_target_is_run_before_another_targets_backlog_drains(
    database_line: str, tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    """30 incidents queued for target A (hand-started, so none merges), then one for B; one worker.
    The order the runner starts them (its step runs, in id order) puts B second, not 31st."""
    config = storm_config(tmp_path, redis_server.url, "runner: {concurrency: 1}\n" + database_line)
    async with Engine.open(config, RecordingNotifier(), workers=False) as engine:
        backlog = [
            await engine.store.open_incident(item(config, "TestOther", "other-test", "redis", f"a{i}"))
            for i in range(30)
        ]
        newcomer = await engine.store.open_incident(item(config, "TestOther", "other-test", "redis-b", "b0"))
        a = await engine.store.get_incident(backlog[0], steps=False)
        b = await engine.store.get_incident(newcomer, steps=False)
        assert a.target != b.target
        for inc_id in backlog:
            assert engine.runner.submit(inc_id, a.target or "")
        assert engine.runner.submit(newcomer, b.target or "")
        await engine.runner.start()  # the workers start on a loaded queue
        await engine.runner.drain()
        started: list[int] = []
        for inc in sorted(await engine.store.list_incidents(limit=100), key=lambda i: i.steps[0].id):
            started.append(inc.id)
    assert started[:2] == [backlog[0], newcomer], started
    assert started[2:] == backlog[1:], "A's backlog keeps its own order"


async def test_an_incident_beyond_the_per_target_bound_is_closed_with_a_note(
    database_line: str, tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    config = storm_config(tmp_path, redis_server.url, database_line)
    notifier = RecordingNotifier()
    async with Engine.open(config, notifier, workers=False) as engine:
        for i in range(QUEUE_PER_TARGET):
            inc_id = await engine.store.open_incident(
                item(config, "TestOther", "other-test", "redis", f"q{i}")
            )
            assert engine.runner.submit(
                inc_id, (await engine.store.get_incident(inc_id, steps=False)).target or ""
            )
        # A's queue is full: a new alert of another playbook for A opens an incident that cannot queue.
        result = await engine.intake.receive(Notification.model_validate(storm(1)))
        (overflow,) = result.new

        async def closed() -> Any:
            inc = await engine.store.get_incident(overflow, steps=False)
            return inc if inc.status == IncidentState.FAILED else None

        inc = await wait_for(closed)
        assert inc.note == f"not run: too many incidents already queued for {inc.target}"
        await wait_for(
            lambda: any(i.id == overflow and i.status == IncidentState.FAILED for i in notifier.of("updated"))
        )
        # The bound is per target: B's alert queues as usual.
        b = await engine.intake.receive(Notification.model_validate(storm(1, job="redis-b")))
        (b_id,) = b.new
        assert (await engine.store.get_incident(b_id, steps=False)).status == IncidentState.NEW


def test_the_alert_count_is_shown_in_the_thread_and_on_the_console() -> None:
    """People see how many alerts an incident stands for: the Slack card and the console line."""
    import io
    import json

    from bot.chat.console import ConsoleNotifier
    from bot.chat.slack_card import incident_message
    from bot.incidents import Incident

    inc = Incident(
        id=7,
        fingerprint="f",
        starts_at="2026-11-25T19:39:47Z",
        alertname="RedisMemoryUsageHigh",
        alert_status="firing",
        status=IncidentState.DIAGNOSING,
        target="t:1/0",
        playbook="redis-memory-high",
        alert_count=2000,
    )
    _, blocks = incident_message(inc)
    assert "2,000 alerts joined" in json.dumps(blocks)
    out = io.StringIO()
    asyncio.run(ConsoleNotifier(stream=out).incident_updated(inc))
    assert "(2,000 alerts)" in out.getvalue()
    _, single = incident_message(inc.model_copy(update={"alert_count": 1}))
    assert "alerts joined" not in json.dumps(single)

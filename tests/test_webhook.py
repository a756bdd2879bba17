"""POST /alerts: status codes, persistence before 200, dedupe (also concurrent), resolved updates.

The service tests run on both backends (``client`` takes the parametrised ``database_line`` of
``tests/pg.py``); the group-commit tests at the end are about the SQLite store's own mechanism.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.app import ENGINE, STORE, create_app
from bot.config import Config, load_config
from bot.incidents import IncidentState
from bot.store import SQLiteStore, open_store
from tests.conftest import RecordingNotifier, alert_payload, load_fixture_payloads, wait_for, write_config

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client(aiohttp_client: Any, config_path: Path, database_line: str) -> TestClient:
    """The service on SQLite, then on PostgreSQL (the ``database_url`` line of the config)."""
    config_path.write_text(config_path.read_text() + database_line)
    app = create_app(load_config(config_path), notifier=RecordingNotifier(), webhook_token=TOKEN)
    return await aiohttp_client(app)


@pytest.fixture
async def sqlite_client(aiohttp_client: Any, config: Config) -> TestClient:
    """The service on the default SQLite store, for tests that reach into that store."""
    app = create_app(config, notifier=RecordingNotifier(), webhook_token=TOKEN)
    return await aiohttp_client(app)


async def incidents(client: TestClient) -> list[Any]:
    return await client.app[STORE].list_incidents(limit=1000)


async def test_real_alertmanager_payloads_are_accepted(client: TestClient) -> None:
    for payload in load_fixture_payloads():
        resp = await client.post("/alerts", json=payload, headers=AUTH)
        assert resp.status == 200, await resp.text()
    incs = await incidents(client)
    by_name = {i.alertname: i for i in incs}
    assert set(by_name) == {"RedisMemoryUsageHigh", "RedisDown"}
    assert by_name["RedisMemoryUsageHigh"].alert_status == "resolved"
    assert by_name["RedisDown"].alert_status == "firing"
    assert by_name["RedisDown"].labels["instance"] == "127.0.0.1:9121"


async def test_answer_comes_after_persisting(client: TestClient, database_url: str) -> None:
    resp = await client.post("/alerts", json=alert_payload("RedisHitRateLow"), headers=AUTH)
    body = await resp.json()
    assert resp.status == 200 and body["accepted"] == 1 and len(body["new_incidents"]) == 1
    # A separate connection to the store sees the incident at once: it was committed before the answer.
    other = await open_store(database_url)
    try:
        inc = await other.get_incident(body["new_incidents"][0], steps=False)
        assert inc.alertname == "RedisHitRateLow"
    finally:
        await other.close()


async def test_repeats_create_no_new_incident_or_work(client: TestClient) -> None:
    payload = alert_payload("RedisLatencyHigh")
    first = await (await client.post("/alerts", json=payload, headers=AUTH)).json()
    for _ in range(3):
        again = await (await client.post("/alerts", json=payload, headers=AUTH)).json()
        assert again["new_incidents"] == [] and again["duplicates"] == 1
    assert len(await incidents(client)) == 1
    await wait_for(lambda: _done(client, first["new_incidents"][0]), timeout=20)
    steps_before = len((await client.app[STORE].get_incident(first["new_incidents"][0])).steps)
    late = await (await client.post("/alerts", json=payload, headers=AUTH)).json()
    assert late["new_incidents"] == [] and late["duplicates"] == 1
    # Work is queued before the answer: once the runner's queue is drained, a re-run would be done.
    await client.app[ENGINE].runner.drain()
    assert len((await client.app[STORE].get_incident(first["new_incidents"][0])).steps) == steps_before


async def _done(client: TestClient, inc_id: int) -> bool:
    inc = await client.app[STORE].get_incident(inc_id, steps=False)
    return inc.status not in (IncidentState.NEW, IncidentState.DIAGNOSING)


async def test_concurrent_duplicate_deliveries_make_exactly_one_incident(client: TestClient) -> None:
    payload = alert_payload("RedisHitRateLow", fingerprint="concurrent01")
    responses = await asyncio.gather(*(client.post("/alerts", json=payload, headers=AUTH) for _ in range(20)))
    bodies = [await r.json() for r in responses]
    assert all(r.status == 200 for r in responses)
    assert sum(len(b["new_incidents"]) for b in bodies) == 1
    assert sum(b["duplicates"] for b in bodies) == 19
    assert len(await incidents(client)) == 1


async def test_same_fingerprint_new_start_is_a_new_incident(client: TestClient) -> None:
    first = alert_payload("RedisDown", fingerprint="f1")
    later = alert_payload("RedisDown", fingerprint="f1", starts_at="2026-11-25T21:00:00Z")
    both = {**first, "alerts": [*first["alerts"], *later["alerts"]]}
    body = await (await client.post("/alerts", json=both, headers=AUTH)).json()
    # Recorded on its own, but while the first incident is open it joins it (one diagnosis). In
    # one notification, so the first cannot have finished already (its playbook is quick).
    (opened,) = body["new_incidents"]
    assert body["joined"] == {str(opened): 1}
    assert len(await incidents(client)) == 2
    resolved = alert_payload("RedisDown", "resolved", fingerprint="f1")
    await client.post("/alerts", json=resolved, headers=AUTH)
    again = alert_payload("RedisDown", fingerprint="f1", starts_at="2026-11-25T22:00:00Z")
    body = await (await client.post("/alerts", json=again, headers=AUTH)).json()
    assert len(body["new_incidents"]) == 1
    assert len(await incidents(client)) == 3


async def test_mixed_group_firing_and_resolved(client: TestClient) -> None:
    fire = alert_payload("RedisHitRateLow", fingerprint="g1")
    await client.post("/alerts", json=fire, headers=AUTH)
    resolved = alert_payload("RedisHitRateLow", "resolved", fingerprint="g1")["alerts"][0]
    other = alert_payload("RedisLatencyHigh", fingerprint="g2")["alerts"][0]
    group = {**fire, "alerts": [resolved, other]}
    body = await (await client.post("/alerts", json=group, headers=AUTH)).json()
    assert len(body["resolved_incidents"]) == 1 and len(body["new_incidents"]) == 1
    inc = await client.app[STORE].get_incident(body["resolved_incidents"][0], steps=False)
    assert inc.alert_status == "resolved" and inc.status == IncidentState.RESOLVED
    assert inc.ends_at is not None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"version":"4","alerts":[', "body is not valid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"version": "4"}', "alerts: Field required"),
        (b'{"version": "3", "alerts": []}', "unsupported webhook version '3'"),
        (
            b'{"version": "4", "alerts": [{"status": "firing", "labels": {"a": "b"}}]}',
            "alerts[0].startsAt: Field required",
        ),
        (
            b'{"version": "4", "alerts": [{"status": "burning", "labels": {"a": "b"}, "startsAt": "2026-01-01T00:00:00Z"}]}',
            "alerts[0].status: Input should be 'firing' or 'resolved'",
        ),
        (b"\xff\xfe", "body is not valid JSON"),
        (
            b'{"version": "4", "alerts": [{"status": "firing", "labels": {"a": "b"}, "startsAt": "9999-12-31T23:59:59-05:00"}]}',
            "timestamp out of range",
        ),
    ],
)
async def test_malformed_payloads_get_400_with_a_reason(client: TestClient, body: bytes, reason: str) -> None:
    resp = await client.post("/alerts", data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status == 400
    assert reason in (await resp.json())["error"]


async def test_unknown_fields_are_ignored(client: TestClient) -> None:
    payload = alert_payload("RedisDown", fingerprint="u1")
    payload["futureField"] = {"x": 1}
    payload["alerts"][0]["silencedBy"] = ["abc"]
    resp = await client.post("/alerts", json=payload, headers=AUTH)
    assert resp.status == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}],
)
async def test_bad_or_missing_token_gets_401(client: TestClient, headers: dict[str, str]) -> None:
    resp = await client.post("/alerts", json=alert_payload("RedisDown"), headers=headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert await incidents(client) == []


async def test_oversized_body_gets_413(client: TestClient) -> None:
    big = io.BytesIO(json.dumps({"x": "a" * (8 * 1024 * 1024)}).encode())
    resp = await client.post("/alerts", data=big, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status == 413


async def test_store_failure_gets_503_so_alertmanager_retries(sqlite_client: TestClient) -> None:
    """(PostgreSQL down: ``tests/test_store_contract.py``.)"""
    client = sqlite_client
    store = client.app[STORE]
    conn = store._conn
    assert conn is not None
    await store._run(conn.execute, "PRAGMA query_only = ON")  # the disk refuses writes
    try:
        resp = await client.post("/alerts", json=alert_payload("RedisDown", fingerprint="s1"), headers=AUTH)
        assert resp.status == 503
        assert "retry" in (await resp.json())["error"]
    finally:
        await store._run(conn.execute, "PRAGMA query_only = OFF")
    resp = await client.post("/alerts", json=alert_payload("RedisDown", fingerprint="s1"), headers=AUTH)
    assert resp.status == 200


async def test_no_token_configured_means_open(aiohttp_client: Any, config: Config) -> None:
    client = await aiohttp_client(create_app(config, webhook_token=""))
    resp = await client.post("/alerts", json=alert_payload("RedisDown"))
    assert resp.status == 200


async def test_unreachable_redis_does_not_delay_the_answer(aiohttp_client: Any, tmp_path: Path) -> None:
    from tests.conftest import free_port

    cfg = load_config(
        write_config(tmp_path, f"redis://127.0.0.1:{free_port()}/0", "runner: {redis_timeout: 1s}\n")
    )
    client = await aiohttp_client(create_app(cfg, webhook_token=""))
    t0 = time.monotonic()
    body = await (await client.post("/alerts", json=alert_payload("RedisDown"))).json()
    assert time.monotonic() - t0 < 1.0
    inc_id = body["new_incidents"][0]
    await wait_for(lambda: _done(client, inc_id), timeout=15)
    inc = await client.app[STORE].get_incident(inc_id)
    assert inc.status == IncidentState.FAILED
    assert inc.steps[0].status == "error"
    assert "cannot reach Redis" in (inc.steps[0].error or "")


async def test_healthz_and_readyz(client: TestClient) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["playbooks"] == 5


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
alertish = st.fixed_dictionaries(
    {
        "version": st.sampled_from(["4", "3", 4]),
        "alerts": st.lists(
            st.fixed_dictionaries(
                {
                    "status": st.sampled_from(["firing", "resolved", "x"]),
                    "labels": st.dictionaries(
                        st.sampled_from(["alertname", "job", "instance"]), st.text(max_size=10)
                    ),
                    "startsAt": st.sampled_from(
                        ["2026-11-25T19:39:47.888Z", "0001-01-01T00:00:00Z", "garbage", ""]
                    ),
                    "fingerprint": st.text(max_size=8),
                },
                optional={"endsAt": st.text(max_size=30), "annotations": json_values},
            )
            | json_values,  # not an alert at all, beside valid ones
            max_size=3,
        ),
    },
    optional={"status": json_values, "groupKey": json_values},
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | alertish.map(lambda v: json.dumps(v).encode())
)
async def test_no_input_gives_a_5xx(client: TestClient, body: bytes) -> None:
    resp = await client.post("/alerts", data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status in (200, 400), (resp.status, await resp.text())
    if resp.status == 200:  # every alert is either stored or rejected with a reason
        answer = await resp.json()
        assert answer["accepted"] + len(answer["rejected"]) == len(json.loads(body)["alerts"]), answer


# -- the store's group commit -----------------------------------------------------------------------


def _item(fingerprint: str, status: str = "firing", alertname: str = "RedisHitRateLow") -> Any:
    from bot.alerts import Alert
    from bot.store import IngestItem

    raw = alert_payload(alertname, status, fingerprint=fingerprint)["alerts"][0]
    # One target per alert: these tests are about group commit, not about alerts joining.
    return IngestItem(Alert.model_validate(raw), "redis-hit-rate-low", f"t-{fingerprint}:1/0", 0)


async def _hold_store_thread(store: SQLiteStore, calls: int) -> asyncio.Future[None]:
    """Keep the store's thread busy until ``calls`` ingest calls wait for it, so they are committed
    together (group commit); returns the hold, done once the thread is free again."""
    started = asyncio.Event()
    release = threading.Event()
    loop = asyncio.get_running_loop()

    def block() -> None:
        loop.call_soon_threadsafe(started.set)
        release.wait(timeout=30)  # bounded: a test that never releases fails, it does not hang

    async def hold() -> None:
        held = asyncio.ensure_future(store._run(block))
        await started.wait()
        try:
            await wait_for(lambda: len(store._ingest_queue) >= calls, timeout=10)
        finally:
            release.set()
            await held

    task = asyncio.ensure_future(hold())
    await started.wait()
    return task


async def test_concurrent_ingests_commit_together_each_with_its_own_result(tmp_path: Path) -> None:
    store = await SQLiteStore(tmp_path / "s.sqlite3").open()
    try:
        (known,) = (await store.ingest([_item("known")])).new
        before = store.ingest_transactions
        held = await _hold_store_thread(store, 23)
        calls = [store.ingest([_item(f"n{i}a"), _item(f"n{i}b")]) for i in range(20)] + [
            store.ingest([_item("known"), _item("n3a")]),  # both already stored by then
            store.ingest([_item("twice"), _item("twice")]),  # a repeat within one notification
            store.ingest([_item("n5b", "resolved")]),  # resolves what the same group opened
        ]
        results = await asyncio.gather(*calls)
        await held
        assert store.ingest_transactions == before + 1
        for i, r in enumerate(results[:20]):
            assert len(r.new) == 2 and r.duplicates == 0 and r.resolved == [], i
        new_ids = [n for r in results[:20] for n in r.new]
        assert new_ids == sorted(new_ids) and new_ids[0] > known  # arrival order
        assert results[20].new == [] and results[20].duplicates == 2
        assert len(results[21].new) == 1 and results[21].duplicates == 1
        assert results[22].resolved == [results[5].new[1]]
        incs = {i.fingerprint: i for i in await store.list_incidents(limit=100, steps=False)}
        assert len(incs) == 1 + 40 + 1
        assert incs["n5b"].alert_status == "resolved"
        received = [e for e in await store.list_audit(limit=1000) if e.kind == "alert.received"]
        assert len(received) == 1 + 40 + 2 + 2 + 1
        dups = [e.detail["fingerprint"] for e in received if e.detail["duplicate"]]
        assert sorted(dups) == ["known", "n3a", "twice"]
    finally:
        await store.close()


async def test_one_failing_notification_does_not_fail_its_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from bot.errors import StoreError

    store = await SQLiteStore(tmp_path / "s.sqlite3").open()
    real = SQLiteStore._resolve_alert

    def refuse_bad(self: SQLiteStore, conn: Any, it: Any, now: float, result: Any) -> Any:
        if it.alert.fingerprint == "bad":
            raise sqlite3.OperationalError("disk I/O error")
        return real(self, conn, it, now, result)

    monkeypatch.setattr(SQLiteStore, "_resolve_alert", refuse_bad)
    try:
        held = await _hold_store_thread(store, 3)
        calls = [
            store.ingest([_item("g1")]),
            store.ingest([_item("bad", "resolved")]),
            store.ingest([_item("g2")]),
        ]
        ok1, bad, ok2 = await asyncio.gather(*calls, return_exceptions=True)
        await held
        assert isinstance(bad, StoreError) and "disk I/O error" in str(bad)
        assert not isinstance(ok1, BaseException) and len(ok1.new) == 1
        assert not isinstance(ok2, BaseException) and len(ok2.new) == 1
        assert sorted(i.fingerprint for i in await store.list_incidents(steps=False)) == ["g1", "g2"]
    finally:
        await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.ingest([_item("late")])

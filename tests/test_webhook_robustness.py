"""Slow and bad requests on ``POST /alerts``: answered quickly and precisely, never held open, never 5xx.

What each test guarantees (the README's webhook lines point here):

- a stalled request body is answered 408 within ``server.body_timeout`` (``serve``, raw socket)
- a client that never finishes its request headers is disconnected after ``server.header_timeout``
  (``serve``, raw socket dribbling header bytes), and so is an idle keep-alive connection
- one invalid alert in a notification rejects only that alert: the others are stored, the answer is
  200 with the rejected alert's index, fingerprint and reason (also counted in ``/metrics``)
- a notification whose every alert is invalid is a 400 that lists each reason
- a label value that cannot build a target URL (``127.0.0.1:99999``) stores the alert unmatched with
  a note, never a 4xx or 5xx; a configured URL with such a port is a config problem
- no alert or label value gives a 5xx, and every alert is either stored or rejected (Hypothesis)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.app import STORE, create_app
from bot.config import Config, ServerConfig, TargetConfig, load_config
from bot.errors import TargetError
from bot.incidents import IncidentState
from bot.localstack import RedisServer
from tests.conftest import RecordingNotifier, alert_payload, free_port, write_config

ROOT = Path(__file__).resolve().parent.parent
BAD_TIME = "2026-13-45T99:00:00Z"


def notification(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {**alert_payload("RedisHitRateLow"), "alerts": list(alerts)}


def one_alert(fingerprint: str, **overrides: Any) -> dict[str, Any]:
    labels = overrides.pop("labels", None)
    payload = alert_payload("RedisHitRateLow", fingerprint=fingerprint, labels=labels)
    alert: dict[str, Any] = payload["alerts"][0]
    alert.update(overrides)
    return alert


# -- serve: timeouts on a real listening process ------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path, redis_server: RedisServer) -> Iterator[int]:
    """``python -m bot serve`` on a free port with short timeouts; stopped (by its pid) at the end."""
    cfg = write_config(
        tmp_path,
        redis_server.url,
        "server: {header_timeout: 1s, body_timeout: 2s}\nscheduler: {enabled: false}\n",
    )
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BOT_WEBHOOK_TOKEN": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "serve", "--config", str(cfg), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise AssertionError(f"serve did not become ready: {out}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def test_stalled_body_gets_408_within_the_body_timeout(served: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served)
    try:
        writer.write(
            b"POST /alerts HTTP/1.1\r\nHost: bot\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"version"'
        )
        await writer.drain()
        started = time.monotonic()
        async with asyncio.timeout(5):  # the answer must arrive, not the test's patience run out
            status, headers, body = await _read_response(reader)
        took = time.monotonic() - started
        assert status == 408, body
        assert "2s" in json.loads(body)["error"]
        assert headers.get("connection", "").lower() == "close"
        assert 1.5 < took < 5, took  # waited for the body (2 s), then answered
    finally:
        writer.close()


async def test_unfinished_headers_are_disconnected_after_the_header_timeout(served: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served)
    writer.write(b"POST /alerts HTTP/1.1\r\nHost: bot\r\n")
    started = time.monotonic()
    closed_after = None
    try:
        # A slowloris: one more header line every 0.2 s, never the blank line that ends them.
        for i in range(25):
            try:
                data = await asyncio.wait_for(reader.read(1024), 0.2)
            except TimeoutError:
                writer.write(f"X-Slow-{i}: y\r\n".encode())
                continue
            except ConnectionError:
                data = b""
            assert data == b"", data
            closed_after = time.monotonic() - started
            break
    finally:
        writer.close()
    assert closed_after is not None, "the server kept a never-ending request open for 5 s"
    assert 0.8 < closed_after < 3, closed_after
    # The server itself is fine: a normal request right after is answered.
    with urllib.request.urlopen(f"http://127.0.0.1:{served}/healthz", timeout=2) as resp:
        assert resp.status == 200


async def test_an_idle_keep_alive_connection_is_closed_after_the_header_timeout(served: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: bot\r\nConnection: keep-alive\r\n\r\n")
        status, _, _ = await _read_response(reader)
        assert status == 200
        answered = time.monotonic()
        async with asyncio.timeout(4):
            assert await reader.read() == b""
        assert 0.8 < time.monotonic() - answered < 3
    finally:
        writer.close()


def test_server_timeouts_default_to_5s_and_10s() -> None:
    assert ServerConfig().body_timeout == 5.0
    assert ServerConfig().header_timeout == 10.0


# -- per-alert validation ------------------------------------------------------------------------------


@pytest.fixture
async def client(aiohttp_client: Any, config: Config) -> TestClient:
    return await aiohttp_client(create_app(config, notifier=RecordingNotifier(), webhook_token=""))


async def _fingerprints(client: TestClient) -> dict[str, Any]:
    return {i.fingerprint: i for i in await client.app[STORE].list_incidents(limit=1000, steps=False)}


async def test_one_bad_alert_is_rejected_and_the_others_stored(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    payload = notification(one_alert("good1"), one_alert("badtime", startsAt=BAD_TIME), one_alert("good2"))
    with caplog.at_level(logging.WARNING, logger="bot.webhook"):
        resp = await client.post("/alerts", json=payload)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["status"] == "ok" and body["accepted"] == 2
    # Both stored; the second joins the first's open incident (same playbook and target).
    assert len(body["new_incidents"]) + sum(body["joined"].values()) == 2
    (rejected,) = body["rejected"]
    assert rejected["index"] == 1 and rejected["fingerprint"] == "badtime"
    assert rejected["reason"].startswith("startsAt: ")
    assert set(await _fingerprints(client)) == {"good1", "good2"}
    assert any("badtime" in r.getMessage() and "startsAt" in r.getMessage() for r in caplog.records)
    metrics = await (await client.get("/metrics")).text()
    assert 'remediation_bot_alerts_rejected_total{field="startsAt"} 1.0' in metrics


async def test_every_kind_of_broken_alert_is_rejected_alone(client: TestClient) -> None:
    broken = [
        one_alert("b-status", status="burning"),
        one_alert("b-labels", labels=None) | {"labels": {}},
        {k: v for k, v in one_alert("b-nostart").items() if k != "startsAt"},
        one_alert("b-range", startsAt="9999-12-31T23:59:59-05:00"),
        one_alert("b-type", labels=None) | {"labels": {"alertname": 5}},
        "not an alert",
        one_alert("b-fp") | {"fingerprint": ["x"]},
    ]
    payload = notification(one_alert("ok1"), *broken, one_alert("ok2"))
    body = await (await client.post("/alerts", json=payload)).json()
    assert body["accepted"] == 2, body
    assert [r["index"] for r in body["rejected"]] == list(range(1, len(broken) + 1))
    fingerprints = [r["fingerprint"] for r in body["rejected"]]
    assert fingerprints == ["b-status", "b-labels", "b-nostart", "b-range", "b-type", None, None]
    reasons = [r["reason"] for r in body["rejected"]]
    assert reasons[0].startswith("status: ") and reasons[2] == "startsAt: Field required"
    assert "timestamp out of range" in reasons[3] and reasons[4].startswith("labels.alertname: ")
    assert reasons[5].startswith("(alert): ") and reasons[6].startswith("fingerprint: ")
    assert set(await _fingerprints(client)) == {"ok1", "ok2"}


async def test_all_alerts_bad_is_a_400_with_every_reason(client: TestClient) -> None:
    payload = notification(one_alert("x1", startsAt=BAD_TIME), one_alert("x2", status="x"))
    resp = await client.post("/alerts", json=payload)
    body = await resp.json()
    assert resp.status == 400, body
    assert [(r["index"], r["fingerprint"]) for r in body["rejected"]] == [(0, "x1"), (1, "x2")]
    assert "alerts[0].startsAt" in body["error"] and "alerts[1].status" in body["error"]
    assert await _fingerprints(client) == {}


async def test_a_bad_envelope_is_still_a_400_for_the_whole_notification(client: TestClient) -> None:
    payload = {**notification(one_alert("e1"), one_alert("e2", startsAt=BAD_TIME)), "version": "3"}
    resp = await client.post("/alerts", json=payload)
    assert resp.status == 400
    assert "unsupported webhook version" in (await resp.json())["error"]
    assert await _fingerprints(client) == {}


# -- label values that cannot build a target URL --------------------------------------------------------


@pytest.fixture
def templated(tmp_path: Path, redis_server: RedisServer) -> Config:
    path = tmp_path / "bot.yaml"
    path.write_text(
        "targets:\n"
        "  - match: {job: redis}\n    url: 'redis://{{ labels.instance }}/0'\n    allowed_addresses: ['127.0.0.1:*']\n"
        "  - match: {job: split}\n    url: 'redis://{{ labels.host }}:{{ labels.port }}/0'\n    allowed_addresses: ['127.0.0.1:*']\n"
        "scheduler: {enabled: false}\n"
    )
    return load_config(path)


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ({"instance": "127.0.0.1:99999"}, "port 99999"),
        ({"instance": "127.0.0.1:0"}, "port 0"),
        ({"job": "split", "host": "127.0.0.1", "port": "70000"}, "port 70000"),
        ({"instance": "evil.example:6379/1"}, "not a plain host"),
    ],
)
def test_label_values_that_make_no_address_are_target_errors(
    templated: Config, labels: dict[str, str], reason: str
) -> None:
    full = {"job": "redis", **labels}
    target: TargetConfig = next(t for t in templated.targets if t.matches(full))
    with pytest.raises(TargetError, match=reason):
        target.target_name(full)


@pytest.fixture
async def templated_client(aiohttp_client: Any, templated: Config) -> TestClient:
    return await aiohttp_client(create_app(templated, notifier=RecordingNotifier(), webhook_token=""))


async def test_an_unusable_label_value_stores_the_alert_unmatched(
    templated_client: TestClient, redis_server: RedisServer
) -> None:
    client = templated_client
    good = {"instance": f"127.0.0.1:{redis_server.port}"}
    payload = notification(
        one_alert("lab1", labels=good),
        one_alert("lab-bad", labels={"instance": "127.0.0.1:99999"}),
        one_alert("lab2", labels=good),
    )
    resp = await client.post("/alerts", json=payload)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["accepted"] == 3 and body["rejected"] == [] and len(body["new_incidents"]) == 1
    incs = await _fingerprints(client)
    assert incs["lab-bad"].status == IncidentState.UNMATCHED
    assert "port 99999" in incs["lab-bad"].note
    assert incs["lab1"].target == f"127.0.0.1:{redis_server.port}/0"
    # lab2 is the same playbook on the same Redis: it joins lab1's open incident.
    assert body["new_incidents"] == [incs["lab1"].id] and body["joined"] == {str(incs["lab1"].id): 1}
    assert incs["lab2"].status == IncidentState.MERGED and incs["lab2"].merged_into == incs["lab1"].id


label_value = st.one_of(
    st.text(max_size=12),
    st.builds(
        "{}:{}".format,
        st.sampled_from(["127.0.0.1", "localhost", "a.b-c_d", "", "::1", "[::1]"]),
        st.one_of(st.integers(min_value=-5, max_value=200_000).map(str), st.text(max_size=6)),
    ),
)
garbage_alert = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["firing", "resolved", "x"]),
        "labels": st.fixed_dictionaries(
            {
                "alertname": st.sampled_from(["Nobody", "RedisHitRateLow"]),
                "job": st.sampled_from(["redis", "split"]),
            },
            optional={"instance": label_value, "host": label_value, "port": label_value},
        ),
        "startsAt": st.sampled_from(["2026-11-25T19:39:47.888Z", "0001-01-01T00:00:00Z", BAD_TIME, ""]),
    },
    optional={
        "fingerprint": st.text(max_size=8) | st.integers(),
        "endsAt": st.text(max_size=30),
        "annotations": st.dictionaries(st.text(max_size=5), st.text(max_size=5) | st.integers(), max_size=2),
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(alerts=st.lists(garbage_alert | st.integers() | st.text(max_size=5), min_size=1, max_size=4))
async def test_no_alert_or_label_value_gives_a_5xx(templated_client: TestClient, alerts: list[Any]) -> None:
    # A playbook's alertname only on resolved alerts: nothing is diagnosed, every label is resolved.
    for a in alerts:
        if isinstance(a, dict) and a["status"] == "firing":
            a["labels"]["alertname"] = "Nobody"
    resp = await templated_client.post("/alerts", json={"version": "4", "alerts": alerts})
    body = await resp.json()
    assert resp.status in (200, 400), body
    if resp.status == 200:
        assert body["accepted"] + len(body["rejected"]) == len(alerts), body
    else:
        assert len(body["rejected"]) == len(alerts), body


def test_a_configured_url_with_an_impossible_port_is_a_config_problem(tmp_path: Path) -> None:
    from bot.errors import ConfigError

    with pytest.raises(ConfigError, match=r"targets\[0\]\.url: .*port 99999 is not in 1-65535"):
        load_config(write_config(tmp_path, "redis://127.0.0.1:99999/0"))

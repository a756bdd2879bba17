"""Prometheus steps against a real Prometheus scraping a real redis_exporter for a real redis-server.

One stack per module (Prometheus needs ~5 s before its first scrape); tests that stop Prometheus
start their own, with queries that need no scrape.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import web

from bot.config import load_config
from bot.engine import Engine
from bot.errors import ConfigError
from bot.incidents import IncidentState, StepStatus
from bot.localstack import Prometheus, RedisExporter, Stack, http_get
from bot.playbook import load_playbooks
from bot.prom import PromClient, PrometheusQueryError, PrometheusUnavailable, render, template_problems
from bot.redisconn import RedisTarget
from bot.steps import REGISTRY, StepContext, StepOutput, prometheus_chart
from bot.steps import prometheus as promsteps
from bot.store import IngestItem
from tests.conftest import RecordingNotifier, RedisServer, wait_for, write_config


class PromStack:
    def __init__(self, redis_server: RedisServer, exporter: RedisExporter, prom: Prometheus) -> None:
        self.redis = redis_server
        self.exporter = exporter
        self.prom = prom
        self.selector = f'instance="{exporter.address}"'


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PromStack]:
    workdir = tmp_path_factory.mktemp("promstack")
    server = RedisServer(workdir / "redis")
    server.start()
    try:
        with Stack(workdir) as st:
            exporter = st.exporter(server.url)
            prom = st.prometheus(scrape=[exporter.address])
            # Three scrapes, so rates and ranges have data from the first test on.
            prom.wait_for_value(
                f'count_over_time(redis_up{{instance="{exporter.address}"}}[1m])',
                lambda v: v >= 3,
                timeout=30,
            )
            yield PromStack(server, exporter, prom)
    finally:
        server.stop()


@pytest.fixture
def rsync(stack: PromStack) -> Iterator[redis.Redis]:
    client = stack.redis.sync_client()
    client.flushall()
    client.config_set("maxmemory", 0)
    yield client
    client.config_set("maxmemory", 0)
    client.close()


@pytest.fixture
async def ctx(stack: PromStack, tmp_path: Path) -> AsyncIterator[StepContext]:
    client = PromClient(stack.prom.url, timeout=5.0)
    target = RedisTarget(name="test", url=stack.redis.url)
    yield StepContext(
        target=target,
        labels={"alertname": "Test", "instance": stack.exporter.address},
        settings={"chart_dir": str(tmp_path / "charts"), "incident_id": 7, "step_id": "chart"},
        prometheus=client,
    )
    await client.close()
    await target.close()


async def run(ctx: StepContext, name: str, **params: Any) -> StepOutput:
    st = REGISTRY[name]
    assert st.run is not None
    return await st.run(ctx, st.params.model_validate(params))


def _queries_answered(prom_url: str) -> float:
    """Instant queries this Prometheus has answered, from its own /metrics: how a test sees that a
    step is polling (every check of ``prometheus.verify`` is one instant query)."""
    status, body = http_get(prom_url + "/metrics")
    assert status == 200, f"Prometheus at {prom_url} did not serve /metrics"
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.decode().splitlines()
        if line.startswith("prometheus_http_requests_total{") and 'handler="/api/v1/query"' in line
    )


async def queries_answered(prom_url: str) -> float:
    return await asyncio.to_thread(_queries_answered, prom_url)


async def more_than(prom_url: str, count: float) -> bool:
    return await queries_answered(prom_url) > count


async def scraped_up_to_now(stack: PromStack, rsync: redis.Redis) -> bool:
    """True once Prometheus holds Redis's current hit and miss counters (the last scrape saw all
    the traffic so far): rates over a short window then cover exactly that traffic."""

    def check() -> bool:
        stats = rsync.info("stats")
        hits = stack.prom.value(f"redis_keyspace_hits_total{{{stack.selector}}}")
        misses = stack.prom.value(f"redis_keyspace_misses_total{{{stack.selector}}}")
        return (
            hits is not None
            and misses is not None
            and hits >= int(stats["keyspace_hits"])
            and misses >= int(stats["keyspace_misses"])
        )

    return await asyncio.to_thread(check)


# -- the query step ---------------------------------------------------------------------------------


async def test_query_instant_with_label_templates(ctx: StepContext) -> None:
    out = await run(
        ctx, "prometheus.query", query='redis_up{instance="{{ labels.instance }}"}', title="redis_up"
    )
    assert out.status == "ok" and out.summary == "redis_up: 1"
    assert out.data["result"][0]["labels"]["instance"] == ctx.labels["instance"]

    out = await run(ctx, "prometheus.query", query="redis_connected_clients{{ selector }}", warn_above=0)
    assert out.status == "warning", "at least the exporter is connected, so above 0 warns"

    out = await run(ctx, "prometheus.query", query='redis_up{instance="nowhere:1"}')
    assert out.status == "warning" and out.summary.startswith("no data")


async def test_query_range(ctx: StepContext) -> None:
    out = await run(
        ctx, "prometheus.query", query="redis_up{{ selector }}", range="20s", step="1s", title="up"
    )
    assert out.status == "ok", out.summary
    series = out.data["series"]
    assert len(series) == 1 and series[0]["last"] == 1 and series[0]["min"] == 1
    assert len(series[0]["points"]) >= 3
    assert out.summary.startswith("up: 1 now, min 1, max 1")


async def test_query_problems_are_clear(ctx: StepContext) -> None:
    with pytest.raises(PrometheusQueryError, match=r"Prometheus rejected the query: .*parse error"):
        await run(ctx, "prometheus.query", query="redis_up{{ selector }} +")
    # An incident without the label the selector needs (e.g. the health probe's) skips the step.
    bare = StepContext(target=ctx.target, labels={"alertname": "RedisDown"}, prometheus=ctx.prometheus)
    out = await run(bare, "prometheus.query", query="redis_up{{ selector }}")
    assert out.status == "skipped" and "'instance'" in out.summary


# -- built-in diagnostics -----------------------------------------------------------------------------


async def test_overview_all_sections(ctx: StepContext, rsync: redis.Redis) -> None:
    out = await run(ctx, "prometheus.redis_overview", window="10s")
    assert set(out.data) >= {"up", "memory", "hit_ratio", "clients", "latency"}
    assert out.data["up"]["redis_up"] == 1
    assert out.data["clients"]["connected"] >= 1
    assert out.data["memory"]["used_bytes"] > 0 and out.data["memory"]["max_bytes"] == 0
    assert out.data["latency"]["commands_per_s"] > 0, "the exporter's own INFO calls are commands"
    assert "redis_up 1" in out.details


async def test_memory_trend_and_time_to_full(ctx: StepContext, stack: PromStack, rsync: redis.Redis) -> None:
    used = int(rsync.info("memory")["used_memory"])
    limit = used + 400 * 1024 * 1024
    rsync.config_set("maxmemory", limit)
    stack.prom.wait_for_value(f"redis_memory_max_bytes{{{stack.selector}}}", lambda v: v == limit)
    chunk = "x" * (256 * 1024)
    stop = threading.Event()

    def fill() -> None:  # about 10 MiB/s, steadily
        i = 0
        while not stop.is_set():
            rsync.set(f"fill:{i}", chunk)
            i += 1
            time.sleep(0.025)

    async def growing() -> StepOutput | None:
        """The step's answer once Prometheus has seen the writer's growth over the window."""
        out = await run(ctx, "prometheus.redis_overview", sections=["memory"], window="5s", horizon="1h")
        return out if (out.data["memory"].get("growth_bytes_per_hour") or 0) > 10 * 1024**3 else None

    writer = threading.Thread(target=fill, daemon=True)
    writer.start()
    try:
        out: StepOutput = await wait_for(growing, timeout=20, interval=0.5)
    finally:
        stop.set()
        writer.join()
    mem = out.data["memory"]
    # ~10 MiB/s is ~35 GiB/h; the 400 MiB headroom fills within a minute or so, well inside 1 h.
    assert 10 * 1024**3 < mem["growth_bytes_per_hour"] < 100 * 1024**3, mem
    assert mem["time_to_full_s"] is not None and 2 < mem["time_to_full_s"] < 200, mem
    assert mem["full_within_horizon"] is True
    assert out.status == "warning" and "full in ~" in out.summary
    assert "predict_linear over 5.0s" in out.details


async def test_keys_without_ttl_growth_comes_from_prometheus(
    ctx: StepContext, stack: PromStack, rsync: redis.Redis
) -> None:
    """Growth needs an earlier reading: redis_exporter's redis_db_keys minus redis_db_keys_expiring,
    from the oldest point of the window to the newest."""
    without_ttl = f"sum(redis_db_keys{{{stack.selector}}} - redis_db_keys_expiring{{{stack.selector}}})"
    rsync.mset({f"user:{i}": "x" for i in range(100)})
    rsync.set("agent:ttl", "x", ex=600)
    await asyncio.to_thread(stack.prom.wait_for_value, without_ttl, lambda v: v == 100)
    since = time.time()  # Prometheus holds 100 keys without TTL as of now
    rsync.mset({f"user:{i}": "x" for i in range(100, 400)})

    async def grown() -> StepOutput | None:
        out = await run(ctx, "redis.keys_without_ttl", history=f"{time.time() - since:.3f}s")
        return out if out.data["growth"].get("to") == 400 else None

    out: StepOutput = await wait_for(grown, timeout=20, interval=0.5)
    growth = out.data["growth"]
    assert (growth["known"], growth["from"], growth["delta"]) == (True, 100, 300), growth
    assert "keys without TTL grew by 300 in" in out.summary and "(100 -> 400, Prometheus)" in out.summary

    before = await run(ctx, "redis.keys_without_ttl", history="1s", selector='instance="nowhere:1"')
    assert before.data["growth"]["known"] is False
    assert "growth unknown: Prometheus has no earlier reading of" in before.summary


async def test_hit_ratio(ctx: StepContext, stack: PromStack, rsync: redis.Redis) -> None:
    rsync.set("hot", "1")

    def traffic(hits: int, misses: int, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pipe = rsync.pipeline(transaction=False)
            for _ in range(hits):
                pipe.get("hot")
            for _ in range(misses):
                pipe.get("cold")
            pipe.execute()
            time.sleep(0.05)  # pacing: a steady mix over the whole window

    await asyncio.to_thread(traffic, 3, 1, 2.0)
    await wait_for(lambda: scraped_up_to_now(stack, rsync), timeout=10)
    out = await run(ctx, "prometheus.redis_overview", sections=["hit_ratio"], window="3s")
    ratio = out.data["hit_ratio"]["hit_ratio"]
    assert ratio is not None and abs(ratio - 0.75) < 0.06, out.data
    assert out.status == "ok" and out.summary.startswith("hit ratio 7")

    await asyncio.to_thread(traffic, 1, 3, 2.0)
    await wait_for(lambda: scraped_up_to_now(stack, rsync), timeout=10)
    out = await run(ctx, "prometheus.redis_overview", sections=["hit_ratio"], window="2s", hit_ratio_warn=0.5)
    ratio = out.data["hit_ratio"]["hit_ratio"]
    assert ratio is not None and ratio < 0.35, out.data
    assert out.status == "warning"


# -- verification ----------------------------------------------------------------------------------

RATIO = "redis_memory_used_bytes{{ selector }} / (redis_memory_max_bytes{{ selector }} > 0)"


async def test_verify_passes_when_the_condition_comes_to_hold(
    ctx: StepContext, stack: PromStack, rsync: redis.Redis
) -> None:
    used = int(rsync.info("memory")["used_memory"])
    rsync.config_set("maxmemory", int(used / 0.9))
    await asyncio.to_thread(
        stack.prom.wait_for_value, render(RATIO, ctx.labels, stack.selector), lambda v: v > 0.85
    )

    answered = await queries_answered(stack.prom.url)

    async def fix_it() -> None:  # the "action" (more headroom), once the first check saw the problem
        await wait_for(lambda: more_than(stack.prom.url, answered), timeout=10)
        rsync.config_set("maxmemory", used * 4)

    fixer = asyncio.create_task(fix_it())
    out = await run(
        ctx,
        "prometheus.verify",
        query=RATIO,
        below=0.8,
        within="15s",
        interval="250ms",
        title="memory ratio",
        unit="ratio",
    )
    await fixer
    assert out.status == "ok", out.summary
    assert out.summary.startswith("helped: memory ratio 2") and "(< 80.0%)" in out.summary
    assert out.data["verification"] is True and out.data["checks"] > 1


async def test_verify_fails_when_it_does_not_hold(
    ctx: StepContext, stack: PromStack, rsync: redis.Redis
) -> None:
    used = int(rsync.info("memory")["used_memory"])
    rsync.config_set("maxmemory", int(used / 0.9))
    await asyncio.to_thread(
        stack.prom.wait_for_value, render(RATIO, ctx.labels, stack.selector), lambda v: v > 0.85
    )
    t0 = time.monotonic()
    out = await run(
        ctx, "prometheus.verify", query=RATIO, below=0.8, within="2s", interval="500ms", unit="ratio"
    )
    assert time.monotonic() - t0 < 4
    assert out.status == "failed"
    assert out.summary.startswith("did not help: value still 8") or out.summary.startswith(
        "did not help: value still 9"
    )
    assert "after 2.0s (wanted < 80.0%)" in out.summary
    assert out.data["verification"] is True

    # A bare PromQL condition (a comparison filters): holds when anything is returned.
    out = await run(ctx, "prometheus.verify", query="redis_up{{ selector }} == 1", within="1s")
    assert out.status == "ok"


# -- Prometheus down or slow ----------------------------------------------------------------------------


async def test_prometheus_stopped_mid_run_is_a_clear_error(tmp_path: Path, redis_server: RedisServer) -> None:
    prom = Prometheus(tmp_path / "prom")  # scrapes nothing: vector() queries need no data
    with prom:
        client = PromClient(prom.url, timeout=3.0)
        errors: list[None] = []
        client.on_error = lambda: errors.append(None)
        ctx = StepContext(target=RedisTarget("t", redis_server.url), prometheus=client)
        answered = await queries_answered(prom.url)
        task = asyncio.create_task(
            run(ctx, "prometheus.verify", query="vector(1)", below=0, within="60s", interval="200ms")
        )
        await wait_for(lambda: more_than(prom.url, answered + 1), timeout=10)  # a second check
        assert not task.done(), "the verification is polling"
        t0 = time.monotonic()
        await asyncio.to_thread(prom.stop)
        with pytest.raises(PrometheusUnavailable) as exc:
            await asyncio.wait_for(task, timeout=10)
        assert time.monotonic() - t0 < 5, "no hang, no long retry loop"
        assert str(exc.value) == f"cannot reach Prometheus at {prom.url}: Connection refused"
        assert errors, "failed calls are reported (the bot's metrics count them)"
        await client.close()


async def test_slow_prometheus_times_out(redis_server: RedisServer) -> None:
    """A server that accepts connections but never answers: the call ends at the timeout."""
    with socket.socket() as sink:
        sink.bind(("127.0.0.1", 0))
        sink.listen(16)
        url = f"http://127.0.0.1:{sink.getsockname()[1]}"
        client = PromClient(url, timeout=1.0)
        ctx = StepContext(target=RedisTarget("t", redis_server.url), prometheus=client)
        t0 = time.monotonic()
        with pytest.raises(PrometheusUnavailable, match=r"did not answer a query within 1\.0s"):
            await run(ctx, "prometheus.query", query="up")
        assert time.monotonic() - t0 < 3.5
        await client.close()


async def test_runner_degrades_only_the_prometheus_step(tmp_path: Path, redis_server: RedisServer) -> None:
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    dead = port.getsockname()[1]
    port.close()
    pbdir = tmp_path / "playbooks"
    pbdir.mkdir()
    (pbdir / "p.yaml").write_text(
        "name: p\nmatch: {alertname: PromDown}\nsteps:\n"
        "  - {id: trend, run: prometheus.redis_overview, with: {sections: [memory]}}\n"
        "  - {id: ping, run: redis.ping, with: {threshold_ms: 1000}}\n"  # ok even on a loaded machine
    )
    cfg = load_config(
        write_config(
            tmp_path,
            redis_server.url,
            f"playbooks: playbooks\nprometheus: {{url: 'http://127.0.0.1:{dead}', timeout: 2s}}\n",
        )
    )
    async with Engine(cfg, notifier=RecordingNotifier(), workers=False) as engine:  # type: ignore[arg-type]
        from bot.alerts import Alert

        alert = Alert.model_validate(
            {
                "status": "firing",
                "labels": {"alertname": "PromDown", "instance": "x:9121"},
                "startsAt": "2026-01-01T00:00:00Z",
            }
        )
        inc_id = await engine.store.open_incident(IngestItem(alert, "p", cfg.targets[0].resolve({}).name, 0))
        inc = await engine.runner.run_incident(inc_id)
    trend, ping = inc.steps
    assert trend.status == StepStatus.ERROR
    assert trend.summary == f"cannot reach Prometheus at http://127.0.0.1:{dead}: Connection refused"
    assert ping.status == StepStatus.OK and inc.status == IncidentState.DIAGNOSED
    assert engine.metrics.call_errors.labels("prometheus")._value.get() >= 1


# -- no Prometheus, charts ------------------------------------------------------------------------------


async def test_without_prometheus_every_step_is_skipped(redis_server: RedisServer) -> None:
    ctx = StepContext(target=RedisTarget("t", redis_server.url))
    for name, params in (
        ("prometheus.query", {"query": "up"}),
        ("prometheus.redis_overview", {}),
        ("prometheus.verify", {"query": "up", "below": 1}),
        ("prometheus.chart", {"query": "up"}),
    ):
        out = await run(ctx, name, **params)
        assert out.status == "skipped" and out.summary == promsteps.NO_PROMETHEUS
        assert "verification" not in out.data, "a skipped check never counts as 'did not help'"


async def test_chart_png(ctx: StepContext, tmp_path: Path) -> None:
    out = await run(
        ctx,
        "prometheus.chart",
        query="redis_connected_clients{{ selector }}",
        range="30s",
        title="clients",
        threshold=5,
    )
    assert out.status == "ok", out.summary
    path = Path(out.data["chart_path"])
    assert path.parent == tmp_path / "charts" and path.name.startswith("incident-7-chart-")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert out.summary.startswith("chart of clients, ") and "of data" in out.summary
    assert len(set(out.data["ticks"])) == len(out.data["ticks"]) >= 2, out.data["ticks"]


async def test_chart_without_matplotlib_says_so(ctx: StepContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prometheus_chart, "charts_available", lambda: False)
    out = await run(ctx, "prometheus.chart", query="up")
    assert out.status == "skipped" and "pip install redis-remediation-bot" in out.summary
    assert "chart_path" not in out.data


# -- templates, validation, auth --------------------------------------------------------------------


def test_templates_escape_and_validate() -> None:
    labels = {"instance": 'we"ird\\host:9121'}
    assert render('up{instance="{{ labels.instance }}"}', labels) == 'up{instance="we\\"ird\\\\host:9121"}'
    assert render("up{{ selector }}", labels, 'job="redis"') == 'up{job="redis"}'
    assert render("up{{ selector }}", labels, "") == "up"
    assert template_problems("up{{ label.x }}") == [
        "unknown template '{{ label.x }}': use {{ labels.NAME }} or {{ selector }}"
    ]
    with pytest.raises(PrometheusQueryError, match="needs the alert label 'job'"):
        render("{{ labels.job }}", labels)


def test_bad_templates_are_reported_when_playbooks_load(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "name: p\nmatch: {alertname: X}\nsteps:\n"
        "  - {id: a, run: prometheus.query, with: {query: 'up{{ lables.x }}'}}\n"
        "  - {id: b, run: prometheus.verify, with: {query: up, above: 2, below: 1}}\n"
    )
    with pytest.raises(ConfigError) as exc:
        load_playbooks(tmp_path)
    text = str(exc.value)
    assert "p.yaml: steps[0].with.query: unknown template '{{ lables.x }}'" in text
    assert "p.yaml: steps[1].with: above (2.0) must be less than below (1.0)" in text


async def test_credentials_come_from_the_environment(aiohttp_server: Any) -> None:
    seen: list[str] = []

    async def query(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") == "Bearer wrong":
            return web.json_response({"status": "error", "error": "unauthorized"}, status=401)
        return web.json_response(
            {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "42"]}}
        )

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    server = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")

    bearer = PromClient.from_env(url, env={"PROMETHEUS_BEARER_TOKEN": "t0ken"})
    assert await bearer.value("42") == 42.0
    basic = PromClient.from_env(url, env={"PROMETHEUS_USERNAME": "bot", "PROMETHEUS_PASSWORD": "pw"})
    assert await basic.value("42") == 42.0
    assert seen == ["Bearer t0ken", "Basic Ym90OnB3"]
    wrong = PromClient.from_env(url, env={"PROMETHEUS_BEARER_TOKEN": "wrong"})
    with pytest.raises(
        PrometheusUnavailable, match=r"refused our credentials \(HTTP 401\); set PROMETHEUS_BEARER_TOKEN"
    ):
        await wrong.value("42")
    for c in (bearer, basic, wrong):
        await c.close()

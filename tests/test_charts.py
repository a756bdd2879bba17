"""Charts people can read: the rendered image checked pixel by pixel, and the PNG's way into Slack.

The picture tests render real PNGs with matplotlib and read them back (Pillow): the line's colour
must cover the plot area from side to side at 30 seconds, an hour and two days of data, the tick
labels must all differ, and a lone point must still show. The end-to-end test runs the real service
with a real Prometheus (``vector(...)`` needs no scrape, so it has an hour of data at once) and the
Slack fake: the chart goes into the incident's thread with ``files.getUploadURLExternal``, the
upload, then ``files.completeUploadExternal``, and the chart drawn after an approved action marks
when the alert fired and when the action ran. The console prints the PNG's path.
"""

from __future__ import annotations

import asyncio
import base64
import html
import io
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from aiohttp.test_utils import TestClient
from PIL import Image

from bot.alerts import Notification
from bot.app import create_app
from bot.charts import (
    ACTION_COLOR,
    ALERT_COLOR,
    LINE_COLORS,
    MAX_CHART_BYTES,
    ChartInfo,
    Line,
    Mark,
    chart_bytes,
    render_png,
)
from bot.chat.console import ConsoleNotifier
from bot.chat.slack_settings import SlackSettings
from bot.config import load_config
from bot.engine import Engine
from bot.incidents import IncidentState, StepStatus
from bot.localstack import Prometheus, Stack
from bot.prom import PromClient
from bot.redisconn import RedisTarget
from bot.steps import REGISTRY, StepContext
from bot.web.links import TOKEN_ENV
from tests.conftest import RedisServer, alert_payload, seed_platform
from tests.slack_fake import SlackFake
from tests.test_slack import ALICE, CHANNEL, SECRET, SlackBot
from tests.test_slack import fake as fake  # the Slack fake fixture, shared

PNG = b"\x89PNG\r\n\x1a\n"


def rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def pixels_of(path: Path, info: ChartInfo, color: str, tolerance: int = 40) -> list[tuple[int, int]]:
    """The pixels of ``color`` (antialiasing tolerated) inside the plot area."""
    want = rgb(color)
    img = Image.open(path).convert("RGB")
    assert img.size == info.size
    left, top, right, bottom = info.plot_box
    out = []
    for y in range(top + 1, bottom - 1):
        for x in range(left + 1, right - 1):
            p = img.getpixel((x, y))
            assert isinstance(p, tuple)
            if sum(abs(a - b) for a, b in zip(p[:3], want, strict=True)) <= tolerance:
                out.append((x, y))
    return out


def wave(now: float, span: float, points: int) -> list[tuple[float, float]]:
    """``points`` samples over the last ``span`` seconds, between 55% and 85% (the alert's 80%)."""
    step = span / max(1, points - 1)
    return [(now - span + i * step, 0.7 + 0.15 * math.sin(i / 7)) for i in range(points)]


# -- the picture ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("span", "points"),
    [(30.0, 7), (3600.0, 240), (2 * 86400.0, 240)],
    ids=["30s", "1h", "2d"],
)
def test_chart_shows_a_line_across_the_plot_with_distinct_ticks(
    tmp_path: Path, span: float, points: int
) -> None:
    now = time.time()
    path = tmp_path / "chart.png"
    info = render_png(
        [Line("memory", wave(now, span, points))],
        path,
        title="memory used / maxmemory",
        unit="ratio",
        threshold=0.8,
        window=(now - 3 * 86400, now),  # asked for more than there is: the axis fits the data anyway
    )
    assert path.read_bytes()[:8] == PNG
    assert len(info.ticks) >= 3 and len(set(info.ticks)) == len(info.ticks), info.ticks
    line = pixels_of(path, info, LINE_COLORS[0])
    assert len(line) > 300, f"the line is barely visible: {len(line)} pixels"
    left, _, right, _ = info.plot_box
    columns = {x for x, _ in line}
    assert (max(columns) - min(columns)) > 0.9 * (right - left), "the data spans the axis"
    threshold = pixels_of(path, info, "#d62728", tolerance=100)
    assert len(threshold) > 200, "the threshold is a dashed line across the plot"


def test_tick_labels_at_the_minute_that_used_to_read_00_00(tmp_path: Path) -> None:
    """Four minutes of data: ticks a minute apart must say which minute, not ``00:00`` each."""
    now = datetime(2026, 11, 25, 0, 0, 30, tzinfo=UTC).timestamp()
    info = render_png([Line("m", wave(now, 240, 17))], tmp_path / "c.png", title="t", unit="ratio")
    assert len(set(info.ticks)) == len(info.ticks) >= 3, info.ticks
    assert all(re.fullmatch(r"\d\d:\d\d(:\d\d)?", t) for t in info.ticks), info.ticks


def test_a_single_point_is_a_visible_marker(tmp_path: Path) -> None:
    now = time.time()
    path = tmp_path / "one.png"
    info = render_png([Line("m", [(now, 0.5)])], path, title="one sample", unit="ratio")
    assert len(pixels_of(path, info, LINE_COLORS[0])) > 15, "a dot, not an invisible zero-length line"
    assert len(set(info.ticks)) == len(info.ticks) >= 2


def test_marks_show_when_the_alert_fired_and_the_action_ran(tmp_path: Path) -> None:
    now = time.time()
    path = tmp_path / "marks.png"
    info = render_png(
        [Line("m", wave(now, 1800, 120))],
        path,
        title="t",
        unit="ratio",
        marks=[
            Mark(now - 1200, "RedisMemoryUsageHigh fired", "alert"),
            Mark(now - 600, "evict-agent-cache", "action"),
            Mark(now - 86400, "yesterday's alert", "alert"),  # outside the window: left out
        ],
        window=(now - 3600, now),
    )
    assert info.marks == ["RedisMemoryUsageHigh fired", "evict-agent-cache"]
    assert len(pixels_of(path, info, ACTION_COLOR)) > 100, "the action's vertical line"
    assert len(pixels_of(path, info, ALERT_COLOR)) > 50, "the alert's dotted line"


# -- in the service: Slack thread and console ---------------------------------------------------------

CHART_PLAYBOOK = """\
name: chart-test
match: {alertname: TestChart}
steps:
  - id: chart
    run: prometheus.chart
    with: {query: "vector(0.85)", title: memory used / maxmemory, unit: ratio, threshold: 0.8}
  - {id: evict, run: redis.evict, with: {pattern: "agent:*", batch: 100}}
  - id: chart-after
    run: prometheus.chart
    with: {query: "vector(0.85)", title: memory after the eviction, unit: ratio, threshold: 0.8, range: 30m}
"""


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    with Stack(tmp_path_factory.mktemp("prom")) as st:
        yield st.prometheus()


def chart_config(tmp_path: Path, redis_url: str, prom_url: str) -> Path:
    (tmp_path / "playbooks").mkdir(exist_ok=True)
    (tmp_path / "playbooks" / "chart.yaml").write_text(CHART_PLAYBOOK)
    path = tmp_path / "bot.yaml"
    path.write_text(
        f"targets:\n  - match: {{job: redis}}\n    name: cache\n    url: {redis_url}\n"
        f"playbooks: playbooks\nscheduler: {{enabled: false}}\nprometheus: {{url: '{prom_url}'}}\n"
        f"state_file: {tmp_path / 'state.sqlite3'}\n"
        f"slack: {{channel: {CHANNEL}, approvers: [{ALICE}], min_interval: 0.01}}\n"
    )
    return path


def recent_start() -> str:
    return datetime.fromtimestamp(time.time() - 600, UTC).isoformat().replace("+00:00", "Z")


async def test_charts_go_into_the_thread_with_the_current_upload_api(
    tmp_path: Path,
    redis_server: RedisServer,
    redis_sync: redis.Redis,
    prometheus: Prometheus,
    fake: SlackFake,
    aiohttp_client: Callable[..., Awaitable[TestClient]],
) -> None:
    seed_platform(redis_sync, agents=20)
    config = load_config(chart_config(tmp_path, redis_server.url, prometheus.url))
    slack = SlackSettings(bot_token="xoxb-test", signing_secret=SECRET, api_url=fake.api_url, timeout=2)
    bot = SlackBot(await aiohttp_client(create_app(config, slack=slack, webhook_token="")), fake)
    resp = await bot.client.post("/alerts", json=alert_payload("TestChart", starts_at=recent_start()))
    assert resp.status == 200
    approval = await bot.approval_message()
    assert (await bot.click(ALICE, "approve", approval)).status == 200
    await bot.wait_status(IncidentState.VERIFIED)
    await bot.slack.flush(10)

    card = bot.parent()
    images = [m for m in bot.replies(card) if m.file is not None]
    assert len(images) == 2, [m.text for m in bot.replies(card)]
    for msg in images:
        assert msg.file is not None and msg.file["bytes"][:8] == PNG and msg.thread_ts == card.ts
    assert "memory used / maxmemory" in images[0].file["title"]  # type: ignore[index]
    methods = [
        c.method
        for c in fake.calls
        if c.method in ("files.getUploadURLExternal", "upload", "files.completeUploadExternal")
    ]
    assert methods == ["files.getUploadURLExternal", "upload", "files.completeUploadExternal"] * 2
    first_url = fake.of("files.getUploadURLExternal")[0]
    assert first_url.args["filename"].endswith(".png") and int(first_url.args["length"]) > 5000
    inc = await bot.incident()
    after = next(s for s in inc.steps if s.step_id == "chart-after")
    assert after.status == StepStatus.OK
    assert after.data["marks"] == ["TestChart fired", "evict"], "the alert and the action are marked"
    assert "evict" in images[1].text, "the comment says what is marked"

    link = html.unescape(re.search(r"<(http://[^|>]+)\|Incident page>", card.all_text).group(1))  # type: ignore[union-attr]
    parts = urlsplit(link)
    page = await bot.client.get(f"{parts.path}?{parts.query}")
    body = await page.text()
    assert page.status == 200 and body.count('<img src="data:image/png;base64,') == 2, "charts inline"


async def test_the_console_prints_the_chart_path(
    tmp_path: Path, redis_server: RedisServer, prometheus: Prometheus
) -> None:
    cfg = chart_config(tmp_path, redis_server.url, prometheus.url)
    out = io.StringIO()
    async with Engine.open(load_config(cfg), ConsoleNotifier(stream=out, config_path=cfg)) as engine:
        await engine.intake.receive(Notification.model_validate(alert_payload("TestChart")))
        await engine.runner.drain()
        inc = await engine.store.get_incident(1)
    chart = next(s for s in inc.steps if s.step_id == "chart")
    path = chart.data["chart_path"]
    assert Path(path).read_bytes()[:8] == PNG and Path(path).parent == tmp_path / "charts"
    assert f"chart (chart): {path}" in out.getvalue()


def test_only_a_png_under_the_size_cap_is_kept(tmp_path: Path) -> None:
    """What the store keeps of a chart (and the page shows): a PNG file of at most 3 MB."""
    small, big, other = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.txt"
    small.write_bytes(PNG + b"x" * 100)
    big.write_bytes(PNG + b"x" * MAX_CHART_BYTES)
    other.write_bytes(PNG)
    assert chart_bytes(small) == small.read_bytes()
    assert chart_bytes(big) is None and chart_bytes(other) is None
    assert chart_bytes(tmp_path / "missing.png") is None and MAX_CHART_BYTES == 3 * 1024 * 1024


async def test_a_chart_drawn_by_one_replica_is_shown_on_another_replicas_page(
    tmp_path: Path,
    redis_server: RedisServer,
    prometheus: Prometheus,
    database_line: str,
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Replicas keep their chart files on their own disks: the PNG is kept in the store with its
    step run, so the incident page of a replica that did not draw it shows it (on both backends;
    the file is deleted first, as another pod's disk would not have it)."""
    monkeypatch.setenv(TOKEN_ENV, "page-token")

    def replica(name: str) -> Path:
        folder = tmp_path / name
        (folder / "playbooks").mkdir(parents=True)
        (folder / "playbooks" / "chart.yaml").write_text(CHART_PLAYBOOK.split("  - {id: evict")[0])
        path = folder / "bot.yaml"
        path.write_text(
            f"targets:\n  - match: {{job: redis}}\n    name: cache\n    url: {redis_server.url}\n"
            f"playbooks: playbooks\nscheduler: {{enabled: false}}\nprometheus: {{url: '{prometheus.url}'}}\n"
            f"state_file: {folder / 'state.sqlite3'}\n{database_line}"
        )
        return path

    a, b = load_config(replica("a")), load_config(replica("b"))
    async with Engine.open(a, ConsoleNotifier(stream=io.StringIO())) as engine:
        (inc_id,) = (await engine.intake.receive(Notification.model_validate(alert_payload("TestChart")))).new
        await engine.runner.drain()
        chart = next(s for s in (await engine.store.get_incident(inc_id)).steps if s.step_id == "chart")
    drawn = Path(chart.data["chart_path"]).read_bytes()
    assert drawn[:8] == PNG
    Path(chart.data["chart_path"]).unlink()
    client = await aiohttp_client(create_app(b, webhook_token=""))
    page = await client.get(f"/incidents/{inc_id}", headers={"Authorization": "Bearer page-token"})
    body = await page.text()
    assert page.status == 200
    uris = re.findall(r'<img src="data:image/png;base64,([^"]+)"', body)
    assert [base64.b64decode(u) for u in uris] == [drawn], "the chart replica A drew, inline"


async def test_a_new_series_is_drawn_at_a_finer_step_and_after_the_next_scrape(
    prometheus: Prometheus, tmp_path: Path
) -> None:
    """Seconds of data asked over an hour: re-read at a step that shows them (not one dot per 15 s).
    With ``fresh``, a chart after an action waits for a scrape that saw the action's effect."""
    prometheus.scrape = {"self": [prometheus.address]}
    await asyncio.to_thread(prometheus.reload)
    await asyncio.to_thread(
        prometheus.wait_for_value, 'count_over_time(up{job="self"}[1m])', lambda v: v >= 4, 30
    )
    client = PromClient(prometheus.url, timeout=5.0)
    acted = time.time()
    ctx = StepContext(
        target=RedisTarget("t", "redis://127.0.0.1:1"),
        settings={
            "chart_dir": str(tmp_path),
            "marks": [{"at": acted, "end": acted, "label": "evict", "kind": "action"}],
        },
        prometheus=client,
    )
    st = REGISTRY["prometheus.chart"]
    assert st.run is not None
    try:
        plain = await st.run(ctx, st.params.model_validate({"query": 'up{job="self"}', "range": "1h"}))
        assert plain.data["points"] >= 4, plain.data
        after = await st.run(
            ctx,
            st.params.model_validate({"query": 'up{job="self"}', "range": "1h", "fresh": 'up{job="self"}'}),
        )
    finally:
        await client.close()
    assert after.data["last"] > acted + 1.0, "drawn once Prometheus scraped after the action"
    assert after.data["marks"] == ["evict"]

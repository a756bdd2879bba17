"""``prometheus.chart``: a PNG chart of a query, attached to the incident (and its Slack thread).

The picture is drawn by :mod:`bot.charts` in a worker thread (never in the event loop): the time
axis fits the data, the threshold is a dashed line, and when the alert fired and when the
incident's actions ran are marked (``settings["marks"]``, given by the runner).
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field

from bot.charts import Line, Mark, render_png
from bot.durations import Duration
from bot.formatting import format_duration
from bot.prom import PromClient
from bot.steps.prometheus import Matchers, PromQL, Unit, prepare_query, series_name
from bot.steps.registry import StepContext, StepOutput, StepParams, step

NO_MATPLOTLIB = (
    "skipped: charts need matplotlib, a dependency of the bot missing from this install"
    " (reinstall it: pip install redis-remediation-bot)"
)


class ChartParams(StepParams):
    query: PromQL
    range: Duration = 3600.0
    step: Duration | None = None
    title: str = ""
    unit: Unit = ""
    threshold: float | None = Field(
        default=None, description="Drawn as a dashed line (e.g. the alert's bound)."
    )
    selector: Matchers | None = None
    fresh: PromQL | None = Field(
        default=None,
        description="A raw series (e.g. redis_up{{ selector }}): wait until it was scraped after the"
        " incident's last action, so a chart drawn after a fix shows its effect.",
    )
    max_wait: Duration = Field(default=30.0, le=300.0, description="The longest wait for ``fresh``.")


def charts_available() -> bool:
    """Whether matplotlib can be imported (a dependency; a broken install is said, not crashed on)."""
    return importlib.util.find_spec("matplotlib") is not None


FEW = 30
"""Fewer points than this over the range, starting late: the data is re-read at a finer step."""


async def _wait_for_scrape(ctx: StepContext, p: ChartParams, client: PromClient) -> None:
    """With ``fresh``: wait (at most ``max_wait``) until Prometheus scraped it after the last action
    ended; a chart drawn before that would show the state from before the fix."""
    ends = [
        float(m.get("end") or m["at"]) for m in ctx.settings.get("marks") or [] if m.get("kind") == "action"
    ]
    if p.fresh is None or not ends:
        return
    prepared = prepare_query(ctx, p.fresh, p.selector)
    if isinstance(prepared, StepOutput):
        return
    _, fresh = prepared
    deadline = time.monotonic() + p.max_wait
    while time.monotonic() < deadline:
        scraped = await client.value(f"max(timestamp({fresh}))")
        if scraped is not None and scraped > max(ends) + 1.0:  # stored times are whole seconds
            return
        await asyncio.sleep(1.0)


def marks_of(settings: dict[str, Any]) -> list[Mark]:
    """The moments the runner passed (``{"at": unix, "label": str, "kind": "alert"|"action"}``)."""
    out = []
    for m in settings.get("marks") or []:
        if isinstance(m, dict) and isinstance(m.get("at"), int | float):
            out.append(Mark(float(m["at"]), str(m.get("label", "")), str(m.get("kind", "action"))))
    return out


@step("prometheus.chart", params=ChartParams, timeout=60.0)
async def chart(ctx: StepContext, p: ChartParams) -> StepOutput:
    """A PNG chart of a query over the last ``range`` (default 1 h), attached to the incident.

    The file goes under the state file's folder (``charts/``); its path is ``data["chart_path"]``,
    which the console prints, Slack uploads into the incident's thread and the incident page shows.
    The axis spans the data there is; the alert's start and the incident's actions are marked.
    """
    prepared = prepare_query(ctx, p.query, p.selector)
    if isinstance(prepared, StepOutput):
        return prepared
    if not charts_available():
        return StepOutput(summary=NO_MATPLOTLIB, status="skipped")
    client, promql = prepared
    await _wait_for_scrape(ctx, p, client)
    end = time.time()
    start = end - p.range
    step_s = p.step or max(1.0, p.range / 240)
    series = await client.query_range(promql, start=start, end=end, step=step_s)
    points = [t for s in series for t, _ in s.points]
    if p.step is None and points and len(points) < FEW and min(points) - step_s > start:
        # Prometheus has only a few minutes of this (a new target, the demo): draw those minutes at
        # a resolution that shows them, not one dot per quarter hour.
        start = min(points) - step_s
        step_s = max(1.0, (end - start) / 240)
        series = await client.query_range(promql, start=start, end=end, step=step_s)
    title = p.title or promql
    data: dict[str, Any] = {"query": promql, "range_s": p.range, "chart_path": None}
    if not any(s.points for s in series):
        return StepOutput(
            summary=f"no chart: no data for {title} over the last {format_duration(p.range)}",
            data=data,
            status="warning",
        )
    folder = Path(ctx.settings.get("chart_dir") or Path.cwd() / "charts")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"incident-{ctx.settings.get('incident_id', 'adhoc')}-{ctx.settings.get('step_id', 'chart')}-{stamp}.png"
    path = folder / name
    lines = [Line(series_name(s.labels) if len(series) > 1 else title, s.points) for s in series if s.points]
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    info = await asyncio.to_thread(
        render_png,
        lines,
        path,
        title=title,
        unit=p.unit,
        threshold=p.threshold,
        marks=marks_of(ctx.settings),
        window=(start, end),
    )
    first = min(s.points[0][0] for s in series if s.points)
    last = max(s.points[-1][0] for s in series if s.points)
    shown = format_duration(max(0.0, last - first))
    data.update(chart_path=str(path), series=len(series), title=title, marks=info.marks, ticks=info.ticks)
    data.update(points=sum(len(s.points) for s in series), first=first, last=last)
    marked = f"; marked: {', '.join(info.marks)}" if info.marks else ""
    return StepOutput(summary=f"chart of {title}, {shown} of data{marked}", data=data)

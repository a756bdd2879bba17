"""``prometheus.chart``: a PNG chart of a query over the last hour or so, attached to the incident.

Needs the optional ``charts`` extra (matplotlib); without it the step is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field

from bot.durations import Duration
from bot.formatting import format_duration, format_value
from bot.prom import Series
from bot.steps.prometheus import Matchers, PromQL, Unit, prepare_query, series_name
from bot.steps.registry import StepContext, StepOutput, StepParams, step

NO_MATPLOTLIB = (
    "skipped: charts need matplotlib, which is not installed (pip install 'redis-remediation-bot[charts]')"
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


def charts_available() -> bool:
    """Whether the optional ``charts`` extra (matplotlib) is installed."""
    return importlib.util.find_spec("matplotlib") is not None


def render_png(
    series: Sequence[Series], path: Path, *, title: str, unit: str, threshold: float | None = None
) -> None:
    """Draw ``series`` into a PNG at ``path``. Uses matplotlib's object API (no pyplot, no global
    state), so it is safe in a worker thread of a long-running service."""
    from matplotlib import dates
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(8, 3), dpi=100)
    ax = fig.subplots()
    for s in series[:10]:
        times = dates.date2num([datetime.fromtimestamp(t, UTC) for t, _ in s.points])
        ax.plot(times, [v for _, v in s.points], linewidth=1.5, label=series_name(s.labels) or title)
    if threshold is not None:
        ax.axhline(
            threshold,
            linestyle="--",
            linewidth=1,
            color="tab:red",
            label=f"threshold {format_value(threshold, unit)}",
        )
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: format_value(v, unit)))
    ax.xaxis.set_major_formatter(dates.DateFormatter("%H:%M", tz=UTC))
    ax.set_xlabel("UTC", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if len(series) > 1 or threshold is not None:
        ax.legend(fontsize=7, loc="best")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, format="png")


@step("prometheus.chart", params=ChartParams, timeout=60.0)
async def chart(ctx: StepContext, p: ChartParams) -> StepOutput:
    """A PNG chart of a query over the last ``range`` (default 1 h), attached to the incident.

    The file goes under the state file's folder (``charts/``); its path is ``data["chart_path"]``,
    which chat backends upload. Needs the optional ``charts`` extra (matplotlib); without it the step
    is skipped.
    """
    prepared = prepare_query(ctx, p.query, p.selector)
    if isinstance(prepared, StepOutput):
        return prepared
    if not charts_available():
        return StepOutput(summary=NO_MATPLOTLIB, status="skipped")
    client, promql = prepared
    end = time.time()
    step_s = p.step or max(1.0, p.range / 240)
    series = await client.query_range(promql, start=end - p.range, end=end, step=step_s)
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
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(render_png, series, path, title=title, unit=p.unit, threshold=p.threshold)
    data["chart_path"] = str(path)
    data["series"] = len(series)
    return StepOutput(summary=f"chart of {title} over the last {format_duration(p.range)}: {path}", data=data)

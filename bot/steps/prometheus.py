"""Prometheus steps: the runbook's key metrics as Prometheus sees them, verification, and charts.

Redis steps tell what Redis says now; these add history: is memory growing and when will it be full
(``predict_linear``), what was the hit ratio over the last minutes, how slow are commands on average.

Without a ``prometheus`` section in the config every step here returns status ``skipped`` with the
reason, so the bundled playbooks (which use them) work on the minimal config. A verification that is
skipped carries no ``verification`` flag, so it never counts as "did not help".

Queries are templates (see :mod:`bot.prom`): ``{{ labels.NAME }}`` from the alert, and
``{{ selector }}`` for the configured selector of the alert's Redis series. An incident without the
labels the selector needs (e.g. one opened by the bot's health probe) skips the step with the reason.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from bot.durations import Duration, format_duration
from bot.planview import human_bytes
from bot.prom import PromClient, PrometheusQueryError, Sample, Series, render, template_problems
from bot.steps.registry import StepContext, StepOutput, StepParams, step

NO_PROMETHEUS = "skipped: no Prometheus configured (add `prometheus: {url: ...}` to the config)"
NO_MATPLOTLIB = (
    "skipped: charts need matplotlib, which is not installed (pip install 'redis-remediation-bot[charts]')"
)
Unit = Literal["", "bytes", "ratio", "percent", "seconds", "per_second"]
MAX_DETAIL_ROWS = 10
MAX_POINTS_IN_DATA = 240
"""Range results in the audit trail are capped: the chart and Prometheus have the full resolution."""


def _check_query(value: str) -> str:
    if not value.strip():
        raise ValueError("the query is empty")
    problems = template_problems(value)
    if problems:
        raise ValueError("; ".join(problems))
    return value


PromQL = Annotated[str, AfterValidator(_check_query)]
Matchers = Annotated[str, AfterValidator(_check_query)]


# -- formatting -------------------------------------------------------------------------------------


def fmt(value: float | None, unit: str = "") -> str:
    """A value for a phone screen, in the unit the query measures."""
    if value is None or math.isnan(value):
        return "no data"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if unit == "bytes":
        return human_bytes(value)
    if unit == "ratio":
        return f"{value:.1%}"
    if unit == "percent":
        return f"{value:.1f}%"
    if unit == "seconds":
        return f"{value * 1000:.2f} ms" if abs(value) < 1 else format_duration(value)
    if unit == "per_second":
        return f"{value:,.1f}/s"
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.4g}"


def series_name(labels: dict[str, str]) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return labels.get("__name__", "") + ("{" + inner + "}" if inner else "")


def _num(value: float | None) -> float | None:
    """JSON-safe number for ``data`` (NaN and infinities are not JSON)."""
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return round(value, 6)


def promql_duration(seconds: float) -> str:
    """A PromQL range duration (``600s``, ``1500ms``)."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def _client(ctx: StepContext) -> PromClient | None:
    return ctx.prometheus


def _render(ctx: StepContext, client: PromClient, template: str, selector: str | None = None) -> str:
    return render(template, ctx.labels, selector if selector is not None else client.selector)


def _prepare(ctx: StepContext, query: str, selector: str | None) -> tuple[PromClient, str] | StepOutput:
    """The client and the query rendered from the alert's labels, or the ``skipped`` output saying
    why the step cannot run (no Prometheus configured, a label the query needs is missing)."""
    client = _client(ctx)
    if client is None:
        return StepOutput(summary=NO_PROMETHEUS, status="skipped")
    try:
        return client, _render(ctx, client, query, selector)
    except PrometheusQueryError as exc:
        return _skip(str(exc))


def _skip(reason: str) -> StepOutput:
    return StepOutput(summary=f"skipped: {reason}", status="skipped")


def _thresholds(values: Sequence[float], above: float | None, below: float | None) -> bool:
    real = [v for v in values if not math.isnan(v)]
    return (above is not None and any(v > above for v in real)) or (
        below is not None and any(v < below for v in real)
    )


# -- prometheus.query -------------------------------------------------------------------------------


class QueryParams(StepParams):
    query: PromQL
    range: Duration | None = Field(default=None, description="Query the last RANGE instead of now.")
    step: Duration | None = Field(default=None, description="Range resolution (default: RANGE/120).")
    title: str = ""
    unit: Unit = ""
    warn_above: float | None = None
    warn_below: float | None = None
    selector: Matchers | None = None


@step("prometheus.query", params=QueryParams, timeout=60.0)
async def query(ctx: StepContext, p: QueryParams) -> StepOutput:
    """Run a PromQL query, now or over the last ``range``, with ``{{ labels.NAME }}`` from the alert.

    Warns when the (latest) value crosses ``warn_above``/``warn_below``, or when nothing matched.
    """
    prepared = _prepare(ctx, p.query, p.selector)
    if isinstance(prepared, StepOutput):
        return prepared
    client, promql = prepared
    title = p.title or "value"
    if p.range is None:
        return _instant_output(promql, await client.query(promql), p, title)
    end = time.time()
    step_s = p.step or max(1.0, p.range / 120)
    series = await client.query_range(promql, start=end - p.range, end=end, step=step_s)
    return _range_output(promql, series, p, title, step_s)


def _instant_output(promql: str, samples: list[Sample], p: QueryParams, title: str) -> StepOutput:
    data: dict[str, Any] = {
        "query": promql,
        "result": [{"labels": s.labels, "value": _num(s.value)} for s in samples[:50]],
        "series": len(samples),
    }
    if not samples:
        return StepOutput(
            summary=f"no data: {title} matched no series ({promql})", data=data, status="warning"
        )
    ordered = sorted(samples, key=lambda s: -math.inf if math.isnan(s.value) else s.value, reverse=True)
    if len(samples) == 1:
        summary = f"{title}: {fmt(samples[0].value, p.unit)}"
    else:
        summary = (
            f"{title}: {len(samples)} series, highest {fmt(ordered[0].value, p.unit)}"
            f" ({series_name(ordered[0].labels)}), lowest {fmt(ordered[-1].value, p.unit)}"
        )
    details = "\n".join(
        f"{fmt(s.value, p.unit):>12}  {series_name(s.labels)}" for s in ordered[:MAX_DETAIL_ROWS]
    )
    warn = _thresholds([s.value for s in samples], p.warn_above, p.warn_below)
    return StepOutput(summary=summary, data=data, details=details, status="warning" if warn else "ok")


def _range_output(promql: str, series: list[Series], p: QueryParams, title: str, step_s: float) -> StepOutput:
    assert p.range is not None
    rows: list[dict[str, Any]] = []
    for s in series:
        vals = s.values
        rows.append(
            {
                "labels": s.labels,
                "first": _num(vals[0]) if vals else None,
                "last": _num(s.last),
                "min": _num(min(vals)) if vals else None,
                "max": _num(max(vals)) if vals else None,
                "points": [[t, _num(v)] for t, v in s.points[-MAX_POINTS_IN_DATA:]],
            }
        )
    data: dict[str, Any] = {"query": promql, "range_s": p.range, "step_s": step_s, "series": rows}
    span = format_duration(p.range)
    if not series:
        return StepOutput(
            summary=f"no data: {title} matched no series over the last {span} ({promql})",
            data=data,
            status="warning",
        )

    def line(r: dict[str, Any]) -> str:
        return (
            f"{fmt(r['last'], p.unit)} now, min {fmt(r['min'], p.unit)}, max {fmt(r['max'], p.unit)},"
            f" {fmt(r['first'], p.unit)} {span} ago"
        )

    if len(rows) == 1:
        summary = f"{title}: {line(rows[0])}"
    else:
        top = max(rows, key=lambda r: r["last"] if r["last"] is not None else -math.inf)
        summary = f"{title}: {len(rows)} series over {span}; highest now {fmt(top['last'], p.unit)} ({series_name(top['labels'])})"
    details = "\n".join(f"{series_name(r['labels']) or title}: {line(r)}" for r in rows[:MAX_DETAIL_ROWS])
    warn = _thresholds([s.last for s in series], p.warn_above, p.warn_below)
    return StepOutput(summary=summary, data=data, details=details, status="warning" if warn else "ok")


# -- prometheus.redis_overview ----------------------------------------------------------------------

Section = Literal["up", "memory", "hit_ratio", "clients", "latency"]
ALL_SECTIONS: tuple[Section, ...] = ("up", "memory", "hit_ratio", "clients", "latency")


class OverviewParams(StepParams):
    sections: list[Section] = Field(default_factory=lambda: list(ALL_SECTIONS), min_length=1)
    selector: Matchers | None = None
    window: Duration = Field(default=600.0, description="Range for rates and the memory trend.")
    horizon: Duration = Field(default=6 * 3600.0, description="Warn when memory is full within this.")
    memory_warn: float = Field(default=0.8, gt=0, le=1)
    hit_ratio_warn: float = Field(default=0.5, ge=0, le=1)
    latency_warn_ms: float = Field(default=10.0, gt=0)
    clients_warn: float = Field(default=0.8, gt=0, le=1)


class _Section:
    """One section's finding: a short form for the summary, a sentence for details, data, a verdict."""

    def __init__(self, short: str, line: str, data: dict[str, Any], warn: bool = False) -> None:
        self.short, self.line, self.data, self.warn = short, line, data, warn


async def _up(c: PromClient, sel: str, w: str, p: OverviewParams) -> _Section:
    up, avg = await c.values([f"min(redis_up{sel})", f"avg(avg_over_time(redis_up{sel}[{w}]))"])
    data = {"redis_up": _num(up), "up_ratio": _num(avg)}
    if up is None:
        return _Section(
            "redis_up: no data", f"no redis_up series for {sel}: is redis_exporter scraped?", data, True
        )
    avail = f"; up {fmt(avg, 'ratio')} of the last {format_duration(p.window)}" if avg is not None else ""
    if up < 1:
        return _Section(
            "DOWN per exporter", f"redis_up {up:g}: the exporter cannot reach Redis{avail}", data, True
        )
    return _Section(
        "up", f"redis_up 1: the exporter reaches Redis{avail}", data, bool(avg is not None and avg < 1)
    )


def _full_in(ttf: float) -> str:
    """Time to full in words; under a minute the linear fit is too rough for more precision."""
    return "full within a minute at this rate" if ttf < 60 else f"full in ~{format_duration(ttf)}"


async def _memory(c: PromClient, sel: str, w: str, p: OverviewParams) -> _Section:
    used, limit, fit_now, fit_hour = await c.values(
        [
            f"sum(redis_memory_used_bytes{sel})",
            f"sum(redis_memory_max_bytes{sel})",
            f"sum(predict_linear(redis_memory_used_bytes{sel}[{w}], 0))",
            f"sum(predict_linear(redis_memory_used_bytes{sel}[{w}], 3600))",
        ]
    )
    data: dict[str, Any] = {"used_bytes": _num(used), "max_bytes": _num(limit)}
    if used is None:
        return _Section("memory: no data", f"no redis_memory_used_bytes series for {sel}", data, True)
    ratio = used / limit if limit else None
    data["ratio"] = _num(ratio)
    head = f"memory {human_bytes(used)}" + (
        f" of {human_bytes(limit)} ({ratio:.0%})" if ratio is not None else " (no maxmemory)"
    )
    if fit_now is None or fit_hour is None:
        return _Section(
            f"memory {fmt(ratio, 'ratio') if ratio is not None else human_bytes(used)}",
            f"{head}; not enough history for a trend over {format_duration(p.window)}",
            data,
            ratio is not None and ratio >= p.memory_warn,
        )
    per_hour = fit_hour - fit_now
    data["growth_bytes_per_hour"] = _num(per_hour)
    data["time_to_full_s"] = None
    steady = abs(per_hour) < max(1024.0 * 1024.0, 0.001 * (limit or used))
    if steady:
        trend = "steady"
    elif per_hour < 0:
        trend = f"shrinking {human_bytes(-per_hour)}/h"
    else:
        trend = f"growing {human_bytes(per_hour)}/h"
    ttf = None
    if limit and per_hour > 0 and not steady:
        ttf = max(0.0, (limit - fit_now) / (per_hour / 3600.0))
        data["time_to_full_s"] = round(ttf, 1)
        trend += f" -> {_full_in(ttf)}"
    data["full_within_horizon"] = ttf is not None and ttf <= p.horizon
    warn = (ratio is not None and ratio >= p.memory_warn) or bool(data["full_within_horizon"])
    short = f"memory {fmt(ratio, 'ratio') if ratio is not None else human_bytes(used)}"
    if ttf is not None:
        short += f" ({_full_in(ttf)})"
    return _Section(short, f"{head}; {trend} (predict_linear over {format_duration(p.window)})", data, warn)


async def _hit_ratio(c: PromClient, sel: str, w: str, p: OverviewParams) -> _Section:
    hits, misses = await c.values(
        [
            f"sum(rate(redis_keyspace_hits_total{sel}[{w}]))",
            f"sum(rate(redis_keyspace_misses_total{sel}[{w}]))",
        ]
    )
    data: dict[str, Any] = {"hits_per_s": _num(hits), "misses_per_s": _num(misses), "hit_ratio": None}
    span = format_duration(p.window)
    if hits is None or misses is None:
        return _Section("hit ratio: no data", f"no keyspace hit/miss rates for {sel} over {span}", data, True)
    lookups = hits + misses
    if lookups <= 0:
        return _Section("no lookups", f"no cache lookups in the last {span}", data)
    ratio = hits / lookups
    data["hit_ratio"] = _num(ratio)
    warn = ratio < p.hit_ratio_warn
    return _Section(
        f"hit ratio {ratio:.0%}",
        f"hit ratio {ratio:.1%} over the last {span} ({lookups:,.1f} lookups/s, {misses:,.1f} misses/s)",
        data,
        warn,
    )


async def _clients(c: PromClient, sel: str, w: str, p: OverviewParams) -> _Section:
    now, peak, maxclients, blocked = await c.values(
        [
            f"sum(redis_connected_clients{sel})",
            f"max(max_over_time(redis_connected_clients{sel}[{w}]))",
            f"min(redis_config_maxclients{sel})",
            f"sum(redis_blocked_clients{sel})",
        ]
    )
    data = {
        "connected": _num(now),
        "peak": _num(peak),
        "maxclients": _num(maxclients),
        "blocked": _num(blocked),
    }
    if now is None:
        return _Section("clients: no data", f"no redis_connected_clients series for {sel}", data, True)
    text = f"{now:,.0f} clients connected"
    if peak is not None:
        text += f" (peak {peak:,.0f} in {format_duration(p.window)})"
    if maxclients:
        text += f", maxclients {maxclients:,.0f}"
    if blocked:
        text += f", {blocked:,.0f} blocked"
    warn = bool(maxclients) and max(now, peak or 0) >= p.clients_warn * (maxclients or 1)
    return _Section(f"{now:,.0f} clients", text, data, warn)


async def _latency(c: PromClient, sel: str, w: str, p: OverviewParams) -> _Section:
    dur = f"rate(redis_commands_duration_seconds_total{sel}[{w}])"
    calls = f"rate(redis_commands_total{sel}[{w}])"
    (total_s, total_n), top = await asyncio.gather(
        c.values([f"sum({dur})", f"sum({calls})"]),
        c.query(f"topk(3, (sum by (cmd) ({dur}) / sum by (cmd) ({calls})) > 0)"),
    )
    slowest = sorted(top, key=lambda s: s.value, reverse=True)
    data: dict[str, Any] = {
        "commands_per_s": _num(total_n),
        "avg_seconds": None,
        "slowest": [{"cmd": s.labels.get("cmd", "?"), "avg_seconds": _num(s.value)} for s in slowest],
    }
    if total_n is None or total_s is None:
        return _Section("latency: no data", f"no command statistics for {sel}", data, True)
    if total_n <= 0:
        return _Section("no commands", f"no commands in the last {format_duration(p.window)}", data)
    avg = total_s / total_n
    data["avg_seconds"] = _num(avg)
    text = f"commands average {fmt(avg, 'seconds')} over {format_duration(p.window)} ({total_n:,.1f}/s)"
    if slowest:
        text += "; slowest: " + ", ".join(
            f"{s.labels.get('cmd', '?')} {fmt(s.value, 'seconds')}" for s in slowest
        )
    limit = p.latency_warn_ms / 1000
    warn = avg > limit or any(s.value > limit for s in slowest)
    return _Section(f"avg {fmt(avg, 'seconds')}", text, data, warn)


_SECTIONS: dict[str, Callable[[PromClient, str, str, OverviewParams], Awaitable[_Section]]] = {
    "up": _up,
    "memory": _memory,
    "hit_ratio": _hit_ratio,
    "clients": _clients,
    "latency": _latency,
}


@step("prometheus.redis_overview", params=OverviewParams, timeout=60.0)
async def redis_overview(ctx: StepContext, p: OverviewParams) -> StepOutput:
    """The runbook's key metrics from Prometheus: redis_up, memory trend and time to full, hit ratio,
    clients, command latency.

    Rates and the trend cover the last ``window``; memory warns at ``memory_warn`` of maxmemory or
    when ``predict_linear`` says it fills up within ``horizon``.
    """
    client = _client(ctx)
    if client is None:
        return StepOutput(summary=NO_PROMETHEUS, status="skipped")
    try:
        matchers = render(p.selector if p.selector is not None else (client.selector or ""), ctx.labels)
    except PrometheusQueryError as exc:
        return _skip(str(exc))
    sel = "{" + matchers + "}" if matchers.strip() else ""
    window = promql_duration(p.window)
    names = list(dict.fromkeys(p.sections))
    found = await asyncio.gather(*(_SECTIONS[n](client, sel, window, p) for n in names))
    data: dict[str, Any] = {"selector": sel, "window_s": p.window}
    data.update({n: s.data for n, s in zip(names, found, strict=True)})
    warnings = [s for s in found if s.warn]
    ordered = warnings + [s for s in found if not s.warn]
    summary = ", ".join(s.short for s in ordered)
    details = "\n".join(("! " if s.warn else "  ") + s.line for s in found)
    return StepOutput(summary=summary, data=data, details=details, status="warning" if warnings else "ok")


# -- prometheus.verify -------------------------------------------------------------------------------


class VerifyParams(StepParams):
    query: PromQL
    below: float | None = None
    above: float | None = None
    within: Duration = 120.0
    interval: Duration = 5.0
    title: str = ""
    unit: Unit = ""
    selector: Matchers | None = None

    @model_validator(mode="after")
    def _bounds(self) -> VerifyParams:
        if self.below is not None and self.above is not None and self.above >= self.below:
            raise ValueError(f"above ({self.above}) must be less than below ({self.below})")
        return self


def _condition(p: VerifyParams) -> str:
    parts = []
    if p.above is not None:
        parts.append(f"> {fmt(p.above, p.unit)}")
    if p.below is not None:
        parts.append(f"< {fmt(p.below, p.unit)}")
    return " and ".join(parts) or "any series matching"


def _holds(samples: list[Sample], p: VerifyParams) -> bool:
    if not samples:
        return False
    for s in samples:
        if math.isnan(s.value):
            return False
        if p.below is not None and not s.value < p.below:
            return False
        if p.above is not None and not s.value > p.above:
            return False
    return True


@step("prometheus.verify", params=VerifyParams, timeout=900.0, verifies=True)
async def verify(ctx: StepContext, p: VerifyParams) -> StepOutput:
    """Helped if the query's value(s) are below/above the bound within the window (PromQL condition).

    Without ``below``/``above``, the condition holds when the query returns any series (PromQL
    comparisons filter: ``memory_ratio < 0.8`` is empty while memory is high). Mind the scrape
    interval: Prometheus sees a change one scrape later, so give ``within`` a few intervals.
    """
    prepared = _prepare(ctx, p.query, p.selector)
    if isinstance(prepared, StepOutput):
        return prepared
    client, promql = prepared
    title = p.title or "value"
    cond = _condition(p)
    started = time.monotonic()
    deadline = started + p.within
    checks = 0
    while True:
        samples = await client.query(promql)
        checks += 1
        values = [s.value for s in samples]
        shown = ", ".join(fmt(v, p.unit) for v in values[:5]) or "no data"
        data: dict[str, Any] = {
            "verification": True,
            "query": promql,
            "condition": cond,
            "values": [_num(v) for v in values[:20]],
            "checks": checks,
            "elapsed_s": round(time.monotonic() - started, 1),
        }
        if _holds(samples, p):
            after = f" after {format_duration(time.monotonic() - started)}" if checks > 1 else ""
            return StepOutput(summary=f"helped: {title} {shown} ({cond}){after}", data=data)
        if time.monotonic() + p.interval > deadline:
            return StepOutput(
                summary=f"did not help: {title} still {shown} after {format_duration(p.within)} (wanted {cond})",
                data=data,
                status="failed",
            )
        await asyncio.sleep(p.interval)


# -- prometheus.chart --------------------------------------------------------------------------------


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
            threshold, linestyle="--", linewidth=1, color="tab:red", label=f"threshold {fmt(threshold, unit)}"
        )
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt(v, unit)))
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
    prepared = _prepare(ctx, p.query, p.selector)
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

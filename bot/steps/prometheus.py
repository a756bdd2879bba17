"""Prometheus steps: ad-hoc queries and verification; the helpers every Prometheus step shares.

Redis steps tell what Redis says now; the Prometheus steps add history. The runbook's key metrics
are in :mod:`bot.steps.prometheus_overview`, charts in :mod:`bot.steps.prometheus_chart`.

Without a ``prometheus`` section in the config every step here returns status ``skipped`` with the
reason, so the bundled playbooks (which use them) work on the minimal config. A verification that is
skipped carries no ``verification`` flag, so it never counts as "did not help".

Queries are templates (see :mod:`bot.prom`): ``{{ labels.NAME }}`` from the alert, and
``{{ selector }}`` for the configured selector of the alert's Redis series. An incident without the
labels the selector needs (e.g. one opened by the bot's health probe) skips the step with the reason.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from bot.durations import Duration
from bot.formatting import format_duration, format_value
from bot.prom import PromClient, PrometheusQueryError, Sample, Series, render, template_problems
from bot.steps.registry import StepContext, StepOutput, StepParams, step

NO_PROMETHEUS = "skipped: no Prometheus configured (add `prometheus: {url: ...}` to the config)"
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


def series_name(labels: dict[str, str]) -> str:
    """A series as PromQL writes it: ``name{label="value", ...}``."""
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return labels.get("__name__", "") + ("{" + inner + "}" if inner else "")


def json_number(value: float | None) -> float | None:
    """JSON-safe number for ``data`` (NaN and infinities are not JSON)."""
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return round(value, 6)


def promql_duration(seconds: float) -> str:
    """A PromQL range duration (``600s``, ``1500ms``)."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def _render(ctx: StepContext, client: PromClient, template: str, selector: str | None = None) -> str:
    return render(template, ctx.labels, selector if selector is not None else client.selector)


def prepare_query(ctx: StepContext, query: str, selector: str | None) -> tuple[PromClient, str] | StepOutput:
    """The client and the query rendered from the alert's labels, or the ``skipped`` output saying
    why the step cannot run (no Prometheus configured, a label the query needs is missing)."""
    client = ctx.prometheus
    if client is None:
        return StepOutput(summary=NO_PROMETHEUS, status="skipped")
    try:
        return client, _render(ctx, client, query, selector)
    except PrometheusQueryError as exc:
        return skip(str(exc))


def skip(reason: str) -> StepOutput:
    """The output of a step that cannot run here, with the reason."""
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
    prepared = prepare_query(ctx, p.query, p.selector)
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
        "result": [{"labels": s.labels, "value": json_number(s.value)} for s in samples[:50]],
        "series": len(samples),
    }
    if not samples:
        return StepOutput(
            summary=f"no data: {title} matched no series ({promql})", data=data, status="warning"
        )
    ordered = sorted(samples, key=lambda s: -math.inf if math.isnan(s.value) else s.value, reverse=True)
    if len(samples) == 1:
        summary = f"{title}: {format_value(samples[0].value, p.unit)}"
    else:
        summary = (
            f"{title}: {len(samples)} series, highest {format_value(ordered[0].value, p.unit)}"
            f" ({series_name(ordered[0].labels)}), lowest {format_value(ordered[-1].value, p.unit)}"
        )
    details = "\n".join(
        f"{format_value(s.value, p.unit):>12}  {series_name(s.labels)}" for s in ordered[:MAX_DETAIL_ROWS]
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
                "first": json_number(vals[0]) if vals else None,
                "last": json_number(s.last),
                "min": json_number(min(vals)) if vals else None,
                "max": json_number(max(vals)) if vals else None,
                "points": [[t, json_number(v)] for t, v in s.points[-MAX_POINTS_IN_DATA:]],
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
            f"{format_value(r['last'], p.unit)} now, min {format_value(r['min'], p.unit)}, max {format_value(r['max'], p.unit)},"
            f" {format_value(r['first'], p.unit)} {span} ago"
        )

    if len(rows) == 1:
        summary = f"{title}: {line(rows[0])}"
    else:
        top = max(rows, key=lambda r: r["last"] if r["last"] is not None else -math.inf)
        summary = f"{title}: {len(rows)} series over {span}; highest now {format_value(top['last'], p.unit)} ({series_name(top['labels'])})"
    details = "\n".join(f"{series_name(r['labels']) or title}: {line(r)}" for r in rows[:MAX_DETAIL_ROWS])
    warn = _thresholds([s.last for s in series], p.warn_above, p.warn_below)
    return StepOutput(summary=summary, data=data, details=details, status="warning" if warn else "ok")


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
        parts.append(f"> {format_value(p.above, p.unit)}")
    if p.below is not None:
        parts.append(f"< {format_value(p.below, p.unit)}")
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
    prepared = prepare_query(ctx, p.query, p.selector)
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
        shown = ", ".join(format_value(v, p.unit) for v in values[:5]) or "no data"
        data: dict[str, Any] = {
            "verification": True,
            "query": promql,
            "condition": cond,
            "values": [json_number(v) for v in values[:20]],
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

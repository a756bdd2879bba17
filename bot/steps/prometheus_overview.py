"""``prometheus.redis_overview``: the runbook's key metrics as Prometheus sees them, with history.

Is memory growing and when will it be full (``predict_linear``), what was the hit ratio over the
last minutes, how slow are commands on average. Shares its query helpers with
:mod:`bot.steps.prometheus`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import Field

from bot.durations import Duration
from bot.formatting import format_duration, format_value, human_bytes
from bot.prom import PromClient, PrometheusQueryError, render
from bot.steps.prometheus import NO_PROMETHEUS, Matchers, json_number, promql_duration, skip
from bot.steps.registry import StepContext, StepOutput, StepParams, step

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
    data = {"redis_up": json_number(up), "up_ratio": json_number(avg)}
    if up is None:
        return _Section(
            "redis_up: no data", f"no redis_up series for {sel}: is redis_exporter scraped?", data, True
        )
    avail = (
        f"; up {format_value(avg, 'ratio')} of the last {format_duration(p.window)}"
        if avg is not None
        else ""
    )
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
    data: dict[str, Any] = {"used_bytes": json_number(used), "max_bytes": json_number(limit)}
    if used is None:
        return _Section("memory: no data", f"no redis_memory_used_bytes series for {sel}", data, True)
    ratio = used / limit if limit else None
    data["ratio"] = json_number(ratio)
    head = f"memory {human_bytes(used)}" + (
        f" of {human_bytes(limit)} ({ratio:.0%})" if ratio is not None else " (no maxmemory)"
    )
    if fit_now is None or fit_hour is None:
        return _Section(
            f"memory {format_value(ratio, 'ratio') if ratio is not None else human_bytes(used)}",
            f"{head}; not enough history for a trend over {format_duration(p.window)}",
            data,
            ratio is not None and ratio >= p.memory_warn,
        )
    per_hour = fit_hour - fit_now
    data["growth_bytes_per_hour"] = json_number(per_hour)
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
    short = f"memory {format_value(ratio, 'ratio') if ratio is not None else human_bytes(used)}"
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
    data: dict[str, Any] = {
        "hits_per_s": json_number(hits),
        "misses_per_s": json_number(misses),
        "hit_ratio": None,
    }
    span = format_duration(p.window)
    if hits is None or misses is None:
        return _Section("hit ratio: no data", f"no keyspace hit/miss rates for {sel} over {span}", data, True)
    lookups = hits + misses
    if lookups <= 0:
        return _Section("no lookups", f"no cache lookups in the last {span}", data)
    ratio = hits / lookups
    data["hit_ratio"] = json_number(ratio)
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
        "connected": json_number(now),
        "peak": json_number(peak),
        "maxclients": json_number(maxclients),
        "blocked": json_number(blocked),
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
        "commands_per_s": json_number(total_n),
        "avg_seconds": None,
        "slowest": [{"cmd": s.labels.get("cmd", "?"), "avg_seconds": json_number(s.value)} for s in slowest],
    }
    if total_n is None or total_s is None:
        return _Section("latency: no data", f"no command statistics for {sel}", data, True)
    if total_n <= 0:
        return _Section("no commands", f"no commands in the last {format_duration(p.window)}", data)
    avg = total_s / total_n
    data["avg_seconds"] = json_number(avg)
    text = (
        f"commands average {format_value(avg, 'seconds')} over {format_duration(p.window)} ({total_n:,.1f}/s)"
    )
    if slowest:
        text += "; slowest: " + ", ".join(
            f"{s.labels.get('cmd', '?')} {format_value(s.value, 'seconds')}" for s in slowest
        )
    limit = p.latency_warn_ms / 1000
    warn = avg > limit or any(s.value > limit for s in slowest)
    return _Section(f"avg {format_value(avg, 'seconds')}", text, data, warn)


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
    client = ctx.prometheus
    if client is None:
        return StepOutput(summary=NO_PROMETHEUS, status="skipped")
    try:
        matchers = render(p.selector if p.selector is not None else (client.selector or ""), ctx.labels)
    except PrometheusQueryError as exc:
        return skip(str(exc))
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

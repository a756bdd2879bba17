"""Charts people can read on a phone: a PNG of some time series, fitted to the data it has.

What went wrong before, and what this module holds instead:

- the time axis spans the **data** (and the marks inside the query's window), not the window asked
  for: two minutes of data on a one-hour axis was a dot in a corner;
- tick labels are **distinct** at any span, seconds to weeks: the format is chosen from the span
  and made finer until no two ticks read the same (one hour of ``%H`` ticks used to read ``00:00``
  six times when they fell in the same minute);
- few points get **markers** (one point is a visible dot, not an invisible zero-length line);
- the threshold is a dashed line kept inside the y range; when the alert fired and when each action
  ran are vertical marks with their names.

Rendering uses matplotlib's object API (no pyplot, no global state), so it is safe in a worker
thread: callers in the event loop run :func:`render_png` with ``asyncio.to_thread``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bot.formatting import format_value

LINE_COLORS = ("#1f77b4", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
"""Series colours (never red, orange or green: those are the threshold and the marks)."""
THRESHOLD_COLOR = "#d62728"
ALERT_COLOR = "#ff7f0e"
ACTION_COLOR = "#2ca02c"
MARKERS_BELOW = 40
"""Series with fewer points than this get a marker on each point."""
MIN_SPAN = 30.0
"""Seconds the time axis spans at least (one point, or all points at one instant)."""
MAX_CHART_BYTES = 3 * 1024 * 1024
"""A chart bigger than this is neither kept in the store nor shown on the incident page."""


def chart_bytes(path: str | Path) -> bytes | None:
    """The PNG at ``path``, or None when it is not a PNG file or is over :data:`MAX_CHART_BYTES`
    (blocking: callers in the event loop use ``asyncio.to_thread``)."""
    p = Path(path)
    if p.suffix != ".png" or not p.is_file() or p.stat().st_size > MAX_CHART_BYTES:
        return None
    return p.read_bytes()


@dataclass(frozen=True)
class Line:
    """One series to draw: its name in the legend and its (unix time, value) points, oldest first."""

    name: str
    points: Sequence[tuple[float, float]]


@dataclass(frozen=True)
class Mark:
    """A moment to show as a vertical line: ``kind`` is ``alert`` (the alert fired) or ``action``."""

    at: float
    label: str
    kind: str = "action"


@dataclass
class ChartInfo:
    """What was drawn, for tests and for the text next to the picture."""

    ticks: list[str] = field(default_factory=list)
    """The time axis's tick labels, left to right (all different)."""
    plot_box: tuple[int, int, int, int] = (0, 0, 0, 0)
    """The plot area in image pixels: left, top, right, bottom (origin top left)."""
    size: tuple[int, int] = (0, 0)
    span: tuple[float, float] = (0.0, 0.0)
    """The time axis's ends (unix seconds)."""
    marks: list[str] = field(default_factory=list)
    """Labels of the marks that fell on the axis."""
    colors: list[str] = field(default_factory=list)
    """The colour of each series drawn, in order."""


def time_span(
    lines: Sequence[Line], marks: Sequence[Mark], window: tuple[float, float] | None
) -> tuple[float, float]:
    """The time axis: from the first to the last point, widened to the marks inside ``window`` (the
    query's range), and to at least :data:`MIN_SPAN` around the middle."""
    times = [t for line in lines for t, v in line.points if not math.isnan(v)]
    if not times:
        times = [m.at for m in marks] or [0.0]
    lo, hi = min(times), max(times)
    for m in marks:
        if window is None or window[0] <= m.at <= window[1]:
            lo, hi = min(lo, m.at), max(hi, m.at)
    if hi - lo < MIN_SPAN:
        mid = (lo + hi) / 2
        lo, hi = mid - MIN_SPAN / 2, mid + MIN_SPAN / 2
    pad = (hi - lo) * 0.02
    return lo - pad, hi + pad


STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
         172800, 604800)  # fmt: skip
"""Tick spacings in seconds, from a second to a week: the first giving at most 7 ticks is used."""


def _formats(step: int, span: float) -> list[str]:
    """Tick formats for a spacing, coarsest first: the first whose labels all differ wins."""
    if step < 60:
        return ["%H:%M:%S"]
    if step >= 86400:
        return ["%d %b", "%d %b %H:%M"]
    if span > 20 * 3600:
        return ["%a %H:%M", "%d %b %H:%M"]
    return ["%H:%M", "%H:%M:%S"]


def time_ticks(lo: float, hi: float) -> list[tuple[float, str]]:
    """Tick positions (unix seconds, on round UTC times) inside ``[lo, hi]`` and their labels, all
    different."""
    span = max(hi - lo, 1.0)
    step = next((s for s in STEPS if span / s <= 7), STEPS[-1])
    first = math.ceil(lo / step) * step
    moments = [datetime.fromtimestamp(first + i * step, UTC) for i in range(int((hi - first) // step) + 1)]
    labels: list[str] = []
    for fmt in _formats(step, span):
        labels = [m.strftime(fmt) for m in moments]
        if len(set(labels)) == len(labels):
            break
    else:
        labels = [m.strftime("%d %b %H:%M:%S") for m in moments]
    return [(m.timestamp(), label) for m, label in zip(moments, labels, strict=True)]


def _value_range(lines: Sequence[Line], threshold: float | None) -> tuple[float, float]:
    values = [v for line in lines for _, v in line.points if math.isfinite(v)]
    if threshold is not None and math.isfinite(threshold):
        values.append(threshold)
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.12 or abs(hi) * 0.1 or 1.0
    bottom = lo - pad
    if lo >= 0 > bottom:
        bottom = 0.0
    return bottom, hi + pad


def render_png(
    lines: Sequence[Line],
    path: Path,
    *,
    title: str,
    unit: str = "",
    threshold: float | None = None,
    marks: Sequence[Mark] = (),
    window: tuple[float, float] | None = None,
) -> ChartInfo:
    """Draw ``lines`` into a PNG at ``path`` (see the module docstring); blocking, so call it from a
    worker thread when in the event loop. ``window`` is the query's range: marks outside it are left
    out (an alert that fired days before the chart's hour)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter

    lo, hi = time_span(lines, marks, window)
    info = ChartInfo(span=(lo, hi))
    fig = Figure(figsize=(8, 3.6), dpi=100, layout="constrained")
    ax = fig.subplots()

    def num(t: float) -> float:
        return t - lo  # seconds from the axis's left end: plain floats, ticks placed by time_ticks

    for i, line in enumerate(lines[: len(LINE_COLORS)]):
        color = LINE_COLORS[i]
        few = len(line.points) < MARKERS_BELOW
        ax.plot(
            [num(t) for t, _ in line.points],
            [v for _, v in line.points],
            color=color,
            linewidth=2.0,
            marker="o" if few else None,
            markersize=4 if few else 0,
            label=line.name or title,
        )
        info.colors.append(color)
    if threshold is not None:
        ax.axhline(
            threshold, linestyle="--", linewidth=1.5, color=THRESHOLD_COLOR,
            label=f"threshold {format_value(threshold, unit)}",
        )  # fmt: skip
    bottom, top = _value_range(lines, threshold)
    ax.set_ylim(bottom, top)
    ax.set_xlim(num(lo), num(hi))
    for m in marks:
        if not lo <= m.at <= hi:
            continue
        shift = -3 - 11 * (len(info.marks) % 4)  # labels of marks close together do not overlap
        color = ALERT_COLOR if m.kind == "alert" else ACTION_COLOR
        ax.axvline(num(m.at), color=color, linewidth=1.4, linestyle=":" if m.kind == "alert" else "-")
        ax.annotate(
            m.label, xy=(num(m.at), 1.0), xycoords=("data", "axes fraction"), xytext=(3, shift),
            textcoords="offset points", fontsize=7, color=color, va="top",
        )  # fmt: skip
        info.marks.append(m.label)
    ticks = time_ticks(lo, hi)
    info.ticks = [label for _, label in ticks]
    ax.xaxis.set_major_locator(FixedLocator([num(t) for t, _ in ticks]))
    ax.xaxis.set_major_formatter(
        FuncFormatter(lambda _v, pos: info.ticks[pos] if pos < len(info.ticks) else "")
    )
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: format_value(v, unit)))
    day = datetime.fromtimestamp(lo, UTC).strftime("%d %b %Y")
    last = datetime.fromtimestamp(hi, UTC).strftime("%d %b %Y")
    ax.set_xlabel(f"UTC, {day}" + (f" to {last}" if last != day else ""), fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
    if len(lines) > 1 or threshold is not None:  # under the plot: it never hides the data
        fig.legend(fontsize=7, loc="outside lower center", ncols=min(4, len(lines) + 1), frameon=False)
    fig.savefig(path, format="png")
    width, height = fig.canvas.get_width_height()
    box = ax.get_window_extent()
    info.size = (width, height)
    info.plot_box = (int(box.x0), int(height - box.y1), int(box.x1), int(height - box.y0))
    return info

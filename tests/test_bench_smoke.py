"""A smoke run of the benchmarks (``python -m bench --quick``) on a small data set.

It checks that the harness runs end to end and prints each target with its baseline and a met/not
met verdict; it never asserts a timing (the figures belong to bench/RESULTS.md, measured by hand).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # each runs the benchmark harness's servers: about 15 s


def test_quick_bench_prints_the_memory_targets_with_baselines_and_verdicts(tmp_path: Path) -> None:
    raw = tmp_path / "bench.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "memory,dry-run",
            "--keys",
            "20000",
            "--json",
            str(raw),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {(r["bench"].split(",")[0], r["metric"]): r for r in json.loads(raw.read_text())["rows"]}
    floor = rows[("1 memory report", "wall time vs the floor: SCAN COUNT 1000 + Lua MEMORY USAGE")]
    assert floor["baseline"] and floor["ratio"].endswith("x") and floor["target"] == "<= 1.15x"
    assert isinstance(floor["met"], bool)
    same = rows[("1 memory report", "biggest key per type (memory / elements)")]
    assert same["met"] is True, same["note"]
    assert isinstance(rows[("1 memory report", "concurrent PING max (worst run)")]["met"], bool)
    estimate = [r for (b, _), r in rows.items() if b == "1b sampled estimate"]
    assert len(estimate) == 2 and all(isinstance(r["met"], bool) for r in estimate)
    dry = [r for (b, _), r in rows.items() if b.startswith("7 memory-high diagnostics")]
    assert [r["metric"] for r in dry] == [
        "remediation-bot run --dry-run (process) vs the memory report alone",
        "where the dry run's time goes: memory report step / other steps / start-up and the rest",
        "SCAN calls (INFO commandstats), dry run vs report alone",
    ]
    assert isinstance(dry[0]["met"], bool)
    assert dry[2]["met"] is True, dry[2]["note"]  # the plan reuses the report: no second scan
    for metric in ("wall time vs the floor", "remediation-bot run --dry-run", "top namespace"):
        assert metric in out.stdout


def test_quick_ingest_bench_prints_its_three_targets_and_loses_nothing(tmp_path: Path) -> None:
    """The ingest benchmark against the bare aiohttp + SQLite handler, at one low rate for a second:
    the three ratio targets of issue 15 are printed with their baselines and verdicts, and every
    notification the bot answered 200 is in its store (the correctness row must be met)."""
    raw = tmp_path / "bench.json"
    argv = ["--quick", "--only", "ingest", "--rates", "200", "--seconds", "1", "--json", str(raw)]
    out = subprocess.run(
        [sys.executable, "-m", "bench", *argv],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [r for r in json.loads(raw.read_text())["rows"] if r["bench"].startswith("3 webhook ingest")]
    by_target = {r["target"]: r for r in rows if r["target"]}
    assert {"p99 <= 1.5x", ">= 0.9x", "<= 1.3x"} <= set(by_target), sorted(by_target)
    for target in ("p99 <= 1.5x", ">= 0.9x", "<= 1.3x"):
        assert isinstance(by_target[target]["met"], bool) and by_target[target]["baseline"]
    stored = next(r for r in rows if r["metric"] == "every accepted alert stored; re-sends collapsed")
    assert stored["met"] is True, stored["note"]
    assert "server CPU per notification" in out.stdout

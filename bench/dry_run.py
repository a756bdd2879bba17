"""Benchmark 7: the whole memory-high diagnostics as an operator runs them, against the report alone.

``remediation-bot run redis-memory-high --dry-run`` is started as a process (interpreter start-up,
imports, the state store, every step of the playbook: estimate, INFO, clients, MEMORY DOCTOR,
keyspace and TTL samples, policy, the exact memory report, and the plans of the gated steps) and
timed from spawn to exit. The baseline is the memory report alone (:mod:`bench.memreport_child`,
interpreter start-up excluded), on the same server and data, interleaved. The target allows the
rest of the playbook 20 % on top of the report plus 1.2 s of start-up.

The eviction plan of ``agent:*`` must come from the memory report made seconds earlier for the same
incident, not from a second SCAN of the keyspace: INFO commandstats counts the SCAN calls of each
side (calls made from Lua count too), and the plan must say it was counted by the report.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import PY, RedisProc, Results, fmt_s, log, median, tempdir
from bench.dataset import build

FACTOR = 1.2
STARTUP_S = 1.2


def scan_calls(r: RedisProc) -> int:
    stats = r.client.info("commandstats")
    return int(stats.get("cmdstat_scan", {}).get("calls", 0))


def run_report(r: RedisProc) -> dict[str, Any]:
    r.client.config_resetstat()
    out = subprocess.run(
        [PY, "-m", "bench.memreport_child", r.url], capture_output=True, text=True, timeout=1800, check=True
    )
    data: dict[str, Any] = json.loads(out.stdout)
    return {"seconds": data["elapsed_s"], "scans": scan_calls(r)}


def run_dry(r: RedisProc, config: Path) -> dict[str, Any]:
    state = config.parent / "state.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{state}{suffix}").unlink(missing_ok=True)
    r.client.config_resetstat()
    t0 = time.perf_counter()
    out = subprocess.run(
        [PY, "-m", "bot", "run", "redis-memory-high", "--config", str(config), "--dry-run", "--json"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    seconds = time.perf_counter() - t0
    incident = json.loads(out.stdout)
    steps = {s["step_id"]: s for s in incident["steps"]}
    evict = steps.get("evict-agent-cache", {})
    report = steps.get("consumers", {})
    steps_s = sum(float(s.get("duration_s") or 0) for s in incident["steps"])
    return {
        "seconds": seconds,
        "report_step_s": float(report.get("duration_s") or 0),
        "other_steps_s": steps_s - float(report.get("duration_s") or 0),
        "startup_s": seconds - steps_s,
        "scans": scan_calls(r),
        "plan": str(evict.get("summary") or evict.get("error") or ""),
        "plan_status": evict.get("status"),
        "report_keys": (report.get("data") or {}).get("scanned_keys"),
    }


def bench(res: Results, keys: int, runs: int) -> None:
    with tempdir("dryrun") as d, RedisProc(d / "redis") as r:
        log(f"dry run: building {keys:,} keys")
        build(r.client, keys)
        used = r.used_memory()
        # A real memory-high situation: 85 % of maxmemory, noeviction as BullMQ requires.
        r.client.config_set("maxmemory", str(int(used / 0.85)))
        r.client.config_set("maxmemory-policy", "noeviction")
        config = d / "bot.yaml"
        config.write_text(
            f"targets:\n  - match: {{job: redis}}\n    url: {r.url}\nstate_file: {d / 'state.sqlite3'}\n"
        )
        sides: dict[str, list[dict[str, Any]]] = {"dry run": [], "report": []}
        for i in range(runs):
            for side in ["dry run", "report"] if i % 2 == 0 else ["report", "dry run"]:
                m = run_dry(r, config) if side == "dry run" else run_report(r)
                sides[side].append(m)
                log(
                    f"dry run {i + 1}/{runs} {side}: {m['seconds']:.2f} s, SCAN calls {m['scans']};"
                    f" load {os.getloadavg()[0]:.1f}" + (f"; plan: {m['plan'][:110]}" if "plan" in m else "")
                )
    dry, rep = sides["dry run"], sides["report"]
    t_dry = median([m["seconds"] for m in dry])
    t_rep = median([m["seconds"] for m in rep])
    allowed = FACTOR * t_rep + STARTUP_S
    name = f"7 memory-high diagnostics, dry run as a process, {keys / 1e6:g}M keys"
    res.add(
        name,
        "remediation-bot run --dry-run (process) vs the memory report alone",
        fmt_s(t_dry),
        fmt_s(t_rep),
        f"{t_dry / t_rep:.2f}x",
        f"<= {FACTOR:g}x + {STARTUP_S:g} s = {fmt_s(allowed)}",
        t_dry <= allowed,
        note="per run dry/report: "
        + ", ".join(f"{a['seconds']:.2f}/{b['seconds']:.2f}" for a, b in zip(dry, rep, strict=True))
        + " s",
    )
    res.add(
        name,
        "where the dry run's time goes: memory report step / other steps / start-up and the rest",
        " / ".join(
            fmt_s(median([m[k] for m in dry])) for k in ("report_step_s", "other_steps_s", "startup_s")
        ),
        fmt_s(t_rep),
    )
    extra = max(m["scans"] for m in dry) - min(m["scans"] for m in rep)
    reused = all("counted by the memory report" in m["plan"] for m in dry)
    res.add(
        name,
        "SCAN calls (INFO commandstats), dry run vs report alone",
        f"{max(m['scans'] for m in dry):,}",
        f"{min(m['scans'] for m in rep):,}",
        f"+{extra:,}",
        "no second full scan; plan counted by the report",
        reused and extra < min(m["scans"] for m in rep) / 2,
        note="" if reused else f"plan: {dry[0]['plan'][:200]}",
    )
    res.raw["dry_run"] = {"keys": keys, "runs": sides}

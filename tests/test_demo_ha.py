"""``make demo-ha`` runs end to end without a terminal, and Ctrl-C leaves nothing behind.

The demo is run as a newcomer runs it (``python -m bot.demo_ha``): real PostgreSQL, redis-server and
three ``serve`` replicas. The first test checks the story's key lines (a replica runs the incident,
is killed, another takes it over, two approvals make one execution, the queues are untouched) and
that every process it started is gone; the second interrupts it mid-incident, as Ctrl-C would.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.localpg import missing_reason

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or ""),
]


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pids(output: str) -> list[int]:
    """The pids the demo printed for PostgreSQL, redis-server and the replicas."""
    return sorted({int(p) for p in re.findall(r"\(pid (\d+)\)", output)})


@pytest.mark.timeout(300)
def test_demo_ha_kills_a_replica_mid_incident_and_executes_once() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bot.demo_ha", "--yes"],
        cwd=REPO,
        env=ENV,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    started = pids(text)
    assert len(started) == 5, text  # PostgreSQL, redis-server, three replicas
    ran = re.search(r"== (replica-\w) runs incident #(\d+)", text)
    assert ran, text
    victim, inc = ran.group(1), ran.group(2)
    assert f"kill -9 {victim}" in text
    took = re.search(rf"== (replica-\w) took incident #{inc} over ([\d.]+) s after the kill", text)
    assert took and took.group(1) != victim, text
    assert f"audit incident.taken_over: from {victim}" in text
    assert "[interrupted] traffic" in text and "[ok] traffic" in text, "the read-only step ran again"
    codes = sorted(int(c) for c in re.findall(r"approve \d+ --config bot.yaml --yes\s+\(exit (\d)\)", text))
    assert codes == [0, 3], text  # two approvals at once: one executes, one is told it was decided
    assert f"Exactly one execution: 1 action.executed record(s) for incident #{inc}" in text
    assert "BullMQ queue keys untouched: 104 of 104" in text
    assert f"Incident #{inc} is resolved." in text
    assert "HA demo: every check held" in text
    assert [p for p in started if alive(p)] == []


@pytest.mark.timeout(180)
def test_ctrl_c_mid_incident_stops_every_process() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot.demo_ha", "--yes"],
        cwd=REPO,
        env=ENV,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if " runs incident #" in line:
                break
        text = "".join(seen)
        assert " runs incident #" in text, text
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text += rest
    assert proc.returncode == 130, text
    assert "stopped; every process was shut down" in text
    started = pids(text)
    assert len(started) == 5, text
    deadline = time.monotonic() + 5  # the demo waited for each; allow the kernel a moment
    while any(alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p for p in started if alive(p)] == []
    workdir = re.search(r"config\s+(\S+)/bot\.yaml", text)
    assert workdir and not Path(workdir.group(1)).exists(), "the temporary folder is removed"

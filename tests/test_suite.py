"""The test suite's own set-up, as the README's "Develop" section describes it.

- ``make test`` runs the suite on pytest-xdist workers (one per core, a test file per worker) and
  ``make test-fast`` skips the ``e2e`` and ``slow`` markers: the Makefile's commands are read
  with ``make -n``, and the markers are checked on the heavy tests the README names.
- Every worker has servers of its own: the session's redis-server works in this worker's temporary
  folder, PostgreSQL's data folder is held by this worker's server, and the databases it hands out
  carry the worker's name. Two workers sharing a server would flush each other's data mid-test.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bot.localpg import PostgresServer
from tests.conftest import REPO, RedisServer


def make_dry_run(target: str) -> list[str]:
    """The arguments ``make TARGET`` would give pytest (``make -n``: nothing is run)."""
    out = subprocess.run(
        ["make", "-n", "-s", target], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    (line,) = [ln for ln in out.stdout.splitlines() if " -m pytest " in ln]
    argv = shlex.split(line)
    return argv[argv.index("pytest") + 1 :]


def test_make_test_runs_one_worker_per_core_a_file_per_worker() -> None:
    argv = make_dry_run("test")
    assert argv[argv.index("-n") + 1] == "auto" and argv[argv.index("--dist") + 1] == "loadfile"
    assert "--no-loadscope-reorder" in argv, "files go out in collection order: the heavy ones first"
    assert "-m" not in argv, "make test runs every test"


def test_make_test_fast_skips_e2e_and_slow_and_stops_at_the_first_failure() -> None:
    argv = make_dry_run("test-fast")
    assert argv[argv.index("-m") + 1] == "not e2e and not slow" and "-x" in argv
    assert argv[argv.index("-n") + 1] == "auto"


def test_the_heavy_real_stack_tests_are_marked_slow() -> None:
    """What ``make test-fast`` leaves out of the files the README names, and what it keeps."""
    files = ["test_demo_ha.py", "test_chaos.py", "test_sentinel.py", "test_bench_smoke.py"]
    files += ["test_e2e.py", "test_lifecycle_stateful.py", "test_memory_estimate.py"]
    argv = ["--collect-only", "-q", "-p", "no:cacheprovider", "-m", "not e2e and not slow"]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", *argv, *(f"tests/{f}" for f in files)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    kept = {ln.split("[")[0] for ln in out.stdout.splitlines() if "::" in ln}
    for skipped in ("test_demo_ha.py", "test_chaos.py", "test_bench_smoke.py", "test_e2e.py"):
        assert not any(k.startswith(f"tests/{skipped}") for k in kept), (skipped, out.stdout)
    machine = "tests/test_lifecycle_stateful.py::test_lifecycle_holds_its_invariants_under_random_events"
    failover = (
        "tests/test_sentinel.py::test_a_failover_between_approval_and_execution_replans_on_the_new_primary"
    )
    estimate = (
        "tests/test_memory_estimate.py::test_estimate_on_a_million_keys_is_fast_and_within_three_points"
    )
    assert machine not in kept and failover not in kept and estimate not in kept, out.stdout
    # The quick tests of the same files stay in the fast run.
    assert "tests/test_sentinel.py::test_a_target_is_a_url_or_a_sentinel" in kept, out.stdout
    assert any(k.startswith("tests/test_lifecycle_stateful.py::test_a_") for k in kept), out.stdout
    assert "tests/test_memory_estimate.py::test_the_eviction_plan_reuses_the_incidents_memory_report" in kept


def test_the_session_servers_are_this_workers_own(
    redis_server: RedisServer,
    pg_server: PostgresServer,
    pg_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    assert redis_server.workdir.is_relative_to(tmp_path_factory.getbasetemp())
    assert redis_server.proc is not None and pg_server.proc is not None
    # The data folder's lock file names the postmaster holding it: this worker's server.
    assert int((pg_server.data_dir / "postmaster.pid").read_text().split()[0]) == pg_server.proc.pid
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    assert Path(pg_url).name.startswith(f"test_{worker}_"), pg_url


def test_files_with_heavy_tests_are_collected_first() -> None:
    """The order ``make test`` hands files to its workers: a long file started last would leave one
    worker running it alone at the end of the run."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_config.py",
            "tests/test_demo_ha.py",
            "tests/test_keypatterns.py",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    files = [ln.split("::")[0] for ln in out.stdout.splitlines() if "::" in ln]
    order = list(dict.fromkeys(files))
    assert order == ["tests/test_demo_ha.py", "tests/test_config.py", "tests/test_keypatterns.py"], out.stdout

"""Playbooks: every shipped one loads and maps to its runbook alert; broken ones give exact messages."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bot.config import BUNDLED_PLAYBOOKS
from bot.errors import ConfigError
from bot.playbook import load_playbooks

BROKEN = Path(__file__).parent / "fixtures" / "broken_playbooks"


def test_shipped_playbooks_load_and_cover_the_runbook() -> None:
    pbs = load_playbooks(BUNDLED_PLAYBOOKS)
    assert sorted(p.name for p in pbs.playbooks) == [
        "redis-down",
        "redis-hit-rate-low",
        "redis-latency-high",
        "redis-memory-high",
        "redis-oom",
    ]
    for alertname, playbook in [
        ("RedisMemoryUsageHigh", "redis-memory-high"),
        ("RedisOutOfMemory", "redis-oom"),
        ("RedisHitRateLow", "redis-hit-rate-low"),
        ("RedisLatencyHigh", "redis-latency-high"),
        ("RedisDown", "redis-down"),
    ]:
        pb = pbs.match({"alertname": alertname, "job": "redis"})
        assert pb is not None and pb.name == playbook
    assert pbs.match({"alertname": "SomethingElse"}) is None


def test_runbook_order_of_preference_in_memory_playbook() -> None:
    pb = load_playbooks(BUNDLED_PLAYBOOKS).by_name["redis-memory-high"]
    kinds = [s.type.name for s in pb.steps]
    first_action = next(i for i, s in enumerate(pb.steps) if s.mutating)
    assert all(not s.mutating for s in pb.steps[:first_action])
    assert kinds.index("redis.evict") < kinds.index("redis.set_maxmemory") < kinds.index("redis.flushdb")
    flush = next(s for s in pb.steps if s.type.name == "redis.flushdb")
    assert flush.when == "unresolved"
    assert not any(
        s.type.name == "redis.monitor_sample"
        for p in load_playbooks(BUNDLED_PLAYBOOKS).playbooks
        for s in p.steps
    ), "MONITOR is costly: never in automatic playbooks"


def test_broken_playbooks_report_every_problem_with_file_and_field(tmp_path: Path) -> None:
    for f in BROKEN.glob("*.yaml"):
        shutil.copy(f, tmp_path / f.name)
    with pytest.raises(ConfigError) as err:
        load_playbooks(tmp_path)
    got = sorted(str(p).replace(str(tmp_path) + "/", "") for p in err.value.problems)
    expected = sorted((BROKEN / "expected.txt").read_text().strip().splitlines())
    assert got == expected


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no playbooks"):
        load_playbooks(tmp_path)

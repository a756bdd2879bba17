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


def test_matching_by_alertname_keeps_the_first_playbook_in_file_order() -> None:
    """The webhook tries only the playbooks whose alertname matcher admits the alert's alertname
    (remembered per alertname), yet the first matching playbook in file order still wins, whether
    it names the alertname exactly, by regex, or not at all."""
    from bot.config import LabelMatcher
    from bot.playbook import Playbook, PlaybookSet

    def pb(name: str, **matchers: dict[str, str]) -> Playbook:
        return Playbook(name, "", "", LabelMatcher(**matchers), (), False, f"{name}.yaml")

    pbs = PlaybookSet(
        [
            pb("a-exact", match={"alertname": "A", "severity": "page"}),
            pb("b-regex", match_re={"alertname": "A|B"}),
            pb("c-any-alertname", match={"team": "cache"}),
            pb("d-exact", match={"alertname": "A"}),
        ]
    )
    assert pbs.match({"alertname": "A", "severity": "page"}).name == "a-exact"  # type: ignore[union-attr]
    assert pbs.match({"alertname": "A"}).name == "b-regex"  # type: ignore[union-attr]
    assert pbs.match({"alertname": "B", "team": "cache"}).name == "b-regex"  # type: ignore[union-attr]
    assert pbs.match({"alertname": "C", "team": "cache"}).name == "c-any-alertname"  # type: ignore[union-attr]
    assert pbs.match({"team": "cache"}).name == "c-any-alertname"  # type: ignore[union-attr]
    assert pbs.match({"alertname": "C"}) is None
    assert pbs.match({"alertname": "A", "severity": "page"}).name == "a-exact"  # type: ignore[union-attr]  # memo
    for n in range(5000):  # the memo of alertnames stays bounded against a sender inventing names
        assert pbs.match({"alertname": f"X{n}"}) is None
    assert len(pbs._candidates) <= 4096
    assert pbs.match({"alertname": "B"}).name == "b-regex"  # type: ignore[union-attr]

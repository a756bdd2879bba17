"""Deployment files: alert rules checked and unit-tested by promtool, Alertmanager config by amtool,
and the Kubernetes manifests consistent with the bot (config valid, probes on the right paths)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from bot.config import BUNDLED_PLAYBOOKS, load_config
from bot.playbook import load_playbooks

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "redis-alerts.yml"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: run `make install` (Debian packages prometheus, prometheus-alertmanager)"
        )
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    promtool = tool("promtool")
    check = run(promtool, "check", "rules", str(RULES))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 5 rules found" in check.stdout
    unit = run(promtool, "test", "rules", str(DEPLOY / "prometheus" / "redis-alerts.test.yml"))
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_every_alert_has_a_playbook() -> None:
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    playbooks = load_playbooks(BUNDLED_PLAYBOOKS)
    names = {r["alert"] for r in rules}
    assert names == {
        "RedisMemoryUsageHigh",
        "RedisOutOfMemory",
        "RedisHitRateLow",
        "RedisLatencyHigh",
        "RedisDown",
    }
    for name in names:
        assert playbooks.match({"alertname": name, "job": "redis"}) is not None, name


def test_alertmanager_example_is_valid_and_routes_to_the_bot() -> None:
    path = DEPLOY / "alertmanager" / "alertmanager.yml"
    out = run(tool("amtool"), "check-config", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    config = yaml.safe_load(path.read_text())
    (hook,) = next(r for r in config["receivers"] if r["name"] == "remediation-bot")["webhook_configs"]
    assert hook["url"].endswith("/alerts") and hook["send_resolved"] is True
    assert hook["http_config"]["authorization"]["type"] == "Bearer"


def test_kubernetes_manifests_match_the_bot(tmp_path: Path) -> None:
    docs = {
        d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / "remediation-bot.yaml").read_text())
    }
    assert {"ConfigMap", "Secret", "Deployment", "Service", "PersistentVolumeClaim"} <= set(docs)
    text = docs["ConfigMap"]["data"]["bot.yaml"].replace(
        "/etc/remediation-bot/playbooks", str(BUNDLED_PLAYBOOKS)
    )
    text = text.replace("/var/lib/remediation-bot/state.sqlite3", str(tmp_path / "state.sqlite3"))
    (tmp_path / "bot.yaml").write_text(text)
    config = load_config(tmp_path / "bot.yaml", env={"REDIS_PASSWORD": "x"})
    assert config.server.host == "0.0.0.0"
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert set(docs["Secret"]["stringData"]) >= {"BOT_WEBHOOK_TOKEN", "REDIS_PASSWORD"}

"""Deployment files: alert rules checked and unit-tested by promtool, Alertmanager config by amtool,
and the Kubernetes manifests (one replica on SQLite, three on PostgreSQL) consistent with the bot
(config valid with the Secret's variables, probes on routes the bot serves, replicas and PDB)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.app import create_app
from bot.config import BUNDLED_PLAYBOOKS, Config, database_url_problem, load_config
from bot.errors import ConfigError
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


KUBERNETES = DEPLOY / "kubernetes"
SINGLE, HA = KUBERNETES / "remediation-bot.yaml", KUBERNETES / "remediation-bot-ha.yaml"
POD_LABELS = {"app.kubernetes.io/name": "remediation-bot"}


def manifests(path: Path) -> dict[str, dict[str, Any]]:
    """The manifest's documents by kind (one of each)."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert len(kinds) == len(set(kinds)), f"{path.name}: one document per kind, got {kinds}"
    return {d["kind"]: d for d in docs}


def bot_config(docs: dict[str, dict[str, Any]], tmp_path: Path) -> Config:
    """The ConfigMap's bot.yaml loaded by the bot itself, with the Secret's values as environment
    (as ``envFrom: secretRef`` gives them): unknown keys, bad values and unset ``${VAR}`` fail here."""
    text = docs["ConfigMap"]["data"]["bot.yaml"].replace(
        "/etc/remediation-bot/playbooks", str(BUNDLED_PLAYBOOKS)
    )
    text = text.replace("/var/lib/remediation-bot/", f"{tmp_path}/")
    (tmp_path / "bot.yaml").write_text(text)
    env = {k: v or "x" for k, v in docs["Secret"]["stringData"].items()}
    return load_config(tmp_path / "bot.yaml", env=env)


@pytest.mark.parametrize("path", [SINGLE, HA], ids=["sqlite-single", "postgres-ha"])
def test_kubernetes_manifests_match_the_bot(path: Path, tmp_path: Path) -> None:
    docs = manifests(path)
    assert {"ConfigMap", "Secret", "Deployment", "Service"} <= set(docs)
    config = bot_config(docs, tmp_path)
    assert config.server.host == "0.0.0.0"
    assert config.server.port == 8080
    deployment = docs["Deployment"]["spec"]
    pod = deployment["template"]["spec"]
    (container,) = pod["containers"]
    # The probes name routes the bot serves: /healthz (alive) and /readyz (the store answers).
    routes = {
        r.resource.canonical for r in create_app(config, webhook_token="").router.routes() if r.resource
    }
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in routes
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in routes
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == config.server.port
    assert container["livenessProbe"]["httpGet"]["port"] == "http"
    assert container["readinessProbe"]["httpGet"]["port"] == "http"
    assert container["args"][:3] == ["serve", "--config", "/etc/remediation-bot/bot.yaml"]
    assert [s["secretRef"]["name"] for s in container["envFrom"]] == [docs["Secret"]["metadata"]["name"]]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(config.state_file.parent).replace(str(tmp_path), "/var/lib/remediation-bot") in mounts, (
        "the state file's folder (SQLite, charts) is writable"
    )
    assert set(docs["Secret"]["stringData"]) >= {"BOT_WEBHOOK_TOKEN", "REDIS_PASSWORD"}
    assert deployment["selector"]["matchLabels"] == POD_LABELS == deployment["template"]["metadata"]["labels"]
    assert docs["Service"]["spec"]["selector"] == POD_LABELS


def test_single_replica_manifest_keeps_sqlite_on_a_volume(tmp_path: Path) -> None:
    docs = manifests(SINGLE)
    config = bot_config(docs, tmp_path)
    assert config.backend == "sqlite"
    spec = docs["Deployment"]["spec"]
    assert spec["replicas"] == 1, "SQLite has one writer"
    assert spec["strategy"]["type"] == "Recreate", (
        "the old pod lets go of the volume before the new one starts"
    )
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    claim = volumes["state"]["persistentVolumeClaim"]["claimName"]
    assert claim == docs["PersistentVolumeClaim"]["metadata"]["name"]


def test_ha_manifest_runs_three_replicas_on_postgresql(tmp_path: Path) -> None:
    docs = manifests(HA)
    assert "PersistentVolumeClaim" not in docs, "no replica keeps state of its own"
    config = bot_config(docs, tmp_path)
    assert config.backend == "postgres"
    secret = docs["Secret"]["stringData"]
    assert database_url_problem(secret["BOT_DATABASE_URL"]) is None
    assert "@" in secret["BOT_DATABASE_URL"] and "PGPASSWORD" in secret, "the password from the Secret"
    # The URL is required: without it the config does not load (no silent private SQLite per pod).
    env = {k: v or "x" for k, v in secret.items() if k != "BOT_DATABASE_URL"}
    with pytest.raises(ConfigError, match="BOT_DATABASE_URL"):
        load_config(tmp_path / "bot.yaml", env=env)
    assert config.runner.lease_ttl == 10.0
    spec = docs["Deployment"]["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["type"] == "RollingUpdate"
    pdb = docs["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
    assert pdb.get("minAvailable") == 2 or pdb.get("maxUnavailable") == 1, pdb
    assert docs["PodDisruptionBudget"]["apiVersion"] == "policy/v1"
    (spread,) = spec["template"]["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    (container,) = spec["template"]["spec"]["containers"]
    assert (
        container["readinessProbe"].get("failureThreshold", 3) * container["readinessProbe"]["periodSeconds"]
        <= 15
    )

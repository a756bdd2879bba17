"""Config loading: defaults, env interpolation, target matching, and every problem reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import BUNDLED_PLAYBOOKS, load_config
from bot.errors import ConfigError, TargetError

MINIMAL = "targets:\n  - match: {job: redis}\n    url: redis://127.0.0.1:6379/0\n"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bot.yaml"
    p.write_text(text)
    return p


def test_minimal_config_gets_sane_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.playbooks == BUNDLED_PLAYBOOKS
    assert cfg.state_file == tmp_path / "remediation-bot.sqlite3"
    assert cfg.protected_patterns == ["bull:*"]
    assert cfg.approvals.ttl == 900
    assert cfg.guardrails.max_actions_per_hour == 3
    assert cfg.target_for({"job": "redis", "instance": "x:9121"}) is cfg.targets[0]
    assert cfg.target_for({"job": "other"}) is None


def test_protected_patterns_extend_and_keep_bullmq(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + "protected_patterns: ['sess:*', 'rl:*']\n"))
    assert cfg.protected_patterns == ["bull:*", "sess:*", "rl:*"]


def test_env_interpolation_and_missing_variable(tmp_path: Path) -> None:
    text = "targets:\n  - match: {job: redis}\n    url: redis://:${REDIS_PW}@127.0.0.1:${PORT:-6380}/1\n"
    cfg = load_config(write(tmp_path, text), env={"REDIS_PW": "s3cret"})
    assert cfg.targets[0].url == "redis://:s3cret@127.0.0.1:6380/1"
    target = cfg.targets[0].resolve({})
    assert "s3cret" not in target.name and "s3cret" not in target.display_url
    assert target.db == 1
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), env={})
    assert [str(p) for p in err.value.problems] == [
        f"{tmp_path / 'bot.yaml'}: targets[0].url: environment variable REDIS_PW is not set"
    ]


def test_every_problem_is_reported_with_file_and_field(tmp_path: Path) -> None:
    text = (
        "targets:\n"
        "  - match: {job: redis}\n"
        "    match_re: {instance: '([a-z'}\n"
        "    url: http://127.0.0.1:6379\n"
        "  - url: redis://127.0.0.1/0\n"
        "    colour: blue\n"
        "approvals: {ttl: soon}\n"
        "server: {port: 70000}\n"
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    got = sorted(str(p) for p in err.value.problems)
    f = str(path)
    assert got == sorted(
        [
            f"{f}: targets[0].match_re.instance: invalid regular expression '([a-z': unterminated character set at position 1",
            f"{f}: targets[0].url: must start with one of redis://, rediss://, unix://",
            f"{f}: targets[1].colour: unknown field (check the spelling)",
            f"{f}: approvals.ttl: invalid duration 'soon': use e.g. 500ms, 30s, 5m, 1h30m",
            f"{f}: server.port: Input should be less than or equal to 65535",
        ]
    )
    assert str(err.value).startswith("5 problems found:")


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "targets:\n  - match: {job: [redis}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    (problem,) = err.value.problems
    assert problem.file == str(path)
    assert problem.field.startswith("line 2, column")
    assert "invalid YAML" in problem.message


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="targets: Field required"):
        load_config(write(tmp_path, ""))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_target_url_from_labels_for_exporter_alerts(tmp_path: Path) -> None:
    text = (
        "targets:\n"
        "  - match_re: {instance: '.*:9121'}\n"
        "    name: '{{ labels.redis }}'\n"
        "    url: 'redis://{{ labels.redis }}/0'\n"
        "    allowed_addresses: ['cache-*:6379']\n"
    )
    cfg = load_config(write(tmp_path, text))
    t = cfg.target_for({"instance": "exporter:9121", "redis": "cache-1:6379"})
    assert t is not None
    resolved = t.resolve({"instance": "exporter:9121", "redis": "cache-1:6379"})
    assert resolved.url == "redis://cache-1:6379/0"
    with pytest.raises(TargetError, match="needs label 'redis'"):
        t.resolve({"instance": "exporter:9121"})
    with pytest.raises(ConfigError, match=r"templates must look like \{\{ labels.NAME \}\}"):
        load_config(write(tmp_path, "targets:\n  - url: 'redis://{{ instance }}/0'\n"))


def test_database_url_selects_the_backend_with_the_password_from_the_environment(tmp_path: Path) -> None:
    text = MINIMAL + "database_url: postgresql://bot:${PGPW}@db.internal:5433/bot?sslmode=require\n"
    cfg = load_config(write(tmp_path, text), env={"PGPW": "s3cret"})
    assert cfg.backend == "postgres"
    assert cfg.database_url == "postgresql://bot:s3cret@db.internal:5433/bot?sslmode=require"
    assert cfg.state_location == "postgresql://bot:***@db.internal:5433/bot?sslmode=require"
    assert load_config(write(tmp_path, MINIMAL)).backend == "sqlite", "SQLite stays the default"


def test_sqlite_url_is_the_state_file_shorthand(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + "database_url: sqlite://state/bot.sqlite3\n"))
    assert cfg.backend == "sqlite" and cfg.state_file == tmp_path / "state" / "bot.sqlite3"
    absolute = load_config(write(tmp_path, MINIMAL + f"database_url: sqlite://{tmp_path}/abs.db\n"))
    assert absolute.state_file == tmp_path / "abs.db"


def test_bot_database_url_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "database_url: sqlite://x.db\n")
    cfg = load_config(path, env={"BOT_DATABASE_URL": "postgresql://bot@pg:5432/bot"})
    assert cfg.backend == "postgres" and cfg.database_url == "postgresql://bot@pg:5432/bot"
    with pytest.raises(ConfigError) as err:
        load_config(path, env={"BOT_DATABASE_URL": "mysql://x"})
    assert [p.field for p in err.value.problems] == ["BOT_DATABASE_URL"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://bot@db/bot", "unknown scheme 'mysql'"),
        ("db.internal:5432", "expected sqlite://PATH or postgresql://"),
        ("postgresql://bot@db.internal:5432", "needs a database name"),
        ("postgresql:///bot", "needs a host"),
        ("postgresql://bot@db.internal:99999/bot", "invalid URL"),
        ("sqlite://", "needs a file path"),
    ],
)
def test_check_reports_a_malformed_database_url(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, MINIMAL + f"database_url: '{url}'\n"), env={})
    (problem,) = err.value.problems
    assert problem.field == "database_url" and message in problem.message, problem

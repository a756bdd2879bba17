"""Typed configuration: one YAML file, secrets from the environment, every problem reported at once.

The minimal file is just a list of targets::

    targets:
      - match: {job: redis}
        url: redis://127.0.0.1:6379/0

Everything else has a default: the bundled ``playbooks/``, a SQLite state file beside the config,
and protected key patterns that always include BullMQ's ``bull:*``. Several replicas share a
PostgreSQL database instead: ``database_url: postgresql://bot@db:5432/bot`` (or the environment's
``BOT_DATABASE_URL``), see :func:`database_url_problem`.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from bot.config_chatops import AlertmanagerConfig, UiConfig
from bot.config_jobs import (
    SchedulerConfig,
)
from bot.config_targets import ByteSize as ByteSize  # re-exported, as the names below
from bot.config_targets import LabelMatcher as LabelMatcher
from bot.config_targets import Regex as Regex
from bot.config_targets import TargetConfig as TargetConfig
from bot.durations import Duration
from bot.errors import ConfigError, Problem
from bot.prom import DEFAULT_SELECTOR, template_problems
from bot.validation import StrictModel, interpolate_env, load_yaml, validation_problems


def _bundled_playbooks() -> Path:
    """The repo's ``playbooks/`` in a checkout, else the copy a wheel installs under ``share/``."""
    here = Path(__file__).resolve().parent.parent / "playbooks"
    installed = Path(sys.prefix) / "share" / "remediation-bot" / "playbooks"
    return here if here.is_dir() or not installed.is_dir() else installed


BUNDLED_PLAYBOOKS = _bundled_playbooks()
ALWAYS_PROTECTED = ("bull:*",)
"""BullMQ's queues: deleting them loses jobs, so no config can unprotect them."""

_ACCOUNT = re.compile(r"[\w.@$-]+")


class ServerConfig(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: ByteSize = 4 * 1024 * 1024
    body_timeout: Duration = Field(default=5.0, gt=0)  # a body slower than this gets 408
    header_timeout: Duration = Field(default=10.0, gt=0)  # no complete headers by then: closed
    allow_unauthenticated: bool = Field(
        default=False,
        description="Serve POST /alerts without BOT_WEBHOOK_TOKEN on a non-loopback address (see bot.preflight).",
    )


class RunnerConfig(StrictModel):
    concurrency: int = Field(default=4, ge=1, le=64)
    lease_ttl: Duration = Field(default=10.0, ge=3.0)
    """How long an incident stays with the process running it without a heartbeat: when that process
    dies, another one takes the incident over after at most this long."""
    redis_timeout: Duration = 5.0
    default_step_timeout: Duration = 60.0


class ApprovalConfig(StrictModel):
    """How long approvals live, and who may decide from the command line.

    ``cli_approvers`` are OS account names. Empty means any local account, but only for steps that
    need one approver: on one machine, accounts are all the CLI can tell apart, so a two-person
    step counts a CLI decision only from a listed account. ``allow_self_approval`` lets whoever
    asked for an action (``/redis evict``, ``run``) approve it too; off by default.
    """

    ttl: Duration = 900.0
    plan_margin: float = Field(default=0.2, ge=0.0, le=10.0)
    cli_approvers: list[str] = Field(default_factory=list)
    allow_self_approval: bool = False

    @field_validator("cli_approvers")
    @classmethod
    def _check_accounts(cls, v: list[str]) -> list[str]:
        for name in v:
            if name.startswith("cli:"):
                raise ValueError(f"{name!r}: write the OS account name alone ({name.removeprefix('cli:')!r})")
            if not _ACCOUNT.fullmatch(name):
                raise ValueError(f"{name!r} is not an OS account name (letters, digits, . _ - @ $)")
        return v


class GuardrailConfig(StrictModel):
    dry_run: bool = False
    kill_switch: bool = False
    max_actions_per_hour: int = Field(default=3, ge=0)
    pause_after_failures: int = Field(default=2, ge=1)
    max_keys_per_run: int = Field(default=1_000_000, ge=1)
    max_bytes_per_run: ByteSize | None = Field(
        default=None,
        description="an eviction estimated to free more than this is refused (none: no byte cap)",
    )


_MENTION = re.compile(r"^(?:[UWS][A-Z0-9]{2,}|@?[a-z0-9][a-z0-9._-]*)$")


class SlackConfig(StrictModel):
    """Where incidents go in Slack, who may approve, and who is called when a human is needed.

    ``mention``: who an approval request, its reminder and an escalation mention (user IDs ``U…``,
    user group IDs ``S…`` or handles, ``@here``); unset means the approver group and the approvers,
    ``[]`` nobody. ``incident_url``: your incident tool's page instead of the bot's own (a signed
    link to ``/incidents/{id}``), ``{id}`` replaced by the incident's number. ``min_interval``: at most one
    message or edit per channel this often (Slack allows about one a second; bursts queue).
    """

    channel: str | None = None
    approvers: list[str] = Field(default_factory=list)
    approver_group: str | None = None
    mention: list[str] | None = None
    remind: bool = True
    details: Literal["file", "command"] = "file"
    incident_url: str | None = None
    min_interval: Duration = Field(default=1.0, ge=0.0, le=60.0)
    silencers: list[str] | None = None
    """Who may silence and acknowledge (user IDs); unset: the approvers (and their group)."""
    silencer_group: str | None = None

    @field_validator("mention")
    @classmethod
    def _check_mentions(cls, v: list[str] | None) -> list[str] | None:
        for m in v or []:
            if not _MENTION.fullmatch(m):
                raise ValueError(f"{m!r}: a user ID (U…), a user group ID (S…) or handle, or @here")
        return v

    @field_validator("incident_url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https:// ({id} is replaced by the incident number)")
        return v


class PrometheusConfig(StrictModel):
    """Where Prometheus steps, charts and the digest read metrics. Without this section, Prometheus
    steps in playbooks are skipped (status ``skipped``), so the bundled playbooks work either way.

    Credentials come from the environment, never from this file: ``PROMETHEUS_BEARER_TOKEN``, or
    ``PROMETHEUS_USERNAME`` and ``PROMETHEUS_PASSWORD``.
    """

    url: str
    timeout: Duration = 10.0
    verify_tls: bool = True
    selector: str = Field(
        default=DEFAULT_SELECTOR,
        description="Label matchers (no braces) selecting the alert's Redis series; {{ selector }} in queries.",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https:// (e.g. http://prometheus:9090)")
        return v.rstrip("/")

    @field_validator("selector")
    @classmethod
    def _check_selector(cls, v: str) -> str:
        problems = template_problems(v)
        if re.search(r"\{\{\s*selector\s*\}\}", v):
            problems.append("the selector cannot refer to itself")
        if v.strip().startswith("{") and not v.strip().startswith("{{"):
            problems.append('write the matchers without braces, e.g. instance="{{ labels.instance }}"')
        if problems:
            raise ValueError("; ".join(problems))
        return v


DATABASE_URL_VAR = "BOT_DATABASE_URL"
"""Overrides ``database_url`` of the file (a Kubernetes Secret, one image for every environment)."""
_PG_SCHEMES = ("postgresql", "postgres")


def database_url_problem(url: str) -> str | None:
    """What is wrong with a ``database_url``, or None. Two forms:

    - ``sqlite://PATH``: the embedded store in one file (``sqlite:///var/lib/bot/state.sqlite3``;
      a relative path is taken from the config file's folder). Same as ``state_file: PATH``.
    - ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=...]``: shared by replicas. Keep
      the password out of the file: ``${PGPASSWORD}`` (URL-encoded if it has ``@:/?#``), or leave it
      out and set ``PGPASSWORD`` in the environment.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "expected sqlite://PATH or postgresql://USER@HOST:PORT/DATABASE"
    if scheme == "sqlite":
        return (
            None if rest.strip() else "sqlite:// needs a file path, e.g. sqlite:///var/lib/bot/state.sqlite3"
        )
    if scheme not in _PG_SCHEMES:
        return f"unknown scheme {scheme!r}: expected sqlite:// or postgresql://"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"invalid URL: {exc}"
    if not parts.hostname:
        return "postgresql:// needs a host, e.g. postgresql://bot@db:5432/bot"
    if port == 0:
        return "invalid port 0"
    if not parts.path.strip("/"):
        return "postgresql:// needs a database name, e.g. postgresql://bot@db:5432/bot"
    return None


class Config(StrictModel):
    """The whole bot configuration. Build it with :func:`load_config`, which reports every problem."""

    targets: list[TargetConfig] = Field(min_length=1)
    playbooks: Path = BUNDLED_PLAYBOOKS
    state_file: Path = Path("remediation-bot.sqlite3")
    database_url: str | None = Field(
        default=None,
        description="sqlite://PATH or postgresql://USER@HOST:PORT/DB (env BOT_DATABASE_URL overrides); "
        "unset: the SQLite state_file.",
    )
    protected_patterns: list[str] = Field(default_factory=list)
    server: ServerConfig = ServerConfig()
    runner: RunnerConfig = RunnerConfig()
    approvals: ApprovalConfig = ApprovalConfig()
    guardrails: GuardrailConfig = GuardrailConfig()
    slack: SlackConfig = SlackConfig()
    prometheus: PrometheusConfig | None = None
    alertmanager: AlertmanagerConfig | None = None
    ui: UiConfig = UiConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: str | None) -> str | None:
        if v is not None and (problem := database_url_problem(v)):
            raise ValueError(problem)
        return v

    @property
    def backend(self) -> str:
        """``postgres`` when ``database_url`` names a PostgreSQL database, else ``sqlite``."""
        url = self.database_url or ""
        return "postgres" if url.partition("://")[0] in _PG_SCHEMES else "sqlite"

    @property
    def state_location(self) -> str:
        """Where the state is, for messages: the database URL without its password, or the file."""
        if self.backend != "postgres" or not self.database_url:
            return str(self.state_file)
        parts = urlsplit(self.database_url)
        if parts.password is None:
            return self.database_url
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))

    @field_validator("protected_patterns")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p.strip():
                raise ValueError("a protected pattern may not be blank")
        return v

    @model_validator(mode="after")
    def _always_protect(self) -> Self:
        merged = list(dict.fromkeys([*ALWAYS_PROTECTED, *self.protected_patterns]))
        object.__setattr__(self, "protected_patterns", merged)
        return self

    def target_for(self, labels: dict[str, str]) -> TargetConfig | None:
        """The first target whose matchers hold for these alert labels."""
        for t in self.targets:
            if t.matches(labels):
                return t
        return None


def load_config(path: str | Path, env: dict[str, str] | None = None) -> Config:
    """Load and validate a config file; raise :class:`ConfigError` listing every problem found.

    Relative paths (playbooks, state file) are taken relative to the config file's folder, so the
    bot behaves the same whatever directory it is started from.
    """
    path = Path(path)
    file = str(path)
    problems: list[Problem] = []
    raw = load_yaml(path, problems)
    if problems:
        raise ConfigError(problems)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([Problem(file, "", "expected a mapping at the top level (targets: ...)")])
    data: dict[str, Any] = interpolate_env(raw, file, problems, env=env)
    base = path.resolve().parent
    override = (os.environ if env is None else env).get(DATABASE_URL_VAR, "").strip()
    if override:
        if problem := database_url_problem(override):
            problems.append(Problem(file, DATABASE_URL_VAR, f"(environment) {problem}"))
        else:
            data["database_url"] = override
    url = data.get("database_url")
    if isinstance(url, str) and url.startswith("sqlite://") and url.removeprefix("sqlite://").strip():
        data["state_file"] = url.removeprefix("sqlite://")  # the SQLite shorthand is the same thing
    for key in ("playbooks", "state_file"):
        if isinstance(data.get(key), str):
            data[key] = base / data[key]
    data.setdefault("state_file", base / "remediation-bot.sqlite3")
    try:
        config = Config.model_validate({**data, "source": path})
    except ValidationError as exc:
        problems.extend(validation_problems(file, exc))
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    if not config.playbooks.is_dir():
        raise ConfigError([Problem(file, "playbooks", f"folder {config.playbooks} does not exist")])
    return config

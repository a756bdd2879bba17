"""``remediation-bot check`` against the live targets: is each Redis reachable, protected, permitted?

For every target whose address is written in the config (templated ones are named, not probed),
with a short timeout, ``check`` reports:

- reachable: PING and the Redis version, or why not (refused, timeout, DNS);
- authentication: the URL's credentials accepted, or a clear "wrong password" / "needs a password";
- an open door: a connection *without* credentials answering PING means the default user has
  ``nopass`` (anyone who can reach the port can read and delete): a warning;
- TLS: ``rediss://`` with ``ssl_cert_reqs=none`` (also without a connection, in ``--offline``);
- CONFIG: available, or refused (managed Redis: ``set_maxmemory`` and thresholds then say so);
- ACL: with ``ACL DRYRUN`` (Redis >= 7), whether the diagnostics user may run the commands the
  diagnostics use, and the ``action_url`` user the commands of the playbooks' actions.

Findings never fail ``check`` on their own: a Redis may be down while a config is validated in CI.
``--strict`` makes any warning exit 1.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis import exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bot.config import Config, TargetConfig
from bot.playbook import PlaybookSet
from bot.redisconn import redact_url

Level = Literal["ok", "note", "warn"]
PROBE_KEY = "remediation-bot:acl-check"
READ_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("INFO",),
    ("DBSIZE",),
    ("SCAN", "0"),
    ("TYPE", PROBE_KEY),
    ("MEMORY", "USAGE", PROBE_KEY),
    ("SLOWLOG", "GET", "10"),
    ("LATENCY", "LATEST"),
    ("CLIENT", "LIST"),
    ("CONFIG", "GET", "maxmemory"),
    ("EVAL", "return 1", "0"),
    ("EVALSHA", "0" * 40, "0"),
)
"""What the diagnostics send (keys only through SCAN, so any key name stands for them)."""
ACTION_COMMANDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "redis.evict": (("SCAN", "0"), ("UNLINK", "{key}")),
    "redis.set_maxmemory": (("CONFIG", "SET", "maxmemory", "0"),),
    "redis.bgsave": (("BGSAVE",),),
    "redis.flushdb": (("BGSAVE",), ("FLUSHDB", "ASYNC")),
    "redis.client_kill": (("CLIENT", "ID"), ("CLIENT", "KILL", "ID", "0")),
    "redis.memory_purge": (("MEMORY", "PURGE"),),
}
"""What each action step type sends; ``{key}`` is a key its playbook's pattern matches."""


@dataclass(frozen=True)
class Finding:
    level: Level
    text: str


@dataclass
class TargetReport:
    name: str
    url: str
    findings: list[Finding] = field(default_factory=list)

    def add(self, level: Level, text: str) -> None:
        self.findings.append(Finding(level, text))

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.level == "warn")


def action_commands(playbooks: PlaybookSet) -> list[tuple[str, ...]]:
    """The commands the playbooks' action steps send, with sample keys their patterns match."""
    found: dict[tuple[str, ...], None] = {}
    for pb in playbooks.playbooks:
        for step in pb.steps:
            pattern = str(getattr(step.params, "pattern", "") or PROBE_KEY)
            key = re.sub(r"\[[^\]]*\]|[*?\\]", "x", pattern)
            for cmd in ACTION_COMMANDS.get(step.type.name, ()) if step.mutating else ():
                found[tuple(a.replace("{key}", key) for a in cmd)] = None
    return list(found)


def _tls_findings(url: str, field_name: str, report: TargetReport) -> None:
    parts = urlsplit(url)
    query = {k.lower(): v.lower() for k, v in parse_qsl(parts.query)}
    if parts.scheme == "rediss" and query.get("ssl_cert_reqs") in ("none", "optional"):
        report.add(
            "warn",
            f"TLS: {field_name} sets ssl_cert_reqs={query['ssl_cert_reqs']}: the server's certificate is not"
            " verified, so a machine in the middle could read the password; remove it (and set"
            " ssl_ca_certs if the CA is private)",
        )


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("username", "password")]
    return urlunsplit(
        parts._replace(netloc=parts.netloc.rpartition("@")[2], query=urlencode(query) if query else "")
    )


def _client(url: str, timeout: float) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )


def _connect_error(exc: Exception, url: str, field_name: str) -> str:
    if isinstance(exc, rex.AuthenticationError):
        if urlsplit(url).password is None and "password=" not in url:
            return f"authentication: Redis needs a password and {field_name} has none"
        return (
            f"authentication: Redis rejected the credentials in {field_name} (wrong user or password?): {exc}"
        )
    if isinstance(exc, rex.TimeoutError):
        return f"unreachable: no answer within the timeout ({exc})"
    return f"unreachable: {exc}"


async def _login(client: aioredis.Redis, url: str, field_name: str, report: TargetReport) -> str | None:
    """PING and INFO server; the Redis version, or None (with the reason reported) when that failed."""
    try:
        started = time.perf_counter()
        await client.ping()
        ms = (time.perf_counter() - started) * 1000
        info: dict[str, Any] = await client.info("server")
    except (rex.RedisError, OSError) as exc:
        report.add("warn", _connect_error(exc, url, field_name))
        return None
    version = str(info.get("redis_version", "?"))
    if field_name == "url":
        report.add("ok", f"reachable: Redis {version} answered PING in {ms:.1f} ms")
    report.add("ok", f"authentication: {field_name}'s credentials accepted")
    return version


async def _open_door(url: str, seconds: float, report: TargetReport) -> None:
    """Warn when Redis answers a connection that sent no credentials at all (default user nopass)."""
    client = _client(_without_credentials(url), seconds)
    try:
        await client.ping()
    except rex.AuthenticationError:
        report.add("ok", "password required: a connection without credentials is refused")
        return
    except (rex.RedisError, OSError) as exc:
        report.add("note", f"could not tell whether Redis needs a password: {exc}")
        return
    finally:
        await client.aclose()
    report.add(
        "warn",
        "no password: Redis answers connections without credentials (default user has nopass), so anyone"
        " who can reach it can read and delete data; set requirepass or an ACL user with a password",
    )


async def _config_available(client: aioredis.Redis, report: TargetReport) -> None:
    try:
        await client.config_get("maxmemory")
    except (rex.RedisError, OSError) as exc:
        report.add(
            "note",
            f"CONFIG: not available to this user ({exc}); steps that read or set maxmemory will say so"
            " instead of acting (managed Redis often blocks CONFIG)",
        )
        return
    report.add("ok", "CONFIG: available")


async def _whoami(client: aioredis.Redis, url: str) -> str:
    try:
        return str(await client.execute_command("ACL", "WHOAMI"))  # type: ignore[no-untyped-call]
    except (rex.RedisError, OSError):
        return urlsplit(url).username or "default"


def _command_name(cmd: tuple[str, ...]) -> str:
    return " ".join(cmd[:2]) if cmd[0] in ("CONFIG", "CLIENT", "MEMORY", "SLOWLOG", "LATENCY") else cmd[0]


async def _acl(
    version: str,
    clients: Sequence[aioredis.Redis],
    needs: Sequence[tuple[str, str, Sequence[tuple[str, ...]]]],
    report: TargetReport,
) -> None:
    """``ACL DRYRUN`` each (user, purpose, commands) through the first connection allowed to ask."""
    if not version.split(".")[0].isdigit() or int(version.split(".")[0]) < 7:
        report.add("note", f"ACL: not checked (ACL DRYRUN needs Redis 7, this is {version})")
        return
    needs = [n for n in needs if n[2]]  # no action steps in the playbooks: nothing to check for them
    for client in clients:
        try:
            results = [
                [(cmd, await client.execute_command("ACL", "DRYRUN", user, *cmd)) for cmd in cmds]  # type: ignore[no-untyped-call]
                for user, _, cmds in needs
            ]
        except rex.ResponseError:
            continue  # this user may not run ACL DRYRUN; maybe the other one may
        except (rex.RedisError, OSError) as exc:
            report.add("note", f"ACL: not checked ({exc})")
            return
        for (user, purpose, cmds), rows in zip(needs, results, strict=True):
            denied = [_command_name(cmd) for cmd, answer in rows if str(answer) != "OK"]
            if denied:
                report.add("warn", f"ACL: user {user} may not run {', '.join(denied)} (used by {purpose})")
            else:
                report.add("ok", f"ACL: user {user} may run the {len(cmds)} commands {purpose} use")
        return
    report.add("note", "ACL: not checked (no configured user may run ACL DRYRUN)")


async def probe_target(t: TargetConfig, actions: Sequence[tuple[str, ...]], seconds: float) -> TargetReport:
    """Connect to one target (never to a templated one) and report what an operator must know."""
    report = TargetReport(t.label, redact_url(t.where))
    url = t.url or await _sentinel_primary(t, seconds, report)
    if url is None:
        return report
    _tls_findings(url, "url", report)
    if t.action_url:
        _tls_findings(t.action_url, "action_url", report)
    read = _client(url, seconds)
    act = _client(t.action_url, seconds) if t.action_url and t.action_url != url else None
    try:
        version = await _login(read, url, "url", report)
        if version is None:
            return report
        await _open_door(url, seconds, report)
        await _config_available(read, report)
        needs: list[tuple[str, str, Sequence[tuple[str, ...]]]] = []
        if act is None:
            needs.append((await _whoami(read, url), "diagnostics and actions", [*READ_COMMANDS, *actions]))
        else:
            needs.append((await _whoami(read, url), "diagnostics", READ_COMMANDS))
            if t.action_url and await _login(act, t.action_url, "action_url", report) is not None:
                needs.append((await _whoami(act, t.action_url), "actions", actions))
        await _acl(version, [c for c in (read, act) if c is not None], needs, report)
    finally:
        await read.aclose()
        if act is not None:
            await act.aclose()
    return report


async def _sentinel_primary(t: TargetConfig, seconds: float, report: TargetReport) -> str | None:
    """The URL of the primary a Sentinel target's Sentinels name now (None, with a warning, when
    none answers)."""
    assert t.sentinel is not None
    target = t.resolve({}, seconds)
    try:
        node = await target.locate()
    except (rex.RedisError, OSError) as exc:
        report.add("warn", f"Sentinel: no answer for master {t.sentinel.master} ({exc})")
        return None
    finally:
        await target.close()
    s = t.sentinel
    auth = f"{quote(s.username or '')}:{quote(s.password)}@" if s.password else ""
    report.add("ok", f"Sentinel: master {s.master} is at {node}")
    return f"redis://{auth}{node}/{s.db}"


async def check_targets(
    config: Config, playbooks: PlaybookSet, *, offline: bool = False, seconds: float = 3.0
) -> list[TargetReport]:
    """One report per configured target; templated targets and ``offline`` make no connection."""
    actions = action_commands(playbooks)
    reports: list[TargetReport | None] = []
    probes = []
    for t in config.targets:
        if t.label_names() or offline:
            report = TargetReport(t.label, redact_url(t.where))
            _tls_findings(t.where, "url", report)
            if t.label_names():
                allowed = ", ".join(t.allowed_addresses) or "its configured host"
                report.add("note", f"not probed: its URL is built from alert labels (allowed: {allowed})")
            else:
                report.add("note", "not probed (--offline)")
            reports.append(report)
        else:
            reports.append(None)
            probes.append(_bounded(t, actions, seconds))
    done = iter(await asyncio.gather(*probes))
    return [r if r is not None else next(done) for r in reports]


async def _bounded(t: TargetConfig, actions: Sequence[tuple[str, ...]], seconds: float) -> TargetReport:
    """A probe that cannot hang ``check``: each call has the timeout, and the whole probe a multiple."""
    try:
        return await asyncio.wait_for(probe_target(t, actions, seconds), seconds * 8)
    except TimeoutError:
        report = TargetReport(t.label, redact_url(t.where))
        report.add("warn", f"unreachable: no complete answer within {seconds * 8:g} s")
        return report


def render(reports: Sequence[TargetReport]) -> str:
    lines = []
    for r in reports:
        lines.append(f"  {r.name}  {r.url}")
        lines.extend(
            f"    {f.level.upper() if f.level == 'warn' else f.level:<5} {f.text}" for f in r.findings
        )
    return "\n".join(lines)


def probe_and_print(config: Config, playbooks: PlaybookSet, *, offline: bool, strict: bool) -> int:
    """``check``'s target section on stdout; the exit code: 1 only with ``strict`` and a warning."""
    seconds = min(config.runner.redis_timeout, 3.0)
    reports = asyncio.run(check_targets(config, playbooks, offline=offline, seconds=seconds))
    how = "" if offline else f" (probed with a {seconds:g} s timeout; --offline skips this)"
    print(f"targets{how}:")
    print(render(reports))
    warnings = sum(r.warnings for r in reports)
    if warnings:
        plural = "s" if warnings != 1 else ""
        print(f"{warnings} warning{plural}" + ("" if strict else " (exit 0; --strict fails on warnings)"))
    return 1 if strict and warnings else 0

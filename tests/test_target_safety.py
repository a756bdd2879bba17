"""Targets under attack: a crafted alert label, an open webhook, an unprotected Redis.

Each claim of the README's safety model about targets, and the test that holds it:

- A templated target only connects inside its ``allowed_addresses``; a label pointing elsewhere
  makes no connection at all (so no password is sent) and is stored as refused:
  ``test_a_crafted_label_connects_nowhere_and_sends_no_password``.
- Entries are exact ``host:port``, host globs whose ``*`` stays within one DNS label, CIDR ranges
  with a port; a host name never matches a CIDR entry, an IP never a glob; the address checked is the
  one redis-py connects to: ``test_allowed_address_matching``, ``test_the_check_and_the_client_agree``.
- A URL templated in its host without ``allowed_addresses`` (or templated in its credentials or
  options) is refused by ``check``; bad entries are all listed with their field:
  ``test_check_refuses_a_templated_host_without_allowed_addresses``,
  ``test_bad_allowed_addresses_are_all_reported_with_their_field``.
- ``serve`` refuses an unauthenticated webhook on a non-loopback address unless
  ``server.allow_unauthenticated`` is true, starts with a warning on loopback, and refuses Slack
  tokens without a signing secret or Socket Mode: ``test_serve_refuses_an_open_webhook_on_the_network``,
  ``test_serve_starts_open_when_the_config_says_so_or_on_loopback``, ``test_serve_refuses_half_configured_slack``;
  no ``/slack/events`` route without a signing secret: ``test_no_slack_route_without_a_signing_secret``.
- ``check`` probes each target and warns about a Redis without a password, wrong credentials,
  TLS verification off and missing ACL permissions; ``--offline`` connects nowhere; ``--strict``
  fails on warnings: the ``test_check_*`` tests below.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bot.app import STORE, create_app
from bot.chat.slack_settings import SlackSettings
from bot.config import load_config
from bot.errors import ConfigError, TargetError, TargetRefused
from bot.incidents import IncidentState
from bot.localstack import http_get
from bot.playbook import load_playbooks
from bot.preflight import is_loopback, serve_preflight
from bot.target_check import check_targets
from bot.targets import address_of, parse_rule
from tests.conftest import RecordingNotifier, RedisServer, alert_payload, free_port, wait_for

PASSWORD = "s3cret-redis-pw"


class LockedRedis(RedisServer):
    """A redis-server with ``requirepass``: ready when it answers, even if only with NOAUTH."""

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockedRedis]:
    server = LockedRedis(tmp_path_factory.mktemp("locked"), "--requirepass", PASSWORD)
    server.start()
    yield server
    server.stop()


class Listener:
    """A TCP listener on loopback standing in for a hostile host: records every connection and byte."""

    def __init__(self) -> None:
        self.connections = 0
        self.received = b""
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> Listener:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while chunk := await reader.read(4096):
                self.received += chunk
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def hostile() -> AsyncIterator[Listener]:
    listener = await Listener().start()
    yield listener
    await listener.stop()


def _playbooks(tmp_path: Path) -> Path:
    folder = tmp_path / "pb"
    folder.mkdir(exist_ok=True)
    (folder / "ping.yaml").write_text(
        "name: ping-check\nmatch: {alertname: TestPing}\nsteps:\n  - {id: ping, run: redis.ping}\n"
    )
    return folder


# -- item 1: a crafted label --------------------------------------------------------------------


async def test_a_crafted_label_connects_nowhere_and_sends_no_password(
    aiohttp_client: Any, tmp_path: Path, locked_redis: LockedRedis, hostile: Listener
) -> None:
    _playbooks(tmp_path)
    path = tmp_path / "bot.yaml"
    path.write_text(
        "targets:\n"
        "  - match: {job: redis}\n"
        '    url: "redis://:${REDIS_PASSWORD}@{{ labels.redis_addr }}/0"\n'
        f"    allowed_addresses: ['127.0.0.1:{locked_redis.port}']\n"
        "playbooks: pb\nscheduler: {enabled: false}\n"
    )
    config = load_config(path, env={"REDIS_PASSWORD": PASSWORD})
    client = await aiohttp_client(create_app(config, notifier=RecordingNotifier(), webhook_token="t"))
    addresses = {
        "hostile-ip": f"127.0.0.1:{hostile.port}",
        "hostile-name": f"localhost:{hostile.port}",  # a host name is compared as written, never resolved
        "name-for-allowed": f"localhost:{locked_redis.port}",
        "elsewhere": "evil.example:6379",
        "bad-port": "127.0.0.1:99999",
        "allowed": f"127.0.0.1:{locked_redis.port}",
    }
    alerts = []
    for i, (key, addr) in enumerate(addresses.items()):
        payload = alert_payload(
            "TestPing",
            fingerprint=f"fp-{key}",
            starts_at=f"2026-11-25T19:3{i}:00Z",
            labels={"redis_addr": addr},
        )
        alerts.extend(payload["alerts"])
    resp = await client.post(
        "/alerts", json={**payload, "alerts": alerts}, headers={"Authorization": "Bearer t"}
    )
    assert resp.status == 200, await resp.text()
    store = client.app[STORE]
    by_key = {i.fingerprint.removeprefix("fp-"): i for i in await store.list_incidents(limit=100)}

    async def allowed_done() -> bool:
        inc = await store.get_incident(by_key["allowed"].id)
        return inc.status not in (IncidentState.NEW, IncidentState.DIAGNOSING)

    await wait_for(allowed_done, timeout=20)
    allowed = await store.get_incident(by_key["allowed"].id)
    assert allowed.target == f"127.0.0.1:{locked_redis.port}/0"
    # The password works where it is allowed (a slow PING is a warning, still an answer).
    assert [s.status for s in allowed.steps] in (["ok"], ["warning"]), allowed.steps
    for key in ("hostile-ip", "hostile-name", "name-for-allowed", "elsewhere"):
        inc = by_key[key]
        assert inc.target is None and inc.status == IncidentState.UNMATCHED, inc
        assert inc.note.startswith("refused: ") and "allowed_addresses" in inc.note, inc.note
        assert PASSWORD not in inc.note
    assert "port 99999 is not in 1-65535" in by_key["bad-port"].note and by_key["bad-port"].target is None
    assert hostile.connections == 0 and hostile.received == b""


def test_the_refusal_also_holds_for_actions_and_stored_incidents(tmp_path: Path) -> None:
    path = tmp_path / "bot.yaml"
    path.write_text(
        "targets:\n"
        "  - url: 'redis://reader:r@{{ labels.a }}/0'\n"
        "    action_url: 'redis://admin:a@{{ labels.a }}/0'\n"
        "    allowed_addresses: ['redis-*.cache.svc:6379']\n"
    )
    t = load_config(path).targets[0]
    assert t.resolve({"a": "redis-1.cache.svc"}, action=True).url == "redis://admin:a@redis-1.cache.svc/0"
    with pytest.raises(TargetRefused, match=r"evil\.example:6379 \(from labels a=evil\.example\)"):
        t.resolve({"a": "evil.example"}, action=True)
    with pytest.raises(TargetRefused):
        t.target_name({"a": "redis-1.evil.example"})


@pytest.mark.parametrize(
    ("entry", "host", "allowed"),
    [
        ("redis-a.cache.svc:6379", "REDIS-A.cache.svc:6379", True),  # host names compare case-insensitively
        ("redis-a.cache.svc:6379", "redis-a.cache.svc:6380", False),
        ("redis-a.cache.svc:*", "redis-a.cache.svc:6380", True),
        ("redis-*.cache.svc:6379", "redis-7.cache.svc", True),
        ("redis-*.cache.svc:6379", "redis-7.evil.example.cache.svc", False),  # * stays in one DNS label
        ("redis-*.cache.svc:6379", "redis-7.cache.svc.evil.example", False),
        ("redis-?.cache.svc:6379", "redis-77.cache.svc", False),
        ("10.0.0.0/8:6379", "10.20.30.40", True),
        ("10.0.0.0/8:6379", "10.20.30.40:6380", False),
        ("10.0.0.0/8:6379", "11.0.0.1", False),
        ("10.0.0.0/8:6379", "10.1", False),  # not an IP address: a host name never matches a CIDR
        ("10.0.0.0/8:6379", "010.0.0.1", False),
        ("127.0.0.1:6379", "localhost", False),  # names are never resolved
        ("localhost:6379", "127.0.0.1", False),  # an IP never matches a host-name entry
        ("[::1]/128:6379", "[::1]", True),
        ("[::1]:*", "[0:0::1]:7000", True),
    ],
)
def test_allowed_address_matching(entry: str, host: str, allowed: bool) -> None:
    addr = address_of(f"redis://:pw@{host}/0")
    assert addr is not None
    assert parse_rule(entry).allows(addr) is allowed


def test_the_check_and_the_client_agree(tmp_path: Path) -> None:
    """redis-py takes the port from ``?port=`` when the URL has none: so does the check."""
    path = tmp_path / "bot.yaml"
    path.write_text(
        "targets:\n  - url: 'redis://{{ labels.a }}/0?port=7777'\n    allowed_addresses: ['10.0.0.5:6379']\n"
    )
    t = load_config(path).targets[0]
    with pytest.raises(TargetRefused, match=r"10\.0\.0\.5:7777"):
        t.resolve({"a": "10.0.0.5"})
    assert (
        redis.Redis.from_url("redis://10.0.0.5/0?port=7777").connection_pool.connection_kwargs["port"]
        == "7777"
    )


def test_bad_allowed_addresses_are_all_reported_with_their_field(tmp_path: Path) -> None:
    path = tmp_path / "bot.yaml"
    path.write_text(
        "targets:\n  - url: 'redis://{{ labels.a }}/0'\n    allowed_addresses:\n"
        "      - redis.svc\n      - '*:6379'\n      - 10.0.0.1/8:6379\n      - '10.*.*.*:6379'\n"
        "      - '::1:6379'\n      - 0.0.0.0/0:6379\n      - redis.svc:99999\n      - ok.svc:6379\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "7 problems found" in text
    for i, words in enumerate(
        [
            "has no port",
            "matches any host",
            "host bits set",
            "use a CIDR range",
            "in brackets",
            "every address",
            "1-65535",
        ]
    ):
        assert f"targets[0].allowed_addresses[{i}]: " in text and words in text


def test_allowed_addresses_of_a_fixed_url_must_include_it(tmp_path: Path) -> None:
    path = tmp_path / "bot.yaml"
    path.write_text(
        "targets:\n  - url: redis://10.0.0.5:6379/0\n    allowed_addresses: ['10.0.0.6:6379']\n"
        "  - url: unix:///run/redis.sock\n    allowed_addresses: ['10.0.0.6:6379']\n"
        "  - url: 'unix:///run/{{ labels.sock }}.sock'\n"
        "  - url: redis://10.0.0.5:99999/0\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "targets[0].allowed_addresses: does not include the url's own address 10.0.0.5:6379" in text
    assert "targets[1].allowed_addresses: applies to redis:// and rediss:// URLs only" in text
    assert "targets[2].url: a unix socket URL cannot take values from alert labels" in text
    assert "targets[3].url: address '10.0.0.5:99999', whose port 99999 is not in 1-65535" in text


def test_check_refuses_a_templated_host_without_allowed_addresses(tmp_path: Path) -> None:
    path = tmp_path / "bot.yaml"
    path.write_text(
        "targets:\n"
        "  - url: 'redis://:pw@{{ labels.redis_addr }}/0'\n"
        "  - url: 'redis://{{ labels.user }}:pw@10.0.0.5:6379/0'\n"
        "  - url: 'rediss://10.0.0.5:6379/0?ssl_cert_reqs={{ labels.tls }}'\n"
        "  - url: 'redis://10.0.0.5:6379/{{ labels.db }}'\n"  # the db alone: no address to allow
    )
    out = _cli("check", "--offline", "--config", str(path))
    assert out.returncode == 1, out.stdout
    assert "3 problems found" in out.stderr
    assert f"{path}: targets[0].allowed_addresses: url takes its host from alert labels" in out.stderr
    assert "allowed_addresses: ['redis-*.cache.svc:6379'" in out.stderr
    assert f"{path}: targets[1].url: {{{{ labels.NAME }}}} may only fill the host, port or db" in out.stderr
    assert f"{path}: targets[2].url:" in out.stderr


# -- item 1: serve refuses an open door -------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BOT_WEBHOOK_TOKEN" and not k.startswith("SLACK_")}
    return {**env, **extra}


def _cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or _env(),
    )


def _serve_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(
        f"targets:\n  - url: redis://127.0.0.1:{free_port()}/0\nscheduler: {{enabled: false}}\n{extra}"
    )
    return path


def test_serve_refuses_an_open_webhook_on_the_network(tmp_path: Path) -> None:
    path = _serve_config(tmp_path)
    out = _cli("serve", "--config", str(path), "--host", "0.0.0.0", "--port", str(free_port()))
    assert out.returncode == 1
    assert "BOT_WEBHOOK_TOKEN" in out.stderr and "allow_unauthenticated" in out.stderr
    assert "listening" not in out.stdout and "Traceback" not in out.stderr


def _serve_until_healthy(path: Path, host: str, env: dict[str, str]) -> str:
    """Start ``serve``, wait for /healthz, stop it; its stderr (the log)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "serve", "--config", str(path), "--host", host, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while http_get(f"http://127.0.0.1:{port}/healthz")[0] != 200:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "serve did not become healthy"
            time.sleep(0.1)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    return err


def test_serve_starts_open_when_the_config_says_so_or_on_loopback(tmp_path: Path) -> None:
    err = _serve_until_healthy(
        _serve_config(tmp_path, "server: {allow_unauthenticated: true}\n"), "0.0.0.0", _env()
    )
    assert "accepts alerts from anyone" in err and "BOT_WEBHOOK_TOKEN" in err
    err = _serve_until_healthy(_serve_config(tmp_path), "127.0.0.1", _env())
    assert "without authentication (BOT_WEBHOOK_TOKEN is not set)" in err
    err = _serve_until_healthy(_serve_config(tmp_path), "0.0.0.0", _env(BOT_WEBHOOK_TOKEN="tok"))
    assert "BOT_WEBHOOK_TOKEN" not in err


def test_serve_refuses_half_configured_slack(tmp_path: Path) -> None:
    path = _serve_config(tmp_path)
    out = _cli("serve", "--config", str(path), "--port", str(free_port()), env=_env(SLACK_BOT_TOKEN="xoxb-1"))
    assert out.returncode == 1 and "SLACK_SIGNING_SECRET" in out.stderr


def test_loopback_and_preflight_rules(tmp_path: Path) -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "", "10.0.0.1", "bot.example", "localhost.evil"))
    config = load_config(_serve_config(tmp_path))
    with pytest.raises(ConfigError, match="BOT_WEBHOOK_TOKEN"):
        serve_preflight(config, "::", env={})
    assert serve_preflight(config, "::", env={"BOT_WEBHOOK_TOKEN": "x"}) == []
    with pytest.raises(ConfigError, match="SLACK_SIGNING_SECRET"):
        serve_preflight(config, "127.0.0.1", env={"BOT_WEBHOOK_TOKEN": "x", "SLACK_BOT_TOKEN": "xoxb"})


def test_no_slack_route_without_a_signing_secret(tmp_path: Path) -> None:
    config = load_config(_serve_config(tmp_path, "slack: {channel: C123}\n"))

    def routes(settings: SlackSettings) -> set[str]:
        app = create_app(config, notifier=RecordingNotifier(), webhook_token="t", slack=settings)
        return {r.resource.canonical for r in app.router.routes() if r.resource is not None}

    assert "/slack/events" not in routes(SlackSettings(bot_token="xoxb", app_token="xapp"))
    assert "/slack/events" in routes(SlackSettings(bot_token="xoxb", signing_secret="sec"))


# -- item 7: check probes the targets -------------------------------------------------------------


def _target_config(tmp_path: Path, *urls: str, extra: str = "") -> Path:
    path = tmp_path / "check.yaml"
    items = "".join(f"  - name: t{i}\n    url: '{u}'\n" for i, u in enumerate(urls))
    path.write_text(f"targets:\n{items}{extra}")
    return path


def test_check_warns_about_a_redis_without_password(tmp_path: Path, redis_server: RedisServer) -> None:
    path = _target_config(
        tmp_path,
        redis_server.url,
        "redis://{{ labels.a }}/0",
        extra=f"    allowed_addresses: ['127.0.0.1:{redis_server.port}']\n",
    )
    out = _cli("check", "--config", str(path))
    assert out.returncode == 0, out.stderr
    assert "note  not probed: its URL is built from alert labels" in out.stdout
    assert "reachable: Redis" in out.stdout
    assert "WARN  no password: Redis answers connections without credentials" in out.stdout
    assert "1 warning (exit 0; --strict fails on warnings)" in out.stdout
    assert _cli("check", "--strict", "--config", str(path)).returncode == 1


def test_check_with_the_right_and_a_wrong_password(tmp_path: Path, locked_redis: LockedRedis) -> None:
    base = f"127.0.0.1:{locked_redis.port}/0"
    path = _target_config(tmp_path, f"redis://:{PASSWORD}@{base}", f"redis://:nope@{base}", f"redis://{base}")
    out = _cli("check", "--strict", "--config", str(path))
    text = out.stdout
    good, wrong, none = (
        text.split("  t0  ")[1].split("  t1  ")[0],
        text.split("  t1  ")[1].split("  t2  ")[0],
        text.split("  t2  ")[1],
    )
    assert "WARN" not in good and "password required" in good and "credentials accepted" in good
    assert "ACL: user default may run" in good
    assert "WARN  authentication: Redis rejected the credentials in url (wrong user or password?)" in wrong
    assert "WARN  authentication: Redis needs a password and url has none" in none
    assert PASSWORD not in text and "nope" not in text
    assert out.returncode == 1 and "2 warnings" in text


async def test_check_names_missing_acl_permissions(tmp_path: Path, locked_redis: LockedRedis) -> None:
    admin = redis.Redis(port=locked_redis.port, password=PASSWORD, socket_timeout=5)
    admin.execute_command(
        "ACL", "SETUSER", "reader", "reset", "on", ">rpw", "~*", "+@read", "+info", "+ping", "+hello", "+auth"
    )
    admin.execute_command("ACL", "SETUSER", "actor", "reset", "on", ">apw", "~*", "+@all", "-flushdb")
    admin.close()
    base = f"127.0.0.1:{locked_redis.port}/0"
    path = _target_config(
        tmp_path, f"redis://reader:rpw@{base}", extra=f"    action_url: 'redis://actor:apw@{base}'\n"
    )
    config = load_config(path)
    (report,) = await check_targets(config, load_playbooks(config.playbooks), seconds=3)
    text = "\n".join(f"{f.level} {f.text}" for f in report.findings)
    assert "warn ACL: user reader may not run" in text and "CLIENT LIST" in text and "CONFIG GET" in text
    assert "warn ACL: user actor may not run FLUSHDB (used by actions)" in text
    assert "note CONFIG: not available to this user" in text


async def test_check_offline_connects_nowhere(tmp_path: Path, hostile: Listener) -> None:
    path = _target_config(
        tmp_path, f"redis://:pw@127.0.0.1:{hostile.port}/0", "rediss://:pw@10.0.0.5:6379/0?ssl_cert_reqs=none"
    )

    async def check(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "check",
            *args,
            "--config",
            str(path),
            stdout=asyncio.subprocess.PIPE,
            env=_env(),
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        return out.decode()

    out = await check("--offline")
    assert "not probed (--offline)" in out and "WARN  TLS: url sets ssl_cert_reqs=none" in out
    assert hostile.connections == 0
    await check()  # without --offline the same config does connect: the assertion above can fail
    assert hostile.connections >= 1


def test_check_reports_a_broken_config_and_a_broken_playbook_together(tmp_path: Path) -> None:
    pb = tmp_path / "pb"
    pb.mkdir()
    (pb / "x.yaml").write_text("name: x\nmatch: {alertname: X}\nsteps:\n  - {id: a, run: redis.nope}\n")
    path = tmp_path / "bot.yaml"
    path.write_text("targets:\n  - url: http://x\nplaybooks: pb\n")
    out = _cli("check", "--config", str(path))
    assert out.returncode == 1
    assert "2 problems found" in out.stderr
    assert f"{path}: targets[0].url: must start with" in out.stderr
    assert "x.yaml: steps[0].run: unknown step 'redis.nope'" in out.stderr


def test_a_label_port_out_of_range_is_a_target_error(tmp_path: Path) -> None:
    path = tmp_path / "bot.yaml"
    path.write_text("targets:\n  - url: 'redis://{{ labels.a }}/0'\n    allowed_addresses: ['127.0.0.1:*']\n")
    with pytest.raises(TargetError, match="port 99999 is not in 1-65535"):
        load_config(path).targets[0].resolve({"a": "127.0.0.1:99999"})

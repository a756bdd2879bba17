"""Real Prometheus, redis_exporter and Alertmanager processes on free loopback ports.

Used by ``make demo`` (the whole loop on one machine) and by the end-to-end tests.

The Debian packages' binaries (``prometheus``, ``prometheus-redis-exporter``,
``prometheus-alertmanager``; ``make install`` installs them) run exactly as in production, with
configs generated per test. Each process:

- listens on a free ``127.0.0.1`` port and works in its own folder (config, data, ``<name>.log``);
- is polled over HTTP until ready, with a deadline; on failure the error carries the log's tail;
- runs in its own process group and is stopped (SIGTERM, then SIGKILL) by :meth:`Process.stop`,
  by ``with``, by :class:`Stack` at teardown even when the test failed, and at interpreter exit as a
  last resort, so no test leaves a server behind.

Typical use, with a Redis from ``tests.conftest``::

    with Stack(tmp_path) as stack:
        exporter = stack.exporter(redis_server.url)
        prom = stack.prometheus(scrape=[exporter.address], rules={"redis.yml": RULES})
        prom.wait_for_value(f'redis_up{{instance="{exporter.address}"}}', lambda v: v == 1)
        am = stack.alertmanager(webhook_url="http://127.0.0.1:8080/alerts")
        prom.alertmanagers = [am.address]; prom.reload()   # or alertmanagers=[...] up front

``scrape_interval`` and ``evaluation_interval`` default to 1 s so tests see changes fast;
Alertmanager defaults to ``group_wait: 0s`` and ``group_interval: 1s`` for the same reason.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

_LIVE: set[Process] = set()


def free_port() -> int:
    """A TCP port free on loopback right now (the processes retry if another takes it first)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@atexit.register
def _stop_leftovers() -> None:  # pragma: no cover - only when a test run is interrupted
    for proc in list(_LIVE):
        proc.stop()


def find_binary(name: str, package: str) -> str:
    """The binary's path, or a clear error telling how to install it."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        raise RuntimeError(f"{name} is not installed: run `make install` (apt-get install {package})")
    return path


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of a GET; status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - our own loopback servers
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def http_post(url: str, body: Any, timeout: float = 5.0) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if not isinstance(body, bytes) else body
    req = urllib.request.Request(  # noqa: S310 - our own loopback servers
        url, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


class Process:
    """One server process: start, readiness, stop. Subclasses give the command line and ready URL."""

    name = "process"
    binary = ""
    package = ""
    ready_path = "/"
    start_timeout = 20.0

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    # -- what subclasses provide --------------------------------------------------------------

    def args(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write config files before each start (the port may change between attempts)."""

    # -- common ---------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        return http_get(self.url + self.ready_path, timeout=1.0)[0] == 200

    def start(self) -> Process:
        """Start and wait until ready; one retry on another port if this one was taken meanwhile."""
        for attempt in (1, 2):
            self.prepare()
            binary = find_binary(self.binary, self.package)
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                    [binary, *self.args()],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    start_new_session=True,
                )
            _LIVE.add(self)
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline:
                if not self.running:
                    break
                if self.ready():
                    return self
                time.sleep(0.05)
            tail = self.log_tail()
            self.stop()
            if attempt == 1 and "address already in use" in tail.lower():  # redis says "Address"
                self.port = free_port()
                continue
            raise RuntimeError(
                f"{self.name} did not become ready on {self.address}; log {self.log_path}:\n{tail}"
            )
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after 10 s; safe to call twice."""
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def restart(self) -> Process:
        self.stop()
        return self.start()

    def __enter__(self) -> Process:
        return self.start() if not self.running else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisExporter(Process):
    """prometheus-redis-exporter for one Redis (``redis://host:port``)."""

    name = "redis_exporter"
    binary = "prometheus-redis-exporter"
    package = "prometheus-redis-exporter"
    ready_path = "/health"

    def __init__(self, workdir: Path, redis_url: str, extra: Sequence[str] = ()) -> None:
        super().__init__(workdir)
        parts = urllib.parse.urlsplit(redis_url)
        self.redis_addr = f"redis://{parts.hostname}:{parts.port or 6379}"
        self.extra = list(extra)

    def args(self) -> list[str]:
        return ["--redis.addr", self.redis_addr, "--web.listen-address", self.address, *self.extra]


class Prometheus(Process):
    """A Prometheus server scraping ``scrape`` targets, with alert rules and optional Alertmanagers.

    ``scrape`` is a list of ``host:port`` (job ``redis``) or a mapping job -> list of ``host:port``.
    ``rules`` maps file names to rule-file text; ``rules_dir`` copies every ``*.yml``/``*.yaml`` of a
    folder (e.g. ``deploy/prometheus``). The lifecycle API is on, so :meth:`reload` works.
    """

    name = "prometheus"
    binary = "prometheus"
    package = "prometheus"
    ready_path = "/-/ready"

    def __init__(
        self,
        workdir: Path,
        *,
        scrape: Sequence[str] | Mapping[str, Sequence[str]] = (),
        rules: Mapping[str, str] | None = None,
        rules_dir: Path | None = None,
        alertmanagers: Sequence[str] = (),
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        extra: Sequence[str] = (),
    ) -> None:
        super().__init__(workdir)
        self.scrape = (
            {"redis": list(scrape)}
            if not isinstance(scrape, Mapping)
            else {k: list(v) for k, v in scrape.items()}
        )
        self.rules = dict(rules or {})
        self.rules_dir = rules_dir
        self.alertmanagers = list(alertmanagers)
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.extra = list(extra)

    @property
    def config_path(self) -> Path:
        return self.workdir / "prometheus.yml"

    def prepare(self) -> None:
        rules = self.workdir / "rules"
        rules.mkdir(exist_ok=True)
        if self.rules_dir is not None:
            for f in [*self.rules_dir.glob("*.yml"), *self.rules_dir.glob("*.yaml")]:
                if not f.name.endswith(".test.yml"):
                    shutil.copy(f, rules / f.name)
        for fname, text in self.rules.items():
            (rules / fname).write_text(text)
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "rule_files": [str(rules / "*.yml"), str(rules / "*.yaml")],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": targets}]}
                for job, targets in self.scrape.items()
            ],
        }
        if self.alertmanagers:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": self.alertmanagers}]}]}
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def args(self) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={self.address}",
            "--web.enable-lifecycle",
            "--log.level=warn",
            *self.extra,
        ]

    def reload(self) -> None:
        """Re-read the config and rules (after changing ``scrape``, ``rules`` or ``alertmanagers``)."""
        self.prepare()
        status, body = http_post(self.url + "/-/reload", b"")
        if status != 200:
            raise RuntimeError(f"prometheus reload failed: HTTP {status}: {body[:300]!r}")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result list (raises on an API error)."""
        status, body = http_get(self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        if status != 200:
            raise RuntimeError(f"query {promql!r}: HTTP {status}: {body[:300]!r}")
        result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        """The first sample's value of an instant query, or None when nothing matched."""
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def wait_for_value(
        self, promql: str, predicate: Callable[[float], bool] = lambda v: True, timeout: float = 20.0
    ) -> float:
        """Poll until the query has a value satisfying ``predicate``; return it."""
        deadline = time.monotonic() + timeout
        last: float | None = None
        while time.monotonic() < deadline:
            last = self.value(promql)
            if last is not None and predicate(last):
                return last
            time.sleep(0.2)
        raise AssertionError(f"{promql!r} never satisfied the condition in {timeout}s (last value {last})")

    def alerts(self) -> list[dict[str, Any]]:
        status, body = http_get(self.url + "/api/v1/alerts")
        alerts: list[dict[str, Any]] = json.loads(body)["data"]["alerts"] if status == 200 else []
        return alerts


class Alertmanager(Process):
    """An Alertmanager sending every alert to one webhook (the bot's ``POST /alerts``).

    Clustering is off (``--cluster.listen-address=``). ``bearer_token`` goes into the webhook's
    ``Authorization`` header, as a real deployment would configure it.
    """

    name = "alertmanager"
    binary = "prometheus-alertmanager"
    package = "prometheus-alertmanager"
    ready_path = "/-/ready"

    def __init__(
        self,
        workdir: Path,
        *,
        webhook_url: str,
        bearer_token: str | None = None,
        group_by: Sequence[str] = ("alertname", "instance"),
        group_wait: str = "0s",
        group_interval: str = "1s",
        repeat_interval: str = "1h",
        extra: Sequence[str] = (),
    ) -> None:
        super().__init__(workdir)
        self.webhook_url = webhook_url
        self.bearer_token = bearer_token
        self.group_by = list(group_by)
        self.group_wait, self.group_interval, self.repeat_interval = (
            group_wait,
            group_interval,
            repeat_interval,
        )
        self.extra = list(extra)

    @property
    def config_path(self) -> Path:
        return self.workdir / "alertmanager.yml"

    def prepare(self) -> None:
        hook: dict[str, Any] = {"url": self.webhook_url, "send_resolved": True, "max_alerts": 0}
        if self.bearer_token:
            hook["http_config"] = {"authorization": {"type": "Bearer", "credentials": self.bearer_token}}
        config = {
            "route": {
                "receiver": "bot",
                "group_by": self.group_by,
                "group_wait": self.group_wait,
                "group_interval": self.group_interval,
                "repeat_interval": self.repeat_interval,
            },
            "receivers": [{"name": "bot", "webhook_configs": [hook]}],
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def args(self) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address={self.address}",
            "--cluster.listen-address=",
            "--log.level=warn",
            *self.extra,
        ]

    def post_alerts(self, alerts: Iterable[Mapping[str, Any]]) -> None:
        """Push alerts as Prometheus would (``POST /api/v2/alerts``): labels, annotations, startsAt,
        and endsAt in the past to resolve."""
        status, body = http_post(self.url + "/api/v2/alerts", list(alerts))
        if status != 200:
            raise RuntimeError(f"alertmanager rejected the alerts: HTTP {status}: {body[:300]!r}")


class Stack:
    """Processes for one test (or module), stopped in reverse order at exit, whatever happened."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[Process] = []

    def _add(self, proc: Process) -> Any:
        self.processes.append(proc)
        return proc.start()

    def redis(self, extra: Sequence[str] = ()) -> RedisServer:
        n = sum(isinstance(p, RedisServer) for p in self.processes)
        result: RedisServer = self._add(RedisServer(self.workdir / f"redis{n}", extra))
        return result

    def exporter(self, redis_url: str, extra: Sequence[str] = ()) -> RedisExporter:
        n = sum(isinstance(p, RedisExporter) for p in self.processes)
        result: RedisExporter = self._add(RedisExporter(self.workdir / f"exporter{n}", redis_url, extra))
        return result

    def prometheus(self, **kw: Any) -> Prometheus:
        n = sum(isinstance(p, Prometheus) for p in self.processes)
        result: Prometheus = self._add(Prometheus(self.workdir / f"prometheus{n}", **kw))
        return result

    def alertmanager(self, **kw: Any) -> Alertmanager:
        n = sum(isinstance(p, Alertmanager) for p in self.processes)
        result: Alertmanager = self._add(Alertmanager(self.workdir / f"alertmanager{n}", **kw))
        return result

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class RedisServer(Process):
    """A throwaway redis-server (no persistence unless asked), ready when it answers PING."""

    name = "redis"
    binary = "redis-server"
    package = "redis-server"

    def __init__(self, workdir: Path, extra: Sequence[str] = ()) -> None:
        super().__init__(workdir)
        self.extra = list(extra)

    @property
    def redis_url(self) -> str:
        return f"redis://{self.address}/0"

    def args(self) -> list[str]:
        return [
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            *self.extra,
        ]

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def fast_rules(text: str, for_: str = "0s") -> str:
    """The alert rules with every ``for:`` shortened, so a demo or test sees alerts fire in seconds."""
    return re.sub(r"(?m)^(\s*)for: \S+", lambda m: f"{m.group(1)}for: {for_}", text)

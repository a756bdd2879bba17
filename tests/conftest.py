"""Shared fixtures: a real redis-server on a free loopback port, started once per test session (so once
per pytest-xdist worker: `make test` runs one per core, and nothing here is shared between them)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from bot import localstack
from bot.redisconn import RedisTarget

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


free_port = localstack.free_port


class RedisServer(localstack.RedisServer):
    """A throwaway redis-server for tests (DEBUG allowed); tests may stop and start it again on the
    same port. ``url`` is the Redis URL here, not the HTTP one of the other local processes."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        super().__init__(workdir, ["--enable-debug-command", "local", *extra])

    @property
    def url(self) -> str:
        return self.redis_url

    def start(self) -> RedisServer:
        super().start()
        return self

    def sync_client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, db=db, socket_timeout=5)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with heavy tests (marked ``slow`` or ``e2e``) first, each file's tests in their order.

    ``make test`` hands whole files to its workers in this order (``--dist loadfile
    --no-loadscope-reorder``): started first, the long files run beside the many short ones
    instead of leaving one worker alone with, say, the HA demo at the end of the run.
    """
    heavy = {item.path for item in items if item.get_closest_marker("slow") or item.get_closest_marker("e2e")}
    items.sort(key=lambda item: item.path not in heavy)  # stable: files and tests keep their order


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_sync(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A synchronous client on a flushed server (db 0), with stats reset so tests can read them."""
    client = redis_server.sync_client()
    client.flushall()
    client.config_resetstat()
    client.config_set("maxmemory", 0)
    client.slowlog_reset()
    yield client
    client.close()


@pytest.fixture
async def target(redis_server: RedisServer, redis_sync: redis.Redis) -> AsyncIterator[RedisTarget]:
    t = RedisTarget(name=f"test:{redis_server.port}/0", url=redis_server.url, timeout=5.0)
    yield t
    await t.close()


@pytest.fixture
async def aredis(target: RedisTarget) -> aioredis.Redis:
    return target.client


@pytest.fixture
def make_redis(tmp_path: Path) -> Iterator[object]:
    """Factory for extra servers (e.g. with a small maxmemory); every one is stopped at the end."""
    servers: list[RedisServer] = []

    def factory(*extra: str) -> RedisServer:
        s = RedisServer(tmp_path / f"redis{len(servers)}", *extra)
        s.start()
        servers.append(s)
        return s

    yield factory
    for s in servers:
        s.stop()


def seed_platform(client: redis.Redis, *, agents: int = 200, sessions: int = 50, limits: int = 30) -> None:
    """Seed the runbook's four namespaces: BullMQ queues, agent cache, sessions, rate limits."""
    pipe = client.pipeline(transaction=False)
    for i in range(agents):
        pipe.set(f"agent:{i}", "x" * 100, ex=3600)
    for i in range(sessions):
        pipe.hset(f"sess:{i}", mapping={"user": str(i), "token": "t" * 32})
    for i in range(limits):
        pipe.set(f"rl:api:{i}", i, ex=60)
    pipe.rpush("bull:email:wait", "1", "2", "3")
    pipe.hset("bull:email:1", mapping={"name": "send", "data": "{}"})
    pipe.set("bull:email:id", 3)
    pipe.zadd("bull:email:delayed", {"4": 1.0})
    pipe.execute()


# -- the bot itself -------------------------------------------------------------------------------

import asyncio  # noqa: E402
import json  # noqa: E402
from typing import Any  # noqa: E402

from bot.config import Config, load_config  # noqa: E402
from bot.identity import Actor  # noqa: E402
from bot.incidents import Approval, Incident, StepRun  # noqa: E402
from bot.notifier import NoticeLevel  # noqa: E402


def person(name: str) -> Actor:
    """A distinct verified person for engine tests: a Slack identity, which the engine counts as
    checked (the Slack allow-list is the chat layer's job), so CLI account rules stay out of the way."""
    return Actor(kind="slack", id=name)


class RecordingNotifier:
    """Collects what the engine says, for assertions (the console notifier's twin, in memory)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.changed = asyncio.Event()

    def _add(self, kind: str, payload: Any) -> None:
        self.events.append((kind, payload))
        self.changed.set()

    async def incident_opened(self, incident: Incident) -> None:
        self._add("opened", incident)

    async def incident_updated(self, incident: Incident) -> None:
        self._add("updated", incident)

    async def step_progress(self, incident: Incident, step_id: str, message: str) -> None:
        self._add("progress", (step_id, message))

    async def step_finished(self, incident: Incident, run: StepRun) -> None:
        self._add("step", run)

    async def approval_requested(self, incident: Incident, approval: Approval) -> None:
        self._add("approval", approval)

    async def approval_closed(self, incident: Incident, approval: Approval) -> None:
        self._add("closed", approval)

    async def notice(self, text: str, level: NoticeLevel = "info") -> None:
        """Channel-level messages (digests, backup warnings), recorded as ``("notice", (level, text))``."""
        self._add("notice", (level, text))

    async def close(self) -> None:
        return None

    def of(self, kind: str) -> list[Any]:
        return [p for k, p in self.events if k == kind]


def write_config(tmp_path: Path, url: str, extra: str = "") -> Path:
    path = tmp_path / "bot.yaml"
    path.write_text(
        f"targets:\n  - match: {{job: redis}}\n    url: {url}\n    maxmemory_ceiling: 1gb\n{extra}"
    )
    return path


@pytest.fixture
def config_path(tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis) -> Path:
    return write_config(tmp_path, redis_server.url)


@pytest.fixture
def config(config_path: Path) -> Config:
    return load_config(config_path)


def load_fixture_payloads() -> list[dict[str, Any]]:
    lines = (FIXTURES / "alertmanager-0.25-webhooks.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def alert_payload(
    alertname: str,
    status: str = "firing",
    *,
    fingerprint: str | None = None,
    starts_at: str = "2026-11-25T19:39:47.888Z",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A notification shaped exactly like Alertmanager 0.25's (see the fixture file)."""
    base = load_fixture_payloads()[0]
    alert = dict(base["alerts"][0])
    alert["labels"] = {**alert["labels"], "alertname": alertname, **(labels or {})}
    alert["status"] = status
    alert["startsAt"] = starts_at
    alert["endsAt"] = "2026-11-25T20:00:00Z" if status == "resolved" else "0001-01-01T00:00:00Z"
    alert["fingerprint"] = fingerprint or f"fp{abs(hash((alertname, starts_at))) % 10**12:012d}"
    return {**base, "status": status, "alerts": [alert], "commonLabels": alert["labels"]}


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll an async or sync predicate until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


# -- PostgreSQL: a real server per session, and the store contract on both backends ---------------

from tests.pg import (  # noqa: E402, F401
    asked_database_line,
    backend,
    database_line,
    database_url,
    pg_server,
    pg_url,
    store,
)

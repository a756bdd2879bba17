"""Client buffers against a real redis-server: a client that sends MONITOR and never reads while
traffic flows holds tens of MB of output buffer; the memory-high diagnostics name it (address and
omem), and ``redis.client_kill`` behind an approval disconnects it and nothing else."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from bot.alerts import Notification
from bot.config import load_config
from bot.engine import Engine
from bot.errors import ActionStopped, PlanRefused
from bot.incidents import IncidentState, StepStatus
from bot.planview import describe_plan
from bot.redisconn import RedisTarget
from bot.steps import REGISTRY, StepContext
from tests.conftest import RecordingNotifier, RedisServer, alert_payload, person, write_config

HOG_BYTES = 40 << 20


class Monitor:
    """A raw connection that sends MONITOR and never reads: Redis queues every command for it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel absorbs little
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(b"MONITOR\r\n")
        host, local_port = self.sock.getsockname()
        self.addr = f"{host}:{local_port}"

    def close(self) -> None:
        self.sock.close()


def monitor_entry(r: redis.Redis, addr: str) -> dict[str, Any] | None:
    return next((c for c in r.client_list() if c["addr"] == addr), None)


def fill_buffer(r: redis.Redis, hog: Monitor, size: int = HOG_BYTES) -> int:
    """Traffic until the monitor holds ``size`` bytes of output buffer (bounded: a few seconds)."""
    deadline = time.monotonic() + 20
    value = b"v" * (256 << 10)
    while time.monotonic() < deadline:
        entry = monitor_entry(r, hog.addr)
        assert entry is not None, "the monitor was disconnected"
        if int(entry["omem"]) >= size:
            return int(entry["omem"])
        pipe = r.pipeline(transaction=False)
        for _ in range(16):
            pipe.set("traffic", value)
        pipe.execute()
    raise AssertionError("the monitor's output buffer did not grow")


@pytest.fixture
def server(make_redis: Any) -> RedisServer:
    server: RedisServer = make_redis()
    return server


@pytest.fixture
def sync(server: RedisServer) -> Iterator[redis.Redis]:
    r = server.sync_client()
    yield r
    r.close()


@pytest.fixture
def hog(server: RedisServer, sync: redis.Redis) -> Iterator[Monitor]:
    m = Monitor(server.port)
    deadline = time.monotonic() + 5
    while (entry := monitor_entry(sync, m.addr)) is None or "O" not in entry["flags"]:
        assert time.monotonic() < deadline, "MONITOR did not start"
        time.sleep(0.01)  # the server has not processed the MONITOR command yet
    yield m
    m.close()


async def test_memory_high_names_the_monitor_and_the_approved_kill_disconnects_it(
    tmp_path: Path, server: RedisServer, sync: redis.Redis, hog: Monitor
) -> None:
    omem = fill_buffer(sync, hog)
    used = int(sync.info("memory")["used_memory"])
    sync.config_set("maxmemory", int(used / 0.85))  # memory high: mostly the monitor's buffer
    bystander = redis.Redis(port=server.port, client_name="checkout-api")
    bystander.ping()
    notifier = RecordingNotifier()
    engine = Engine(load_config(write_config(tmp_path, server.url)), notifier=notifier)
    await engine.start()
    try:
        result = await engine.intake.receive(
            Notification.model_validate(alert_payload("RedisMemoryUsageHigh"))
        )
        await engine.runner.drain()
        inc = await engine.store.get_incident(result.new[0])
        assert inc.status == IncidentState.AWAITING_APPROVAL, inc.note
        runs = {s.step_id: s for s in inc.steps}
        memory, clients = runs["memory"], runs["clients"]
        assert memory.status == StepStatus.WARNING
        assert "client buffers hold" in memory.summary and "redis.clients names the client" in memory.summary
        assert clients.status == StepStatus.WARNING
        assert clients.summary.startswith(f"client {hog.addr} cmd=monitor"), clients.summary
        assert "of output buffer (omem)" in clients.summary and "of used memory" in clients.summary
        assert clients.data["top_buffers"][0]["addr"] == hog.addr
        assert clients.data["top_buffers"][0]["omem"] >= omem * 0.9
        assert hog.addr in clients.details and "biggest buffers" in clients.details

        pending = inc.pending_step
        assert pending is not None and pending["id"] == "disconnect-runaway-client"
        plan = pending["plan"]
        entry = monitor_entry(sync, hog.addr)
        assert entry is not None, "nothing is disconnected before the approval"
        assert plan["changes"] == [
            {"op": "client_kill", "name": str(entry["id"]), "before": hog.addr, "after": None}
        ]
        assert plan["details"]["client"]["cmd"] == "monitor"
        text = describe_plan(plan)
        assert f"CLIENT KILL ID {entry['id']}: disconnect the client at {hog.addr}" in text

        report = await engine.runner.decide(inc.id, person("alice"), True)
        assert report.executed and report.result is not None, report.message
        assert report.result.data["killed"] == 1 and report.result.data["addr"] == hog.addr
        assert monitor_entry(sync, hog.addr) is None, "the monitor is disconnected"
        assert bystander.ping(), "other clients stay connected"
        names = [c["name"] for c in sync.client_list()]
        assert "checkout-api" in names, "no other client is touched"
        assert int(sync.info("memory")["used_memory"]) < used - omem // 2, "its buffer is freed"
        final = await engine.store.get_incident(inc.id)
        assert final.status == IncidentState.VERIFIED, final.note
        runs = {s.step_id: s for s in final.steps}
        assert runs["evict-agent-cache"].status == StepStatus.SKIPPED
        audit = await engine.store.list_audit(incident_id=inc.id)
        executed = next(e for e in audit if e.kind == "action.executed")
        assert executed.actor == "slack:alice" and executed.plan_hash == pending["plan_hash"]
    finally:
        bystander.close()
        await engine.stop()


async def test_a_small_buffer_is_nothing_to_do_and_named_clients_are_planned_by_id(
    server: RedisServer, sync: redis.Redis
) -> None:
    target = RedisTarget(name="t", url=server.url)
    other = redis.Redis(port=server.port, client_name="worker")
    other.ping()
    st = REGISTRY["redis.client_kill"]
    assert st.mutating and st.plan is not None and st.execute is not None
    try:
        ctx = StepContext(target=target)
        nothing = await st.plan(ctx, st.params(buffers_over="32mb"))
        assert nothing.estimated_keys == 0 and nothing.changes == []
        assert nothing.summary.startswith("no client holds over 32.0 MiB of buffers")
        entry = next(c for c in sync.client_list() if c["name"] == "worker")
        by_addr = await st.plan(ctx, st.params(addr=entry["addr"]))
        by_id = await st.plan(ctx, st.params(id=int(entry["id"])))
        assert by_addr.changes == by_id.changes and by_id.changes[0].name == entry["id"]
        assert "(worker)" in by_id.summary
        with pytest.raises(PlanRefused, match="no client with id 999999"):
            await st.plan(ctx, st.params(id=999999))
        own = int(await target.client.execute_command("CLIENT", "ID"))  # type: ignore[no-untyped-call]
        with pytest.raises(PlanRefused, match="the bot's own connection"):
            await st.plan(ctx, st.params(id=own))

        async def kill_switch() -> str | None:
            return "kill switch is on"

        with pytest.raises(ActionStopped, match="kill switch"):
            await st.execute(StepContext(target=target, should_stop=kill_switch), st.params(id=1), by_id)
        assert other.ping(), "the kill switch is checked before the kill"
        sync.client_kill_filter(_id=int(entry["id"]))
        gone = await st.execute(ctx, st.params(id=1), by_id)
        assert gone.data["killed"] == 0 and "gone already" in gone.summary
    finally:
        other.close()
        await target.close()


@pytest.mark.parametrize("params", [{}, {"id": 3, "addr": "1.2.3.4:5"}, {"addr": "nohost"}, {"id": 0}])
def test_client_kill_needs_exactly_one_valid_selector(params: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        REGISTRY["redis.client_kill"].params(**params)

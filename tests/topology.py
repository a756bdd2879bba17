"""Topologies started by the suite on loopback: a primary with a replica watched by Debian's
``redis-sentinel``, and a 3-primary Redis Cluster (``redis-server --cluster-enabled yes`` x3 joined
with ``redis-cli --cluster create``). Every process is stopped by the fixture that started it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from bot import localstack
from tests.conftest import RedisServer

MASTER = "mymaster"


class SentinelServer(localstack.RedisServer):
    """One Sentinel watching ``MASTER`` at ``primary_port`` (quorum 1: it alone may fail over)."""

    name = "sentinel"
    binary = "redis-sentinel"
    package = "redis-sentinel"

    def __init__(self, workdir: Path, primary_port: int) -> None:
        super().__init__(workdir)
        self.primary_port = primary_port

    @property
    def conf(self) -> Path:
        return self.workdir / "sentinel.conf"

    def prepare(self) -> None:
        self.conf.write_text(  # Sentinel rewrites this file: it must be its own and writable
            f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} 1\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 10000\n"
        )

    def args(self) -> list[str]:
        return [str(self.conf)]

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, decode_responses=True)


def wait(predicate: object, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        time.sleep(0.1)  # polling a server's state, bounded by the deadline


class SentinelSetup:
    """A primary, its replica, and one Sentinel that knows both."""

    def __init__(self, tmp: Path) -> None:
        self.primary = RedisServer(tmp / "primary").start()
        self.replica = RedisServer(
            tmp / "replica", "--replicaof", "127.0.0.1", str(self.primary.port)
        ).start()
        self.sentinel = SentinelServer(tmp / "sentinel", self.primary.port)
        self.sentinel.start()
        s = self.sentinel.client()
        wait(lambda: self.synced(self.replica), what="replica in sync")
        wait(
            lambda: any("s_down" not in r["flags"] for r in s.sentinel_slaves(MASTER)),
            what="Sentinel knows the replica",
        )
        s.close()

    @staticmethod
    def synced(server: RedisServer) -> bool:
        info = server.sync_client().info("replication")
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    def master_port(self) -> int:
        s = self.sentinel.client()
        try:
            return int(s.sentinel_get_master_addr_by_name(MASTER)[1])
        finally:
            s.close()

    def failover(self) -> RedisServer:
        """SENTINEL FAILOVER, and wait until the replica is the primary and the old one follows it."""
        s = self.sentinel.client()
        s.execute_command("SENTINEL", "FAILOVER", MASTER)
        s.close()
        wait(lambda: self.master_port() == self.replica.port, what="failover")
        wait(lambda: self.replica.sync_client().info("replication")["role"] == "master", what="promotion")
        wait(lambda: self.synced(self.primary), what="old primary following the new one")
        return self.replica

    def config(self, extra: str = "") -> str:
        return (
            f"  - match: {{job: redis}}\n    name: cache\n"
            f"    sentinel: {{addresses: ['127.0.0.1:{self.sentinel.port}'], master: {MASTER}}}\n{extra}"
        )

    def stop(self) -> None:
        for p in (self.sentinel, self.replica, self.primary):
            p.stop()


def redis_cli(*args: str) -> str:
    out = subprocess.run(
        [localstack.find_binary("redis-cli", "redis-tools"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout

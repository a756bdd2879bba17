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


class ClusterSetup:
    """Three primaries, no replicas, every slot assigned (``redis-cli --cluster create``)."""

    def __init__(self, tmp: Path, size: int = 3) -> None:
        self.nodes = [
            RedisServer(
                tmp / f"node{i}", "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000",
                # The bus port defaults to port + 10000, past 65535 for a high ephemeral port.
                "--cluster-port", str(localstack.free_port()),
            ).start()
            for i in range(size)
        ]  # fmt: skip
        redis_cli(
            "--cluster",
            "create",
            *(n.address for n in self.nodes),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        )
        for n in self.nodes:
            wait(
                lambda n=n: n.sync_client().info("cluster") and self.state(n) == "ok", what="cluster state ok"
            )
        wait(self.converged, what="every node sees every slot")

    @staticmethod
    def state(node: RedisServer) -> str:
        return str(
            node.sync_client()
            .execute_command("CLUSTER", "INFO")
            .decode()
            .split("cluster_state:")[1]
            .split()[0]
        )

    def converged(self) -> bool:
        return all(
            "cluster_slots_ok:16384" in n.sync_client().execute_command("CLUSTER", "INFO").decode()
            for n in self.nodes
        )

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, socket_timeout=5)

    def node_id(self, node: RedisServer) -> str:
        return str(node.sync_client().execute_command("CLUSTER", "MYID").decode())

    def slot_ranges(self) -> list[tuple[int, int, RedisServer]]:
        """``(first slot, last slot, primary)`` per range of CLUSTER SLOTS, read once."""
        ranges = self.nodes[0].sync_client().execute_command("CLUSTER", "SLOTS")
        by_port = {x.port: x for x in self.nodes}
        return [(int(start), int(end), by_port[int(master[1])]) for start, end, master, *_ in ranges]

    def owner(self, slot: int, ranges: list[tuple[int, int, RedisServer]] | None = None) -> RedisServer:
        """The primary holding ``slot`` (``ranges``: a :meth:`slot_ranges` read already made)."""
        for start, end, node in ranges if ranges is not None else self.slot_ranges():
            if start <= slot <= end:
                return node
        raise AssertionError(f"slot {slot} has no owner")

    def migrate(
        self, slot: int, src: RedisServer, dst: RedisServer, *, keys: int | None = None, finish: bool = True
    ) -> int:
        """Move ``keys`` keys (all by default) of ``slot`` from ``src`` to ``dst``, as redis-cli
        --cluster reshard does; ``finish`` assigns the slot to ``dst`` on every node."""
        s, d = src.sync_client(), dst.sync_client()
        d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(src))
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(dst))
        moved = 0
        while keys is None or moved < keys:
            want = 100 if keys is None else min(100, keys - moved)
            batch = s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, want)
            if not batch:
                break
            s.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", *batch)
            moved += len(batch)
        if finish:
            self.assign(slot, dst)
        return moved

    def assign(self, slot: int, dst: RedisServer) -> None:
        for n in self.nodes:
            n.sync_client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", self.node_id(dst))

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

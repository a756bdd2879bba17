"""Benchmark 6: the memory report on a 3-primary Redis Cluster vs one node, same keys.

Both hold the same key names and values (written through a cluster client on the cluster, a
pipeline on the single node). The cluster report scans the three primaries in parallel and merges
their reports; each Redis is single-threaded, so with enough cores it should take about a third
of the single node's time. The bot's own aggregation is one Python thread either way, which bounds
the speed-up on a small machine.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import redis

from bench.common import RedisProc, Results, fmt_s, log, median, tempdir
from bot import localstack
from bot.redisconn import RedisTarget
from bot.steps import REGISTRY, StepContext

NAMESPACES = {
    "agent:profile:": (0.5, 120),
    "sess:": (0.2, 60),
    "rl:api:": (0.15, 8),
    "bull:email:job:": (0.15, 200),
}


def keys_of(total: int) -> list[tuple[str, bytes]]:
    out = []
    for prefix, (share, size) in NAMESPACES.items():
        out += [(f"{prefix}{i}", b"v" * size) for i in range(int(total * share))]
    return out


def fill(client: redis.Redis | redis.RedisCluster, data: list[tuple[str, bytes]]) -> None:
    for start in range(0, len(data), 20_000):
        pipe = client.pipeline(transaction=False) if isinstance(client, redis.Redis) else client.pipeline()
        for key, value in data[start : start + 20_000]:
            pipe.set(key, value)
        pipe.execute()


def report_seconds(url: str, runs: int) -> tuple[float, int]:
    """Median wall time of the ``redis.memory_report`` step, and the keys it counted."""

    async def once() -> tuple[float, int]:
        target = RedisTarget(name="bench", url=url, timeout=600)
        st = REGISTRY["redis.memory_report"]
        assert st.run is not None
        try:
            t0 = time.perf_counter()
            out = await st.run(StepContext(target=target), st.params())
            return time.perf_counter() - t0, int(out.data["scanned_keys"])
        finally:
            await target.close()

    results = [asyncio.run(once()) for _ in range(runs)]
    return median([r[0] for r in results]), results[-1][1]


def start_cluster(base: Path) -> list[localstack.RedisServer]:
    nodes = []
    for i in range(3):
        nodes.append(
            localstack.RedisServer(
                base / f"node{i}",
                ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port",
                 str(localstack.free_port()), "--enable-debug-command", "local"],
            ).start()
        )  # fmt: skip
    cli = localstack.find_binary("redis-cli", "redis-tools")
    subprocess.run(
        [cli, "--cluster", "create", *(n.address for n in nodes), "--cluster-replicas", "0", "--cluster-yes"],
        capture_output=True,
        check=True,
        timeout=120,
    )
    deadline = time.monotonic() + 60
    while not all(
        b"cluster_state:ok" in redis.Redis(port=n.port).execute_command("CLUSTER", "INFO") for n in nodes
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("the benchmark cluster did not come up")
        time.sleep(0.2)
    return nodes


def bench(res: Results, keys: int, runs: int) -> None:
    data = keys_of(keys)
    with tempdir("cluster") as d:
        nodes = start_cluster(d)
        try:
            log(f"cluster: writing {len(data):,} keys through a cluster client")
            cluster = redis.RedisCluster(host="127.0.0.1", port=nodes[0].port, socket_timeout=600)
            fill(cluster, data)
            cluster.close()
            spread = [int(redis.Redis(port=n.port).dbsize()) for n in nodes]
            cluster_s, cluster_keys = report_seconds(nodes[0].redis_url, runs)
        finally:
            for n in nodes:
                n.stop()
    with tempdir("single") as d, RedisProc(d) as r:
        log(f"cluster: writing the same {len(data):,} keys to one node")
        fill(r.client, data)
        single_s, single_keys = report_seconds(r.url, runs)
    label = f"{len(data) / 1e6:g}M" if len(data) >= 1_000_000 else f"{len(data) / 1e3:g}k"
    res.raw["cluster"] = {
        "keys": len(data),
        "per_primary": spread,
        "cluster_s": cluster_s,
        "single_s": single_s,
    }
    res.add(
        "6 cluster memory report",
        f"{label} keys on 3 primaries ({', '.join(f'{n:,}' for n in spread)}) vs one node",
        fmt_s(cluster_s),
        fmt_s(single_s),
        f"{cluster_s / single_s:.2f}x",
        "every key counted",
        cluster_keys == single_keys == len(data),
    )

"""The benchmark data set: the runbook's four namespaces plus a few big keys of every type.

Shares of the key count: ``agent:`` (application cache) 50 %, ``sess:`` (sessions, small hashes)
20 %, ``rl:`` (rate limits) 15 %, ``bull:`` (BullMQ, protected) 15 %. Bulk strings come from DEBUG
POPULATE, sessions from a server-side Lua loop, so a million keys take a few seconds to build. The
big keys have fixed sizes whatever the key count, and each is the clear winner of its type both by
memory (``--memkeys``) and by element count (``--bigkeys``): no ties, so the answers can be compared.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

# key, type, elements (bytes for the string)
BIG_KEYS: list[tuple[str, str, int]] = [
    ("agent:snapshot", "string", 2 * 1024 * 1024),
    ("agent:index", "hash", 100_000),
    ("agent:recent", "list", 200_000),
    ("rl:blocked", "set", 100_000),
    ("rl:window", "zset", 50_000),
    ("bull:email:wait", "list", 20_000),
    ("bull:email:delayed", "zset", 20_000),
    ("bull:email:events", "stream", 10_000),
]

EXPECTED_BIGGEST = {
    "string": "agent:snapshot",
    "hash": "agent:index",
    "list": "agent:recent",
    "set": "rl:blocked",
    "zset": "rl:window",
    "stream": "bull:email:events",
}
"""The biggest key of each type, by memory and by elements alike."""

_FILL = """
local kind, key, n = ARGV[1], KEYS[1], tonumber(ARGV[2])
for i = 1, n, 1000 do
  local args = {}
  local last = math.min(i + 999, n)
  if kind == 'hash' then
    for j = i, last do args[#args + 1] = 'field:' .. j; args[#args + 1] = 'value-' .. j end
    redis.call('HSET', key, unpack(args))
  elseif kind == 'list' then
    for j = i, last do args[#args + 1] = 'job-' .. j end
    redis.call('RPUSH', key, unpack(args))
  elseif kind == 'set' then
    for j = i, last do args[#args + 1] = 'client-' .. j end
    redis.call('SADD', key, unpack(args))
  elseif kind == 'zset' then
    for j = i, last do args[#args + 1] = j; args[#args + 1] = 'member-' .. j end
    redis.call('ZADD', key, unpack(args))
  elseif kind == 'stream' then
    for j = i, last do redis.call('XADD', key, '*', 'event', 'completed', 'job', j) end
  end
end
return n
"""

_SESSIONS = """
local first, last = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = first, last do
  redis.call('HSET', 'sess:' .. i, 'user', 'user-' .. i, 'token', 'b5f0c1e2d3a4958677aabbccddeeff00', 'ts', i)
end
return last - first + 1
"""


@dataclass
class Dataset:
    total: int
    agent: int
    sess: int
    rl: int
    bull: int
    build_s: float


def counts(total: int) -> dict[str, int]:
    """Keys per namespace (big keys included) for a data set of ``total`` keys."""
    agent = total // 2
    sess = total * 20 // 100
    rl = total * 15 // 100
    return {"agent": agent, "sess": sess, "rl": rl, "bull": total - agent - sess - rl}


def build(client: redis.Redis, total: int) -> Dataset:
    """FLUSHALL, then exactly ``total`` keys (at least a few hundred: the big keys count too)."""
    started = time.perf_counter()
    client.flushall()
    fill = client.register_script(_FILL)
    for key, kind, n in BIG_KEYS:
        if kind == "string":
            client.set(key, b"s" * n)
        else:
            fill(keys=[key], args=[kind, n])
    c = counts(total)
    big = {ns: sum(1 for k, _, _ in BIG_KEYS if k.startswith(ns + ":")) for ns in c}
    client.execute_command("DEBUG", "POPULATE", c["agent"] - big["agent"], "agent:profile", 120)
    client.execute_command("DEBUG", "POPULATE", c["rl"] - big["rl"], "rl:api", 8)
    client.execute_command("DEBUG", "POPULATE", c["bull"] - big["bull"], "bull:email:job", 200)
    sessions = client.register_script(_SESSIONS)
    step = 50_000
    for first in range(0, c["sess"], step):
        sessions(args=[first, min(first + step, c["sess"]) - 1])
    size = int(client.dbsize())
    if size != total:
        raise RuntimeError(f"data set has {size} keys, expected {total}")
    return Dataset(total, c["agent"], c["sess"], c["rl"], c["bull"], time.perf_counter() - started)


def count_matching(client: redis.Redis, pattern: str) -> int:
    """Keys matching ``pattern``, counted with SCAN (for checks after a benchmark, not timed)."""
    n = 0
    for _ in client.scan_iter(match=pattern, count=10_000):
        n += 1
    return n

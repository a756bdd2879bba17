"""The floor of an exact memory report, in a process of its own: what Redis must do and nothing else.

    python -m bench.memfloor_child URL [COUNT]

A bare loop: ``SCAN cursor COUNT 1000``, then one Lua call per batch that runs ``MEMORY USAGE`` on
each key SCAN returned (the keys travel as KEYS), reply read and dropped. No TYPE, no length command,
no aggregation in Python, no overlap of the two round trips. Any exact report must at least make
Redis run MEMORY USAGE once per key on its single thread, so the bot's report is measured against
this loop on the same data in the same run. Prints one JSON object with the wall time (interpreter
start-up excluded), the keys measured and the batches.
"""

from __future__ import annotations

import json
import sys
import time

import redis

# MEMORY USAGE at Redis's default of 5 samples, without the SAMPLES argument (the bot's report
# leaves it out for 5 too): the cheapest form of the one command an exact report cannot skip.
FLOOR_SCRIPT = """
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('MEMORY', 'USAGE', KEYS[i])
end
return out
"""


def floor(url: str, count: int = 1000) -> dict[str, float]:
    client = redis.Redis.from_url(url, socket_timeout=60)
    client.ping()
    sha = client.script_load(FLOOR_SCRIPT)
    started = time.perf_counter()
    cursor, keys_seen, batches = 0, 0, 0
    while True:
        cursor, keys = client.scan(cursor, count=count)
        if keys:
            client.evalsha(sha, len(keys), *keys)
            keys_seen += len(keys)
            batches += 1
        if cursor == 0:
            break
    elapsed = time.perf_counter() - started
    client.close()
    return {"elapsed_s": elapsed, "keys": keys_seen, "batches": batches}


if __name__ == "__main__":
    print(json.dumps(floor(sys.argv[1], *(int(a) for a in sys.argv[2:3]))))

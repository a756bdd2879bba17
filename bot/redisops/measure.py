"""How the memory report measures one SCAN batch: a read-only Lua script, or pipelines without it.

Both give the same flat reply per batch, ``[type, bytes, elements, ...]`` in key order, so
:func:`bot.redisops.memory.memory_report` aggregates either the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rex

from bot.redisops.common import call

# One round trip per batch: the script runs the SCAN step itself, then measures every key found
# (MEMORY USAGE and the type's length command) and returns {next cursor, keys, type, bytes,
# elements, ...}. Key names never travel back to Redis, and nothing can vanish between SCAN and
# measurement. MEMORY USAGE is nil (Lua false) for a missing key; such keys are skipped by the caller.
#
# TYPE is not asked of every key: keys sharing a prefix nearly always share a type, so the script
# first tries the length command of the type its prefix has had (ARGV from 6 on: prefix, type pairs
# the caller has seen; a prefix first met in this batch learns from its first key). The length
# commands are type-checked (STRLEN only counts strings, HLEN only hashes, ...), so a number back
# proves the type; a WRONGTYPE reply (caught by pcall; INFO errorstats counts it) means ask TYPE,
# and the prefix is not guessed again in this batch. That saves one of three commands per key, a
# quarter of Redis's work. MEMORY USAGE is sent without SAMPLES when the caller asks for Redis's
# default of 5 (two fewer arguments per key). The script only reads, touches only keys SCAN found
# on this node, and has no shebang so it also runs on Redis 6 and while Redis is OOM.
_REPORT_SCRIPT = """
local lencmd = {string='STRLEN', list='LLEN', hash='HLEN', set='SCARD', zset='ZCARD', stream='XLEN'}
local page = redis.call('SCAN', ARGV[1], 'COUNT', ARGV[2])
local keys = page[2]
local samples = ARGV[3]
if samples == '5' then samples = nil end
local sep, depth = ARGV[4], tonumber(ARGV[5])
local guess = {}
for j = 6, #ARGV - 1, 2 do
  guess[ARGV[j]] = lencmd[ARGV[j + 1]] and ARGV[j + 1] or false
end
local out = {page[1], keys}
for i = 1, #keys do
  local k = keys[i]
  local pos, stop = 1, 0
  for _ = 1, depth do
    local s, f = string.find(k, sep, pos, true)
    if not s then break end
    stop, pos = f, f + 1
  end
  local p = string.sub(k, 1, stop)
  local t = guess[p]
  local n
  if t then
    n = redis.pcall(lencmd[t], k)
    if type(n) ~= 'number' then
      t = nil
      guess[p] = false
    end
  end
  if not t then
    t = redis.call('TYPE', k)['ok']
    local c = lencmd[t]
    if guess[p] == nil then guess[p] = c and t or false end
    n = c and redis.call(c, k) or 0
  end
  out[3 * i] = t
  if samples then
    out[3 * i + 1] = redis.call('MEMORY', 'USAGE', k, 'SAMPLES', samples)
  else
    out[3 * i + 1] = redis.call('MEMORY', 'USAGE', k)
  end
  out[3 * i + 2] = n
end
return out
"""
_REPORT_SCRIPT_SHA = hashlib.sha1(_REPORT_SCRIPT.encode(), usedforsecurity=False).hexdigest()
HINTS = 128
"""Prefixes whose type the script is told (more cost arguments on every call than they save)."""
MIXED = b"mixed"
"""The hint of a prefix seen with two types: the script asks TYPE for its keys."""
_LENGTH_COMMANDS = {
    b"string": "STRLEN",
    b"list": "LLEN",
    b"hash": "HLEN",
    b"set": "SCARD",
    b"zset": "ZCARD",
    b"stream": "XLEN",
}


class ReportScript:
    """Runs the report script batch after batch on one connection, one request ahead.

    :meth:`learn` keeps the type each prefix has had so far (at most :data:`HINTS` prefixes, the
    first met, which are the most common ones), sent with every request as the script's type guess.

    :meth:`prefetch` sends the next batch's request before the caller works through the current
    reply, so Redis measures batch n+1 while Python aggregates batch n: the scan takes about as long
    as the slower of the two sides instead of their sum. Each call is still one short script (about
    a millisecond per 1000 keys), so other clients wait no longer than before. At most one request is
    in flight; :meth:`close` drops the connection if one is left unread (an error or cancellation).
    """

    def __init__(
        self, conn: aioredis.Redis, count: int, samples: int, separator: bytes = b":", depth: int = 1
    ) -> None:
        self.conn = conn
        self.count = count
        self.samples = samples
        self.separator = separator
        self.depth = depth
        self.hints: list[bytes] = []
        self._types: dict[bytes, bytes] = {}
        """Flat (prefix, type) pairs for the script's type guess; type ``b"mixed"`` = don't guess."""
        self.loaded = False
        self.pending: int | None = None
        self.batches = 0

    def learn(self, prefix: bytes, typ: bytes) -> None:
        """Record that a key of ``prefix`` had ``typ`` (call it when that pair is first seen)."""
        known = self._types.get(prefix)
        if known in (typ, MIXED):
            return
        if known is None and len(self._types) >= HINTS:
            return
        self._types[prefix] = typ if known is None else MIXED
        self.hints = [x for pair in self._types.items() for x in pair]

    async def _send(self, cursor: int) -> None:
        connection = self.conn.connection
        assert connection is not None
        args = (cursor, self.count, self.samples, self.separator, self.depth, *self.hints)
        if self.loaded:
            await connection.send_command("EVALSHA", _REPORT_SCRIPT_SHA, 0, *args)
        else:
            await connection.send_command("EVAL", _REPORT_SCRIPT, 0, *args)
        self.pending = cursor

    async def _read(self) -> Any:
        connection = self.conn.connection
        assert connection is not None
        try:
            reply = await connection.read_response()
        except rex.ResponseError:
            self.pending = None  # an error reply is still the reply: the connection stays in step
            raise
        self.pending = None
        return reply

    async def prefetch(self, cursor: int) -> None:
        await self._send(cursor)

    async def fetch(self, cursor: int) -> tuple[int, list[bytes], list[Any]]:
        """The batch at ``cursor``: (next cursor, keys, flat [type, bytes, elements, ...])."""
        await self.conn.initialize()
        if self.pending != cursor:
            await self._send(cursor)
        try:
            reply = await self._read()
        except rex.NoScriptError:  # the script cache was flushed meanwhile: send the body again
            self.loaded = False
            await self._send(cursor)
            reply = await self._read()
        self.loaded = True
        self.batches += 1
        return int(reply[0]), list(reply[1]), reply[2:]

    async def close(self) -> None:
        if self.pending is not None and self.conn.connection is not None:
            self.pending = None
            await self.conn.connection.disconnect()


async def batch_by_pipeline(client: aioredis.Redis, keys: list[bytes], samples: int) -> list[Any]:
    """The same flat [type, bytes, elements, ...] reply as the script, from two pipelined round trips.

    Much slower client-side than the script (redis-py's per-command cost), but needs no scripting
    permission. A key that changed type between the two round trips counts 0 elements.
    """
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.execute_command("TYPE", key)
        pipe.execute_command("MEMORY", "USAGE", key, "SAMPLES", samples)
    first = await pipe.execute()
    types = first[0::2]
    pipe = client.pipeline(transaction=False)
    wanted: list[int] = []
    for i, (key, typ) in enumerate(zip(keys, types, strict=True)):
        command = _LENGTH_COMMANDS.get(typ)
        if command is not None:
            pipe.execute_command(command, key)
            wanted.append(i)
    lengths = [0] * len(keys)
    if wanted:
        replies = await pipe.execute(raise_on_error=False)
        for i, n in zip(wanted, replies, strict=True):
            lengths[i] = n if isinstance(n, int) else 0
    out: list[Any] = []
    for typ, mem, n in zip(types, first[1::2], lengths, strict=True):
        out += (typ, mem, n)
    return out


@contextlib.asynccontextmanager
async def no_touch_client(client: aioredis.Redis) -> AsyncIterator[tuple[aioredis.Redis, bool]]:
    """A single-connection client with CLIENT NO-TOUCH on where the server has it (Redis >= 7.2).

    Reading every key's length would otherwise refresh its LRU/LFU data and skew what eviction
    removes next; older servers refuse the subcommand, and then the report says so.
    """
    single = client.client()
    no_touch = False
    try:
        try:
            await call(single, "CLIENT", "NO-TOUCH", "ON")
            no_touch = True
        except rex.ResponseError:
            no_touch = False
        yield single, no_touch
    finally:
        if no_touch:
            with contextlib.suppress(rex.RedisError, OSError):
                await call(single, "CLIENT", "NO-TOUCH", "OFF")
        await single.aclose()

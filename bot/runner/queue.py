"""The run queue: fair across targets, bounded per target.

An alert storm on one Redis must not make another Redis's alert wait behind it: incidents queue per
target and the workers take them round-robin. A target's queue is bounded; what does not fit is
handed back to the caller, which closes the incident and says so (nothing is dropped silently).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque


class FairQueue:
    def __init__(self, per_target: int) -> None:
        self.per_target = per_target
        self._queues: OrderedDict[str, deque[int]] = OrderedDict()
        self._items = asyncio.Semaphore(0)
        self._unfinished = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def put(self, target: str, incident_id: int) -> bool:
        """Queue an incident; False (not queued) when ``target``'s queue is full."""
        q = self._queues.setdefault(target, deque())
        if incident_id in q:
            return True
        if len(q) >= self.per_target:
            return False
        q.append(incident_id)
        self._unfinished += 1
        self._idle.clear()
        self._items.release()
        return True

    def _pop(self) -> int | None:
        for target in list(self._queues):
            q = self._queues.pop(target)
            if not q:
                continue
            inc = q.popleft()
            if q:
                self._queues[target] = q  # to the back: the next target goes first next time
            return inc
        return None

    async def get(self) -> int:
        await self._items.acquire()
        inc = self._pop()
        assert inc is not None, "one queued incident per semaphore count"
        return inc

    def task_done(self) -> None:
        self._unfinished -= 1
        if self._unfinished <= 0:
            self._unfinished = 0
            self._idle.set()

    def queued(self, target: str) -> int:
        return len(self._queues.get(target, ()))

    async def join(self) -> None:
        await self._idle.wait()

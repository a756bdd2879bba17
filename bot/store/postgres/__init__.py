"""The PostgreSQL backend of the :class:`~bot.store.protocol.Store` protocol, for several replicas.

Built like the SQLite backend, from mixins with one concern each: :mod:`.base` (pool, transactions,
errors, audit, settings), :mod:`.schema` (versioned migrations under an advisory lock),
:mod:`.reads`, :mod:`.moves` (row-locked state moves, fencing), :mod:`.ingest`, :mod:`.events`,
:mod:`.approvals` and :mod:`.leases`. The driver is asyncpg (see the README's design notes for the measurement).
"""

from __future__ import annotations

from bot.store.postgres.approvals import ApprovalEventsMixin
from bot.store.postgres.events import IncidentEventsMixin
from bot.store.postgres.ingest import IngestMixin
from bot.store.postgres.leases import LeasesMixin


class PostgresStore(LeasesMixin, ApprovalEventsMixin, IncidentEventsMixin, IngestMixin):
    """Async store on a PostgreSQL database URL. Open with :meth:`open`, close with :meth:`close`."""

    async def open(self) -> PostgresStore:
        await super().open()
        return self


__all__ = ["PostgresStore"]

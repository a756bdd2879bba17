"""The embedded default store: one SQLite file in WAL mode (see :mod:`bot.store.sqlite_base`)."""

from __future__ import annotations

from pathlib import Path

from bot.store.sqlite_approvals import ApprovalEventsMixin
from bot.store.sqlite_events import IncidentEventsMixin
from bot.store.sqlite_ingest import IngestMixin
from bot.store.sqlite_leases import LeasesMixin


class SQLiteStore(LeasesMixin, ApprovalEventsMixin, IncidentEventsMixin, IngestMixin):
    """Async facade over a SQLite file. Open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(path)

    async def open(self) -> SQLiteStore:
        await super().open()
        return self

"""The SQLite store's partial indexes (schema v7): the queries that need them use them, and an
ingest of alerts nobody handles writes nothing into them.

A partial index is used only when the query's WHERE clause repeats the index's condition; a query
whose wording drifted would silently scan the whole incidents table, so the plans are checked here.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bot.alerts import Alert
from bot.store import IngestItem
from bot.store.sqlite import SQLiteStore
from bot.store.sqlite_base import _ACTIONS
from bot.store.sqlite_ingest import _OPEN_SQL
from bot.store.sqlite_leases import _LAPSED
from tests.conftest import alert_payload

QUERIES = {
    # bot/store/sqlite_ingest.py, _join_open: alert storms join the open incident
    "incidents_open_by_target": f"SELECT id FROM incidents WHERE target = ? AND playbook = ? AND state IN {_OPEN_SQL}"
    " AND dry_run = 0 AND id < ? ORDER BY id LIMIT 1",
    # bot/store/sqlite_reads.py, firing_incident: the health probe's merge
    "incidents_firing_by_target": "SELECT * FROM incidents WHERE target = ? AND alertname = ?"
    " AND alert_status = 'firing' AND state NOT IN ('unmatched', 'merged') ORDER BY id DESC LIMIT 1",
    # bot/store/sqlite_leases.py: the sweep for lapsed leases
    "incidents_lease": f"SELECT id FROM incidents WHERE state IN {_OPEN_SQL} AND ({_LAPSED}) ORDER BY id LIMIT ?",
}
# Schema v8: queries whose full indexes were dropped (every alert wrote them) and that use a
# partial one instead; (index, query) pairs, the query as the store words it.
MORE = [
    # bot/store/sqlite_reads.py, list_incidents(open_only=True) and incidents_to_resume
    ("incidents_lease", f"SELECT * FROM incidents WHERE state IN {_OPEN_SQL} ORDER BY id DESC LIMIT ?"),
    (
        "incidents_lease",
        f"SELECT id FROM incidents WHERE state IN {_OPEN_SQL} AND alert_status = 'firing'"
        " AND state IN ('new', 'diagnosing') ORDER BY id",
    ),
    # bot/store/sqlite_base.py, action_history: the breaker's look-ups by target
    (
        "audit_actions_by_target",
        f"SELECT coalesce(max(ts), 0) FROM audit WHERE target = ? AND kind IN {_ACTIONS} AND kind = 'breaker.reset'",
    ),
    (
        "audit_actions_by_target",
        f"SELECT COUNT(*) FROM audit WHERE target = ? AND kind IN {_ACTIONS} AND kind = 'action.executed' AND ts >= ?",
    ),
    (
        "audit_actions_by_target",
        f"SELECT detail FROM audit WHERE target = ? AND kind IN {_ACTIONS} ORDER BY id DESC LIMIT 50",
    ),
]


async def test_partial_indexes_serve_their_queries(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    store = await SQLiteStore(db).open()
    try:
        items = []
        for n in range(20):
            raw = alert_payload("NobodyHandlesThis", fingerprint=f"u{n}")["alerts"][0]
            items.append(IngestItem(Alert.model_validate(raw), None, None, None, "no playbook"))
        raw = alert_payload("RedisHitRateLow", fingerprint="handled")["alerts"][0]
        items.append(IngestItem(Alert.model_validate(raw), "redis-hit-rate-low", "t:1/0", 0))
        await store.ingest(items)
    finally:
        await store.close()
    conn = sqlite3.connect(db)
    try:
        for index, sql in [*QUERIES.items(), *MORE]:
            plan = " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, [1] * sql.count("?")))
            assert f"USING INDEX {index}" in plan or f"USING COVERING INDEX {index}" in plan, (index, plan)
            # Partial: rows outside the condition (unmatched, merged, closed incidents) are not in it.
            (schema,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (index,)).fetchone()
            assert " WHERE " in schema, schema
        found = conn.execute(QUERIES["incidents_open_by_target"], ("t:1/0", "redis-hit-rate-low", 10**9))
        assert found.fetchone() is not None  # the handled alert's incident is found through it
        # Nothing left indexes every incident by state, nor every audit row by target.
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert not {"incidents_state", "audit_target"} & names, names
        (found_open,) = conn.execute(MORE[0][1], (10,)).fetchall()
        assert "handled" in found_open, "the open incident is listed, the unmatched ones are not"
    finally:
        conn.close()


def test_the_open_states_of_the_sql_are_the_lifecycles() -> None:
    """The partial index's condition is fixed in a migration; the reads repeat it word for word.
    If the lifecycle gains an open state, this fails before open incidents go missing."""
    from bot.lifecycle import OPEN
    from bot.store.sqlite_base import OPEN_STATES_SQL

    assert {s.strip(" '") for s in OPEN_STATES_SQL.strip("()").split(",")} == {str(s) for s in OPEN}

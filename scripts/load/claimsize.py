"""``just load claimsize``: the table and its indexes after a million claimed rows were delivered.

``--events`` rows (default 1,000,000) are written through the outbox (100 a
call, 10 connections) while no emitter runs, then one instance in its own
process claims and delivers them all (chipmock in its own process). Sizes
(``pg_relation_size``, ``pg_indexes_size``, ``pg_total_relation_size``, each
index) and ``pg_stat_user_tables``' counters are read three times: with the
rows written (after VACUUM ANALYZE, as autovacuum would leave them), once every
row is delivered, and after a plain VACUUM. Autovacuum runs as the table's own
settings say throughout; how often it ran is reported.
"""

from __future__ import annotations

import time

import psycopg
import trio

from .chip import ChipProcess, chip_args
from .claimed import first_arrival, last_arrival
from .emitter_process import EmitterProcess
from .measure import MAX_SECONDS_PER_PHASE
from .outbox import write_rows
from .progress import Progress
from .report import Run

TABLE_FIGURES = """
SELECT pg_relation_size(c.oid), pg_indexes_size(c.oid), pg_total_relation_size(c.oid),
       (SELECT count(*) FROM chip_durable_events), s.n_dead_tup, s.n_tup_ins, s.n_tup_upd, s.n_tup_hot_upd, s.n_tup_del, s.autovacuum_count
FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid = 'chip_durable_events'::regclass
"""
INDEX_SIZES = """
SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index
WHERE indrelid = 'chip_durable_events'::regclass ORDER BY 1
"""
MB = 2**20


async def claimsize(args, url: str, run: Run, progress: Progress) -> None:
    await trio.to_thread.run_sync(_claimsize, args, url, run, progress)


def _claimsize(args, url: str, run: Run, progress: Progress) -> None:
    written = write_rows(url, args.events, args.size, progress, "claimsize: outbox rows")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) chip_durable_events")
        start = _figures(conn, "written, before the drain", None)
        progress.show("claimsize: drain", 0, written.events, "starting an emitter process")
        with ChipProcess(*chip_args(args.chip_latency)) as chip, \
                EmitterProcess(url, chip.endpoint, seconds=MAX_SECONDS_PER_PHASE) as emitter:
            stop_at = emitter.spawned + MAX_SECONDS_PER_PHASE
            first = first_arrival(chip, 0, stop_at)
            last, figures = last_arrival(chip, written.events, stop_at, lambda done, total: progress.show(
                "claimsize: drain", done, total, f"{done:,} delivered"))
        progress.done()
        _await_statistics(conn, start["deletes"] + written.events)
        delivered = _figures(conn, "every row delivered (autovacuum as configured)", start)
        conn.execute("VACUUM chip_durable_events")
        vacuumed = _figures(conn, "after a plain VACUUM", start)
    run.rows += [{k: v for k, v in row.items() if k != "indexes"} for row in (start, delivered, vacuumed)]
    run.tables["Index sizes, MB"] = [{"phase": row["phase"], **row["indexes"]} for row in (start, delivered, vacuumed)]
    run.summary.update({
        "rows": written.events, "written_per_s": written.per_s,
        "drain_per_s (instance start to last id)": round(written.events / (last - emitter.spawned), 1),
        "drain_per_s (first to last delivery)": round(written.events / max(last - first, 1e-6), 1),
        "delivered_unique": figures.unique, "duplicates": figures.duplicates,
    })
    run.notes.append("updates, hot_updates, deletes and autovacuums count from the 'written' reading (the claims, "
                     "releases and deletes of the drain); a claim that is a heap-only (HOT) update writes no index "
                     "entry; sizes in MiB")


def _figures(conn: psycopg.Connection, phase: str, since: dict | None) -> dict:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    heap, indexes, total, live, dead, inserts, updates, hot, deletes, autovacuums = conn.execute(
        TABLE_FIGURES).fetchone()
    base = since or {"updates": updates, "hot_updates": hot, "deletes": deletes, "autovacuums": autovacuums}
    return {
        "phase": phase, "heap_mb": round(heap / MB, 1), "indexes_mb": round(indexes / MB, 1),
        "total_mb": round(total / MB, 1), "rows": live, "n_dead_tup": dead,
        "updates": updates - base["updates"] if since else updates,
        "hot_updates": hot - base["hot_updates"] if since else hot,
        "hot_share": round((hot - base["hot_updates"]) / (updates - base["updates"]), 3)
        if since and updates > base["updates"] else None,
        "deletes": deletes - base["deletes"] if since else deletes,
        "autovacuums": autovacuums - base["autovacuums"] if since else autovacuums,
        "indexes": {name: round(size / MB, 1) for name, size in conn.execute(INDEX_SIZES).fetchall()},
    }


def _await_statistics(conn: psycopg.Connection, deletes: int, timeout: float = 30.0) -> None:
    """Wait until the cumulative statistics show the drain's deletes: server processes report them
    when their transactions end, at most a second late, and at their exit."""
    stop_at = time.monotonic() + timeout
    while time.monotonic() < stop_at:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        if conn.execute("SELECT n_tup_del FROM pg_stat_user_tables WHERE relid = 'chip_durable_events'::regclass"
                        ).fetchone()[0] >= deletes:
            return
        time.sleep(0.1)  # polling the server's statistics

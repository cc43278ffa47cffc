"""The SQL of the operator's commands (``durable-emitter status``, ``drain``, ``dlq``), for operations.py.

Each statement is named for what it does; the running emitter's statements are queries.py's.
"""

from __future__ import annotations

from .liveness_queries import judged

# Upstream's acceptance tests read these counters; so do run-local and `status`.
TABLE_ACTIVITY = """
SELECT coalesce(sum(n_tup_ins), 0)::bigint, coalesce(sum(n_tup_del), 0)::bigint,
       coalesce(sum(n_dead_tup), 0)::bigint, max(greatest(last_autovacuum, last_vacuum))
FROM pg_stat_user_tables WHERE relname = 'chip_durable_events' AND schemaname = current_schema()
"""

# Every instance that wrote rows still pending, by a skip scan of the writer index: one
# probe per writer, however many rows each wrote.
_WRITERS = """
WITH RECURSIVE writers AS (
    SELECT min(emitted_by) AS writer FROM chip_durable_events
    UNION ALL
    SELECT (SELECT min(emitted_by) FROM chip_durable_events WHERE emitted_by > writers.writer)
    FROM writers WHERE writers.writer IS NOT NULL
)
"""

# Each writer's pending rows (whoever holds them now), those of them no lease holds, and how
# the writer is judged (as the claim judges it); the rows counted up to a cap, so a
# million-row backlog is not counted row by row.
LEASE_OWNERS = _WRITERS + f"""
SELECT writer,
       (SELECT count(*) FROM (SELECT FROM chip_durable_events
                              WHERE emitted_by = writers.writer LIMIT %(cap)s) held),
       (SELECT count(*) FROM (SELECT FROM chip_durable_events
                              WHERE emitted_by = writers.writer AND lease_expires_at < now() LIMIT %(cap)s) lapsed),
       {judged("i")}
FROM writers LEFT JOIN chip_durable_events_instances i ON i.instance_id = writers.writer
WHERE writer IS NOT NULL ORDER BY 2 DESC, 1 LIMIT 50
"""

DEAD_LETTERS_BY_REASON = """
SELECT reason_code, count(*) FROM chip_durable_events_dead_letter GROUP BY reason_code ORDER BY count(*) DESC
"""

LIST_DEAD_LETTERS = """
SELECT id, reason_code, reason, attempts, created_at, dead_lettered_at
FROM chip_durable_events_dead_letter
WHERE %(reason_code)s::text IS NULL OR reason_code = %(reason_code)s
ORDER BY dead_lettered_at DESC LIMIT %(limit)s
"""

DEAD_LETTER_BY_ID = """
SELECT id, payload, reason_code, reason, attempts, created_at, dead_lettered_at
FROM chip_durable_events_dead_letter WHERE id = %(id)s
"""

PURGE_DEAD_LETTERS = """
DELETE FROM chip_durable_events_dead_letter
WHERE dead_lettered_at < now() - make_interval(secs => %(older_than)s)
  AND (%(reason_code)s::text IS NULL OR reason_code = %(reason_code)s)
"""

# The asked ids that are not in the dead-letter table (NULL: none): replay moves all or nothing.
UNKNOWN_DEAD_LETTERS = """
SELECT array_agg(i) FROM unnest(%(ids)s::text[]) i WHERE i NOT IN (SELECT id FROM chip_durable_events_dead_letter)
"""

# Replayed rows are new pending rows (created now, so the TTL starts again),
# claimable at once by any instance.
REPLAY_DEAD_LETTERS = """
WITH moved AS (
    DELETE FROM chip_durable_events_dead_letter
    WHERE %(all)s OR id = ANY(%(ids)s::text[])
    RETURNING id, payload, attempts
)
INSERT INTO chip_durable_events (id, payload, attempts, last_error, lease_owner, emitted_by, lease_expires_at)
SELECT id, payload, attempts, 'replayed from the dead-letter table', 'replay', 'replay', now()
FROM moved
ON CONFLICT (id) DO NOTHING
RETURNING id
"""

# How long the oldest open transaction has pinned the MVCC horizon: while it
# does, vacuum cannot remove the dead tuples our deletes leave.
OLDEST_TRANSACTION = """
SELECT coalesce(max(extract(epoch FROM now() - xact_start)), 0)::float8
FROM pg_stat_activity WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid()
"""


def explain(statement: str) -> str:
    """``statement``'s plan as it ran: ANALYZE executes it, so run this in a transaction rolled back after."""
    return "EXPLAIN (ANALYZE, BUFFERS) " + statement

# drain's answer: whether any row is left, and how many, counted exactly up to a cap
# (the planner's estimate stays above zero on an emptied table until it is vacuumed).
COUNT_PENDING_UP_TO = """
SELECT count(*) FROM (SELECT FROM chip_durable_events LIMIT %(cap)s) AS pending
"""

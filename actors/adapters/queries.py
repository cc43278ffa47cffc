"""The SQL of the running emitter's events: writing, claiming, releasing, deleting, sampling.

Each statement is named for what it does; liveness (locks, instance records) is
``liveness_queries.py``'s, the operator's commands ``operator_queries.py``'s.
Text only: :mod:`.store` and :mod:`.operations` run these through :mod:`.driver`,
:mod:`actors.outbox` on the host's own connection, :mod:`.listener` on its own;
the schema itself (``schema.sql``, migrations, catalog reads) is ``schema.py``'s.
"""

from __future__ import annotations

from .hot import HotStatement
from .liveness_queries import INCARNATION

# The running emitter's statements (store.py).

# Where a row's lease stands, and how a claim finds it without touching an index.
#
# lease_owner, lease_expires_at, lease_token: who holds the row now, until when, under
# which claim (0: as written). A claim changes only these, none of them indexed, so its
# UPDATE is a heap-only (HOT) update on the same page: no index entry is written, which
# is most of what a claim used to cost (the table's fillfactor, 60, leaves most pages room
# for it; 45 left room for every row but made fresh rows, most rows, cost Postgres more). emitted_by, which instance wrote it, never
# changes; available_at (indexed) is when the row was first free for anyone: set when
# it is written, released or lapsed, never by a claim. A row is claimable when both its
# available_at and its lease_expires_at have passed; rows in flight under a claim stay
# in the available_at range until deleted, and a claim steps over them.

# One statement, binary parameters: one round trip, little client CPU, and the
# lease measured on the database's clock like every comparison made with it.
# The writer holds its rows for $4 seconds: a lease for a group its dispatcher
# publishes from memory, a short hold for a spilled one (persister.SPILL_HOLD).
# Then they are claimable in their turn: claims (oldest first) take them after
# rows that became claimable earlier, never ahead of all of them.
INSERT_EVENTS = HotStatement(b"durable_emitter_insert", b"""
INSERT INTO chip_durable_events (id, payload, lease_owner, emitted_by, lease_expires_at, available_at)
SELECT id, payload, $3, $3, lease, lease
FROM unnest($1::text[], $2::bytea[]) AS t(id, payload),
     LATERAL (SELECT now() + make_interval(secs => $4) AS lease) l
""", (1009, 1001, 25, 701))  # ids text[], payloads bytea[], owner text, seconds held float8


def _claim(rows: str, *, before: str = "", returning: str = "", also: str = "") -> str:
    """Lease the rows ``rows`` selects to the claimer, as many as fit ``max_bytes`` (one at least).

    ``rows`` yields ``ctid, id, ord, bytes`` (and ``returning``'s columns), ordered by ``ord``,
    limited, and locked ``FOR UPDATE SKIP LOCKED``, which keeps claims apart; each row is then
    found again by its ctid, with no index. Each claim's lease gets its own token (the claiming
    transaction's id), returned with the rows. ``before``: CTEs ``rows`` reads; ``returning``:
    more columns of ``rows`` to return with each row; ``also``: more columns to set.
    """
    update = f"""UPDATE chip_durable_events e
    SET lease_owner = %(owner)s, lease_expires_at = now() + make_interval(secs => %(lease)s),
        lease_token = txid_current(){also}
    WHERE e.ctid = ANY(ARRAY(SELECT ctid FROM fitting))
    RETURNING e.id, e.payload, e.created_at, e.lease_token"""
    if returning:
        update = f"""claimed AS (
    {update}
)
SELECT claimed.id, claimed.payload, claimed.created_at, claimed.lease_token, {returning}
FROM claimed JOIN claimable USING (id)"""
    return f"""
WITH {before.strip()}{"," if before else ""} claimable AS (
    {rows.strip()}
), fitting AS (
    SELECT ctid FROM (SELECT ctid, sum(bytes + 8) OVER w AS upto, row_number() OVER w AS n
                      FROM claimable WINDOW w AS (ORDER BY ord, ctid)) r
    WHERE upto <= %(max_bytes)s OR n = 1
){"," if returning else ""}
{update}
"""


# Rows nobody holds (spilled, the outbox's, released for retry, lapsed by a restart: see
# LAPSE_LEASES), rows held by an owner that is gone, and rows this instance claimed in an
# earlier run (their claim's token is older than this run's start): oldest first. A range
# scan of the available_at index however few rows are claimable: rows written with a live
# lease sit at its far end.
CLAIM_EVENTS = """
    SELECT ctid, id, available_at AS ord, octet_length(payload) AS bytes FROM chip_durable_events
    WHERE available_at < now()
      AND (lease_expires_at < now() OR lease_owner = ANY(%(gone)s::text[])
           OR (lease_owner = %(owner)s AND lease_token <> 0 AND lease_token < %(run_floor)s))
    ORDER BY available_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
"""

# A writer-only instance claims only rows it wrote (spilled, released, lapsed): a range
# of the writer index, oldest first.
CLAIM_OWN_EVENTS = _claim("""
    SELECT ctid, id, created_at AS ord, octet_length(payload) AS bytes FROM chip_durable_events
    WHERE emitted_by >= %(owner)s AND emitted_by <= %(owner)s AND available_at < now()
      AND (lease_expires_at < now() OR (lease_owner = %(owner)s AND lease_token <> 0 AND lease_token < %(run_floor)s))
    ORDER BY emitted_by, created_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
""")

# A (re)started dispatcher ends the leases of rows its instance id wrote and still holds
# as written: what an earlier run held in memory is gone with it, so those rows are
# claimable at once (by it, or by any instance) instead of after their lease. Only rows
# written within a lease's time can hold one (a range of the writer index); rows it had
# claimed come back to it through their token (CLAIM_EVENTS' run_floor). Returns how
# many, and this run's floor: claims made before it are an earlier run's.
_LAPSE_WRITTEN = """
    UPDATE chip_durable_events SET lease_expires_at = now(), available_at = least(available_at, now())
    WHERE emitted_by = %(owner)s AND created_at > now() - make_interval(secs => %(lease)s) - interval '1 minute'
      AND lease_owner = %(owner)s AND lease_token = 0 AND lease_expires_at > now()
    RETURNING 1"""
LAPSE_LEASES = f"WITH lapsed AS ({_LAPSE_WRITTEN}) SELECT count(*), txid_current() FROM lapsed"

# Committed groups a restarted dispatcher will not publish from memory: their rows
# are claimable at once.
LAPSE_ROWS = """
UPDATE chip_durable_events SET lease_expires_at = now(), available_at = least(available_at, now())
WHERE id = ANY(%(ids)b) AND lease_owner = %(owner)s AND lease_token = 0 AND lease_expires_at > now()
"""

# An instance closing leaves its rows to the others at once: the leases of rows it wrote and
# still holds as written end now, and its record says its lock is free past its grace (the
# lock itself goes with its connection, a moment later), so the rows it claimed from others
# are claimable too. Nothing to wait for: it did not die, it left.
LEAVE = f"""
WITH lapsed AS ({_LAPSE_WRITTEN}), left_ AS (
    UPDATE chip_durable_events_instances
    SET free_since = now() - liveness_grace, free_in = {INCARNATION},
        seen_at = now() - liveness_grace - interval '1 second'
    WHERE instance_id = %(owner)s AND session_liveness
)
SELECT count(*) FROM lapsed
"""

# The server process serving this statement: a pooler in transaction mode serves one
# client's statements from several, and several clients' from one.
BACKEND_PID = "SELECT pg_backend_pid()"

# The rows the owners found gone (FREE_OWNERS, and the dispatcher's look at this host's
# processes: ``gone``, in that order) wrote and still hold as written, whatever their
# lease says: each owner's rows oldest first (an ordered range of the writer index, however
# many it wrote). Returns each row's previous owner too. Rows a gone owner had claimed from
# others come back through CLAIM_EVENTS; so do these, should their claimer die too: they
# are made available now (an index entry, for rows of the dead only), which rows written
# with a live lease were not.
CLAIM_ORPHANS = _claim("""
    SELECT c.ctid, c.id, c.created_at AS ord, c.bytes, o.instance_id AS orphaned_by
    FROM unnest(%(gone)s::text[]) WITH ORDINALITY AS o(instance_id, n) CROSS JOIN LATERAL (
        SELECT ctid, id, created_at, octet_length(payload) AS bytes FROM chip_durable_events
        WHERE emitted_by >= o.instance_id AND emitted_by <= o.instance_id AND lease_owner = o.instance_id
        ORDER BY emitted_by, created_at
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED) c
    LIMIT %(limit)s
""", returning="claimable.orphaned_by", also=", available_at = least(e.available_at, now())")

CLAIM_EVENTS = _claim(CLAIM_EVENTS)

# A row's wait grows with the attempts it already had (the value before this update). Only
# under the lease the releasing copy had: a copy left from an earlier lease of the same row
# (its release came late) must not hand back a later claim's row while that is in flight.
_BACKOFF = """now() + make_interval(secs => least(
        %(retry_max)s::float8, %(retry_after)s::float8 * power(%(multiplier)s::float8, least(attempts, 64))))"""
RELEASE_EVENTS = f"""
UPDATE chip_durable_events
SET attempts = attempts + %(attempts)s, last_error = %(error)s,
    lease_expires_at = {_BACKOFF}, available_at = {_BACKOFF}
WHERE id = ANY(%(ids)b) AND lease_owner = %(owner)s AND lease_token = %(token)s
"""

# Only rows this instance holds: a row whose lease lapsed may be another's now.
DELETE_EVENTS = HotStatement(b"durable_emitter_delete",
                             b"DELETE FROM chip_durable_events WHERE id = ANY($1) AND lease_owner = $2", (1009, 25))

DEAD_LETTER_EVENTS = """
WITH reasons AS (
    SELECT * FROM unnest(%(ids)b::text[], %(codes)b::text[], %(reasons)b::text[])
        AS r(id, reason_code, reason)
), moved AS (
    DELETE FROM chip_durable_events e USING reasons r WHERE e.id = r.id AND e.lease_owner = %(owner)s
    RETURNING e.id, e.payload, e.created_at, e.attempts
)
INSERT INTO chip_durable_events_dead_letter (id, payload, created_at, attempts, reason_code, reason)
SELECT m.id, m.payload, m.created_at, m.attempts, r.reason_code, r.reason
FROM moved m JOIN reasons r USING (id)
ON CONFLICT (id) DO UPDATE SET reason_code = EXCLUDED.reason_code, reason = EXCLUDED.reason,
    dead_lettered_at = now()
RETURNING reason_code
"""

EXPIRE_EVENTS = """
WITH moved AS (
    DELETE FROM chip_durable_events
    WHERE id IN (SELECT id FROM chip_durable_events
                 WHERE created_at < now() - make_interval(secs => %(ttl)s)
                   AND lease_expires_at < now()  -- never a row a live lease holds: it may be in flight
                 ORDER BY created_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
    RETURNING id, payload, created_at, attempts, last_error
)
INSERT INTO chip_durable_events_dead_letter (id, payload, created_at, attempts, reason_code, reason)
SELECT id, payload, created_at, attempts, 'EXPIRED',
       'not delivered within the TTL; last error: ' || coalesce(last_error, 'none')
FROM moved
ON CONFLICT (id) DO NOTHING
"""

# Counted exactly while the table is small (a few ms); beyond, the planner's own
# estimate (rows per page at the last vacuum or analyze, times the pages now),
# so a sample is a catalog read, not a scan of a million rows. Never analyzed:
# exact. The oldest row is the first entry of the created_at index.
PENDING_STATS = """
WITH size AS (
    SELECT c.reltuples, c.relpages, pg_relation_size(c.oid) AS bytes,
           pg_relation_size(c.oid) / current_setting('block_size')::int AS pages
    FROM pg_class c WHERE c.oid = 'chip_durable_events'::regclass
), estimate AS (
    SELECT CASE WHEN bytes <= %(exact_below)s OR reltuples < 0 OR relpages = 0 THEN NULL
                ELSE (reltuples / relpages * pages)::bigint END AS rows
    FROM size
), counted AS (
    SELECT count(*) AS rows, sum(octet_length(payload)) AS bytes FROM chip_durable_events
    WHERE (SELECT rows FROM estimate) IS NULL
)
SELECT coalesce((SELECT rows FROM estimate), (SELECT rows FROM counted)),
       coalesce((SELECT bytes FROM counted),
                (SELECT rows FROM estimate) * (SELECT avg_width FROM pg_stats WHERE schemaname = current_schema()
                    AND tablename = 'chip_durable_events' AND attname = 'payload'), 0)::bigint,
       coalesce(extract(epoch FROM now() - (SELECT min(created_at) FROM chip_durable_events)), 0)::float8,
       (SELECT rows FROM estimate) IS NULL
"""

# Rows this instance wrote, whoever holds them now: a range of the writer index.
HAS_PENDING_BEFORE = """
SELECT EXISTS (SELECT 1 FROM chip_durable_events WHERE emitted_by = %(owner)s AND created_at <= %(before)s)
"""

# The database's clock (not the transaction's start): flush compares row times with it.
DATABASE_NOW = "SELECT clock_timestamp()"


# Whether a commit whose answer was lost happened, asked in the one way whose answer is
# true in every order of events: write the rows again, keeping any that exist. Rows the
# lost commit wrote stay as they are; rows it did not write are written now; a lost INSERT
# still running in its old session (Postgres notices a client left only when it next
# talks to it) is waited for where its key entries are in, and fails on the key where
# these come first. A lookup could say "not written" and then see that session commit:
# a retry would then write a second event under a new id. What remains is at least once
# under the same id: a spilled row already delivered and deleted, or an old session
# committing after these rows were, are delivered twice. Returns the rows it wrote.
# The persister writes again only while the lost commit's rows would still be held
# by it (nobody can have delivered and deleted them yet); later it only looks.
# The rows found may be ones a crash recovery replayed from the primary's own WAL, never
# sent to the synchronous standby: finding them writes nothing, so the commit would wait
# for nothing, and a failover would lose them. Touching the writer's own instance record
# writes WAL, so the commit waits until the standby has everything up to it.
_WAIT_FOR_THE_STANDBY = """WITH standby_has_it AS (
    UPDATE chip_durable_events_instances SET seen_at = seen_at WHERE instance_id = {owner} RETURNING 1)
"""
CONFIRM_EVENTS = HotStatement(b"durable_emitter_confirm",
                              _WAIT_FOR_THE_STANDBY.format(owner="$3").encode() + INSERT_EVENTS.sql
                              + b"ON CONFLICT (id) DO NOTHING\n", INSERT_EVENTS.types)

# How many of these ids have a row: a lost commit's rows are all there or none (one statement).
# Answered once the synchronous standby has what was found (see CONFIRM_EVENTS).
COUNT_EVENTS = _WAIT_FOR_THE_STANDBY.format(owner="%(owner)s") + \
    "SELECT count(*) FROM chip_durable_events WHERE id = ANY(%(ids)s)"

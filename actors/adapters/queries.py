"""The SQL of the running emitter and its operators, each statement named for what it does.

Text only: :mod:`.store` and :mod:`.operations` run these through :mod:`.driver`,
:mod:`actors.outbox` on the host's own connection, :mod:`.listener` on its own;
the schema itself (``schema.sql``, migrations, catalog reads) is ``schema.py``'s.
"""

from __future__ import annotations

from .hot import HotStatement

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

# Liveness: an instance that runs with session liveness holds
# pg_advisory_lock(LIVENESS_KEY, hashtext(its instance id)) on a session it keeps for
# its lifetime, and says so in its record (chip_durable_events_instances). A process
# that dies ends its sessions and frees the lock, so its rows can be claimed after the
# grace instead of after their lease (Que frees a dead worker's jobs the same way).
LIVENESS_KEY = 0x64656D74
_ALIVE = f"""EXISTS (SELECT 1 FROM pg_locks l
               WHERE l.locktype = 'advisory' AND l.classid = {LIVENESS_KEY} AND l.objsubid = 2
                 AND l.objid = hashtext({{owner}})::oid AND l.granted
                 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))"""


# Which run of which server this is: the postmaster's start, the WAL timeline (a promoted
# standby starts a new one) and the last reset of the shared statistics (a crash recovery
# discards them), as epochs (no session's TimeZone or DateStyle in it). Readable by any role.
INCARNATION = """concat_ws(' ', extract(epoch FROM pg_postmaster_start_time()),
                        substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8),
                        extract(epoch FROM (SELECT stats_reset FROM pg_stat_bgwriter)))"""

# Whether an owner whose lock is free has been without it for its grace: counted from the
# moment a claimer first saw it free after the owner was last seen (free_since), on this
# run of this server (a free_since noted before a failover or a crash recovery, on another
# clock or before every lock was freed again, counts for nothing). A server restart, a
# crash recovery, a failover or a pooler restart frees every lock at once while every
# process lives, and so does a path to one host that was reset: a live process takes its
# lock back within the grace. (A process on the claimer's own host that is gone is known
# dead at once: the dispatcher looks, see adapters/processes.py.)
_GRACE_PASSED = """({r}.free_since >= {r}.seen_at AND {r}.free_in = {incarnation}
        AND {r}.free_since < now() - {r}.liveness_grace)"""


def judged(record: str) -> str:
    """How the owner whose record is ``record`` (NULL: it has none) is judged, as status shows it.

    - 'unknown': no record (an older version, 'replay'); 'lease': it runs without session
      liveness (behind a transaction pooler). Neither is judged by a lock: its rows wait for
      their lease.
    - 'running': it holds its liveness lock.
    - 'gone': its lock has been free for its grace (``_GRACE_PASSED``): claims take its rows
      whatever their lease says.
    - 'lock lost': its lock is free, within its grace: a live process takes its lock back at
      its next sample once it reaches Postgres again, and its rows may be in flight meanwhile.
    """
    return f"""CASE
    WHEN {record}.instance_id IS NULL THEN 'unknown'
    WHEN NOT {record}.session_liveness THEN 'lease'
    WHEN {_ALIVE.format(owner=f"{record}.instance_id")} THEN 'running'
    WHEN {_GRACE_PASSED.format(r=record, incarnation=INCARNATION)} THEN 'gone'
    ELSE 'lock lost' END"""


# Once a scan, before its claims: the owners (using session liveness, this instance aside)
# whose lock is free, each with its process (to look at when it ran on this host) and
# whether its grace has passed. The same statement notes, for an owner found free for the
# first time since it was last seen (or on another run of the server), that moment: its
# grace counts from there. Records locked by another claimer or an owner's refresh are
# left to them (SKIP LOCKED: no waiting, no deadlock).
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

FREE_OWNERS = f"""
WITH seen_free AS (
    UPDATE chip_durable_events_instances SET free_since = now(), free_in = {INCARNATION}
    WHERE instance_id IN (
        SELECT i.instance_id FROM chip_durable_events_instances i
        WHERE i.session_liveness AND i.instance_id <> %(owner)s AND NOT {_ALIVE.format(owner="i.instance_id")}
          AND (i.free_since IS NULL OR i.free_since < i.seen_at OR i.free_in IS DISTINCT FROM {INCARNATION})
        FOR UPDATE SKIP LOCKED)
)
SELECT i.instance_id, coalesce(i.process, ''), {_GRACE_PASSED.format(r="i", incarnation=INCARNATION)}
FROM chip_durable_events_instances i
WHERE i.session_liveness AND i.instance_id <> %(owner)s AND NOT {_ALIVE.format(owner="i.instance_id")}
ORDER BY i.seen_at
"""


# Whether this session holds the instance id's liveness lock.
_HOLDS_LIVENESS = f"""EXISTS (SELECT 1 FROM pg_locks
               WHERE locktype = 'advisory' AND classid = {LIVENESS_KEY} AND objsubid = 2
                 AND objid = hashtext(%(owner)s)::oid AND pid = pg_backend_pid() AND granted)"""
_TAKE_LIVENESS = f"CASE WHEN {_HOLDS_LIVENESS} THEN true ELSE pg_try_advisory_lock({LIVENESS_KEY}, hashtext(%(owner)s)) END"

# Take the lock, or keep it: true while this session holds it. Taken again after a
# reconnect; false means another live session holds this instance id.
HOLD_LIVENESS = f"SELECT {_TAKE_LIVENESS}"

# The server process serving this statement: a pooler in transaction mode serves one
# client's statements from several, and several clients' from one.
BACKEND_PID = "SELECT pg_backend_pid()"

# An instance's record, written at its start and refreshed by its sampler every
# sample_interval. With session liveness the lock is taken (or kept) first, and the
# record written only while this session holds it (which forgets when its lock was seen free); returns whether it does (NULL
# without session liveness). backend_name is the application_name this session
# shows in pg_stat_activity, as every connection of the instance does. A start
# (``starting``) also forgets other instances' records that are stale (seen last a grace
# and a lease ago, so no lease of theirs is left) and wrote no pending row; a running
# instance whose record went writes it again at its next sample. ``process`` says which
# process on which host runs it (adapters/processes.py).
RECORD_INSTANCE = f"""
WITH liveness AS (
    SELECT CASE WHEN %(session_liveness)s THEN {_TAKE_LIVENESS} END AS held
), forgotten AS (
    DELETE FROM chip_durable_events_instances WHERE instance_id IN (
        SELECT i.instance_id FROM chip_durable_events_instances i
        WHERE %(starting)s AND i.instance_id <> %(owner)s
          AND i.seen_at < now() - i.liveness_grace - make_interval(secs => %(lease)s)  -- every lease it held is over
          AND NOT EXISTS (SELECT 1 FROM chip_durable_events e WHERE e.emitted_by = i.instance_id)
        FOR UPDATE SKIP LOCKED)  -- starts running at once wait for none, nor deadlock
), recorded AS (
    INSERT INTO chip_durable_events_instances AS i
        (instance_id, session_liveness, backend_name, liveness_grace, started_at, seen_at, incarnation, process)
    SELECT %(owner)s, %(session_liveness)s, current_setting('application_name'),
           make_interval(secs => %(grace)s), now(), now(), {INCARNATION}, %(process)s
    FROM liveness WHERE held IS NOT false
    ON CONFLICT (instance_id) DO UPDATE
    SET session_liveness = EXCLUDED.session_liveness, backend_name = EXCLUDED.backend_name,
        liveness_grace = EXCLUDED.liveness_grace, seen_at = EXCLUDED.seen_at, free_since = NULL,
        free_in = NULL, incarnation = EXCLUDED.incarnation, process = EXCLUDED.process,
        started_at = CASE WHEN %(starting)s THEN EXCLUDED.started_at ELSE i.started_at END
)
SELECT held FROM liveness
"""

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

"""The SQL of liveness: who holds its lock, how long a free lock is given, each instance's record.

Text only, like queries.py (store.py runs these; operator_queries.py judges owners with
:func:`judged` for status).
"""

from __future__ import annotations

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

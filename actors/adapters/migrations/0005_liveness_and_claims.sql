-- 0005: a live instance's events published once, and claims that write no index entry.
--
-- chip_durable_events_instances.free_since: when a claimer first saw the instance's
-- liveness lock free, on the database's clock, and free_in: on which run of which server
-- (incarnation: the one it was last seen on). A server restart, a crash recovery, a
-- failover, a pooler restart or a reset path frees locks while every process lives: an
-- owner is judged gone only once its lock stayed free for its grace from that moment, or
-- once its process is seen gone by a claimer on its own host (process: host, boot, pid
-- namespace, pid and start time; queries.py and adapters/processes.py).
--
-- chip_durable_events.lease_token: which claim a row's lease belongs to (the claiming
-- transaction's id; 0 for a row as written). A copy of a row still in memory from an
-- earlier lease hands it back to the table only if the lease is still that one.
--
-- chip_durable_events.available_at: when the row was first free for any instance. Claims
-- find rows by it (and a gone instance's rows, flush polls and status by emitted_by), so
-- the lease columns a claim changes are in no index: a claim is a heap-only update with
-- no index entry written, wherever its page has room (fillfactor 60, for pages written
-- from now on). Rows already pending get the upgrade's time, which is right for
-- all of them (each is claimable once its lease_expires_at has passed too).
--
-- The columns are added without a table rewrite (their defaults are kept in the
-- catalog); rows from before 0003 are given their writer (one pass over the table). Each ALTER takes an ACCESS EXCLUSIVE lock on its table, held for the rest of
-- the upgrade's transaction, through the two index builds (each reads the whole table):
-- statements on the table wait meanwhile.

ALTER TABLE chip_durable_events_instances
    ADD COLUMN free_since timestamptz, ADD COLUMN free_in text, ADD COLUMN incarnation text, ADD COLUMN process text;

ALTER TABLE chip_durable_events
    ADD COLUMN lease_token bigint NOT NULL DEFAULT 0,
    ADD COLUMN available_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE chip_durable_events SET (fillfactor = 60);

DROP INDEX chip_durable_events_lease_idx;
DROP INDEX chip_durable_events_owner_created_idx;
DROP INDEX chip_durable_events_emitted_away_idx;
-- Rows written before 0003 name no writer: their holder wrote them, as far as anyone knows.
UPDATE chip_durable_events SET emitted_by = lease_owner WHERE emitted_by IS NULL;
CREATE INDEX chip_durable_events_available_idx
    ON chip_durable_events (available_at);
CREATE INDEX chip_durable_events_writer_idx
    ON chip_durable_events (emitted_by, created_at);

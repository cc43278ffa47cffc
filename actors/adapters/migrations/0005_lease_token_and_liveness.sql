-- 0005: two things that keep a live instance's events from being published twice.
--
-- chip_durable_events.lease_token: which claim a row's lease belongs to (the claiming
-- transaction's id; 0 for a row as written). A copy of a row still in memory from an
-- earlier lease hands it back to the table only if the lease is still that one, so a
-- stale copy's release cannot cut short a later claim of the same row.
--
-- chip_durable_events_instances.free_since: when a claimer first saw the instance's
-- liveness lock free, on the database's clock; incarnation: which run of which server
-- it was last seen on. A server restart, a crash recovery, a failover or a pooler
-- restart frees every lock at once while every process lives: an owner is judged gone
-- only once its lock stayed free for its grace from that moment, or once its death is
-- proven (its sessions ended while the server's run went on: queries.py, "Liveness").
--
-- Both columns are added without a table rewrite (a constant default is kept in the
-- catalog), but each ALTER takes an ACCESS EXCLUSIVE lock on its table for the rest of
-- the upgrade's transaction: statements on the tables wait for it, a moment.

ALTER TABLE chip_durable_events ADD COLUMN lease_token bigint NOT NULL DEFAULT 0;

ALTER TABLE chip_durable_events_instances ADD COLUMN free_since timestamptz, ADD COLUMN incarnation text;

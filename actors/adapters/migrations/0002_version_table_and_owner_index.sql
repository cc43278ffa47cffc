-- 0002: record the schema version; index the per-owner reads (flush polls,
-- writer-only claims) so they stay index scans under a backlog of millions.
-- Builds the index with a SHARE lock: inserts wait while it builds (a few
-- seconds per million rows). Run `durable-emitter schema apply` when that is fine.

CREATE TABLE chip_durable_events_version (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX chip_durable_events_owner_created_idx
    ON chip_durable_events (lease_owner, created_at);

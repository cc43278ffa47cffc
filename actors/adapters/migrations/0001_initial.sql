-- 0001: the 0.1.0 schema, exactly as 0.1.0 created it at every start. A 0.1.0
-- database has no version table: `schema apply` recognises it by its columns,
-- records 0001 without running it, and runs the later steps.

-- Pending events: Postgres is the queue. A row exists from the commit in
-- emit() until Chip acknowledged its id (then DELETE) or the event was
-- dead-lettered. Deletes leave dead tuples, so autovacuum runs early and often
-- here and pages keep room for HOT updates of the lease columns.
CREATE TABLE IF NOT EXISTS chip_durable_events (
    id               text        PRIMARY KEY,         -- the CloudEvent id
    payload          bytea       NOT NULL,            -- the serialized CloudEvent
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempts         integer     NOT NULL DEFAULT 0,  -- failed publish attempts so far
    last_error       text,
    lease_owner      text        NOT NULL,            -- instance that may publish it now
    lease_expires_at timestamptz NOT NULL             -- after this, any instance may claim it
) WITH (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- Claims: rows whose lease has expired, oldest expiry first.
CREATE INDEX IF NOT EXISTS chip_durable_events_lease_idx
    ON chip_durable_events (lease_expires_at);
-- Expiry, flush and the oldest-pending gauge.
CREATE INDEX IF NOT EXISTS chip_durable_events_created_idx
    ON chip_durable_events (created_at);

-- Events Chip rejected permanently, or that outlived the TTL. Kept with the
-- reason so an operator can inspect and replay them.
CREATE TABLE IF NOT EXISTS chip_durable_events_dead_letter (
    id             text        PRIMARY KEY,
    payload        bytea       NOT NULL,
    created_at     timestamptz NOT NULL,
    attempts       integer     NOT NULL,
    reason_code    text        NOT NULL,  -- Chip's error code name, or 'EXPIRED'
    reason         text        NOT NULL,
    dead_lettered_at timestamptz NOT NULL DEFAULT now()
);

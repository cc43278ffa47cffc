-- durable-emitter schema, the whole of it as the current code expects it.
-- `durable-emitter schema apply` installs this file into an empty schema and
-- records the latest version; older databases are brought here step by step by
-- actors/adapters/migrations/NNNN_*.sql. A test builds a database both ways and
-- compares the catalogs, so a change here needs a migration, and the reverse.

-- Pending events: Postgres is the queue. A row exists from the commit in
-- emit() until Chip acknowledged its id (then DELETE) or the event was
-- dead-lettered. Deletes leave dead tuples, so autovacuum runs early and often
-- here. A claim changes only columns no index holds (lease_owner,
-- lease_expires_at, lease_token): a heap-only update wherever its page has room
-- (fillfactor 60: most do, and fresh rows, never claimed, pay little for it).
CREATE TABLE chip_durable_events (
    id               text        PRIMARY KEY,         -- the CloudEvent id
    payload          bytea       NOT NULL,            -- the serialized CloudEvent
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempts         integer     NOT NULL DEFAULT 0,  -- failed publish attempts so far
    last_error       text,
    lease_owner      text        NOT NULL,            -- instance that may publish it now
    lease_expires_at timestamptz NOT NULL,            -- after this, any instance may claim it
    emitted_by       text,                            -- instance that wrote it (NULL: before 0003)
    lease_token      bigint      NOT NULL DEFAULT 0,  -- the claim the lease belongs to (its transaction id; 0: as written)
    available_at     timestamptz NOT NULL DEFAULT now()  -- when it was first free for any instance (claims leave it)
) WITH (
    fillfactor = 60,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- Claims: rows free for anyone, oldest first (a range scan: rows written with a
-- live lease sit at the far end).
CREATE INDEX chip_durable_events_available_idx
    ON chip_durable_events (available_at);
-- Expiry and the oldest-pending age (the first entry).
CREATE INDEX chip_durable_events_created_idx
    ON chip_durable_events (created_at);
-- One instance's writing: flush polls, a gone instance's rows, writer-only claims, status.
CREATE INDEX chip_durable_events_writer_idx
    ON chip_durable_events (emitted_by, created_at);

-- Events Chip rejected permanently, or that outlived the TTL. Kept with the
-- reason so an operator can inspect and replay them.
CREATE TABLE chip_durable_events_dead_letter (
    id             text        PRIMARY KEY,
    payload        bytea       NOT NULL,
    created_at     timestamptz NOT NULL,
    attempts       integer     NOT NULL,
    reason_code    text        NOT NULL,  -- Chip's error code name, or 'EXPIRED'
    reason         text        NOT NULL,
    dead_lettered_at timestamptz NOT NULL DEFAULT now()
);

-- Each instance's record: how others judge whether it is running (queries.py,
-- "Liveness"). Written at its start and refreshed by its sampler; a row per
-- instance id, removed by a later start once it is stale and holds no rows.
CREATE TABLE chip_durable_events_instances (
    instance_id      text        PRIMARY KEY,
    session_liveness boolean     NOT NULL,  -- holds its liveness lock while running: judged by it
    backend_name     text        NOT NULL,  -- application_name of its connections in pg_stat_activity
    liveness_grace   interval    NOT NULL,  -- how long its lock may be lost while its connections remain
    started_at       timestamptz NOT NULL DEFAULT now(),
    seen_at          timestamptz NOT NULL DEFAULT now(),  -- last refreshed (with its lock held, if it uses one)
    free_since       timestamptz,  -- when a claimer first saw its lock free (NULL while it holds it)
    free_in          text,         -- the run of the server free_since was noted on (queries.py INCARNATION)
    incarnation      text,         -- which run of which server it was last seen on
    process          text          -- host, boot, pid namespace, pid, start: a claimer on that host looks
);

-- The migrations applied (actors/adapters/migrations/); the highest is the
-- schema's version. A normal start only reads it.
CREATE TABLE chip_durable_events_version (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- 0003: remember which instance emitted each row, so flush() waits for every event
-- emitted through an emitter whoever ends up delivering it. The column is added
-- without a default (no table rewrite); rows written before stay NULL. The
-- partial index holds only rows claimed away from their emitter (usually few),
-- so an INSERT pays nothing for it. The ALTER takes an ACCESS EXCLUSIVE lock, held
-- (with the rest of the upgrade's transaction) through the index build: every
-- statement on the table waits while it builds (it reads the whole table, but
-- indexes only the rows that moved).

ALTER TABLE chip_durable_events ADD COLUMN emitted_by text;

CREATE INDEX chip_durable_events_emitted_away_idx
    ON chip_durable_events (emitted_by, created_at)
    WHERE lease_owner <> emitted_by;

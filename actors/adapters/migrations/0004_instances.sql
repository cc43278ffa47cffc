-- 0004: each instance records whether it holds a liveness lock while running, so
-- others judge by that lock only the owners that use one; the rest (liveness off
-- behind a transaction pooler, and owners without a record) wait for their lease.
-- A new table: no lock on chip_durable_events or the dead-letter table, nothing
-- waits for it (unless an earlier step of the same upgrade holds a lock).
--
-- The running emitter writes this table, so every role granted rights on
-- chip_durable_events gets the same ones here (a DML-only role keeps running
-- after the upgrade without a new GRANT).

CREATE TABLE chip_durable_events_instances (
    instance_id      text        PRIMARY KEY,
    session_liveness boolean     NOT NULL,  -- holds its liveness lock while running: judged by it
    backend_name     text        NOT NULL,  -- application_name of its connections in pg_stat_activity
    liveness_grace   interval    NOT NULL,  -- how long its lock may be lost while its connections remain
    started_at       timestamptz NOT NULL DEFAULT now(),
    seen_at          timestamptz NOT NULL DEFAULT now()  -- last refreshed (with its lock held, if it uses one)
);

DO $$
DECLARE
    granted record;
BEGIN
    FOR granted IN
        SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END AS grantee,
               string_agg(a.privilege_type, ', ') AS rights
        FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
        LEFT JOIN pg_roles r ON r.oid = a.grantee
        WHERE c.oid = 'chip_durable_events'::regclass AND a.grantee <> c.relowner
          AND a.privilege_type IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE')
        GROUP BY 1
    LOOP
        EXECUTE format('GRANT %s ON chip_durable_events_instances TO %s', granted.rights, granted.grantee);
    END LOOP;
END
$$;

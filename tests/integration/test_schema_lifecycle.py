"""The schema's lifecycle: schema.sql and the migrations agree; starts read only; upgrades keep every row."""

from __future__ import annotations

import threading

import psycopg
import pytest
import trio
from psycopg.conninfo import make_conninfo

from actors import EmitterConfig, SchemaError, open_emitter
from actors.adapters import schema
from chippb import cloudevent_pb2 as ce
from tests.helpers import dead_letters, pending_ids, query, scratch_database
from tests.integration.test_cli import cli

EXPECTED = schema.expected_version()

# Everything about our tables that a migration could change, as sets (column order may differ).
CATALOG = {
    "tables": """SELECT c.relname, c.relkind, coalesce(array_to_string(array(SELECT unnest(c.reloptions)
                        ORDER BY 1), ','), '') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'i', 'S', 'v', 'm')""",
    "columns": """SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                         coalesce(pg_get_expr(d.adbin, d.adrelid), ''), a.attidentity, a.attgenerated
                  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                  JOIN pg_namespace n ON n.oid = c.relnamespace
                  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                  WHERE n.nspname = %(schema)s AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped""",
    "indexes": """SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %(schema)s""",
    "constraints": """SELECT c.relname, k.conname, pg_get_constraintdef(k.oid) FROM pg_constraint k
                      JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE n.nspname = %(schema)s""",
    "versions": "SELECT version, name FROM chip_durable_events_version",
}


def catalog(url: str, schema_name: str = "public") -> dict[str, set[tuple]]:
    with psycopg.connect(url) as conn:
        return {kind: set(conn.execute(sql, {"schema": schema_name}).fetchall()) for kind, sql in CATALOG.items()}


def make_0_1_0_database(url: str) -> None:
    """What 0.1.0 made at its first start: its schema.sql, which migration 0001 is."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(schema.migrations()[0].sql.encode())


def _event(event_id: str) -> bytes:
    return ce.CloudEvent(id=event_id, source="wf", spec_version="1.0", type="t", binary_data=b"x").SerializeToString()


def seed_0_1_0_rows(url: str) -> tuple[set[str], set[str]]:
    """Pending rows (leased, lapsed, spilled) and dead letters, written as 0.1.0 wrote them."""
    pending = {f"p{i}" for i in range(30)}
    letters = {"d1", "d2"}
    with psycopg.connect(url, autocommit=True) as conn:
        for i, event_id in enumerate(sorted(pending)):
            lease = ["now() - interval '1 minute'", "'-infinity'", "now() - interval '1 second'"][i % 3]
            conn.execute(f"INSERT INTO chip_durable_events (id, payload, lease_owner, lease_expires_at) "
                         f"VALUES (%s, %s, 'old-host-1', {lease})", (event_id, _event(event_id)))
        for event_id in letters:
            conn.execute("INSERT INTO chip_durable_events_dead_letter (id, payload, created_at, attempts, "
                         "reason_code, reason) VALUES (%s, %s, now(), 3, 'EXPIRED', 'too old')",
                         (event_id, _event(event_id)))
    return pending, letters


def test_migrations_from_the_first_build_the_catalog_schema_sql_builds(pg_server_url) -> None:
    with scratch_database(pg_server_url, "t") as installed, scratch_database(pg_server_url, "t") as migrated:
        schema.apply(installed, "public", lock_timeout=10)
        make_0_1_0_database(migrated)
        found = schema.apply(migrated, "public", lock_timeout=10)
        assert (found.found, found.steps) == (1, tuple(range(2, EXPECTED + 1)))
        want, got = catalog(installed), catalog(migrated)
    assert {v for v, _ in want["versions"]} == set(range(1, EXPECTED + 1))
    for kind in CATALOG:
        assert got[kind] == want[kind], f"{kind}: only migrated {got[kind] - want[kind]}, " \
                                        f"only schema.sql {want[kind] - got[kind]}"
    assert any("fillfactor=60" in options for _, _, options in want["tables"])  # the comparison sees reloptions


async def test_upgrade_from_0_1_0_keeps_every_row_and_delivers_it(blank_database_url, chip, make_config) -> None:
    url = blank_database_url
    make_0_1_0_database(url)
    pending, letters = seed_0_1_0_rows(url)

    with pytest.raises(SchemaError, match=r"version 1; .*needs version \d+: run `durable-emitter schema apply`"):
        async with open_emitter(make_config(chip, database_url=url)):
            pass
    status = cli(url, "status")
    assert status.returncode == 1 and "durable-emitter schema apply" in status.stderr
    assert "Traceback" not in status.stderr and status.stderr.count("\n") == 1

    shown = cli(url, "schema", "show")
    assert "version found   1" in shown.stdout and f"version needed  {EXPECTED}" in shown.stdout
    printed = cli(url, "schema", "sql")
    assert "-- 0002_" in printed.stdout and "CREATE INDEX chip_durable_events_owner_created_idx" in printed.stdout
    dry = cli(url, "schema", "apply", "--dry-run")
    assert dry.returncode == 0 and "rolled back" in dry.stdout, dry.stderr
    assert "version found   1" in cli(url, "schema", "show").stdout
    applied = cli(url, "schema", "apply")
    assert applied.returncode == 0 and f"version 1 -> {EXPECTED}" in applied.stdout, applied.stderr
    assert cli(url, "schema", "apply").stdout.startswith(f"schema public is at version {EXPECTED}: nothing to do")

    assert pending_ids(url) == pending and set(dead_letters(url)) == letters  # no row touched
    async with open_emitter(make_config(chip, database_url=url, instance_id="old-host-1")) as emitter:
        await emitter.flush(timeout=30)
    assert cli(url, "dlq", "replay", "--all").returncode == 0
    drained = cli(url, "drain", "--timeout", "60s", CHIP_INGRESS_ENDPOINT=chip.endpoint)
    assert drained.returncode == 0, drained.stderr
    assert pending_ids(url) == set() and dead_letters(url) == {}
    assert chip.counters.seen(pending | letters) == pending | letters


def _refuse_ddl(url: str) -> None:
    """An event trigger that fails any DDL in this database: what runs without it ran none."""
    query(url, "CREATE FUNCTION refuse_ddl() RETURNS event_trigger LANGUAGE plpgsql AS "
               "$$ BEGIN RAISE EXCEPTION 'DDL attempted: %%', tg_tag; END $$")
    query(url, "CREATE EVENT TRIGGER refuse_ddl ON ddl_command_start EXECUTE FUNCTION refuse_ddl()")


async def test_a_start_status_and_dlq_list_run_no_ddl_and_do_not_wait_on_open_writes(database_url, chip,
                                                                                       make_config) -> None:
    _refuse_ddl(database_url)
    with psycopg.connect(database_url) as writer:  # a write transaction left open on the table
        writer.execute("INSERT INTO chip_durable_events (id, payload, lease_owner, lease_expires_at) "
                       "VALUES ('open', 'x', 'other', now() + interval '1 hour')")
        with trio.fail_after(60):  # 0.1.0 waited here for ever (CREATE INDEX IF NOT EXISTS)
            async with open_emitter(make_config(chip)) as emitter:
                event_id = await emitter.emit(b"x", source="wf", type="tick")
                await emitter.flush(timeout=30)
            for command in (["status"], ["dlq", "list"]):
                done = await trio.to_thread.run_sync(lambda c=command: cli(database_url, *c))
                assert done.returncode == 0, done.stderr
        writer.rollback()
    assert chip.counters.seen([event_id]) == {event_id}


def test_a_newer_schema_is_refused_by_starts_and_commands(database_url) -> None:
    query(database_url, "INSERT INTO chip_durable_events_version (version, name) VALUES (%s, 'from the future')",
          (EXPECTED + 1,))
    for command in (["status"], ["dlq", "list"], ["schema", "apply"]):
        done = cli(database_url, *command)
        assert done.returncode == 1 and "newer than this durable-emitter" in done.stderr, done.stderr
        assert "upgrade durable-emitter" in done.stderr and done.stderr.count("\n") == 1


def test_a_foreign_table_of_the_same_name_is_refused_and_left_alone(blank_database_url) -> None:
    url = blank_database_url
    query(url, "CREATE TABLE chip_durable_events (id integer PRIMARY KEY, body text)")
    query(url, "INSERT INTO chip_durable_events VALUES (1, 'theirs')")
    for command in (["schema", "apply"], ["status"]):
        done = cli(url, *command)
        assert done.returncode == 1, done.stdout
        assert "table chip_durable_events of another shape" in done.stderr
        assert "missing payload bytea" in done.stderr and "id is integer, not text" in done.stderr
        assert "DURABLE_EMITTER_SCHEMA" in done.stderr
    assert query(url, "SELECT * FROM chip_durable_events") == [(1, "theirs")]
    assert query(url, "SELECT to_regclass('chip_durable_events_version')") == [(None,)]


def test_a_migration_failing_halfway_applies_nothing(blank_database_url) -> None:
    url = blank_database_url
    make_0_1_0_database(url)
    pending, letters = seed_0_1_0_rows(url)
    query(url, "CREATE TABLE chip_durable_events_owner_created_idx (x int)")  # 0002's index name, taken
    done = cli(url, "schema", "apply")
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "running 0002_" in done.stderr and "rolled back" in done.stderr and "already exists" in done.stderr
    assert query(url, "SELECT to_regclass('chip_durable_events_version')") == [(None,)]  # 0002's first step undone
    assert pending_ids(url) == pending and set(dead_letters(url)) == letters


def test_a_lock_not_had_within_lock_timeout_changes_nothing(blank_database_url) -> None:
    url = blank_database_url
    make_0_1_0_database(url)
    with psycopg.connect(url) as writer:  # holds ROW EXCLUSIVE: the index build's SHARE lock must wait
        writer.execute("INSERT INTO chip_durable_events (id, payload, lease_owner, lease_expires_at) "
                       "VALUES ('w', 'x', 'other', now())")
        done = cli(url, "schema", "apply", "--lock-timeout", "300ms")
        writer.commit()
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "could not take a lock within lock_timeout (0.3s)" in done.stderr and "nothing was changed" in done.stderr
    assert query(url, "SELECT to_regclass('chip_durable_events_version')") == [(None,)]
    assert pending_ids(url) == {"w"}


def test_instances_installing_at_once_install_once(blank_database_url) -> None:
    errors: list[BaseException] = []

    def install() -> None:
        try:
            schema.check(blank_database_url, "public", auto_migrate=True, writer=True)
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=install) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(query(blank_database_url, "SELECT version FROM chip_durable_events_version")) == [
        (v,) for v in range(1, EXPECTED + 1)]


async def test_auto_migration_is_off_for_a_database_url_and_on_when_asked(blank_database_url, chip) -> None:
    config = EmitterConfig(database_url=blank_database_url, chip_endpoint=chip.endpoint)
    assert not config.migrates_at_start and EmitterConfig().migrates_at_start  # embedded: on by default
    with pytest.raises(SchemaError, match="has no durable-emitter tables.*DURABLE_EMITTER_AUTO_MIGRATE"):
        async with open_emitter(config):
            pass
    assert query(blank_database_url, "SELECT to_regclass('chip_durable_events')") == [(None,)]
    async with open_emitter(EmitterConfig(database_url=blank_database_url, chip_endpoint=chip.endpoint,
                                          auto_migrate=True)) as emitter:
        event_id = await emitter.emit(b"x", source="wf", type="tick")
        await emitter.flush(timeout=30)
    assert chip.counters.seen([event_id]) == {event_id}


@pytest.fixture
def roles(database_url):
    """A DML-only role and a read-only role, as an operator would grant them."""
    suffix = database_url.rsplit("t_", 1)[-1][:12]
    writer, reader = f"writer_{suffix}", f"reader_{suffix}"
    for role, rights in ((writer, "SELECT, INSERT, UPDATE, DELETE"), (reader, "SELECT")):
        query(database_url, f'CREATE ROLE "{role}" LOGIN')
        query(database_url, f'GRANT USAGE ON SCHEMA public TO "{role}"')
        query(database_url, f'GRANT {rights} ON chip_durable_events, chip_durable_events_dead_letter, '
                            f'chip_durable_events_instances TO "{role}"')
        query(database_url, f'GRANT SELECT ON chip_durable_events_version TO "{role}"')
    query(database_url, "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    yield make_conninfo(database_url, user=writer), make_conninfo(database_url, user=reader)
    for role in (writer, reader):
        query(database_url, f'DROP OWNED BY "{role}"')
        query(database_url, f'DROP ROLE "{role}"')


async def test_a_dml_only_role_runs_the_emitter_drain_and_dlq_and_a_read_only_role_reads(
        database_url, roles, chip, make_config) -> None:
    writer, reader = roles
    async with open_emitter(make_config(chip, database_url=writer)) as emitter:
        ids = {await emitter.emit(b"x", source="wf", type="tick") for _ in range(20)}
        await emitter.flush(timeout=30)
    assert chip.counters.seen(ids) == ids
    query(database_url, "INSERT INTO chip_durable_events_dead_letter (id, payload, created_at, attempts, "
                        "reason_code, reason) VALUES ('d1', %s, now(), 1, 'EXPIRED', 'too old')", (_event("d1"),))
    for command in (["status"], ["dlq", "list"]):
        done = cli(reader, *command)
        assert done.returncode == 0, done.stderr
    assert "d1" in cli(reader, "dlq", "list").stdout
    refused = cli(reader, "dlq", "replay", "--all")
    assert refused.returncode == 1 and "lacks INSERT, UPDATE, DELETE on public.chip_durable_events" in refused.stderr
    assert "GRANT SELECT, INSERT, UPDATE, DELETE ON public.chip_durable_events" in refused.stderr
    assert cli(writer, "dlq", "replay", "--all").returncode == 0
    drained = cli(writer, "drain", CHIP_INGRESS_ENDPOINT=chip.endpoint)
    assert drained.returncode == 0, drained.stderr
    assert pending_ids(database_url) == set() and chip.counters.seen(["d1"]) == {"d1"}
    applied = cli(writer, "schema", "apply")  # current: nothing to do, no rights needed
    assert applied.returncode == 0 and "nothing to do" in applied.stdout


async def test_durable_emitter_schema_puts_both_tables_in_a_schema_of_its_own(blank_database_url, chip,
                                                                              make_config) -> None:
    url = blank_database_url
    applied = cli(url, "schema", "apply", DURABLE_EMITTER_SCHEMA="emitter")
    assert applied.returncode == 0, applied.stderr
    assert query(url, "SELECT to_regclass('public.chip_durable_events')") == [(None,)]
    async with open_emitter(make_config(chip, database_url=url, schema="emitter")) as emitter:
        ids = {await emitter.emit(b"x", source="wf", type="tick") for _ in range(5)}
        await emitter.flush(timeout=30)
    assert chip.counters.seen(ids) == ids
    assert query(url, "SELECT count(*) FROM emitter.chip_durable_events") == [(0,)]
    status = cli(url, "status", DURABLE_EMITTER_SCHEMA="emitter")
    assert status.returncode == 0 and "pending rows    0" in status.stdout
    assert cli(url, "status").returncode == 1  # public has none: told to apply the schema


def test_a_role_without_rights_to_migrate_is_told_who_may(blank_database_url) -> None:
    url = blank_database_url
    make_0_1_0_database(url)
    pending, _ = seed_0_1_0_rows(url)
    role = "dml_" + url.rsplit("t_", 1)[-1][:12]
    query(url, f'CREATE ROLE "{role}" LOGIN')
    try:
        query(url, f'GRANT USAGE ON SCHEMA public TO "{role}"')
        query(url, f'GRANT SELECT, INSERT, UPDATE, DELETE ON chip_durable_events, chip_durable_events_dead_letter '
                   f'TO "{role}"')
        done = cli(make_conninfo(url, user=role), "schema", "apply")
        assert done.returncode == 1 and done.stderr.count("\n") == 1
        assert "may not change schema 'public'" in done.stderr and "as the tables' owner" in done.stderr
        assert query(url, "SELECT to_regclass('chip_durable_events_version')") == [(None,)]
        assert pending_ids(url) == pending
    finally:
        query(url, f'DROP OWNED BY "{role}"')
        query(url, f'DROP ROLE "{role}"')


async def test_a_start_allowed_to_migrate_upgrades_0_1_0_and_delivers_its_rows(blank_database_url, chip,
                                                                                make_config) -> None:
    url = blank_database_url
    make_0_1_0_database(url)
    pending, _ = seed_0_1_0_rows(url)
    async with open_emitter(make_config(chip, database_url=url, auto_migrate=True,
                                        instance_id="old-host-1")) as emitter:
        await emitter.flush(timeout=30)
    assert sorted(query(url, "SELECT version FROM chip_durable_events_version")) == [
        (v,) for v in range(1, EXPECTED + 1)]
    assert pending_ids(url) == set() and chip.counters.seen(pending) == pending

"""The schema decision, pure: the version found, the steps to the current one, and what a start does."""

import pytest

from actors.core.schema_plan import (
    DEAD_LETTERS,
    EVENTS,
    INSTANCES,
    LEGACY_SHAPE,
    VERSIONS,
    WRITER_RIGHTS,
    Catalog,
    Start,
    missing_rights,
    on_start,
    outbox_refusal,
    plan,
)
from actors.errors import SchemaError

ALL = frozenset(WRITER_RIGHTS)


def catalog(version=None, tables=(EVENTS, DEAD_LETTERS), rights=ALL, **shape) -> Catalog:
    columns = {t: dict(LEGACY_SHAPE.get(t, {"version": "integer"})) for t in tables}
    columns.update(shape)
    return Catalog("public", "app", columns, {t: rights for t in tables}, version)


def test_an_empty_schema_is_installed_from_schema_sql() -> None:
    found = plan(catalog(tables=()), expected=3)
    assert (found.found, found.install, found.steps, found.current) == (0, True, (), False)


def test_a_0_1_0_database_counts_as_version_1_and_runs_the_later_migrations() -> None:
    found = plan(catalog(), expected=3)
    assert (found.found, found.install, found.steps) == (1, False, (2, 3))


def test_a_recorded_version_runs_only_later_migrations_and_current_goes_on() -> None:
    tables = (EVENTS, DEAD_LETTERS, VERSIONS)
    assert plan(catalog(2, tables), expected=3).steps == (3,)
    current = plan(catalog(3, tables), expected=3)
    assert current.current and on_start(current, auto_migrate=False) is Start.GO_ON


def test_older_migrates_only_when_allowed_else_names_the_command() -> None:
    older = plan(catalog(), expected=2)
    assert on_start(older, auto_migrate=True) is Start.MIGRATE
    with pytest.raises(SchemaError, match=r"version 1; .* needs version 2: run `durable-emitter schema apply`"):
        on_start(older, auto_migrate=False)
    with pytest.raises(SchemaError, match="has no durable-emitter tables"):
        on_start(plan(catalog(tables=()), expected=2), auto_migrate=False)


def test_newer_than_the_code_is_refused() -> None:
    with pytest.raises(SchemaError, match="version 5, newer than this durable-emitter .* up to 2"):
        plan(catalog(5, (EVENTS, DEAD_LETTERS, VERSIONS)), expected=2)


def test_a_foreign_shape_names_each_difference() -> None:
    with pytest.raises(SchemaError) as info:
        plan(catalog(**{EVENTS: {"id": "integer", "payload": "bytea"}}), expected=2)
    message = str(info.value)
    assert "missing created_at timestamp with time zone" in message and "id is integer, not text" in message
    assert "Nothing was changed" in message


def test_a_recorded_version_with_a_table_gone_is_refused() -> None:
    with pytest.raises(SchemaError, match=f"records version 2 but {DEAD_LETTERS} is missing"):
        plan(catalog(2, (EVENTS, VERSIONS)), expected=2)
    with pytest.raises(SchemaError, match=f"records version 4 but {INSTANCES} is missing"):
        plan(catalog(4, (EVENTS, DEAD_LETTERS, VERSIONS)), expected=4)
    assert plan(catalog(3, (EVENTS, DEAD_LETTERS, VERSIONS)), expected=4).steps == (4,)  # 0004 makes it


def test_missing_rights_name_the_grant() -> None:
    current = (EVENTS, DEAD_LETTERS, INSTANCES)
    assert missing_rights(catalog(tables=current, rights=ALL), WRITER_RIGHTS) is None
    message = missing_rights(catalog(tables=current, rights=frozenset({"SELECT"})), WRITER_RIGHTS)
    assert message is not None and "role 'app' lacks INSERT, UPDATE, DELETE on public.chip_durable_events" in message
    assert "GRANT SELECT, INSERT, UPDATE, DELETE ON public.chip_durable_events" in message
    assert missing_rights(catalog(tables=current, rights=frozenset({"SELECT"})), ("SELECT",)) is None


def test_the_instances_table_is_needed_too() -> None:
    """Every instance writes its record there (how the others judge whether it runs); status reads it."""
    rights = {EVENTS: ALL, DEAD_LETTERS: ALL, INSTANCES: frozenset({"SELECT"})}
    found = Catalog("public", "app", {t: {} for t in rights}, rights, 4)
    message = missing_rights(found, WRITER_RIGHTS)
    assert message is not None and f"lacks INSERT, UPDATE, DELETE on public.{INSTANCES}" in message
    assert f"public.{DEAD_LETTERS}, public.{INSTANCES} TO app" in message
    assert missing_rights(found, ("SELECT",)) is None


def test_the_outbox_writes_only_to_a_current_schema_with_insert_on_the_events_table() -> None:
    tables = (EVENTS, DEAD_LETTERS, VERSIONS)
    assert outbox_refusal(catalog(3, tables), expected=3) is None
    behind = outbox_refusal(catalog(2, tables), expected=3)
    assert behind is not None and "is at version 2; this durable-emitter needs version 3" in behind
    assert "durable-emitter schema apply" in behind and behind.endswith("nothing was written")
    empty = outbox_refusal(catalog(tables=()), expected=3)
    assert empty is not None and "has no durable-emitter tables" in empty
    read_only = outbox_refusal(catalog(3, tables, rights=frozenset({"SELECT"})), expected=3)
    assert read_only is not None and "role 'app' lacks INSERT on public.chip_durable_events:" in read_only
    assert "GRANT INSERT ON public.chip_durable_events TO app" in read_only  # nothing asked of the dead letters
    assert outbox_refusal(catalog(3, tables, rights=frozenset({"INSERT"})), expected=3) is None
    with pytest.raises(SchemaError, match="newer than this durable-emitter"):
        outbox_refusal(catalog(4, tables), expected=3)

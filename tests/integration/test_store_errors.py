"""What the store's errors say: the kind of a failed write, the ids a replay did not know, and
which failures cost the connection."""

import pytest

from actors.adapters.driver import TEXT_OID, Connection, Session, binary_array, one_row
from actors.adapters.operations import Operations
from actors.adapters.queries import DELETE_EVENTS
from actors.adapters.store import Store
from actors.core.answers import Rejection
from actors.core.failures import StoreFailure
from actors.errors import EmitterError, StoreUnavailable, UnknownDeadLetter
from tests.helpers import dead_letters, query


async def test_a_write_the_table_refuses_is_a_poison_store_error_with_its_sqlstate(database_url) -> None:
    store = Store(database_url)
    try:
        await store.insert_events(["twice"], [b"x"], owner="a", hold=60)
        with pytest.raises(StoreUnavailable) as info:
            await store.insert_events(["twice"], [b"x"], owner="a", hold=60)
    finally:
        store.close()
    assert (info.value.sqlstate, info.value.kind) == ("23505", StoreFailure.POISON)


async def test_replaying_an_unknown_id_names_it_and_moves_nothing(database_url) -> None:
    store = Operations(database_url)
    try:
        await store.insert_events(["known"], [b"x"], owner="a", hold=60)
        await store.dead_letter([Rejection("known", "EXPIRED", "too old")], owner="a")
        with pytest.raises(UnknownDeadLetter) as info:
            await store.replay_dead_letters(["known", "nope", "nor-this"])
    finally:
        store.close()
    assert info.value.ids == ("nope", "nor-this")
    assert str(info.value) == "no dead letter with id nope, nor-this; nothing was replayed"
    assert isinstance(info.value, EmitterError) and isinstance(info.value, KeyError)
    assert set(dead_letters(database_url)) == {"known"}


async def _backend(db: Connection) -> int:
    pid: int = one_row(await db.run("SELECT pg_backend_pid()"))[0]
    return pid


async def test_a_read_only_answer_drops_the_connection_and_the_next_call_connects_afresh(database_url) -> None:
    db = Connection(database_url)
    try:
        before = await _backend(db)
        await db.run("SET default_transaction_read_only = on")  # this session now answers as a standby would
        with pytest.raises(StoreUnavailable) as info:
            await db.run("CREATE TABLE written_after_failover (a int)")
        assert await _backend(db) != before
        await db.run("CREATE TABLE written_after_failover (a int)")  # a new session, which takes writes
    finally:
        db.close()
    assert (info.value.sqlstate, info.value.kind) == ("25006", StoreFailure.TRANSIENT)


async def test_a_statement_timeout_keeps_the_connection(database_url) -> None:
    db = Connection(database_url, Session(statement_timeout=0.1))
    try:
        before = await _backend(db)
        with pytest.raises(StoreUnavailable) as info:
            await db.run("SELECT pg_sleep(5)")
        assert await _backend(db) == before
    finally:
        db.close()
    assert (info.value.sqlstate, info.value.kind) == ("57014", StoreFailure.TRANSIENT)


async def test_a_commit_refused_at_its_end_in_pooled_mode_is_an_error_and_the_connection_stays_usable(
        database_url) -> None:
    # A deferred constraint fires at COMMIT: with per-transaction settings (session liveness off) the
    # commit happens at the pipeline's Sync, and its error must be the insert's answer.
    query(database_url, """
        CREATE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF starts_with(NEW.id, 'bad') THEN RAISE EXCEPTION 'refused at commit' USING ERRCODE = '23514'; END IF;
              RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER refuse_bad AFTER INSERT ON chip_durable_events
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_bad();
    """)
    store = Store(database_url, Session(pooled=True))
    try:
        with pytest.raises(StoreUnavailable) as info:
            await store.insert_events(["bad-1"], [b"x"], owner="a", hold=60)
        await store.insert_events(["good-1"], [b"x"], owner="a", hold=60)  # answered, not hung
    finally:
        store.close()
    assert info.value.sqlstate == "23514" and info.value.kind is StoreFailure.POISON
    assert {row[0] for row in query(database_url, "SELECT id FROM chip_durable_events")} == {"good-1"}


async def test_a_hot_statement_the_session_lost_is_prepared_again_and_run_once(database_url) -> None:
    """26000: the session no longer has it (a pooler reset the session); nothing ran, so it runs again."""
    store = Store(database_url)
    try:
        await store.insert_events(["one"], [b"x"], owner="a", hold=60)  # prepares it
        await store._db.run("DEALLOCATE ALL")  # as a reset session would
        await store.insert_events(["two"], [b"x"], owner="a", hold=60)
        assert await store.delete(["one", "two"], owner="a") == 2
    finally:
        store.close()


async def test_a_hot_statements_name_taken_by_an_earlier_client_is_freed_and_prepared_again(database_url) -> None:
    """42P05: a session handed on with an earlier client's statement of the same name (a session pooler
    with no reset query); the connection must not fail every statement after."""
    connection = Connection(database_url, Session())
    try:
        await connection.run("PREPARE durable_emitter_delete AS SELECT 1")  # left there, under our name
        assert await connection.run_hot(DELETE_EVENTS, [binary_array([b"nothing"], TEXT_OID), b"a"]) == 0
        assert await connection.run_hot(DELETE_EVENTS, [binary_array([b"nothing"], TEXT_OID), b"a"]) == 0
    finally:
        connection.close()

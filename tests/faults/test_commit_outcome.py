"""Emit never answers "maybe" while Postgres can be asked: every answer matches the table.

A real TCP proxy between the emitter and Postgres cuts the writer's connection at the
INSERT that carries a marked body: after Postgres had it and answered (the answer lost on
the way back), or before Postgres had it; and may go dark at that instant, so that
Postgres cannot be asked again for longer than the bound (commit_timeout).
"""

import logging
import uuid

import psycopg
import pytest
import trio

from actors import CommitOutcomeUnknown, StoreUnavailable, open_emitter
from tests.helpers import pending_ids, postgres_socket, query, through_proxy, wait_until

LOST = "a commit's answer was lost; asked again, Postgres has the events committed"


def _marker() -> bytes:
    return f"cut-here-{uuid.uuid4()}".encode()


def _confirmations(caplog) -> list[dict]:
    """The persister's report of each lost answer it settled by asking again."""
    return [record.durable_emitter for record in caplog.records if record.getMessage().startswith(LOST)]


async def _emit_around(emitter, marker: bytes, callers: int = 10, each: int = 10) -> tuple[set[str], list[BaseException]]:
    """``callers`` tasks emitting ``each`` events, the marked one among them; the ids returned and the errors raised."""
    returned: set[str] = set()
    errors: list[BaseException] = []

    async def caller(index: int) -> None:
        for i in range(each):
            body = marker if (index, i) == (callers // 2, 0) else f"body {index}.{i}".encode()
            try:
                returned.add(await emitter.emit(body, source="wf", type="tick"))
            except StoreUnavailable as exc:
                errors.append(exc)

    async with trio.open_nursery() as nursery:
        for index in range(callers):
            nursery.start_soon(caller, index)
    return returned, errors


@pytest.mark.parametrize("delivered", [True, False], ids=["after-postgres-had-it", "before-postgres-had-it"])
async def test_a_commit_whose_answer_is_lost_is_settled_by_asking_and_its_events_are_delivered_once(
        chip, make_config, database_url, start_proxy, caplog, delivered) -> None:
    caplog.set_level(logging.WARNING, logger="durable_emitter")
    proxy = start_proxy(postgres_socket(database_url))
    async with open_emitter(make_config(chip, database_url=through_proxy(database_url, proxy))) as emitter:
        await emitter.emit(b"warm", source="wf", type="tick")  # the writer's connection is open and used
        marker = _marker()
        cut = proxy.cut_at(marker, delivered=delivered)
        with trio.fail_after(30):
            returned, errors = await _emit_around(emitter, marker)
        assert cut.done.is_set()  # the marked INSERT's connection was cut
        await emitter.flush(timeout=30)
    assert errors == []  # Postgres answered the question: no emit raised
    assert len(returned) == 100 and chip.counters.seen(returned) == returned
    assert chip.counters.duplicates == 0 and pending_ids(database_url) == set()
    (confirmed,) = _confirmations(caplog)  # one question for the whole group the marked event was in
    if delivered:
        assert b"INSERT 0 " in cut.answer  # Postgres had committed the group and said so: the answer was lost
        assert confirmed["written_again"] == 0  # asked, it had the rows already
    else:
        assert cut.answer == b""
        assert confirmed["written_again"] == confirmed["events"]  # it had none: written under the same ids


@pytest.mark.parametrize("delivered", [True, False], ids=["after-postgres-had-it", "before-postgres-had-it"])
async def test_postgres_unreachable_past_commit_timeout_raises_commit_outcome_unknown_and_the_table_shows_why(
        chip, make_config, database_url, start_proxy, delivered) -> None:
    proxy = start_proxy(postgres_socket(database_url))
    config = make_config(chip, database_url=through_proxy(database_url, proxy), commit_timeout=1.0,
                         statement_timeout=2.0, lease_duration=5.0)
    async with open_emitter(config) as emitter:
        await emitter.emit(b"warm", source="wf", type="tick")
        marker = _marker()
        cut = proxy.cut_at(marker, delivered=delivered, then_dark=True)  # and Postgres stays out of reach
        with trio.fail_after(30), pytest.raises(CommitOutcomeUnknown) as raised:
            await emitter.emit_many([b"first", marker, b"third"], source="wf", type="tick")
        assert cut.done.is_set() and proxy.dark  # raised while Postgres was unreachable
        proxy.heal()
        proxy.drop_connections()  # what went into the dark left those connections out of step
        after = await emitter.emit(b"after", source="wf", type="tick")  # reachable again: definite again
        await emitter.flush(timeout=30)
    unknown = raised.value
    assert len(unknown.event_ids) == 3 and "may or may not be committed" in str(unknown)
    assert "NEW id" in str(unknown) and "commit_timeout" in str(unknown)
    # The table says what happened; the error did not claim either: either way it was honest.
    written = set(unknown.event_ids) & (chip.counters.seen(unknown.event_ids) | pending_ids(database_url))
    assert (b"INSERT 0 " in cut.answer) == delivered
    assert written == (set(unknown.event_ids) if delivered else set())
    assert chip.counters.seen([after]) == {after}


async def test_an_error_postgres_answered_means_not_written_and_is_not_asked_again(
        chip, make_config, database_url, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="durable_emitter")
    async with open_emitter(make_config(chip, lock_timeout=0.2)) as emitter:
        await emitter.emit(b"warm", source="wf", type="tick")
        with psycopg.connect(database_url) as holder:
            holder.execute("LOCK TABLE chip_durable_events IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(StoreUnavailable, match="lock timeout") as raised:
                await emitter.emit(b"locked out", source="wf", type="tick")
            holder.rollback()
        await emitter.flush(timeout=30)
    assert not isinstance(raised.value, CommitOutcomeUnknown)  # an ERROR answer: rolled back, certain
    assert _confirmations(caplog) == [] and pending_ids(database_url) == set()


async def test_postgres_refusing_connections_fails_emit_at_once_as_not_written(
        chip, make_config, database_url, start_proxy) -> None:
    proxy = start_proxy(postgres_socket(database_url))
    config = make_config(chip, database_url=through_proxy(database_url, proxy), commit_timeout=5.0)
    async with open_emitter(config) as emitter:
        proxy.close()  # connections refused from now on: the writer's first commit cannot even connect
        with pytest.raises(StoreUnavailable, match="cannot reach Postgres") as raised:
            await emitter.emit(b"nowhere", source="wf", type="tick")
    assert not isinstance(raised.value, CommitOutcomeUnknown)  # nothing was sent: certainly not written
    assert pending_ids(database_url) == set()


async def test_an_insert_still_running_when_asked_is_not_mistaken_for_not_written(
        chip, make_config, database_url, caplog) -> None:
    """The lost INSERT runs on in its old session (Postgres does not notice the client left)
    while the emitter asks: a lookup would find nothing, answer "not written", and then see
    the old session commit. Written again under its id, the event is committed as answered;
    the old session, ending after it was delivered and deleted, only writes it once more,
    under the same id (at least once, as everywhere)."""
    caplog.set_level(logging.WARNING, logger="durable_emitter")
    marker = _marker()
    async with open_emitter(make_config(chip, commit_timeout=0.5, lease_duration=5.0)) as emitter:
        query(database_url, "CREATE SEQUENCE slow_once")  # not transactional: counts every try
        query(database_url, f"""CREATE FUNCTION slow_first_marked() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
                                    IF position(convert_to('{marker.decode()}', 'UTF8') in NEW.payload) > 0
                                       AND nextval('slow_once') = 1 THEN PERFORM pg_sleep(2); END IF;
                                    RETURN NEW; END $$""")
        query(database_url, "CREATE TRIGGER slow BEFORE INSERT ON chip_durable_events "
                            "FOR EACH ROW EXECUTE FUNCTION slow_first_marked()")
        try:
            answer: str | StoreUnavailable = await emitter.emit(marker, source="wf", type="tick")
        except StoreUnavailable as exc:
            answer = exc
        await wait_until(lambda: not query(database_url, "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep'"),
                         what="the first INSERT's session to finish")
        await emitter.flush(timeout=30)
    delivered = {i for i, payload in chip.counters.payloads.items() if marker in payload}
    assert isinstance(answer, str) == bool(delivered | _rows_carrying(database_url, marker))
    assert delivered == {answer} and pending_ids(database_url) == set()  # every delivery under the answered id
    (confirmed,) = _confirmations(caplog)
    assert confirmed["written_again"] == 1  # asked while the first INSERT slept: written under the same id


def _rows_carrying(url: str, marker: bytes) -> set[str]:
    return {row[0] for row in query(url, "SELECT id FROM chip_durable_events WHERE position(%s in payload) > 0",
                                    (marker,))}

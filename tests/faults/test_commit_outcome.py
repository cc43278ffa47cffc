"""Emit never answers "maybe" while Postgres can be asked: every answer matches the table.

A real TCP proxy between the emitter and Postgres cuts the writer's connection at the
INSERT that carries a marked body: after Postgres had it and answered (the answer lost on
the way back), or before Postgres had it; and may go dark, or refuse connections, at that
instant, so that Postgres cannot be asked again for a while, or for longer than the bound
(commit_timeout). The witnesses are outside the emitter: what the proxy saw Postgres
answer, the rows in the table, and what chipmock received (each id once).
"""

import math
import uuid

import psycopg
import pytest
import trio

from actors import CommitOutcomeUnknown, StoreUnavailable, open_emitter
from chipmock import ChipModel, Outage
from scripts.pgbouncer import PgBouncer, pgbouncer_binary
from tests.fix_replication import Node, Replicated
from tests.helpers import (
    pending_ids,
    postgres_socket,
    query,
    quick_config,
    through_proxy,
    wait_until,
)


def _marker() -> bytes:
    return f"cut-here-{uuid.uuid4()}".encode()


async def _answer(emitter, body: bytes, answers: list[str | StoreUnavailable]) -> None:
    """Emit ``body``; append what emit answered: its id, or the StoreUnavailable it raised."""
    try:
        answers.append(await emitter.emit(body, source="wf", type="tick"))
    except StoreUnavailable as exc:
        answers.append(exc)


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
        chip, make_config, database_url, start_proxy, delivered) -> None:
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
    # Postgres had committed the marked group and said so (the proxy saw it), or never had it: either way
    # each id returned reached Chip exactly once, so asking again neither lost the group nor wrote it twice.
    assert (b"INSERT 0 " in cut.answer) == delivered
    assert len(returned) == 100 and chip.counters.seen(returned) == returned
    assert chip.counters.duplicates == 0 and pending_ids(database_url) == set()


@pytest.mark.parametrize("delivered", [True, False], ids=["after-postgres-had-it", "before-postgres-had-it"])
async def test_a_lost_commit_is_asked_about_until_postgres_answers_again_within_commit_timeout(
        chip, make_config, database_url, start_proxy, delivered) -> None:
    proxy = start_proxy(postgres_socket(database_url))
    async with open_emitter(make_config(chip, database_url=through_proxy(database_url, proxy))) as emitter:
        await emitter.emit(b"warm", source="wf", type="tick")
        marker = _marker()
        # The answer is lost and Postgres refuses connections from that instant: the first questions fail.
        cut = proxy.cut_at(marker, delivered=delivered, then_refuse=True)
        answers: list[str | StoreUnavailable] = []
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_answer, emitter, marker, answers)
                await wait_until(lambda: proxy.refused >= 2 or answers, what="two questions refused")
                proxy.heal()  # Postgres is back well within commit_timeout (10 s)
        (answer,) = answers
        assert isinstance(answer, str), answer  # asked until Postgres answered: definite, not CommitOutcomeUnknown
        assert proxy.refused >= 2  # (it was asked, refused, and asked again)
        await emitter.flush(timeout=30)
    assert (b"INSERT 0 " in cut.answer) == delivered
    assert chip.counters.seen([answer]) == {answer} and chip.counters.duplicates == 0
    assert pending_ids(database_url) == set()


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
        chip, make_config, database_url) -> None:
    async with open_emitter(make_config(chip, lock_timeout=0.2)) as emitter:
        await emitter.emit(b"warm", source="wf", type="tick")
        with psycopg.connect(database_url) as holder:
            holder.execute("LOCK TABLE chip_durable_events IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(StoreUnavailable, match="lock timeout") as raised:
                await emitter.emit(b"locked out", source="wf", type="tick")
            holder.rollback()
        await emitter.flush(timeout=30)
    # Asked again, the question would have met the same lock until commit_timeout: CommitOutcomeUnknown.
    assert not isinstance(raised.value, CommitOutcomeUnknown)  # an ERROR answer: rolled back, certain
    assert pending_ids(database_url) == set() and chip.counters.snapshot().unique == 1  # "warm" alone


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
        chip, make_config, database_url) -> None:
    """The lost INSERT runs on in its old session (Postgres does not notice the client left)
    while the emitter asks: a lookup would find nothing, answer "not written", and then see
    the old session commit. Written again under its id, the event is committed as answered;
    the old session, ending after it was delivered and deleted, only writes it once more,
    under the same id (at least once, as everywhere)."""
    marker = _marker()
    async with open_emitter(make_config(chip, commit_timeout=0.5, lease_duration=5.0)) as emitter:
        query(database_url, "CREATE SEQUENCE slow_once")  # not transactional: counts every try
        query(database_url, f"""CREATE FUNCTION slow_first_marked() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
                                    IF position(convert_to('{marker.decode()}', 'UTF8') in NEW.payload) > 0
                                       AND nextval('slow_once') = 1 THEN PERFORM pg_sleep(2); END IF;
                                    RETURN NEW; END $$""")
        query(database_url, "CREATE TRIGGER slow BEFORE INSERT ON chip_durable_events "
                            "FOR EACH ROW EXECUTE FUNCTION slow_first_marked()")
        answers: list[str | StoreUnavailable] = []
        await _answer(emitter, marker, answers)
        # When emit answered, the first INSERT still slept: the row it answered by was written by the question.
        still_sleeping = _sleeping(database_url)
        written_when_answered = _rows_carrying(database_url, marker) | _delivered_carrying(chip, marker)
        await wait_until(lambda: not _sleeping(database_url), what="the first INSERT's session to finish")
        await emitter.flush(timeout=30)
    (answer,) = answers
    assert isinstance(answer, str), answer
    assert still_sleeping and written_when_answered == {answer}
    delivered = _delivered_carrying(chip, marker)
    assert delivered == {answer} and pending_ids(database_url) == set()  # every delivery under the answered id


def _sleeping(url: str) -> bool:
    return bool(query(url, "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep'"))


def _delivered_carrying(chip, marker: bytes) -> set[str]:
    return {i for i, payload in chip.counters.payloads.items() if marker in payload}


def _rows_carrying(url: str, marker: bytes) -> set[str]:
    return {row[0] for row in query(url, "SELECT id FROM chip_durable_events WHERE position(%s in payload) > 0",
                                    (marker,))}


def _commit_waiting_for_the_standby(primary: Node) -> list[int]:
    """Backends whose INSERT into the events table committed locally and waits for the synchronous standby."""
    return [pid for (pid,) in primary.query("SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep' "
                                            "AND query LIKE '%INSERT INTO chip_durable_events (%'")]


def _question_waiting_for_the_standby(primary: Node) -> bool:
    """Whether the lost commit's question (CONFIRM_EVENTS) waits for the synchronous standby: its own commit
    does, or it waits for the writer's instance row, locked by a heartbeat whose commit does."""
    return bool(primary.query(
        "SELECT 1 FROM pg_stat_activity q WHERE q.query LIKE '%ON CONFLICT (id) DO NOTHING%' "
        "AND (q.wait_event = 'SyncRep' OR EXISTS (SELECT 1 FROM pg_stat_activity h "
        "WHERE h.pid = ANY(pg_blocking_pids(q.pid)) AND h.wait_event = 'SyncRep'))"))


@pytest.mark.parametrize("path", ["direct", "through-pgbouncer"])
async def test_a_session_ended_after_its_local_commit_is_answered_committed_once_the_standby_has_it(
        replicated: Replicated, start_chipmock, path) -> None:
    """The writer's session is terminated while its commit, written locally, waits for the synchronous
    standby (stopped here). Postgres itself warns and closes the connection (an error would say "rolled
    back"); PgBouncer in between answers its client with a FATAL error ("server conn crashed?"). Neither
    means "not written": the emitter asks and finds the row. But the row is on the primary alone (as
    after a crash recovery replays the primary's WAL): a failover now would lose it. So the answer
    waits until the standby has it too, then returns the id."""
    if path == "through-pgbouncer" and pgbouncer_binary() is None:
        pytest.skip("pgbouncer is not installed (Debian: apt-get install pgbouncer; .ci/run installs it)")
    chip = start_chipmock(keep_payloads=True)
    bouncer = PgBouncer(replicated.primary.url(), "session") if path == "through-pgbouncer" else None
    try:
        url = bouncer.url(replicated.primary.url()) if bouncer else replicated.primary.url()
        async with open_emitter(quick_config(chip, database_url=url)) as emitter:
            await emitter.emit(b"warm", source="wf", type="tick")
            await trio.to_thread.run_sync(replicated.standby.stop)  # from now on every commit waits for it
            marker = _marker()
            answers: list[str | StoreUnavailable] = []
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_answer, emitter, marker, answers)
                    await wait_until(lambda: _commit_waiting_for_the_standby(replicated.primary),
                                     what="the INSERT's commit waiting for the standby")
                    (writer,) = _commit_waiting_for_the_standby(replicated.primary)
                    replicated.primary.query(f"SELECT pg_terminate_backend({writer})")
                    await wait_until(lambda: _question_waiting_for_the_standby(replicated.primary),
                                     what="the question's commit waiting for the standby")
                    assert answers == []  # not told "committed" while the row is on the primary alone
                    committed = {row[0] for row in replicated.primary.query(
                        f"SELECT id FROM chip_durable_events WHERE position('{marker.decode()}'::bytea IN payload) > 0")}
                    await trio.to_thread.run_sync(replicated.standby.start)
            (answer,) = answers
            assert len(committed) == 1  # the primary has the row: the commit happened
            assert answer in committed, f"told {answer!r} about a committed row"
            await emitter.flush(timeout=30)
    finally:
        if bouncer is not None:
            bouncer.stop()
    delivered = _delivered_carrying(chip, marker)
    assert delivered == committed and chip.counters.duplicates == 0


async def test_a_spilled_groups_lost_commit_is_not_written_again_once_another_instance_may_have_delivered_it(
        chip, start_chipmock, make_config, database_url, start_proxy) -> None:
    """The rows of a spilled group are anyone's after a short hold. Asked about after that, the group's rows
    may be gone because they were delivered and deleted: written again, they would be published twice."""
    proxy = start_proxy(postgres_socket(database_url))
    away = start_chipmock(ChipModel(outages=(Outage(0, math.inf),)))  # every call, probes too: it spills
    async with open_emitter(make_config(away, database_url=through_proxy(database_url, proxy))) as writer, \
            open_emitter(make_config(chip, instance_id="deliverer")) as deliverer:
        with trio.fail_after(20):  # until the writer's delivery is paused, so its groups are spilled
            while writer.statistics().spilled == 0:
                await writer.emit(b"warm", source="wf", type="tick")
                await trio.sleep(0.05)  # the emit rate, not a synchronisation
        marker = _marker()
        cut = proxy.cut_at(marker, delivered=True, then_refuse=True)  # committed; the answer lost
        answers: list[object] = []

        async def answer() -> None:
            try:
                answers.append(await writer.emit(marker, source="wf", type="tick"))
            except CommitOutcomeUnknown as exc:
                answers.append(exc)

        marked = f"SELECT count(*) FROM chip_durable_events WHERE position('{marker.decode()}'::bytea IN payload) > 0"
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer)
                await wait_until(lambda: cut.done.is_set(), what="the marked commit cut")
                # The other instance claims the group after its hold, delivers it and deletes it.
                await wait_until(lambda: query(database_url, marked)[0][0] == 0 and chip.counters.snapshot().received,
                                 timeout=20, what="the group delivered by the other instance")
                proxy.heal()
        (unknown,) = answers
        assert isinstance(unknown, CommitOutcomeUnknown), unknown  # not "written": nobody can tell now
        assert "delivered and deleted" in str(unknown)
        await wait_until(lambda: not pending_ids(database_url) & set(unknown.event_ids), timeout=20,
                         what="nothing of the group left in the table")
        assert deliverer.statistics().delivery == "up"
    assert chip.counters.seen(unknown.event_ids) == set(unknown.event_ids)  # published once,
    assert chip.counters.duplicates == 0  # and not again

"""Outage mode and whole-call refusals, measured: what an outage costs Postgres, the logs, the recovery.

`just chaos` (CHAOS_SCALE=5) runs the issue's scenario: a 20 s Chip outage with
20,000 events waiting. The default run is a 4 s outage with 4,000 events.
"""

import logging
import math

import trio

from actors import open_emitter
from actors.persister import SPILL_HOLD
from chipmock import ChipModel, Outage
from tests.helpers import (
    CHAOS_SCALE,
    dead_letters,
    emit_concurrently,
    pending_ids,
    query,
    wait_until,
)

COUNT_WRITES = """
CREATE TABLE row_writes (n bigint NOT NULL);
INSERT INTO row_writes VALUES (0);
CREATE FUNCTION count_row_writes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN UPDATE row_writes SET n = n + (SELECT count(*) FROM changed); RETURN NULL; END $$;
CREATE TRIGGER count_updates AFTER UPDATE ON chip_durable_events REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION count_row_writes();
CREATE TRIGGER count_deletes AFTER DELETE ON chip_durable_events REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION count_row_writes();
"""


def _row_writes(url: str) -> int:
    return query(url, "SELECT n FROM row_writes")[0][0]


def _stat_writes(url: str) -> int:
    return query(url, "SELECT n_tup_upd + n_tup_del FROM pg_stat_user_tables WHERE relname = 'chip_durable_events'")[0][0]


def _library_events(caplog) -> list[str]:
    """The event (the message without its fields) of each record the ``durable_emitter.*`` loggers sent so far."""
    return [r.durable_emitter["event"] for r in caplog.records if r.name.partition(".")[0] == "durable_emitter"]


async def test_an_outage_costs_postgres_almost_nothing_logs_little_and_delivery_resumes(
        start_chipmock, make_config, database_url, caplog, capsys) -> None:
    events, outage_s = 4000 * CHAOS_SCALE, 4.0 * CHAOS_SCALE
    chip = start_chipmock()
    # Defaults except the test database and chip: a host's settings.
    config = make_config(chip, scan_interval=1.0, sample_interval=1.0, retry_initial=0.1, retry_max=5.0,
                         publish_timeout=5.0, lease_duration=60.0)
    paused, resumed = "Chip does not answer; delivery paused", "Chip answers again; delivery resumed"
    async with open_emitter(config) as emitter:
        query(database_url, COUNT_WRITES)
        # What a host logging at INFO would see: the library's records reach stdlib logging.
        with caplog.at_level(logging.INFO, logger="durable_emitter"):
            chip.set_model(ChipModel(outages=(Outage(0, 3600),)))  # down from now on
            started = trio.current_time()
            ids = await emit_concurrently(emitter, events)  # they wait in the table (and memory)
            await wait_until(lambda: emitter.statistics().delivery == "down"
                             and paused in _library_events(caplog),
                             what="delivery paused, and the pause logged")
            writes_before, stat_before = _row_writes(database_url), _stat_writes(database_url)
            await trio.sleep(max(0.0, outage_s - (trio.current_time() - started)))  # the outage is what is measured
            outage_writes = _row_writes(database_url) - writes_before
            outage_s = trio.current_time() - started
            in_outage = _library_events(caplog)
            chip.set_model(ChipModel())
            back = trio.current_time()
            await emitter.flush(timeout=60)
            drained_s = trio.current_time() - back
            in_recovery = _library_events(caplog)[len(in_outage):]
        stats = emitter.statistics()
    stat_writes = _stat_writes(database_url) - stat_before
    assert chip.counters.seen(ids) == ids and pending_ids(database_url) == set()
    assert stats.delivery == "up" and stats.restarts["dispatcher"] == 0
    assert outage_writes <= 100 * outage_s, outage_writes  # target: <= 100 row writes/s (before: ~10,000/s)
    # A few lines per outage: the pause once, the recovery once, and the periodic status line; no line per
    # failed call, probe or event.
    status = "emitter status"
    # Lines that are not about the outage: the periodic status, and the listener's one start-up line
    # (it connects beside the tree's start, so it may land in the window).
    other = {status, "listening for outbox notifications"}
    assert (in_outage + in_recovery).count(status) <= 1 + (outage_s + drained_s) / config.log_interval
    assert [event for event in in_outage if event not in other] == [paused], in_outage
    assert [event for event in in_recovery if event not in other] == [resumed], in_recovery
    with capsys.disabled():
        print(f"\n  Chip outage {outage_s:.1f}s with {events} events waiting: {outage_writes} row writes "
              f"({outage_writes / outage_s:.1f}/s; pg_stat_user_tables upd+del over the whole run incl. drain: "
              f"{stat_writes}), {len(in_outage)} log lines in the outage, {len(in_recovery)} in the recovery; "
              f"all delivered {drained_s:.2f}s after Chip returned")


async def test_a_misconfigured_chip_never_moves_the_backlog_to_the_dead_letter_table(
        start_chipmock, make_config, database_url) -> None:
    chip = start_chipmock(ChipModel(refuse="FAILED_PRECONDITION"))
    async with open_emitter(make_config(chip)) as emitter:
        ids = await emit_concurrently(emitter, 200)
        await wait_until(lambda: emitter.statistics().delivery == "refused", what="the alert state")
        await wait_until(lambda: len(pending_ids(database_url)) == 200, what="the backlog waits in the table")
        chip.set_model(ChipModel())  # Chip's operators fixed it
        await emitter.flush(timeout=30)
    assert chip.counters.seen(ids) == ids and dead_letters(database_url) == {}


async def test_a_call_larger_than_chip_takes_is_split_and_an_event_too_large_alone_dead_lettered(
        start_chipmock, make_config, database_url) -> None:
    chip = start_chipmock(ChipModel(max_request_bytes=20_000))
    async with open_emitter(make_config(chip, publish_linger=0.05)) as emitter:
        ids = await emit_concurrently(emitter, 40, emitters=4, size=2000)  # ~80 KB per batch: too large
        huge = await emitter.emit(b"h" * 30_000, source="wf", type="tick")  # too large on its own
        await emitter.flush(timeout=30)
        delivery = emitter.statistics().delivery
    assert chip.counters.seen(ids) == ids
    assert dead_letters(database_url) == {huge: ("TOO_LARGE", dead_letters(database_url)[huge][1])}
    assert "larger than max" in dead_letters(database_url)[huge][1] and delivery == "up"


async def test_an_unauthenticated_window_pauses_delivery_without_restarts(start_chipmock, make_config,
                                                                          database_url) -> None:
    chip = start_chipmock()
    async with open_emitter(make_config(chip)) as emitter:
        chip.set_model(ChipModel(unauthenticated=(Outage(0, 3600),)))  # auth trouble on Chip's side
        ids = await emit_concurrently(emitter, 100)
        await wait_until(lambda: emitter.statistics().delivery == "refused", what="the alert state")
        chip.set_model(ChipModel())  # over
        await emitter.flush(timeout=30)
        stats = emitter.statistics()
    assert chip.counters.seen(ids) == ids and dead_letters(database_url) == {}
    assert sum(stats.restarts.values()) == 0


async def test_while_delivery_is_paused_new_events_wait_in_the_table_claimable_once_chip_answers(
        start_chipmock, make_config, database_url) -> None:
    """Not in memory, where they would outlive their lease's margin and come back only as each lease
    lapsed: written claimable, they are delivered as fast as claims go once Chip is back."""
    chip = start_chipmock(ChipModel(outages=(Outage(0, math.inf),)))
    async with open_emitter(make_config(chip)) as emitter:
        await emitter.emit(b"first", source="wf", type="tick")
        await wait_until(lambda: emitter.statistics().delivery == "down", what="delivery paused")
        ids = set(await emitter.emit_many([b"while paused"] * 50, source="wf", type="tick"))
        leased = query(database_url, "SELECT count(*) FROM chip_durable_events WHERE id = ANY(%s) "
                                     "AND lease_expires_at > now() + make_interval(secs => %s)",
                       (list(ids), SPILL_HOLD))[0][0]
        assert leased == 0  # claimable after the spill's short hold: no lease held in memory
        chip.set_model(ChipModel())
        await emitter.flush(timeout=30)
    assert chip.counters.seen(ids) == ids

"""Chip's real answers: a rate limit, a schema registry outage, a domain configuration pushed wrong. None of
them dead-letters an event, since none was bad; only events whose own bytes are bad (VALIDATION_FAILED), or
one event alone over the size limit, are.

The witnesses are outside the emitter: chipmock's counters (calls its rate limit refused, Pings, events it
rejected or received), the rows themselves (their ``attempts`` and ``last_error`` columns, also as each row
is deleted), and the dead-letter table. Chip's answers are turned on and off by the test or by chipmock's
token bucket, never by a wall-clock window the load has to fall into.
"""

from __future__ import annotations

import math

import pytest

from actors import open_emitter
from chipmock import ChipModel, Outage
from chipmock.model import RejectContaining, RejectWindow
from tests.helpers import dead_letters, emit_concurrently, pending_ids, query, wait_until

RATE = 20  # events/s of the rate limit: its bucket holds one second's worth, one batch of RATE events


def _record_rows_as_deleted(url: str) -> None:
    """Keep each row's ``attempts`` and ``last_error`` as it leaves the table (delivered or dead-lettered)."""
    query(url, "CREATE TABLE deleted_rows (id text, attempts integer, last_error text)")
    query(url, """CREATE FUNCTION keep_deleted_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
                    INSERT INTO deleted_rows VALUES (OLD.id, OLD.attempts, OLD.last_error); RETURN OLD; END $$""")
    query(url, "CREATE TRIGGER keep_deleted_row AFTER DELETE ON chip_durable_events "
               "FOR EACH ROW EXECUTE FUNCTION keep_deleted_row()")


def _attempts_when_deleted(url: str) -> dict[str, int]:
    """Failed publish attempts each row had recorded in the table when it was deleted."""
    return dict(query(url, "SELECT id, max(attempts) FROM deleted_rows GROUP BY id"))


async def _emit_batch(emitter, name: str, count: int = RATE) -> set[str]:
    return set(await emitter.emit_many([f"{name} {i}".encode() for i in range(count)], source="wf", type="tick"))


@pytest.mark.parametrize("knob", [{"publish_attempts": 1}, {"failures_to_pause": 1}],
                         ids=["retried-in-memory", "while-delivery-is-paused"])
async def test_a_rate_limited_batch_goes_again_once_the_servers_hint_has_passed_and_spends_no_attempt(
        knob, start_chipmock, make_config, database_url) -> None:
    # publish_attempts=1: a single spent attempt would send the batch back to the table.
    # failures_to_pause=1: the refused call pauses delivery, and the probe decides when to go again.
    chip = start_chipmock(ChipModel(rate_limit=RATE))
    _record_rows_as_deleted(database_url)
    async with open_emitter(make_config(chip, **knob)) as emitter:
        first = await _emit_batch(emitter, "first")  # one second's worth: passes, and empties the bucket
        await emitter.flush(timeout=30)
        pings = chip.counters.pings
        second = await _emit_batch(emitter, "second")  # refused, "come back in about a second"
        await emitter.flush(timeout=30)
    assert chip.counters.rate_limited == 1  # sent again once the hint had passed, not before
    assert chip.counters.pings - pings == (1 if "failures_to_pause" in knob else 0)  # one probe, after the hint
    assert chip.counters.seen(first | second) == first | second and chip.counters.duplicates == 0
    assert _attempts_when_deleted(database_url) == dict.fromkeys(first | second, 0)  # the limit spent no attempt
    assert dead_letters(database_url) == {}


async def test_a_rate_limit_under_load_is_waited_out_spending_no_attempt_and_dead_lettering_none(
        start_chipmock, make_config, database_url) -> None:
    chip = start_chipmock(ChipModel(rate_limit=1000))  # below the rate ten emitting tasks offer
    _record_rows_as_deleted(database_url)
    async with open_emitter(make_config(chip)) as emitter:
        ids = await emit_concurrently(emitter, 3000)
        await emitter.flush(timeout=60)
    assert chip.counters.rate_limited > 0, "the rate limit refused nothing: the test proves nothing"
    assert chip.counters.seen(ids) == ids and pending_ids(database_url) == set()
    assert _attempts_when_deleted(database_url) == dict.fromkeys(ids, 0)
    assert dead_letters(database_url) == {}  # before: every limited batch split and dead-lettered TOO_LARGE


@pytest.mark.parametrize("code", ["SCHEMA_MISSING", "DOMAIN_MISCONFIGURATION"])
async def test_a_batch_chip_rejects_whole_pauses_delivery_naming_the_code_and_its_rows_wait_untouched(
        code, start_chipmock, make_config, database_url) -> None:
    chip = start_chipmock()
    async with open_emitter(make_config(chip)) as emitter:
        chip.set_model(ChipModel(reject_windows=(RejectWindow(code, Outage(0, math.inf)),)))  # from now on
        ids = await _emit_batch(emitter, "storm", 10)
        await wait_until(lambda: chip.counters.snapshot().rejected >= 3 * len(ids), what="the batch rejected thrice")
        # Held in memory while paused: never released to the table, so no attempt and no error recorded.
        assert query(database_url, "SELECT attempts, last_error FROM chip_durable_events") == [(0, None)] * len(ids)
        await wait_until(lambda: emitter.statistics().paused_by == code, what="the alert state naming the code")
        chip.set_model(ChipModel())  # Chip's registry (or configuration) is right again
        await emitter.flush(timeout=30)
        assert emitter.statistics().paused_by == ""
    assert chip.counters.seen(ids) == ids and pending_ids(database_url) == set()
    assert dead_letters(database_url) == {}


async def test_validation_failed_dead_letters_exactly_the_chosen_events_at_once(start_chipmock, make_config,
                                                                                database_url) -> None:
    chip = start_chipmock(ChipModel(reject_containing=(RejectContaining("VALIDATION_FAILED", "poison"),)))
    async with open_emitter(make_config(chip)) as emitter:
        good = await emit_concurrently(emitter, 200)
        bad = {await emitter.emit(f"poison {i}".encode(), source="wf", type="tick") for i in range(7)}
        await emitter.flush(timeout=60)
    letters = dead_letters(database_url)
    assert set(letters) == bad and {code for code, _ in letters.values()} == {"VALIDATION_FAILED"}
    assert chip.counters.seen(good) == good and pending_ids(database_url) == set()
    # At once: each was answered once, and moved with no failed attempt recorded.
    assert chip.counters.snapshot().rejected == len(bad)
    assert query(database_url, "SELECT DISTINCT attempts FROM chip_durable_events_dead_letter") == [(0,)]


async def test_one_event_over_the_size_limit_is_dead_lettered_and_a_batch_too_large_as_a_batch_is_split(
        start_chipmock, make_config, database_url) -> None:
    chip = start_chipmock(ChipModel(max_request_bytes=4_000))
    # The emitter's own cap is larger than Chip's: Chip's gRPC size error is what it learns from.
    config = make_config(chip, max_request_bytes=64_000, max_event_bytes=32_000, publish_linger=0.05)
    async with open_emitter(config) as emitter:
        small = set(await emitter.emit_many([b"s" * 300] * 40, source="wf", type="tick"))  # ~13 KB as one batch
        big = await emitter.emit(b"b" * 5_000, source="wf", type="tick")
        await emitter.flush(timeout=60)
    assert chip.counters.seen(small) == small  # split until each part fits, all delivered
    assert dead_letters(database_url) == {big: ("TOO_LARGE", dead_letters(database_url)[big][1])}
    assert "larger than max" in dead_letters(database_url)[big][1]
    assert pending_ids(database_url) == set()

"""Chip's real answers mid-load: a rate limit, a schema registry outage, a domain configuration pushed
wrong. Each window heals; every event is delivered and none is dead-lettered, since none was bad.
Only events whose own bytes are bad (VALIDATION_FAILED), or one event alone over the size limit, are."""

from __future__ import annotations

import pytest
import trio

from actors import open_emitter
from chipmock import ChipModel, Outage
from chipmock.model import RejectContaining, RejectWindow
from tests.helpers import dead_letters, emit_concurrently, pending_ids

WINDOW = 10.0  # seconds of the bad answer, as the issue reproduced them


async def _paced_load(emitter, *, tasks: int = 10, per_task: int, pace: float) -> set[str]:
    """``tasks`` x ``per_task`` emits, each task pausing ``pace`` between its emits (about tasks/pace a second)."""
    ids: set[str] = set()

    async def one_task(task: int) -> None:
        for i in range(per_task):
            ids.add(await emitter.emit(f"task {task} event {i}".encode(), source="wf", type="tick"))
            await trio.sleep(pace)  # the offered rate, not a synchronisation

    async with trio.open_nursery() as nursery:
        for task in range(tasks):
            nursery.start_soon(one_task, task)
    return ids


@pytest.mark.slow
@pytest.mark.parametrize("code", ["SCHEMA_MISSING", "DOMAIN_MISCONFIGURATION"])
async def test_a_window_of_chips_own_state_codes_delays_events_and_dead_letters_none(
        code, start_chipmock, make_config, database_url) -> None:
    # Every event Chip receives between 1 s and 11 s after it started is answered ``code``.
    chip = start_chipmock(ChipModel(reject_windows=(RejectWindow(code, Outage(1.0, WINDOW)),)))
    async with open_emitter(make_config(chip)) as emitter:
        ids = await _paced_load(emitter, per_task=65, pace=0.2)  # ~50 events/s for ~13 s, across the window
        paused_by_seen = emitter.statistics().paused_by
        await emitter.flush(timeout=120)
    snap = chip.counters.snapshot()
    assert snap.rejected > 0, "the window answered nothing: the test proves nothing"
    assert chip.counters.seen(ids) == ids and pending_ids(database_url) == set()
    assert dead_letters(database_url) == {}
    assert paused_by_seen in ("", code)  # while paused, the alert state names the code


@pytest.mark.slow
async def test_a_rate_limit_mid_load_is_waited_out_and_dead_letters_none(start_chipmock, make_config,
                                                                         database_url) -> None:
    # From 1 s after chipmock's start, for WINDOW seconds: about half the offered ~50 events/s.
    chip = start_chipmock(ChipModel(rate_limit=25, rate_limit_window=Outage(1.0, WINDOW)))
    async with open_emitter(make_config(chip)) as emitter:
        ids = await _paced_load(emitter, per_task=65, pace=0.2)
        await emitter.flush(timeout=120)
        retries = emitter.statistics().publish_retries
    assert retries > 0, "the rate limit refused nothing: the test proves nothing"
    assert chip.counters.seen(ids) == ids and pending_ids(database_url) == set()
    assert dead_letters(database_url) == {}  # before: every limited batch split and dead-lettered TOO_LARGE


async def test_validation_failed_dead_letters_exactly_the_chosen_events_at_once(start_chipmock, make_config,
                                                                                database_url) -> None:
    chip = start_chipmock(ChipModel(reject_containing=(RejectContaining("VALIDATION_FAILED", "poison"),)))
    async with open_emitter(make_config(chip)) as emitter:
        good = await emit_concurrently(emitter, 200)
        bad = {await emitter.emit(f"poison {i}".encode(), source="wf", type="tick") for i in range(7)}
        await emitter.flush(timeout=60)
        retries = emitter.statistics().publish_retries
    letters = dead_letters(database_url)
    assert set(letters) == bad and {code for code, _ in letters.values()} == {"VALIDATION_FAILED"}
    assert chip.counters.seen(good) == good and pending_ids(database_url) == set()
    assert retries == 0  # at once: no retry was spent on them


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

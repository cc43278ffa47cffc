"""The acker never wedges: odd reasons, duplicate ids, a poison item, revoked rights.

Before, any of these made the acker retry one batch forever: its inbox filled,
delivery stopped and flush() never returned.
"""

import trio

from actors import open_emitter
from chipmock import ChipModel
from chipmock.model import RejectContaining
from tests.helpers import dead_letters, emit_concurrently, pending_ids, query, wait_until

ODD_REASON = "schema \x00missing\x01 for caf\u00e9 \U0001f600"
# The same events are rejected on every try (each task's "body 13"), so a rejection lost with a
# crashed acker comes back as a rejection when the row is sent again.
CHOSEN = RejectContaining("VALIDATION_FAILED", "body 13")


async def test_reasons_with_nul_bytes_are_stored_readably_and_delivery_continues(start_chipmock, make_config,
                                                                                   database_url) -> None:
    chip = start_chipmock(ChipModel(event_failure_rate=0.2, event_failure_code="VALIDATION_FAILED", reject_reason=ODD_REASON, seed=7))
    async with open_emitter(make_config(chip)) as emitter:
        ids = await emit_concurrently(emitter, 300)
        with trio.fail_after(60):
            await emitter.flush(timeout=60)
    letters = dead_letters(database_url)
    assert letters and chip.counters.seen(ids) | set(letters) == ids and pending_ids(database_url) == set()
    assert {reason for _, reason in letters.values()} == {"schema \\x00missing\x01 for caf\u00e9 \U0001f600"}


async def test_a_poison_reason_is_isolated_recorded_escaped_and_the_rest_moved(start_chipmock, make_config,
                                                                                database_url) -> None:
    chip = start_chipmock(ChipModel(event_failure_rate=0.2, event_failure_code="VALIDATION_FAILED", reject_reason=ODD_REASON, seed=7))
    async with open_emitter(make_config(chip)) as emitter:
        # A rule the emitter does not know: control characters are refused in reasons.
        query(database_url, "ALTER TABLE chip_durable_events_dead_letter ADD CONSTRAINT printable "
                            "CHECK (reason !~ '[\\x01-\\x08]')")
        ids = await emit_concurrently(emitter, 300)
        with trio.fail_after(60):
            await emitter.flush(timeout=60)
        restarts = emitter.statistics().restarts["acker"]
    letters = dead_letters(database_url)
    assert letters and chip.counters.seen(ids) | set(letters) == ids and pending_ids(database_url) == set()
    assert all("\\x01" in reason and "SQLSTATE 23514" in reason for _, reason in letters.values())
    assert restarts == 0


async def test_revoked_rights_on_the_dead_letter_table_crash_the_acker_but_deliveries_go_on(
        start_chipmock, make_config, database_url, limited_role_url) -> None:
    url, role = limited_role_url
    chip = start_chipmock(ChipModel(reject_containing=(CHOSEN,)))
    config = make_config(chip, database_url=url, lease_duration=5.0, max_restarts=50, restart_period=60)
    async with open_emitter(config) as emitter:
        query(database_url, f'REVOKE INSERT ON chip_durable_events_dead_letter FROM "{role}"')  # no moves
        ids = await emit_concurrently(emitter, 400)
        await wait_until(lambda: emitter.statistics().restarts["acker"] >= 1, what="the acker crashed")
        # Deletes of delivered events went on between the crashes.
        await wait_until(lambda: len(pending_ids(database_url)) < 100, what="the other events deleted")
        query(database_url, f'GRANT SELECT, INSERT, UPDATE ON chip_durable_events_dead_letter TO "{role}"')
        await emitter.flush(timeout=60)
    letters = dead_letters(database_url)
    assert letters and chip.counters.seen(ids) | set(letters) == ids and pending_ids(database_url) == set()

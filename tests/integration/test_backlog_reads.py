"""Reads that run every second or on every flush stay cheap when the table is large (plans, not timings)."""

import re
from datetime import UTC, datetime

import pytest

from actors.adapters.operations import Operations
from actors.adapters.store import Session, Store
from tests.helpers import query

ROWS = 40_000  # about 13 MB of 256-byte payloads: past the exact-count threshold


def _fill(url: str, lease: str) -> None:
    query(url, "INSERT INTO chip_durable_events (id, payload, lease_owner, emitted_by, lease_expires_at, available_at) "
               f"SELECT 'e' || i, convert_to(repeat('x', 256), 'UTF8'), 'holder', 'holder', {lease}, {lease} "
               f"FROM generate_series(1, {ROWS}) i")
    query(url, "VACUUM (ANALYZE) chip_durable_events")


async def test_the_sampler_estimates_a_large_table_and_counts_a_small_one(database_url) -> None:
    store = Store(database_url)
    try:
        _fill(database_url, "'-infinity'")
        large = await store.pending_stats()
        assert not large.exact and abs(large.rows - ROWS) < ROWS * 0.1, large
        assert large.oldest_age_seconds >= 0
        query(database_url, "TRUNCATE chip_durable_events")
        query(database_url, "INSERT INTO chip_durable_events (id, payload, lease_owner, lease_expires_at) "
                            "VALUES ('a', 'x', 'o', now()), ('b', 'yy', 'o', now())")
        small = await store.pending_stats()
        assert small.exact and (small.rows, small.payload_bytes) == (2, 3)
    finally:
        store.close()


async def test_claims_and_flush_polls_are_index_scans_when_nothing_matches(database_url) -> None:
    _fill(database_url, "now() + interval '1 hour'")  # every lease live: nothing claimable
    operations = Operations(database_url)
    try:
        plans = await operations.read_plans(owner="other", lease=60.0, limit=500, writer_only=False,
                                            before=datetime.now(UTC))
    finally:
        operations.close()
    assert "Index Scan using chip_durable_events_available_idx" in plans.claim, plans.claim
    assert not _scans_the_events_table(plans.claim), plans.claim
    assert not _scans_the_events_table(plans.orphan_claim), plans.orphan_claim  # nobody gone: no row read
    assert "chip_durable_events_writer_idx" in plans.flush_poll and "Seq Scan" not in plans.flush_poll, plans.flush_poll


def _scans_the_events_table(plan: str) -> bool:
    return re.search(r"Seq Scan on chip_durable_events\b(?!_)", plan) is not None  # its small tables may be read whole


@pytest.mark.parametrize("gone_holds", ["every row", "a few rows beside a live owner's backlog"])
async def test_the_claim_of_a_gone_instances_rows_is_an_index_range_however_many_rows_there_are(
        database_url, gone_holds) -> None:
    """The claim takes a gone owner's oldest rows through the writer index: never a walk of the
    table, whoever holds the rest of it."""
    gone = "holder" if gone_holds == "every row" else "small"
    store = Store(database_url, Session(application_name=f"durable-emitter {gone}"))
    await store.record_instance(gone, session_liveness=True, grace=60, lease=60)
    if gone == "small":  # the rest belongs to 'holder', which has no record: its rows wait for their lease
        await store.insert_events([f"s{i}" for i in range(50)], [b"x"] * 50, owner="small", hold=3600)
    store.close()  # the gone instance's lock free, its connections ended
    _fill(database_url, "now() + interval '1 hour'")  # every lease live: only the judgement makes rows claimable
    operations = Operations(database_url)
    try:
        plans = await operations.read_plans(owner="other", lease=60.0, limit=500, writer_only=False,
                                            before=datetime.now(UTC), gone=[gone])
        rows, taken_from = await operations.claim_orphans(owner="other", lease=60.0, limit=500, gone=[gone])
    finally:
        operations.close()
    assert len(rows) == (500 if gone == "holder" else 50) and taken_from == {gone}
    claim = plans.orphan_claim
    assert "Index Scan using chip_durable_events_writer_idx" in claim, claim
    assert "Tid Scan on chip_durable_events" in claim and not _scans_the_events_table(claim), claim

"""What a claim takes first, and what the TTL sweep may touch: the queue's fairness, on real Postgres."""

from actors.adapters.store import Store
from chippb import cloudevent_pb2 as ce
from tests.helpers import dead_letters, pending_ids, query


def _events(*ids: str) -> list[bytes]:
    return [ce.CloudEvent(id=i, source="wf", spec_version="1.0", type="t").SerializeToString() for i in ids]


async def test_rows_released_earlier_are_claimed_before_rows_spilled_later(database_url) -> None:
    store = Store(database_url)
    older = [f"older-{i}" for i in range(5)]
    newer = [f"newer-{i}" for i in range(5)]
    await store.insert_events(older, _events(*older), owner="a", hold=60)
    await store.release(older, owner="a", token=0, error="UNAVAILABLE", attempts=5, retry_after=0)
    # Overload: the memory buffer is full and every new commit spills to the table.
    await store.insert_events(newer, _events(*newer), owner="a", hold=0)
    claimed = await store.claim(owner="b", lease=60, limit=5, writer_only=False)
    store.close()
    assert {row.id for row in claimed} == set(older)  # spilled rows wait their turn, not jump it


async def test_the_ttl_sweep_never_takes_a_row_a_live_lease_holds(database_url) -> None:
    store = Store(database_url)
    ids = ["in-flight", "lapsed"]
    await store.insert_events(ids, _events(*ids), owner="a", hold=60)
    query(database_url, "UPDATE chip_durable_events SET created_at = now() - interval '2 hours'")
    await store.release(["lapsed"], owner="a", token=0, error="UNAVAILABLE", attempts=5, retry_after=0)
    moved = await store.expire(ttl=3600)
    store.close()
    assert moved == 1
    assert set(dead_letters(database_url)) == {"lapsed"}
    assert pending_ids(database_url) == {"in-flight"}  # its publisher may be waiting for Chip's answer


async def test_ids_and_payloads_reach_the_table_byte_for_byte(database_url) -> None:
    """The hot statements dump their arrays themselves: every byte and character must survive."""
    store = Store(database_url)
    ids = ["plain", "ünïcødé ✓", "with,comma and \"quotes\"", "x" * 300, "{braces}"]
    payloads = [b"", b"\x00\xff\x00", "ünïcødé".encode(), bytes(range(256)) * 40, b"\\x00"]
    await store.insert_events(ids, payloads, owner="a", hold=0)
    rows = query(database_url, "SELECT id, payload FROM chip_durable_events")
    assert {row[0]: bytes(row[1]) for row in rows} == dict(zip(ids, payloads, strict=True))
    assert await store.delete([ids[1], ids[1], ids[2]], owner="a") == 2  # an id given twice is deleted once
    await store.insert_events([], [], owner="a", hold=60)  # an empty group writes nothing
    store.close()
    assert pending_ids(database_url) == {ids[0], ids[3], ids[4]}


async def test_a_stale_copys_release_leaves_a_later_claim_of_the_same_row_alone(database_url) -> None:
    """A copy of a row from an earlier lease hands it back only under that lease: its late release must
    not make a row claimable while the copy of a later claim is in flight (a third publish)."""
    store = Store(database_url)
    try:
        await store.insert_events(["r"], _events("r"), owner="a", hold=0)  # copy 1, as written
        (claimed,) = await store.claim(owner="a", lease=60, limit=10, writer_only=False)  # copy 2, a later lease
        assert claimed.lease_token != 0
        released_late = await store.release(["r"], owner="a", token=0, error="UNAVAILABLE", attempts=1,
                                            retry_after=0)
        assert released_late == 0
        assert await store.claim(owner="b", lease=60, limit=10, writer_only=False) == []  # still copy 2's
        assert await store.release(["r"], owner="a", token=claimed.lease_token, error="UNAVAILABLE", attempts=1,
                                   retry_after=0) == 1
        assert [row.id for row in await store.claim(owner="b", lease=60, limit=10, writer_only=False)] == ["r"]
    finally:
        store.close()

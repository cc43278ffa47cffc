"""Who is judged by a liveness lock, and when their rows are taken: real Postgres, real chipmock.

Only owners whose record says they hold a liveness lock while they run are
judged by it. One whose lock is free is taken over once its lock stayed free for
its grace, counted from the moment a claimer first saw it free; at once only if
its death is proven: its connections are gone while another instance's liveness
session, older than the owner's last sighting, is not (so no restart ended them
all). Instances with liveness off, and owners without a record, wait for their
lease; a blip of a live instance's liveness connection takes nothing.
"""

from __future__ import annotations

import psycopg
import trio

from actors import open_emitter
from actors.adapters import schema
from actors.adapters.operations import Operations, OwnerLiveness
from actors.adapters.queries import LIVENESS_KEY
from actors.adapters.store import Session, Store
from actors.errors import StoreUnavailable
from chipmock import ChipModel
from tests.helpers import emit_concurrently, pending_ids, query, wait_until

GRACE = 60.0  # never passes during a test, unless the test sets an owner's grace to 0


def _store(url: str, instance_id: str) -> Store:
    """A connection as an instance's own: its application_name is how the others find its connections."""
    return Store(url, Session(application_name=f"durable-emitter {instance_id}"))


def _liveness_holder(url: str, instance_id: str) -> int | None:
    """The backend holding ``instance_id``'s liveness lock, or None."""
    rows = query(url, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND objsubid = 2 "
                      "AND objid = hashtext(%s)::oid AND granted", (LIVENESS_KEY, instance_id))
    return rows[0][0] if rows else None


async def _owner_states(url: str) -> dict[str, OwnerLiveness]:
    operations = Operations(url)
    try:
        return {owner: liveness for owner, _, _, liveness in await operations.lease_owners()}
    finally:
        operations.close()


async def _seed_rows(store: Store, owner: str, count: int = 3) -> list[str]:
    """``count`` rows leased to ``owner`` for a minute, oldest first in the returned order."""
    ids = [f"{owner}-{i}" for i in range(count)]
    for event_id in ids:  # one commit each: distinct created_at, so "oldest first" is observable
        await store.insert_events([event_id], [event_id.encode()], owner=owner, lease=GRACE, spilled=False)
    return ids


def _takeovers(caplog) -> list[str]:
    """What the dispatchers logged as taking over instances that are not running."""
    return [r.getMessage() for r in caplog.records if "instances that are not running" in r.getMessage()]


async def test_only_owners_that_use_a_lock_and_are_gone_are_claimed_at_once(database_url) -> None:
    url = database_url
    # running: holds its lock. blipped: lost its lock, another of its connections remains.
    # killed: lost its lock and every connection. off: liveness off. old: no record at all.
    running, blip_lock, blip_other, killed, off, old = (
        _store(url, name) for name in ("running", "blipped", "blipped", "killed", "off", "old"))
    judge = Store(url)  # any instance: the claim needs no session of its own (liveness on or off)
    try:
        for store, name in ((running, "running"), (blip_lock, "blipped"), (killed, "killed")):
            assert await store.record_instance(name, session_liveness=True, grace=GRACE) is True
        assert await off.record_instance("off", session_liveness=False, grace=GRACE) is None
        ids = {name: await _seed_rows(store, name)
               for store, name in ((running, "running"), (blip_other, "blipped"), (killed, "killed"),
                                   (off, "off"), (old, "old"))}
        for gone in (blip_lock, killed, off, old):
            gone.close()

        assert await _owner_states(url) == {
            "running": OwnerLiveness.RUNNING, "blipped": OwnerLiveness.LOCK_LOST, "killed": OwnerLiveness.GONE,
            "off": OwnerLiveness.LEASE, "old": OwnerLiveness.UNKNOWN}
        rows, taken_from = await judge.claim_orphans(owner="judge", lease=GRACE, limit=100)
        assert [row.id for row in rows] == ids["killed"] and taken_from == {"killed"}  # oldest first
        assert await judge.claim_orphans(owner="judge", lease=GRACE, limit=100) == ([], set())

        # The lock stays lost for longer than the grace (as if the grace were over): no longer forgiven.
        query(url, "UPDATE chip_durable_events_instances SET liveness_grace = '0' WHERE instance_id = 'blipped'")
        rows, taken_from = await judge.claim_orphans(owner="judge", lease=GRACE, limit=100)
        assert [row.id for row in rows] == ids["blipped"] and taken_from == {"blipped"}
    finally:
        for store in (running, blip_other, judge):
            store.close()
    assert {owner for (owner,) in query(url, "SELECT DISTINCT lease_owner FROM chip_durable_events")} == {
        "running", "off", "old", "judge"}


async def test_a_claim_takes_one_batch_from_several_gone_owners(database_url) -> None:
    witness = _store(database_url, "witness")  # a live instance whose session outlives theirs
    stores = [_store(database_url, name) for name in ("a", "b")]
    judge = Store(database_url)
    try:
        await witness.record_instance("witness", session_liveness=True, grace=GRACE)
        for store, name in zip(stores, ("a", "b"), strict=True):
            await store.record_instance(name, session_liveness=True, grace=GRACE)
            await _seed_rows(store, name, 4)
            store.close()
        first, _ = await judge.claim_orphans(owner="judge", lease=GRACE, limit=6)
        second, _ = await judge.claim_orphans(owner="judge", lease=GRACE, limit=6)
    finally:
        judge.close()
        witness.close()
    assert (len(first), len(second)) == (6, 2)
    assert pending_ids(database_url) == {f"{n}-{i}" for n in "ab" for i in range(4)}


def _free_since(url: str, instance_id: str):
    return query(url, "SELECT free_since FROM chip_durable_events_instances WHERE instance_id = %s",
                 (instance_id,))[0][0]


async def test_after_a_restart_an_owner_is_taken_over_a_grace_after_a_claimer_first_saw_its_lock_free(
        own_postgres) -> None:
    """A restart frees every lock at once and proves no death: an owner is given its grace, counted on
    the database's clock from the first claim that found its lock free; a live one takes its lock back."""
    url = own_postgres.url
    schema.apply(url, "public", lock_timeout=10)
    owner, witness, judge = _store(url, "before-restart"), _store(url, "witness"), Store(url)
    try:
        await witness.record_instance("witness", session_liveness=True, grace=GRACE)
        await owner.record_instance("before-restart", session_liveness=True, grace=GRACE)
        await _seed_rows(owner, "before-restart")
        owner.close()
        await trio.to_thread.run_sync(own_postgres.stop)
        await trio.to_thread.run_sync(own_postgres.start)
        # The witness is back, on a session younger than the owner's last sighting: that proves nothing.
        try:
            await witness.keep_instance("witness", session_liveness=True, grace=GRACE)
        except StoreUnavailable:  # its old connection, found broken by this first statement; the next reconnects
            assert await witness.keep_instance("witness", session_liveness=True, grace=GRACE)
        assert (await _owner_states(url))["before-restart"] is OwnerLiveness.LOCK_LOST
        assert _free_since(url, "before-restart") is None
        assert await judge.claim_orphans(owner="judge", lease=GRACE, limit=100) == ([], set())
        first_seen = _free_since(url, "before-restart")
        assert first_seen is not None  # noted by that claim, on the database's clock
        assert await judge.claim_orphans(owner="judge", lease=GRACE, limit=100) == ([], set())
        assert _free_since(url, "before-restart") == first_seen  # the first sighting counts, not the last
        # Its grace has passed since then (as if GRACE seconds went by): now it is gone.
        query(url, "UPDATE chip_durable_events_instances SET free_since = free_since - make_interval(secs => %s) "
                   "WHERE instance_id = 'before-restart'", (GRACE + 1,))
        assert (await _owner_states(url))["before-restart"] is OwnerLiveness.GONE
        rows, taken_from = await judge.claim_orphans(owner="judge", lease=GRACE, limit=100)
        assert len(rows) == 3 and taken_from == {"before-restart"}
    finally:
        judge.close()
        witness.close()


async def test_an_owner_that_takes_its_lock_back_within_its_grace_keeps_its_rows(database_url) -> None:
    """Alone on the server, an owner whose sessions all ended may be alive (a restart, its pooler): the
    claimer notes when it first saw the lock free, and the owner taking it back ends the grace."""
    url = database_url
    owner, judge = _store(url, "blinks"), Store(url)
    try:
        await owner.record_instance("blinks", session_liveness=True, grace=GRACE)
        ids = await _seed_rows(owner, "blinks")
        owner.close()  # every connection and the lock gone
        assert await judge.claim_orphans(owner="judge", lease=GRACE, limit=100) == ([], set())
        assert _free_since(url, "blinks") is not None
        owner = _store(url, "blinks")
        assert await owner.keep_instance("blinks", session_liveness=True, grace=GRACE)  # back within its grace
        assert _free_since(url, "blinks") is None
        query(url, "UPDATE chip_durable_events_instances SET liveness_grace = '0'")  # no grace would be left
        assert await judge.claim_orphans(owner="judge", lease=GRACE, limit=100) == ([], set())
        assert (await _owner_states(url))["blinks"] is OwnerLiveness.RUNNING
    finally:
        for store in (owner, judge):
            store.close()
    assert {row for (row,) in query(url, "SELECT id FROM chip_durable_events WHERE lease_owner = 'blinks'")} == set(ids)


async def test_a_host_restarted_alone_after_a_crash_takes_the_dead_ones_rows_at_once(database_url) -> None:
    """No instance outlived the dead one, but one that started after it was last seen runs on the same run
    of the server: its sessions ended with its process, not with a restart."""
    url = database_url
    dead, replacement, judge = _store(url, "crashed"), _store(url, "replacement"), Store(url)
    try:
        await dead.record_instance("crashed", session_liveness=True, grace=GRACE)
        ids = await _seed_rows(dead, "crashed")
        dead.close()
        assert await judge.claim_orphans(owner="judge", lease=GRACE, limit=100) == ([], set())  # nobody runs
        await replacement.record_instance("replacement", session_liveness=True, grace=GRACE)
        rows, taken_from = await judge.claim_orphans(owner="judge", lease=GRACE, limit=100)
    finally:
        for store in (replacement, judge):
            store.close()
    assert [row.id for row in rows] == ids and taken_from == {"crashed"}


async def test_instances_with_liveness_on_and_off_on_one_table_send_no_duplicates(start_chipmock, make_config,
                                                                                   database_url, caplog) -> None:
    # Rows stay leased to their instance while Chip takes 20 ms per call, and each scans every
    # 100 ms: before, the instance with liveness on took the other's live rows on every scan.
    chip = start_chipmock(ChipModel(latency=0.02))
    async with open_emitter(make_config(chip, instance_id="lock-on")) as on, \
            open_emitter(make_config(chip, instance_id="lock-off", session_liveness=False)) as off:
        ids: set[str] = set()
        async with trio.open_nursery() as nursery:
            async def emit_into(emitter) -> None:
                ids.update(await emit_concurrently(emitter, 3000))

            nursery.start_soon(emit_into, on)
            nursery.start_soon(emit_into, off)
        await on.flush(timeout=30)
        await off.flush(timeout=30)
    assert len(ids) == 6000 and chip.counters.seen(ids) == ids
    assert chip.counters.snapshot().duplicates == 0
    assert not _takeovers(caplog)  # neither took a row of the other
    assert pending_ids(database_url) == set()


async def test_a_blip_of_a_live_instances_liveness_connection_takes_none_of_its_rows(start_chipmock, make_config,
                                                                                     database_url, caplog) -> None:
    # Every call takes 0.5 s, so the blipping instance has rows in flight when its liveness
    # backend is terminated; the other scans every 100 ms meanwhile.
    chip = start_chipmock(ChipModel(latency=0.5))
    async with open_emitter(make_config(chip, instance_id="blips")) as blips, \
            open_emitter(make_config(chip, instance_id="watches")):
        ids = await emit_concurrently(blips, 200)
        await wait_until(lambda: blips.statistics().publishes_in_flight >= 1, what="a publish in flight")
        holder = _liveness_holder(database_url, "blips")
        assert holder is not None
        query(database_url, "SELECT pg_terminate_backend(%s, 5000)", (holder,))  # returns once it ended
        await wait_until(lambda: _liveness_holder(database_url, "blips") not in (None, holder),
                         what="the sampler taking the lock again on a new connection")
        await blips.flush(timeout=60)
    assert chip.counters.seen(ids) == ids
    assert chip.counters.snapshot().duplicates == 0 and not _takeovers(caplog)
    assert pending_ids(database_url) == set()


def test_an_upgrade_gives_the_instances_table_the_rights_roles_hold_on_the_events_table(
        blank_database_url) -> None:
    """A DML-only role that ran the emitter before 0004 runs it after, without a new GRANT."""
    url = blank_database_url
    with psycopg.connect(url, autocommit=True) as conn:
        for migration in schema.migrations()[:3]:
            conn.execute(migration.sql.encode())
        conn.execute("INSERT INTO chip_durable_events_version (version, name) VALUES (1, '0001'), (2, '0002'), "
                     "(3, '0003')")
    role, reader = (f"{kind}_{url.rsplit('t_', 1)[-1][:12]}" for kind in ("dml", "ro"))
    for name, rights in ((role, "SELECT, INSERT, UPDATE, DELETE"), (reader, "SELECT")):
        query(url, f'CREATE ROLE "{name}" LOGIN')
        query(url, f'GRANT {rights} ON chip_durable_events, chip_durable_events_dead_letter TO "{name}"')
    try:
        found = schema.apply(url, "public", lock_timeout=10)
        assert found.steps == (4, 5)
        granted = query(url, "SELECT grantee, string_agg(privilege_type, ',' ORDER BY privilege_type) "
                             "FROM information_schema.role_table_grants "
                             "WHERE table_name = 'chip_durable_events_instances' AND grantee IN (%s, %s) "
                             "GROUP BY grantee", (role, reader))
        assert dict(granted) == {role: "DELETE,INSERT,SELECT,UPDATE", reader: "SELECT"}
    finally:
        for name in (role, reader):
            query(url, f'DROP OWNED BY "{name}"')
            query(url, f'DROP ROLE "{name}"')

"""Who is judged by a liveness lock, and when their rows are taken: real Postgres, real chipmock.

Only owners whose record says they hold a liveness lock while they run are
judged by it. One whose lock is free is taken over once its lock stayed free for
its grace, counted on the database's clock from the moment a claimer first saw
it free (after it was last seen, on this run of the server); at once only when
its process is seen gone by a claimer on its own host. Instances with liveness
off, and owners without a record, wait for their lease; a blip of a live
instance's liveness connection takes nothing.
"""

from __future__ import annotations

import subprocess
import sys

import psycopg
import trio

from actors import open_emitter
from actors.adapters import schema
from actors.adapters.liveness_queries import LIVENESS_KEY
from actors.adapters.operations import Operations, OwnerLiveness
from actors.adapters.processes import gone, this_process
from actors.adapters.store import Session, Store
from actors.errors import StoreUnavailable
from chipmock import ChipModel
from chippb import cloudevent_pb2 as ce
from tests.helpers import emit_concurrently, pending_ids, query, wait_until

GRACE = 60.0  # never passes during a test, unless the test moves an owner's free_since back


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


async def _record(store: Store, owner: str, *, session_liveness: bool = True) -> bool | None:
    return await store.record_instance(owner, session_liveness=session_liveness, grace=GRACE, lease=GRACE)


async def _seed_rows(store: Store, owner: str, count: int = 3) -> list[str]:
    """``count`` events leased to ``owner`` for a minute, oldest first in the returned order."""
    ids = [f"{owner}-{i}" for i in range(count)]
    for event_id in ids:  # one commit each: distinct created_at, so "oldest first" is observable
        event = ce.CloudEvent(id=event_id, source="wf", spec_version="1.0", type="tick").SerializeToString()
        await store.insert_events([event_id], [event], owner=owner, hold=GRACE)
    return ids


def _free_since(url: str, instance_id: str):
    return query(url, "SELECT free_since FROM chip_durable_events_instances WHERE instance_id = %s",
                 (instance_id,))[0][0]


def _grace_passed(url: str, instance_id: str) -> None:
    """As if the owner's grace had passed since a claimer first found its lock free (and it was last
    seen a moment before that)."""
    query(url, "UPDATE chip_durable_events_instances SET free_since = free_since - make_interval(secs => %s), "
               "seen_at = seen_at - make_interval(secs => %s) WHERE instance_id = %s", (GRACE + 1, GRACE + 1,
                                                                                          instance_id))


def _a_dead_process() -> str:
    """What a process of this host that has ended recorded of itself (a real child, reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "from actors.adapters.processes import this_process; "
                                                    "print(this_process(), flush=True); input()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    identity = child.stdout.readline().strip()
    child.kill()
    child.wait()
    return identity


def _takeovers(caplog) -> list[str]:
    """What the dispatchers logged as taking over instances that are not running."""
    return [r.getMessage() for r in caplog.records if "instances that are not running" in r.getMessage()]


def test_a_process_of_this_host_is_gone_once_it_ended_and_nothing_else_is_proven() -> None:
    dead = _a_dead_process()
    assert dead and gone(dead)
    assert not gone(this_process())  # alive
    host, boot, namespace, pid, started = this_process().split(" ")
    assert not gone(f"elsewhere {boot} {namespace} {pid} {started}")  # another host proves nothing
    assert not gone(f"{host} {boot} 1 999999 1")  # another pid namespace (a container) neither
    assert not gone("")  # an older version's record, or not Linux


async def test_only_owners_that_use_a_lock_are_judged_by_it_and_a_free_lock_starts_their_grace(
        database_url) -> None:
    url = database_url
    # running: holds its lock. blipped: lost its lock, another of its connections remains.
    # killed: lost its lock and every connection. off: liveness off. old: no record at all.
    running, blip_lock, blip_other, killed, off, old = (
        _store(url, name) for name in ("running", "blipped", "blipped", "killed", "off", "old"))
    judge = Store(url)  # any instance: judging needs no session of its own (liveness on or off)
    try:
        for store, name in ((running, "running"), (blip_lock, "blipped"), (killed, "killed")):
            assert await _record(store, name) is True
        assert await _record(off, "off", session_liveness=False) is None
        for store, name in ((running, "running"), (blip_other, "blipped"), (killed, "killed"), (off, "off"),
                            (old, "old")):
            await _seed_rows(store, name)
        for store in (blip_lock, killed, off, old):
            store.close()

        # Free locks are found and noted; nobody's grace has passed yet: no death is proven.
        assert sorted(await judge.free_owners(owner="judge")) == [("blipped", this_process(), False),
                                                                  ("killed", this_process(), False)]
        assert await _owner_states(url) == {
            "running": OwnerLiveness.RUNNING, "blipped": OwnerLiveness.LOCK_LOST, "killed": OwnerLiveness.LOCK_LOST,
            "off": OwnerLiveness.LEASE, "old": OwnerLiveness.UNKNOWN}
        _grace_passed(url, "killed")
        assert ("killed", this_process(), True) in await judge.free_owners(owner="judge")
        assert (await _owner_states(url))["killed"] is OwnerLiveness.GONE
    finally:
        for store in (running, blip_other, judge):
            store.close()


async def test_a_claim_takes_one_batch_from_several_gone_owners_each_oldest_first(database_url) -> None:
    stores = [_store(database_url, name) for name in ("a", "b")]
    judge = Store(database_url)
    try:
        ids = {}
        for store, name in zip(stores, ("a", "b"), strict=True):
            await _record(store, name)
            ids[name] = await _seed_rows(store, name, 4)
            store.close()
        first, taken = await judge.claim_orphans(owner="judge", lease=GRACE, limit=6, gone=["a", "b"])
        second, _ = await judge.claim_orphans(owner="judge", lease=GRACE, limit=6, gone=["a", "b"])
    finally:
        judge.close()
    assert [row.id for row in first] == ids["a"] + ids["b"][:2] and taken == {"a", "b"}
    assert [row.id for row in second] == ids["b"][2:]
    assert pending_ids(database_url) == {f"{n}-{i}" for n in "ab" for i in range(4)}


async def test_after_a_restart_an_owner_is_taken_over_a_grace_after_a_claimer_first_saw_its_lock_free(
        own_postgres) -> None:
    """A restart frees every lock at once: an owner is given its grace, counted on the database's clock
    from the first time a claimer found its lock free after it was last seen."""
    url = own_postgres.url
    schema.apply(url, "public", lock_timeout=10)
    owner, judge = _store(url, "before-restart"), Store(url)
    try:
        await _record(owner, "before-restart")
        await _seed_rows(owner, "before-restart")
        owner.close()
        await trio.to_thread.run_sync(own_postgres.stop)
        await trio.to_thread.run_sync(own_postgres.start)
        assert _free_since(url, "before-restart") is None
        try:
            assert await judge.free_owners(owner="judge") == [("before-restart", this_process(), False)]
        except StoreUnavailable:  # its old connection, found broken by this first statement; the next reconnects
            assert await judge.free_owners(owner="judge") == [("before-restart", this_process(), False)]
        first_seen = _free_since(url, "before-restart")
        assert first_seen is not None  # noted then, on the database's clock
        assert await judge.free_owners(owner="judge") == [("before-restart", this_process(), False)]
        assert _free_since(url, "before-restart") == first_seen  # the first sighting counts, not the last
        _grace_passed(url, "before-restart")
        assert await judge.free_owners(owner="judge") == [("before-restart", this_process(), True)]
    finally:
        judge.close()


async def test_a_grace_noted_before_the_owner_was_last_seen_or_on_another_run_of_the_server_counts_for_nothing(
        database_url) -> None:
    """A free_since an owner's own refresh did not clear (an older version's), or one noted before a
    failover or a crash recovery, starts the grace again instead of ending it."""
    url = database_url
    owner, judge = _store(url, "o"), Store(url)
    try:
        await _record(owner, "o")
        owner.close()
        await judge.free_owners(owner="judge")
        _grace_passed(url, "o")
        query(url, "UPDATE chip_durable_events_instances SET free_in = 'another run of another server'")
        assert await judge.free_owners(owner="judge") == [("o", this_process(), False)]  # noted again, now
        _grace_passed(url, "o")
        query(url, "UPDATE chip_durable_events_instances SET seen_at = now()")  # seen after it was noted
        assert await judge.free_owners(owner="judge") == [("o", this_process(), False)]
    finally:
        judge.close()


async def test_an_owner_that_takes_its_lock_back_within_its_grace_keeps_its_rows(database_url) -> None:
    """An owner whose sessions all ended may be alive (a restart, its pooler, its path reset): the
    claimer notes when it first saw the lock free, and the owner taking it back ends the grace."""
    url = database_url
    owner, judge = _store(url, "blinks"), Store(url)
    try:
        await _record(owner, "blinks")
        ids = await _seed_rows(owner, "blinks")
        owner.close()  # every connection and the lock gone
        await judge.free_owners(owner="judge")
        assert _free_since(url, "blinks") is not None
        owner = _store(url, "blinks")
        assert await owner.keep_instance("blinks", session_liveness=True, grace=GRACE, lease=GRACE)
        assert _free_since(url, "blinks") is None
        assert await judge.free_owners(owner="judge") == []
        assert (await _owner_states(url))["blinks"] is OwnerLiveness.RUNNING
    finally:
        for store in (owner, judge):
            store.close()
    assert {row for (row,) in query(url, "SELECT id FROM chip_durable_events WHERE lease_owner = 'blinks'")} == set(ids)


async def test_a_dead_process_of_this_host_is_taken_over_at_once_by_a_running_instance(
        start_chipmock, make_config, database_url, caplog) -> None:
    """Its lock free, and its process seen gone by an instance on the same host: no grace to wait."""
    dead = _store(database_url, "crashed")
    try:
        await _record(dead, "crashed")
        ids = set(await _seed_rows(dead, "crashed"))
    finally:
        dead.close()
    query(database_url, "UPDATE chip_durable_events_instances SET process = %s", (_a_dead_process(),))
    chip = start_chipmock()
    async with open_emitter(make_config(chip, instance_id="survivor")):
        await wait_until(lambda: chip.counters.seen(ids) == ids, what="the dead one's rows delivered")
    assert _takeovers(caplog)


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


async def test_an_instance_whose_lock_another_session_holds_claims_nothing_until_it_has_it_back(
        start_chipmock, make_config, database_url, caplog) -> None:
    """The others may judge it gone and take what it would claim: it only writes, sweeps and delivers
    what it wrote, until its sampler has the lock again."""
    chip = start_chipmock()
    config = make_config(chip, instance_id="fenced")
    async with open_emitter(config):
        holder = _liveness_holder(database_url, "fenced")
        with psycopg.connect(database_url, autocommit=True) as foreign:
            query(database_url, "SELECT pg_terminate_backend(%s, 5000)", (holder,))
            foreign.execute("SELECT pg_advisory_lock(%s, hashtext('fenced'))", (LIVENESS_KEY,))  # as a zombie would
            await wait_until(lambda: any("another live session holds" in r.getMessage() for r in caplog.records),
                             what="the sampler finding its lock held by another session")
            other = Store(database_url)
            try:
                claimable = await _seed_rows(other, "other-writer")
                query(database_url, "UPDATE chip_durable_events SET lease_expires_at = now(), available_at = now()")
                for marker in ("first", "second"):  # each swept by a later scan: the scans go on
                    old = ce.CloudEvent(id=marker, source="wf", spec_version="1.0", type="t").SerializeToString()
                    await other.insert_events([marker], [old], owner="other-writer", hold=0)
                    query(database_url, "UPDATE chip_durable_events SET created_at = now() - interval '2 days' "
                                        "WHERE id = %s", (marker,))
                    await wait_until(lambda m=marker: query(database_url, "SELECT count(*) FROM "
                                                        "chip_durable_events_dead_letter WHERE id = %s", (m,))[0][0],
                                     what=f"the TTL sweep of a later scan ({marker})")
                assert chip.counters.seen(claimable) == set()  # two scans ran, and claimed none of them
            finally:
                other.close()
        # The foreign session ended: the sampler takes the lock back, and the rows are claimed.
        await wait_until(lambda: chip.counters.seen(claimable) == set(claimable), what="claims once the lock is back")

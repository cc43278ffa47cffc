"""Several emitter instances on one table: no double publishing when healthy, nothing lost when one dies."""

import signal
import time

from actors import open_emitter
from chipmock import ChipModel
from tests.helpers import emit_concurrently, pending_ids, query, wait_until


def _wait_exit(workloads, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for workload in workloads:
        code = workload.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        assert code == 0, workload.proc.stderr.read()


def test_three_instances_deliver_everything_without_duplicates(database_url, start_chipmock, start_workload) -> None:
    chip = start_chipmock(ChipModel(latency=0.005))
    workloads = [  # each process with its default instance id (host-pid)
        start_workload(database_url, chip.endpoint, "--events", "1500", "--flush", "60s", name=name)
        for name in ("node-a", "node-b", "node-c")
    ]
    _wait_exit(workloads, 120)
    ids = [i for w in workloads for i in w.ids()]
    assert len(ids) == len(set(ids)) == 4500
    assert chip.counters.seen(ids) == set(ids)
    assert chip.counters.snapshot().duplicates == 0
    assert pending_ids(database_url) == set()


def test_a_killed_instances_rows_are_delivered_by_the_others(database_url, start_chipmock, start_workload, capsys) -> None:
    # Default ids and 60 s leases: the survivors stop 8 s in, so the victim's rows
    # reach Chip only if they are claimed once its session died, not after its lease.
    chip = start_chipmock(ChipModel(latency=0.05))
    survivors = [
        start_workload(database_url, chip.endpoint, "--events", "1000000", "--duration", "8s", "--rate", "300",
                       "--flush", "60s", name=name)
        for name in ("node-a", "node-b")
    ]
    victim = start_workload(database_url, chip.endpoint, "--events", "1000000", "--rate", "2000",
                            "--concurrency", "20", name="node-c", DURABLE_EMITTER_PUBLISHES_IN_FLIGHT="1")
    victim.wait_for_ids(1000)
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    _wait_exit(survivors, 120)
    acknowledged = [i for w in (*survivors, victim) for i in w.ids()]
    assert chip.counters.seen(acknowledged) == set(acknowledged)
    assert pending_ids(database_url) == set()
    with capsys.disabled():
        print(f"\n  node-c killed with {len(victim.ids())} acknowledged; all {len(acknowledged)} delivered, "
              f"{chip.counters.snapshot().duplicates} duplicates")


async def test_rows_in_flight_are_not_stolen_by_another_instance(start_chipmock, make_config, database_url) -> None:
    # Every call takes 0.8 s, close to the 1 s timeout, with 2.5 s leases: a second instance
    # scanning every 100 ms must never publish a row the first still has in flight.
    chip = start_chipmock(ChipModel(latency=0.8))
    leases = dict(lease_duration=2.5, publish_timeout=1.0, publishes_in_flight=2, publish_batch_size=20)
    async with open_emitter(make_config(chip, instance_id="busy", **leases)) as busy, \
            open_emitter(make_config(chip, instance_id="idle", **leases)):
        ids = await emit_concurrently(busy, 200, size=1)
        await wait_until(lambda: not pending_ids(database_url), timeout=60, what="the table drained")
    assert chip.counters.seen(ids) == ids
    # Nobody published a row someone else held. (Rows left to the table when their lease ran
    # short may go to either instance: that is recovery, not theft.)
    assert chip.counters.snapshot().duplicates == 0


async def test_flush_waits_for_events_another_instance_claimed(start_chipmock, make_config, database_url) -> None:
    chip_of_a = start_chipmock(ChipModel(failure_rate=1.0))  # a cannot deliver: its rows go back to the table
    chip_of_b = start_chipmock(ChipModel(latency=1.0))  # b can, slowly: what it claims stays pending a while
    # a keeps retrying and handing rows back soon (no outage pause, which would keep them; no long
    # per-row waits), so b claims some.
    async with open_emitter(make_config(chip_of_a, instance_id="a", failures_to_pause=1_000_000,
                                        row_retry_max=1.0)) as a, \
            open_emitter(make_config(chip_of_b, instance_id="b")):
        ids = {await a.emit(f"event {i}".encode(), source="wf", type="tick") for i in range(20)}
        await wait_until(lambda: query(database_url, "SELECT count(*) FROM chip_durable_events "
                                                     "WHERE lease_owner = 'b' AND emitted_by = 'a'")[0][0] > 0,
                         what="b claiming some of a's events")
        chip_of_a.set_model(ChipModel())  # a delivers what it holds at once
        await a.flush(timeout=30)
        assert not pending_ids(database_url) & ids  # including what b held, a second in flight
    assert chip_of_a.counters.seen(ids) | chip_of_b.counters.seen(ids) == ids

"""Several emitter instances on one table: no double publishing when healthy, nothing lost when one dies."""

import math
import signal
import time

import trio
from prometheus_client import CollectorRegistry

from actors import open_emitter
from chipmock import ChipModel, Outage
from tests.helpers import ChildOutput, emit_concurrently, pending_ids, query, wait_until


def _wait_exit(workloads, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for workload in workloads:
        code = workload.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        assert code == 0, ChildOutput(workload.proc.stderr).rest(timeout=30)  # the process exited: bounded anyway


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


async def test_a_killed_instances_rows_are_delivered_by_the_others(database_url, start_chipmock, start_workload,
                                                                   make_config, capsys) -> None:
    chip = start_chipmock()
    # The victim reaches no Chip, so every event it acknowledged is still in the table when it dies,
    # leased to its default id (host-pid) for an hour: the others can take those rows only because
    # its session died (orphans), never because a lease lapsed.
    out_of_reach = start_chipmock(ChipModel(outages=(Outage(0, math.inf),)))
    async with open_emitter(make_config(chip, instance_id="node-a")) as node_a, \
            open_emitter(make_config(chip, instance_id="node-b")) as node_b:
        victim = start_workload(database_url, out_of_reach.endpoint, "--events", "1000000", "--rate", "2000",
                                "--concurrency", "20", name="node-c", DURABLE_EMITTER_LEASE_DURATION="1h")
        ours = await emit_concurrently(node_a, 200) | await emit_concurrently(node_b, 200)
        await trio.to_thread.run_sync(victim.wait_for_ids, 1000)
        victim.proc.send_signal(signal.SIGKILL)
        await trio.to_thread.run_sync(victim.proc.wait)
        acknowledged = set(victim.ids())
        ours |= await emit_concurrently(node_a, 200) | await emit_concurrently(node_b, 200)
        # Bounded by the run, not by the victim's lease: an hour away.
        await wait_until(lambda: not pending_ids(database_url), timeout=60, what="the table drained")
    assert len(acknowledged) >= 1000
    assert chip.counters.seen(acknowledged) == acknowledged
    assert chip.counters.seen(ours) == ours
    assert out_of_reach.counters.snapshot().received == 0
    with capsys.disabled():
        print(f"\n  node-c killed with {len(acknowledged)} acknowledged; all delivered by the others, "
              f"{chip.counters.snapshot().duplicates} duplicates")


def _events_not_delivered(registry: CollectorRegistry) -> float:
    """Events of publish attempts that did not deliver them (such an attempt may have reached Chip all the same)."""
    return sum(registry.get_sample_value("durable_emitter_publish_batch_events_failure_total", {"phase": phase}) or 0.0
               for phase in ("batch", "retransmit"))


async def test_rows_in_flight_are_not_stolen_by_another_instance(start_chipmock, make_config, database_url) -> None:
    # Every call takes 0.8 s, close to the 1 s timeout, with 2.5 s leases: a second instance
    # scanning every 100 ms must never publish a row the first still has in flight.
    chip = start_chipmock(ChipModel(latency=0.8))
    leases = dict(lease_duration=2.5, publish_timeout=1.0, publishes_in_flight=2, publish_batch_size=20)
    busy_metrics, idle_metrics = CollectorRegistry(), CollectorRegistry()
    async with open_emitter(make_config(chip, instance_id="busy", **leases), registry=busy_metrics) as busy, \
            open_emitter(make_config(chip, instance_id="idle", **leases), registry=idle_metrics):
        ids = await emit_concurrently(busy, 200, size=1)
        await wait_until(lambda: not pending_ids(database_url), timeout=60, what="the table drained")
        not_delivered = _events_not_delivered(busy_metrics) + _events_not_delivered(idle_metrics)
    assert chip.counters.seen(ids) == ids
    # Nobody published a row someone else held. (Rows left to the table when their lease ran
    # short may go to either instance: that is recovery, not theft.) A call that outlived its
    # deadline on a busy machine may have reached Chip all the same and is sent again: a
    # duplicate its failed attempt explains. Any other duplicate is a row two holders published.
    assert chip.counters.snapshot().duplicates <= not_delivered


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

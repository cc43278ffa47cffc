"""Real crashes: SIGKILLed processes and a restarted Postgres. Nothing acknowledged is lost."""

import os
import random
import signal
import subprocess
import sys
import time

import trio

from actors import StoreUnavailable, open_emitter
from actors.adapters import schema
from chipmock import ChipModel
from tests.helpers import CHAOS_SCALE, pending_ids, wait_until


def test_sigkill_at_random_points_loses_no_acknowledged_event(database_url, start_chipmock, start_workload, capsys) -> None:
    chip = start_chipmock(ChipModel(latency=0.01))
    # Default instance ids (host-pid) and leases (60 s), as a host runs: each round's
    # process has a new id, and the drain below has another.
    env = {"DURABLE_EMITTER_SCAN_INTERVAL": "100ms"}
    rng = random.Random()
    acknowledged: list[str] = []
    rounds = 3 * CHAOS_SCALE
    for round_ in range(rounds):
        workload = start_workload(database_url, chip.endpoint, "--events", "1000000", name=f"round{round_}", **env)
        workload.wait_for_ids(rng.randint(100, 1500))
        workload.proc.send_signal(signal.SIGKILL)
        workload.proc.wait()
        acknowledged += workload.ids()

    started = time.monotonic()
    # 30 s, half a lease: it succeeds only if the dead processes' rows are claimed at
    # once (their sessions, and so their liveness locks, died with them).
    drain = subprocess.run([sys.executable, "-m", "actors.cli", "drain", "--timeout", "30s"],
                           env={**os.environ, "DATABASE_URL": database_url, "CHIP_INGRESS_ENDPOINT": chip.endpoint,
                                **env}, capture_output=True, text=True, timeout=180)
    drained_in = time.monotonic() - started
    assert drain.returncode == 0, drain.stderr
    missing = set(acknowledged) - chip.counters.seen(acknowledged)
    assert not missing, f"{len(missing)} acknowledged events never reached Chip"
    assert pending_ids(database_url) == set()
    snap = chip.counters.snapshot()
    with capsys.disabled():
        print(f"\n  SIGKILL x{rounds}: {len(acknowledged)} acknowledged, all delivered; {snap.duplicates} duplicates; "
              f"drained in {drained_in:.1f} s (process start included)")


async def test_postgres_restart_mid_load(own_postgres, start_chipmock, make_config) -> None:
    chip = start_chipmock()
    schema.apply(own_postgres.url, "public", lock_timeout=10)
    config = make_config(chip, database_url=own_postgres.url, backlog_timeout=0.5)
    acknowledged: set[str] = set()
    failures: list[str] = []
    async with open_emitter(config) as emitter:
        async def emit_forever() -> None:
            while True:
                try:
                    acknowledged.add(await emitter.emit(b"x", source="wf", type="tick"))
                except StoreUnavailable as exc:
                    failures.append(str(exc))
                await trio.sleep(0.005)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(emit_forever)
            await wait_until(lambda: len(acknowledged) > 100, what="emits before the restart")
            await trio.to_thread.run_sync(own_postgres.stop)
            await wait_until(lambda: len(failures) > 3, what="emits failing while Postgres is down")
            await trio.to_thread.run_sync(own_postgres.start)
            before = len(acknowledged)
            await wait_until(lambda: len(acknowledged) > before + 100, what="emits succeeding again")
            nursery.cancel_scope.cancel()
        await emitter.flush(timeout=60)
    assert all("Postgres" in f for f in failures), failures[:3]  # one clear line, not a stack trace
    assert chip.counters.seen(acknowledged) == acknowledged


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_memory_stays_flat_while_the_backlog_grows_during_an_outage(database_url, start_chipmock, start_workload,
                                                                    capsys) -> None:
    chip = start_chipmock(ChipModel(failure_rate=1.0))  # Chip is down for the whole test
    # What may be in memory is bounded by configuration: 1,000 buffered events and two
    # publishes of 100 events in flight (about 5 MB of 4 KiB events, with copies).
    workload = start_workload(database_url, chip.endpoint, "--events", "1000000", "--size", "4096",
                              DURABLE_EMITTER_DISPATCH_BUFFER="1000", DURABLE_EMITTER_PUBLISHES_IN_FLIGHT="2",
                              DURABLE_EMITTER_PUBLISH_BATCH_SIZE="100")
    workload.wait_for_ids(5000)
    early = _rss_mb(workload.proc.pid)
    workload.wait_for_ids(25000)
    late = _rss_mb(workload.proc.pid)
    workload.proc.kill()
    backlog_mb = 20000 * 4096 / 2**20
    with capsys.disabled():
        print(f"\n  outage: backlog grew by {backlog_mb:.0f} MB in the table; emitter RSS {early:.0f} -> {late:.0f} MB")
    assert late - early < backlog_mb / 4, "the backlog is being held in memory"
    assert len(pending_ids(database_url)) >= 25000

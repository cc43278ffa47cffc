"""Failover: the primary dies, its synchronous standby is promoted, the same emitter carries on.

And the "wrong server" states: a server that cannot take writes now answers
25006 (read-only) or ends the session (57P0x); emits fail with a transient
:class:`StoreUnavailable`, the connection is dropped, and the next try finds a
server that takes writes, with no restart of the host or of any actor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
import pytest
import trio

from actors import StoreFailure, StoreUnavailable, open_emitter
from actors.emitter import Emitter
from tests.fix_replication import Replicated
from tests.helpers import pending_ids, query, quick_config

TASKS = 10
RATE = 1000.0  # events/s offered, from TASKS tasks together


@dataclass
class Load:
    """TASKS tasks emitting at RATE in all, each emit under a deadline; what came back, and when."""

    emitter: Emitter
    deadline: float  # an emit that takes longer fails the test: it hung
    acknowledged: dict[str, float] = field(default_factory=dict)  # id -> when emit returned
    failures: list[float] = field(default_factory=list)  # when an emit raised StoreUnavailable
    kinds: set[StoreFailure] = field(default_factory=set)

    def failures_since(self, since: float) -> int:
        return sum(1 for at in self.failures if at >= since)

    def acknowledged_since(self, since: float) -> list[str]:
        return [event_id for event_id, at in self.acknowledged.items() if at >= since]

    def start(self, nursery: trio.Nursery) -> None:
        for _ in range(TASKS):
            nursery.start_soon(self._emit_paced)

    async def _emit_paced(self) -> None:
        interval = TASKS / RATE
        next_at = trio.current_time()
        while True:
            try:
                with trio.fail_after(self.deadline):
                    event_id = await self.emitter.emit(b"x" * 100, source="wf", type="tick")
            except StoreUnavailable as exc:
                self.failures.append(trio.current_time())
                self.kinds.add(exc.kind)
            else:
                self.acknowledged[event_id] = trio.current_time()
            next_at = max(next_at + interval, trio.current_time())  # late: no burst to catch up
            await trio.sleep_until(next_at)  # the offered rate, not a synchronisation


async def _until(predicate, timeout: float, what: str) -> float:
    """When ``predicate`` first holds, polled every 5 ms in Trio, so the figures are that fine.

    It reads the load's records (never from another thread: the emitting tasks
    change them) and chipmock's counters, which its gRPC threads change with no
    Trio event to say so.
    """
    with trio.move_on_after(timeout):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.005)
        return trio.current_time()
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def test_failover_loses_no_acknowledged_event_and_the_same_emitter_carries_on(
        replicated: Replicated, start_chipmock, capsys) -> None:
    chip = start_chipmock()
    # A short lease: a row whose commit reached the standby while its emit was failing
    # (the primary died before answering) is claimed and delivered within the test.
    config = quick_config(chip, database_url=replicated.url, lease_duration=5.0, commit_timeout=5.0)
    async with open_emitter(config) as emitter:
        load = Load(emitter, deadline=config.commit_timeout + 10)
        async with trio.open_nursery() as nursery:
            load.start(nursery)
            await _until(lambda: len(load.acknowledged) >= 1000, 60, "acknowledged before the kill")
            killed_at = trio.current_time()
            await trio.to_thread.run_sync(replicated.primary.crash)
            # The gap: every emit fails fast (the standby refuses a read-write session).
            await _until(lambda: load.failures_since(killed_at) >= 1000, 60, "emits failing")
            await trio.to_thread.run_sync(replicated.standby.promote)
            promoted_at = trio.current_time()
            first_emit = await _until(lambda: load.acknowledged_since(promoted_at), 30, "an emit after promotion")
            first_id = load.acknowledged_since(promoted_at)[0]
            first_delivery = await _until(lambda: chip.counters.seen([first_id]), 30, "a delivery after promotion")
            await _until(lambda: len(load.acknowledged_since(promoted_at)) >= 1000, 60,
                         "acknowledged after promotion")
            nursery.cancel_scope.cancel()
        await emitter.flush(timeout=60)
        restarts = emitter.statistics().restarts
        assert emitter.failure is None
    acknowledged = set(load.acknowledged)
    after_promotion = set(load.acknowledged_since(promoted_at))
    lost = acknowledged - chip.counters.seen(acknowledged)
    assert not lost, f"{len(lost)} acknowledged events never reached Chip"
    assert chip.counters.seen(after_promotion) == after_promotion  # the same process delivers again
    gap = [at for at in load.failures if at >= killed_at]
    assert gap and load.kinds == {StoreFailure.TRANSIENT}
    assert sum(restarts.values()) <= config.max_restarts, restarts
    assert replicated.standby.query("SELECT count(*) FROM chip_durable_events") == [(0,)]
    snap = chip.counters.snapshot()
    last = gap[-1] - promoted_at
    with capsys.disabled():
        print(f"\n  failover (~{RATE:.0f} events/s offered from {TASKS} tasks): {len(acknowledged)} acknowledged, "
              f"0 lost, {snap.duplicates} duplicates; emits raised StoreUnavailable for "
              f"{gap[-1] - gap[0]:.2f} s ({len(gap)} of them, none hung), the last {abs(last):.3f} s "
              f"{'before' if last < 0 else 'after'} `pg_ctl promote -w` returned; from then, the first emit "
              f"acknowledged in {first_emit - promoted_at:.3f} s, delivered in {first_delivery - promoted_at:.3f} s; "
              f"actor restarts {dict(restarts)}")


def _end_sessions(url: str, dbname: str) -> None:
    """Terminate the emitter's sessions, as a failover or a DNS change does: it must connect again."""
    query(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
               "WHERE datname = %s AND application_name LIKE 'durable-emitter%%'", (dbname,))


async def test_a_read_only_server_fails_emits_transiently_and_the_same_emitter_writes_once_it_takes_writes(
        chip, make_config, database_url, pg_server_url) -> None:
    dbname = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    async with open_emitter(make_config(chip)) as emitter:
        before = await emitter.emit(b"before", source="wf", type="tick")
        # A demoted primary, or a DNS name now pointing at a standby: every new session is read-only.
        query(database_url, f'ALTER DATABASE "{dbname}" SET default_transaction_read_only = on')
        _end_sessions(database_url, dbname)
        errors: list[StoreUnavailable] = []
        for _ in range(20):  # the first sees its session ended (57P01); the next ones, the read-only server
            with pytest.raises(StoreUnavailable) as raised, trio.fail_after(emitter.config.commit_timeout + 5):
                await emitter.emit(b"refused", source="wf", type="tick")
            errors.append(raised.value)
            if errors[-1].sqlstate == "25006":
                break
        assert errors[-1].sqlstate == "25006", [e.sqlstate for e in errors]
        assert "read-only" in str(errors[-1])
        assert {e.kind for e in errors} == {StoreFailure.TRANSIENT}
        with pytest.raises(StoreUnavailable, match="read-only"):  # refused for as long as it is read-only
            await emitter.emit(b"refused", source="wf", type="tick")
        query(pg_server_url, f'ALTER DATABASE "{dbname}" RESET default_transaction_read_only')
        # The read-only session was dropped with its error: the next emit connects afresh and commits.
        after = await emitter.emit(b"after", source="wf", type="tick")
        await emitter.flush(timeout=30)
        restarts = emitter.statistics().restarts
    assert chip.counters.seen([before, after]) == {before, after}
    assert sum(restarts.values()) == 0, restarts  # the acker, dispatcher and sampler retried; none crashed
    assert pending_ids(database_url) == set()

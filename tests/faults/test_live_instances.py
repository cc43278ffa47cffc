"""Two live host processes through faults that end every session at once: nothing is published twice.

A crash recovery (one backend SIGKILLed is enough: the server ends every
session), an immediate stop and start, and a failover to a synchronous standby
each free every liveness lock while both processes live. Neither may judge the
other gone and publish its rows again. The hosts run with the default settings
(pid-based instance ids); the ids each host saw acknowledged and the ids chipmock
received decide lost and duplicated, never the emitters' own counters.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Awaitable, Callable

import psycopg
import psycopg.conninfo
import pytest
import trio

from actors.adapters import schema
from chipmock import ChipModel
from tests.fix_processes import Workload
from tests.fix_replication import Replicated
from tests.helpers import postgres_socket

RATE = "400"  # events/s offered by each host
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240), pytest.mark.xdist_group("fleets")]  # never two fleets at once


def _hosts(start_workload, url: str, chip, url_b: str | None = None, seconds: int = 20) -> list[Workload]:
    """Two hosts emitting for ``seconds``, then flushing; each records the ids its emit() returned.

    The fault begins about 2 s in; a host wrongly judged gone has its rows taken a grace (10 s)
    after the other first found its lock free, so the hosts must still emit then.
    """
    return [start_workload(to, chip.endpoint, "--rate", RATE, "--concurrency", "8", "--events", "1000000",
                           "--duration", f"{seconds}s", "--flush", "60s", name=name)
            for name, to in (("host-a", url), ("host-b", url_b or url))]


async def _through(hosts: list[Workload], fault: Callable[[], Awaitable[None]], chip, capsys, what: str) -> None:
    for host in hosts:
        await trio.to_thread.run_sync(host.wait_for_ids, 800)
    await fault()
    for host in hosts:
        assert await trio.to_thread.run_sync(host.proc.wait, 120) == 0, host.proc.stderr.read()
    acknowledged = set().union(*(host.ids() for host in hosts))
    lost = acknowledged - chip.counters.seen(acknowledged)
    duplicates = chip.counters.snapshot().duplicates
    with capsys.disabled():
        print(f"\n  two live hosts through {what}: {len(acknowledged)} acknowledged, {len(lost)} lost, "
              f"{duplicates} published twice")
    assert not lost
    # Which were sent twice, and when each was emitted (a UUIDv7 says): against the faults' times.
    twice = {event_id: uuid.UUID(event_id).int >> 80 for event_id in chip.counters.duplicated()}
    assert duplicates == 0, f"published twice (id: emitted at, unix ms): {twice}"


def _kill_a_backend(url: str) -> None:
    """SIGKILL one backend (a connection of our own, idle): the server ends every session and recovers."""
    conn = psycopg.connect(url, autocommit=True)
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    os.kill(pid, signal.SIGKILL)
    conn.close()


async def test_crash_recoveries_publish_nothing_twice(own_postgres, start_chipmock, start_workload, capsys) -> None:
    schema.apply(own_postgres.url, "public", lock_timeout=10)
    chip = start_chipmock(ChipModel(latency=0.02))

    async def three_crashes() -> None:
        for _ in range(3):
            await trio.to_thread.run_sync(_kill_a_backend, own_postgres.url)
            await trio.sleep(4)  # the fault's rhythm, not a synchronisation

    await _through(_hosts(start_workload, own_postgres.url, chip), three_crashes, chip, capsys,
                   "3 backends SIGKILLed 4 s apart")


async def test_a_host_back_later_than_the_other_after_a_crash_recovery_keeps_its_rows(
        own_postgres, start_chipmock, start_workload, start_proxy, capsys) -> None:
    """The first host back must not judge the other gone: both lost their sessions with the server's."""
    schema.apply(own_postgres.url, "public", lock_timeout=10)
    chip = start_chipmock(ChipModel(latency=0.05))  # rows in flight while b is away
    socket_dir = psycopg.conninfo.conninfo_to_dict(own_postgres.url)["host"]
    path_of_b = start_proxy(f"{socket_dir}/.s.PGSQL.5432")
    url_b = psycopg.conninfo.make_conninfo(own_postgres.url, host="127.0.0.1", port=str(path_of_b.port))

    async def crash_and_b_back_3_s_later() -> None:
        path_of_b.refuse()  # b's connections are refused, from the crash on, for 3 s
        await trio.to_thread.run_sync(_kill_a_backend, own_postgres.url)
        await trio.sleep(3)  # the fault's length
        path_of_b.heal()

    await _through(_hosts(start_workload, own_postgres.url, chip, url_b, seconds=15), crash_and_b_back_3_s_later, chip,
                   capsys, "a crash recovery, one host back 3 s after the other")


async def test_one_hosts_connections_reset_while_the_server_runs_on_takes_none_of_its_rows(
        database_url, start_chipmock, start_workload, start_proxy, capsys) -> None:
    """A pooler restarted in front of one host, a proxy or a load balancer resetting its path: its
    sessions end, its lock is free, the server and the other host's sessions run on. It lives."""
    chip = start_chipmock(ChipModel(latency=0.05))  # rows in flight while b is away
    path_of_b = start_proxy(postgres_socket(database_url))
    url_b = psycopg.conninfo.make_conninfo(database_url, host="127.0.0.1", port=str(path_of_b.port))

    async def b_reset_and_refused_for_2_s() -> None:
        path_of_b.refuse()
        path_of_b.drop_connections()
        await trio.sleep(2)  # the fault's length
        path_of_b.heal()

    await _through(_hosts(start_workload, database_url, chip, url_b, seconds=15), b_reset_and_refused_for_2_s, chip,
                   capsys,
                   "one host's connections reset, refused for 2 s")


async def test_an_immediate_stop_publishes_nothing_twice(own_postgres, start_chipmock, start_workload,
                                                         capsys) -> None:
    schema.apply(own_postgres.url, "public", lock_timeout=10)
    chip = start_chipmock(ChipModel(latency=0.02))

    async def stopped_for_6_s() -> None:
        await trio.to_thread.run_sync(own_postgres.stop, "immediate")
        await trio.sleep(6)  # the fault's length
        await trio.to_thread.run_sync(own_postgres.start)

    await _through(_hosts(start_workload, own_postgres.url, chip), stopped_for_6_s, chip, capsys,
                   "an immediate stop, 6 s dark")


async def test_a_failover_publishes_nothing_twice(replicated: Replicated, start_chipmock, start_workload,
                                                  capsys) -> None:
    chip = start_chipmock(ChipModel(latency=0.02))

    async def failover_6_s_later() -> None:
        await trio.to_thread.run_sync(replicated.primary.crash)
        await trio.sleep(6)  # the gap before the promotion
        await trio.to_thread.run_sync(replicated.standby.promote)

    await _through(_hosts(start_workload, replicated.url, chip), failover_6_s_later, chip, capsys,
                   "a failover promoted 6 s after the primary died")

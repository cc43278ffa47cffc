"""What the pooled mode's statements cost on a direct connection, against the named prepared ones.

``python -m scripts.bench_pooled_statements [--rounds 6] [--pairs 2000]``: a
10-row INSERT and its DELETE (the persister's and the acker's hot statements)
through the driver, ``--pairs`` times per round, alternating the two modes so
the machine's noise spreads evenly:

  named    session liveness on: settings made once per session, statements prepared once, run by name
  pooled   session liveness off: each statement unnamed, after its transaction's set_config(..., true),
           in one pipeline (one round trip)

Prints, per pair, the median wall time, this process's CPU and the server
backend's CPU (read from /proc: the server must run on this machine). The
database is embedded Postgres unless DATABASE_URL is set.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import psycopg
import trio

from actors.adapters import schema
from actors.adapters.store import Session, Store
from actors.core.events import new_event_id
from scripts.args_and_databases import scratch_database, server_url


def _backend_cpu(pid: int) -> float:
    """A server process's CPU seconds so far (user + system)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _round(url: str, pooled: bool, pairs: int) -> tuple[float, float, float]:
    """Wall, client CPU and server CPU per INSERT + DELETE pair, in microseconds."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM chip_durable_events")  # each round starts on a table without dead rows
    store = Store(url, Session(pooled=pooled))
    try:
        pid = (await store._db.run("SELECT pg_backend_pid()")).fetchone()[0]  # the store's own server process
        body = [b"x" * 256] * 10
        wall, cpu, server = time.perf_counter(), time.process_time(), _backend_cpu(pid)
        for _ in range(pairs):
            ids = [new_event_id() for _ in range(10)]
            await store.insert_events(ids, body, owner="bench", hold=60.0)
            await store.delete(ids, owner="bench")
        scale = 1e6 / pairs
        return ((time.perf_counter() - wall) * scale, (time.process_time() - cpu) * scale,
                (_backend_cpu(pid) - server) * scale)
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=2000)
    args = parser.parse_args(argv)
    with scratch_database(server_url(), "bench") as url:
        schema.apply(url, "public", lock_timeout=10)
        figures: dict[str, list[tuple[float, float, float]]] = {"named": [], "pooled": []}
        trio.run(_round, url, False, 200)  # warm up the table and the server's caches
        for round_ in range(args.rounds):
            for mode in (["named", "pooled"] if round_ % 2 == 0 else ["pooled", "named"]):
                figures[mode].append(trio.run(_round, url, mode == "pooled", args.pairs))
        print("per 10-row INSERT + DELETE (median of rounds): wall / client CPU / server CPU")
        for mode, rounds in figures.items():
            wall, cpu, server = (statistics.median(column) for column in zip(*rounds, strict=True))
            print(f"  {mode:7} {wall:6.0f} us / {cpu:5.0f} us / {server:5.0f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

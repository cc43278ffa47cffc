"""How to overlap group commits: one connection, two connections, or one connection in pipeline mode.

``python -m scripts.bench_commit_overlap [--group 10] [--seconds 5]``: commits
groups of 1 KiB rows (the persister's INSERT, each group its own transaction,
as each group's callers wait for their commit) for ``--seconds`` in each shape,
alternating shapes over ``--rounds`` so the machine's noise spreads evenly:

  one         one connection, the next INSERT sent once the last one committed (today's writer)
  two         two connections, each committing its own groups (``persist_writers = 2``)
  pipelined   one connection in pipeline mode, two groups in flight, each followed by a Sync

The database is embedded Postgres unless DATABASE_URL is set. Prints rows/s
per shape and round, and the median ratio to ``one``.
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import threading
import time

import psycopg
from psycopg import pq

from actors.adapters import schema
from actors.adapters.driver import HotStatement
from actors.adapters.store import insert_statement
from actors.config import default_state_dir
from actors.core.events import new_event_id
from scripts.args_and_databases import scratch_database, server_url


def _insert(group: int, body: bytes) -> tuple[HotStatement, list[bytes]]:
    """The persister's INSERT of ``group`` rows, and its binary parameters."""
    return insert_statement([new_event_id() for _ in range(group)], [body] * group, owner="bench", hold=60.0)


def _commit_loop(url: str, group: int, body: bytes, stop_at: float, counts: list[int]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < stop_at:
            insert, params = _insert(group, body)
            result = conn.pgconn.exec_params(insert.sql, params, param_types=insert.types, param_formats=[1] * 5)
            if result.status != pq.ExecStatus.COMMAND_OK:
                raise RuntimeError(result.error_message.decode())
            counts.append(group)


def one(url: str, group: int, body: bytes, seconds: float) -> int:
    counts: list[int] = []
    _commit_loop(url, group, body, time.monotonic() + seconds, counts)
    return sum(counts)


def two(url: str, group: int, body: bytes, seconds: float) -> int:
    counts: list[int] = []
    stop_at = time.monotonic() + seconds
    threads = [threading.Thread(target=_commit_loop, args=(url, group, body, stop_at, counts)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts)


def pipelined(url: str, group: int, body: bytes, seconds: float, depth: int = 2) -> int:
    """Keep ``depth`` groups sent ahead of their answers; each group is one INSERT plus a Sync (its commit)."""
    done = 0
    with psycopg.connect(url, autocommit=True) as conn:
        pg = conn.pgconn
        pg.enter_pipeline_mode()

        def send() -> None:
            insert, params = _insert(group, body)
            pg.send_query_params(insert.sql, params, param_types=insert.types, param_formats=[1] * 5)
            pg.pipeline_sync()
            while pg.flush():
                select.select([], [pg.socket], [])

        def receive_one() -> None:
            while True:
                while pg.is_busy():
                    select.select([pg.socket], [], [])
                    pg.consume_input()
                result = pg.get_result()
                if result is None:
                    continue
                if result.status == pq.ExecStatus.PIPELINE_SYNC:
                    return
                if result.status != pq.ExecStatus.COMMAND_OK:
                    raise RuntimeError(result.error_message.decode())

        stop_at = time.monotonic() + seconds
        in_flight = 0
        while time.monotonic() < stop_at:
            while in_flight < depth:
                send()
                in_flight += 1
            receive_one()
            in_flight -= 1
            done += group
        while in_flight:
            receive_one()
            in_flight -= 1
        pg.exit_pipeline_mode()
    return done


SHAPES = {"one": one, "two": two, "pipelined": pipelined}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench_commit_overlap", description=__doc__.splitlines()[0])
    parser.add_argument("--group", type=int, default=10, help="rows per commit (10 callers: about 10)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per shape and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if not 0 < args.group <= 10_000 or not 0 < args.seconds <= 60 or not 0 < args.rounds <= 20:
        parser.error("--group 1..10000, --seconds up to 60, --rounds 1..20")
    body = os.urandom(1024)
    server = os.environ.get("DATABASE_URL") or server_url(default_state_dir() / "load-pgdata")
    with scratch_database(server, "overlap") as url:
        schema.apply(url, "public", lock_timeout=10)
        rates: dict[str, list[float]] = {name: [] for name in SHAPES}
        for round_ in range(args.rounds):
            for name, shape in SHAPES.items():
                rate = shape(url, args.group, body, args.seconds) / args.seconds
                rates[name].append(rate)
                print(f"round {round_ + 1}: {name:<10} {rate:>9,.0f} rows/s  ({args.group}-row commits)", flush=True)
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("TRUNCATE chip_durable_events")
        for name, values in rates.items():
            ratio = statistics.median(v / o for v, o in zip(values, rates["one"], strict=True))
            print(f"{name:<10} median {statistics.median(values):>9,.0f} rows/s, x{ratio:.2f} of one")


if __name__ == "__main__":
    main()

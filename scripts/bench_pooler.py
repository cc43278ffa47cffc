"""Events from several emitters behind PgBouncer in transaction mode, and straight to Postgres, side by side.

``python -m scripts.bench_pooler [--events 100000] [--emitters 10] [--rounds 2]``:
``--emitters`` emitter objects in this process (10 callers each) emit
``--events`` in all, then flush; chipmock runs in its own process. Each round
runs every way once, in alternating order, each on a fresh database:

  pgbouncer   PgBouncer (pool_mode = transaction, its defaults otherwise), DURABLE_EMITTER_SESSION_LIVENESS=false
  direct-off  straight to Postgres, session liveness off as well: what the pooled statements cost
  direct      straight to Postgres with the defaults (session liveness on, named statements)

Prints events/s (the first emit to the last flush: everything delivered and
deleted), what Chip received, and then ``synchronous_commit`` on every server
connection of PgBouncer's pools. The server is embedded Postgres unless
DATABASE_URL is set.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from functools import partial

import trio

from actors import EmitterConfig, open_emitter
from actors.adapters import schema
from scripts.args_and_databases import scratch_database, server_url
from scripts.load.chip import ChipProcess
from scripts.pgbouncer import PgBouncer

WAYS = ("pgbouncer", "direct-off", "direct")


async def _emit_all(url: str, endpoint: str, *, events: int, emitters: int, session_liveness: bool) -> float:
    """Open the emitters, then time emitting ``events`` across them and flushing each; return events/s."""
    go = trio.Event()
    times: list[float] = []

    async def one(index: int, ready: trio.MemorySendChannel[None]) -> None:
        config = EmitterConfig.from_env(database_url=url, chip_endpoint=endpoint, instance_id=f"bench-{index}",
                                        session_liveness=session_liveness, log_interval=3600.0)
        async with open_emitter(config) as emitter:
            async with ready:
                await ready.send(None)
            await go.wait()

            async def caller() -> None:
                for _ in range(events // emitters // 10):
                    await emitter.emit(b"x" * 256, source="bench", type="pooler")

            async with trio.open_nursery() as callers:
                for _ in range(10):
                    callers.start_soon(caller)
            await emitter.flush(timeout=600)
            times.append(time.monotonic())

    ready_send, ready = trio.open_memory_channel[None](emitters)
    async with trio.open_nursery() as nursery:
        async with ready_send:
            for index in range(emitters):
                nursery.start_soon(one, index, ready_send.clone())
        async with ready:
            async for _ in ready:
                pass  # every emitter is open
        started = time.monotonic()
        go.set()
    return events / (max(times) - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--emitters", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    server = server_url()
    rates: dict[str, list[float]] = {way: [] for way in WAYS}
    settings: Counter[tuple[object, ...]] = Counter()
    with ChipProcess() as chip:
        bouncer = PgBouncer(server, "transaction")
        try:
            for round_ in range(args.rounds):
                for way in WAYS if round_ % 2 == 0 else WAYS[::-1]:
                    with scratch_database(server, "pooler") as url:
                        schema.apply(url, "public", lock_timeout=10)
                        before = chip.figures().unique
                        target = bouncer.url(url) if way == "pgbouncer" else url
                        rate = trio.run(partial(_emit_all, target, chip.endpoint, events=args.events,
                                                emitters=args.emitters, session_liveness=way == "direct"))
                        received = chip.figures().unique - before
                        rates[way].append(rate)
                        print(f"round {round_ + 1} {way:10} {rate:8,.0f} events/s; Chip received {received:,} "
                              f"of {args.events:,}", flush=True)
                        if way == "pgbouncer":
                            pool = bouncer.server_pids(url)
                            seen = bouncer.each_server(url, "current_setting('synchronous_commit')")
                            assert pool <= set(seen), (pool, seen)
                            settings.update(seen.values())
        finally:
            bouncer.stop()
    for way, figures in rates.items():
        print(f"{way:10} median {statistics.median(figures):8,.0f} events/s over {len(figures)} rounds")
    print("synchronous_commit on PgBouncer's server connections after the runs:",
          ", ".join(f"{value[0]} x{count}" for value, count in settings.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

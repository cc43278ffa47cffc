"""``just bench``: N events of S bytes from C concurrent emitters, end to end, in one process.

Embedded PostgreSQL (or ``DATABASE_URL``) with a fresh database per run, and
an in-process chipmock with no added latency. Prints emit rate, end-to-end
rate (first emit to last delete), publish mean/p99, emit p50/p99 and max
pending rows, plus the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path

import psycopg
import trio
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import chipmock  # noqa: E402
from actors import EmitterConfig, open_emitter  # noqa: E402
from actors.config import default_state_dir  # noqa: E402
from actors.metrics import histogram_mean, histogram_quantile  # noqa: E402
from actors.postgres import start_embedded  # noqa: E402


def fresh_database(server_url: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_conninfo(server_url, dbname=name)


def drop_database(server_url: str, url: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def run_bench(args: argparse.Namespace, server_url: str) -> dict:
    url = fresh_database(server_url)
    mock = chipmock.start(chipmock.ChipModel(latency=args.chip_latency))
    config = EmitterConfig.from_env(database_url=url, chip_endpoint=mock.endpoint, instance_id="bench",
                                    log_interval=3600.0)
    latencies: list[float] = []
    max_pending = 0
    per_emitter = args.events // args.emitters
    total = per_emitter * args.emitters
    try:
        async with open_emitter(config) as emitter:
            async def emit_many() -> None:
                body = b"x" * args.size
                for _ in range(per_emitter):
                    started = time.perf_counter()
                    await emitter.emit(body, source="bench", type="event")
                    latencies.append(time.perf_counter() - started)

            async def watch(cancel: trio.CancelScope) -> None:
                nonlocal max_pending
                with cancel:
                    with psycopg.connect(url, autocommit=True) as conn:
                        while True:
                            (pending,) = await trio.to_thread.run_sync(
                                lambda: conn.execute("SELECT count(*) FROM chip_durable_events").fetchone())
                            max_pending = max(max_pending, pending)
                            if not args.quiet:
                                print(f"\r  emitted {len(latencies):>7}/{total}  pending {pending:>6}",
                                      end="", file=sys.stderr, flush=True)
                            await trio.sleep(0.25)

            async with trio.open_nursery() as outer:
                watching = trio.CancelScope()
                outer.start_soon(watch, watching)
                started = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for _ in range(args.emitters):
                        nursery.start_soon(emit_many)
                emitted = time.perf_counter()
                await emitter.flush(timeout=600)
                finished = time.perf_counter()
                watching.cancel()
            if not args.quiet:
                print(file=sys.stderr)
            metrics = emitter.metrics
            publish = metrics.publish_duration.labels("batch")
            result = {
                "events": total,
                "emit_rate": total / (emitted - started),
                "end_to_end_rate": total / (finished - started),
                "publish_mean_ms": histogram_mean(publish) * 1000,
                "publish_p99_ms": histogram_quantile(publish, 0.99) * 1000,
                "emit_p50_ms": statistics.median(latencies) * 1000,
                "emit_p99_ms": statistics.quantiles(latencies, n=100)[98] * 1000,
                "max_pending": max_pending,
                "received_unique": mock.counters.snapshot().unique,
                "duplicates": mock.counters.snapshot().duplicates,
            }
    finally:
        mock.stop(0)
        drop_database(server_url, url)
    return result


def machine() -> str:
    with psycopg.connect(SERVER_URL[0]) as conn:
        (version,) = conn.execute("SHOW server_version").fetchone()
    return (f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"PostgreSQL {version}, trio {trio.__version__}")


SERVER_URL: list[str] = []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--emitters", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024, help="body bytes per event")
    parser.add_argument("--chip-latency", type=float, default=0.0, help="seconds added per Chip call")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="sys.setswitchinterval for this run (GIL hand-over latency)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    if not 0 < args.events <= 10_000_000 or not 0 < args.emitters <= 1000:
        parser.error("--events must be 1..10,000,000 and --emitters 1..1000")
    server_url = os.environ.get("DATABASE_URL") or start_embedded(default_state_dir() / "bench-pgdata")
    SERVER_URL.append(server_url)
    print(f"bench: {args.events} events of {args.size} B from {args.emitters} emitters; {machine()}",
          file=sys.stderr)
    result = trio.run(run_bench, args, server_url)
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"
        print(f"{key:<{width}}  {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

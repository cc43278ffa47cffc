"""A workload process (``python -m scripts.workload``): emits events and records each id whose emit() returned.

Used by the fault and scale-out tests (and usable by hand): every id is
appended to ``--ids-file`` right after ``emit`` returns, so after a SIGKILL the
file lists exactly the events the process was told were durable (a killed
process loses no written lines: they are in the page cache).

Configuration comes from the environment, as for any host (``DATABASE_URL``,
``CHIP_INGRESS_ENDPOINT``, ``DURABLE_EMITTER_*``).
"""

from __future__ import annotations

import argparse
import sys
import time

import trio

from actors import EmitterConfig, EmitterError, open_emitter
from actors.logs import configure_logging
from scripts.args_and_databases import duration


async def run(args: argparse.Namespace) -> int:
    config = EmitterConfig.from_env()
    # A plain file on purpose: each id is written the moment emit returns, with no await in between.
    ids_file = open(args.ids_file, "a", buffering=1)  # noqa: ASYNC230
    emitted = failed = started = 0
    deadline = time.monotonic() + args.duration
    per_emitter_gap = args.concurrency / args.rate if args.rate else 0.0
    async with open_emitter(config) as emitter:
        print(f"workload ready instance={config.instance_id}", flush=True)

        async def emit_loop(index: int) -> None:
            nonlocal emitted, failed, started
            body = b"w" * args.size
            next_at = trio.current_time()
            while started < args.events and time.monotonic() < deadline:
                started += 1  # counted before the await, so concurrent loops stop at exactly --events
                try:
                    event_id = await emitter.emit(body, source="workload", type=f"w{index}")
                except EmitterError as exc:
                    started -= 1
                    failed += 1
                    print(f"emit failed: {exc}", file=sys.stderr, flush=True)
                    await trio.sleep(0.05)
                    continue
                ids_file.write(event_id + "\n")
                emitted += 1
                if emitted % 100 == 0:
                    print(f"emitted {emitted}", flush=True)  # lets a watcher wait without polling
                if per_emitter_gap:
                    next_at += per_emitter_gap
                    await trio.sleep_until(next_at)

        if args.deliver_only:  # an instance that only delivers what others wrote (the outbox's rows)
            await trio.sleep(args.duration)
        else:
            async with trio.open_nursery() as nursery:
                for index in range(args.concurrency):
                    nursery.start_soon(emit_loop, index)
        if args.flush:
            await emitter.flush(timeout=args.flush)
    ids_file.close()
    print(f"workload done emitted={emitted} failed={failed}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids-file", required=True)
    parser.add_argument("--events", type=int, default=10_000, help="stop after this many (default 10,000)")
    parser.add_argument("--duration", type=duration, default=60.0, help="stop after this long (default 60s)")
    parser.add_argument("--rate", type=float, default=0.0, help="events/s in total (default: as fast as possible)")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--flush", type=duration, default=0.0, help="flush with this timeout before exit")
    parser.add_argument("--deliver-only", action="store_true",
                        help="emit nothing: run the emitter for --duration, delivering what others wrote")
    args = parser.parse_args(argv)
    configure_logging("json")
    return trio.run(run, args)


if __name__ == "__main__":
    sys.exit(main())

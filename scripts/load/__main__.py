"""``just load <scenario>``: load tests against real Postgres and chipmock, with baselines beside them.

Scenarios (each bounded in count and time, all traffic on 127.0.0.1):

  ramp       offered load in steps; per step achieved rate, latencies, Q max; names the saturation point
  sustained  N events from C concurrent emitters as fast as possible (--instances 1,2,3: processes); --claimed
             adds the claimed path against emit_many(100) from 10 callers: N outbox rows drained by an instance started
             after them, and the backlog of a Chip outage (--rate for --duration, default 1,000/s for 60 s)
  tps        hold a target rate, optionally through a Chip outage; time to drain afterwards
  latency    emit -> received by Chip, p50/p99, at 10 and 1,000 events/s (--rates), per --lingers
  payload    event sizes from 64 B to 1 MiB: events/s, MB/s, peak RSS
  backlog    1,000,000 events with Chip down: claim, sampler and status timings with their plans, then the drain
  ratelimit  --rate for --duration against a Chip rate limit of --limit (half), then lifted: per 5 s, delivered,
             calls and refused calls per second, backlog, delivery state; then the catch-up time
  outbox     commit -> Chip for outbox events (--rate, --duration) with LISTEN and with the scan alone, an emitter
             in another process; outbox.emit_many(100) from 10 connections beside Emitter.emit_many (--events)
  mixed      fresh emits at --rate (5,000/s, --concurrency 50 callers) while a backlog of --events (500,000) outbox
             rows drains in the same instance, until it is delivered or --duration (180 s): every --every (5 s) and
             overall, fresh emit p50/p99, fresh delivery latency, the backlog's drain rate
  claimsize  --events (1,000,000) outbox rows drained by one instance in its own process: table and index sizes and
             dead/HOT tuple counts, written, delivered, and after a plain VACUUM

``--compare`` runs the baselines in the same invocation: ``naive`` (one INSERT
and commit per emit, one unary Publish per event, one DELETE per ack) and
``limit`` (batched COPY then batched DELETE on the same Postgres, no gRPC: the
ceiling of any Postgres outbox here). chipmock runs in its own process, as a
real Chip is remote (``backlog`` alone runs it in-process). Results go to ``results/<scenario>-<time>/``:
report.md, PNG plots (when matplotlib is installed), and the raw samples as JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import trio

from actors.adapters import schema
from actors.config import default_state_dir
from actors.logs import configure_logging
from chipmock import Outage
from scripts import ROOT
from scripts.args_and_databases import (
    duration,
    durations,
    positive_ints,
    scratch_database,
    server_url,
)

from . import baselines
from .measure import MAX_SECONDS_PER_PHASE
from .progress import Progress
from .report import Run, load_average, machine_info, print_summary, write_report
from .scenarios import SCENARIOS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="load", description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=list(SCENARIOS))
    parser.add_argument("--steps", type=positive_ints, default=[100, 500, 1000, 2000, 5000, 10000, 20000])
    parser.add_argument("--step-seconds", type=duration, default=20.0)
    parser.add_argument("--keep-going", action="store_true", help="ramp: run every step past saturation")
    parser.add_argument("--events", type=int, default=None,
                        help="sustained/payload: events (default 100,000); backlog, claimsize: the backlog's size "
                             "(default 1,000,000); mixed: the backlog's size (default 500,000)")
    parser.add_argument("--concurrency", type=positive_ints, default=None,
                        help="concurrent callers (default 10; mixed: 50); sustained takes a list, e.g. 10,100 "
                             "(one row each)")
    parser.add_argument("--batch", type=positive_ints, default=[1],
                        help="sustained: events per call, 1 = emit, more = emit_many; a list gives a row each")
    parser.add_argument("--rates", type=positive_ints, default=[10, 1000], help="latency: offered events/s")
    parser.add_argument("--lingers", type=durations, default=None,
                        help="latency: publish_linger values, e.g. 0,5ms,20ms (default: the configured one)")
    parser.add_argument("--instances", type=positive_ints, default=[1], help="sustained: e.g. 1,2,3 processes")
    parser.add_argument("--rate", type=float, default=None,
                        help="tps, ratelimit, sustained --claimed (the outage's emits): events/s (default 1000); "
                             "outbox: (default 100); mixed: fresh emits (default 5000); payload: (default 0: as fast "
                             "as possible)")
    parser.add_argument("--duration", type=duration, default=None,
                        help="tps, ratelimit, outbox: how long (60s); sustained --claimed: the outage's emits (60s); "
                             "latency: per row (20s); mixed: at most (180s)")
    parser.add_argument("--claimed", action="store_true",
                        help="sustained: the claimed path too (outbox rows, an outage's backlog), with its ratios")
    parser.add_argument("--every", type=duration, default=5.0, help="mixed: a row every (5s)")
    parser.add_argument("--limit", type=float, default=None,
                        help="ratelimit: events/s Chip lets through (default: half of --rate)")
    parser.add_argument("--outage", default=None, help="tps: Chip outage START:DURATION, e.g. 20s:15s")
    parser.add_argument("--sizes", type=positive_ints,
                        default=[64, 256, 1024, 4096, 16384, 65536, 262144, 1048576])
    parser.add_argument("--bytes-per-size", type=float, default=256e6, help="payload: bytes sent per size")
    parser.add_argument("--size", type=int, default=256, help="event body bytes (ramp, sustained, tps)")
    parser.add_argument("--chip-latency", type=duration, default=None,
                        help="added per Chip call (default: 50ms for ramp, 0 otherwise)")
    parser.add_argument("--compare", action="store_true", help="run the naive and limit baselines too")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.chip_latency is None:
        args.chip_latency = 0.05 if args.scenario == "ramp" else 0.0
    if args.duration is None:
        args.duration = {"latency": 20.0, "mixed": 180.0}.get(args.scenario, 60.0)
    if args.events is None:
        args.events = {"backlog": 1_000_000, "claimsize": 1_000_000, "mixed": 500_000}.get(args.scenario, 100_000)
    if args.rate is None:
        args.rate = {"tps": 1000.0, "ratelimit": 1000.0, "outbox": 100.0, "mixed": 5000.0,
                     "sustained": 1000.0}.get(args.scenario, 0.0)
    if args.concurrency is None:
        args.concurrency = [50 if args.scenario == "mixed" else 10]
    if args.outage:
        try:
            Outage.parse(args.outage)
        except ValueError as exc:
            parser.error(f"--outage: {exc}")
    if args.scenario == "ratelimit" and (not args.rate or (args.limit is not None and args.limit <= 0)):
        parser.error("ratelimit needs --rate above 0 and --limit above 0")
    if not 0 < args.events <= 10_000_000 or not all(0 < c <= 1000 for c in args.concurrency):
        parser.error("--events must be 1..10,000,000 and --concurrency 1..1000")
    if args.scenario != "sustained" and (len(args.concurrency) > 1 or args.batch != [1] or args.claimed):
        parser.error("only sustained takes several --concurrency values, --batch or --claimed")
    if ((args.scenario == "mixed" or args.claimed) and not args.rate > 0) or args.every <= 0:
        parser.error("mixed and sustained --claimed need --rate above 0, and --every must be above 0")
    if args.duration > MAX_SECONDS_PER_PHASE or args.step_seconds > MAX_SECONDS_PER_PHASE:
        parser.error(f"--duration and --step-seconds are capped at {MAX_SECONDS_PER_PHASE}s")
    configure_logging("json", level=30)
    progress = Progress(args.quiet)
    server = server_url(default_state_dir() / "load-pgdata")
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "quiet")}
    run = Run(args.scenario, machine_info(server), {k: str(v) for k, v in settings.items()})
    with scratch_database(server, "load") as url:
        apply_schema(url)
        trio.run(SCENARIOS[args.scenario], args, url, run, progress)
        run.machine["load_average_end"] = load_average()
        if args.compare:
            events = args.events if args.scenario == "sustained" else min(args.events, 20_000)
            run.baselines.append(baselines.naive(url, min(events, 20_000), args.concurrency[0], args.size,
                                                 args.chip_latency, progress))
            run.baselines.append(baselines.limit(url, events, args.size, progress))
    report = write_report(run, args.out / f"{args.scenario}-{time.strftime('%Y%m%d-%H%M%S')}")
    print_summary(run, report)
    return 0


def apply_schema(url: str) -> None:
    """Install the schema, as an operator would before any emitter opens (the baselines write to it too)."""
    schema.apply(url, "public", lock_timeout=10)


if __name__ == "__main__":
    sys.exit(main())

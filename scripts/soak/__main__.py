"""``just soak`` (``python -m scripts.soak --seconds 120 --seed 1``): a seeded nemesis against everything real.

A primary with a synchronous standby, PgBouncer before one host (where
installed), chipmock in its own process and four host processes (``emit``,
``emit_many``, the outbox in the host's own transaction, an asyncio host), with
faults drawn from the seed every few seconds until 80 % of the run; then the
hosts stop emitting, the backlog drains, the hosts flush and stop. An
independent checker decides from outside records (the ids each host saw
acknowledged, the ids chipmock received, the tables) what was lost or sent
twice. The fault timeline goes to stderr as it happens; the run's folder under
``--out`` keeps the picture, every record and log, and ``summary.json``; the
last line of stdout is the summary as one JSON object. Exit status 0 only when
nothing was lost, dead-lettered or left, no duplicate is unexplained, every
fault was followed by a delivery, and no host exited on its own.

``--reject-rate F``: the hosts mark that fraction of their events and chipmock
rejects those for good (VALIDATION_FAILED), so they are dead-lettered at once;
the run then passes with exactly those dead-lettered and the library's
dead-letter counter, summed over every host process, equal to the table's rows.
Each process reports its counter when it stops cleanly, so it implies
``--without host_kill``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from scripts import ROOT
from scripts.args_and_databases import duration
from scripts.soak.checker import Publishers, check, dead_letters, failures, read_counters, read_ids
from scripts.soak.deployment import HOSTS, Deployment
from scripts.soak.nemesis import Clock, Nemesis, say
from scripts.soak.report import picture, print_timeline, summary
from scripts.soak.schedule import DEFAULTS, KINDS, chip_flags, plan

SAMPLE_EVERY = 5.0  # seconds between samples of RSS and table size
PROGRESS_EVERY = 10.0


class Lines:
    """Lines appended to a file since the start, counted without reading it twice."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.count = path, 0, 0

    def __call__(self) -> int:
        if self.path.exists():
            with open(self.path, "rb") as file:
                file.seek(self.offset)
                chunk = file.read()
            self.offset += len(chunk)
            self.count += chunk.count(b"\n")
        return self.count


def _sample(deployment: Deployment, clock: Clock) -> dict[str, Any]:
    sample: dict[str, Any] = {"t": round(clock.now(), 1), "rss_mb": deployment.rss_mb()}
    try:
        sample.update(deployment.table_figures())
    except Exception:  # the primary is away (a fault): this sample has no table figures
        pass
    return sample


def soak(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    run_dir = Path(args.out) / f"soak-seed{args.seed}-{args.seconds:g}s-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True)
    clock, stopping = Clock(), threading.Event()
    faults: list = []
    deployment = Deployment(run_dir, args.rate, lambda: chip_flags(faults, clock.now()), args.reject_rate)
    faults += plan(args.seed, args.seconds, HOSTS, deployment.pooled, args.without)
    nemesis = Nemesis(deployment, faults, clock, stopping)
    samples: list[dict[str, Any]] = []
    say(clock, f"seed {args.seed}, {args.seconds:g}s, {len(faults)} faults planned "
               f"({', '.join(f'{k} {n}' for k, n in Counter(f.kind for f in faults).most_common())}); "
               f"pooled host: {deployment.pooled or 'none (pgbouncer not installed)'}; hosts on "
               f"{'machines of their own' if deployment.machines else 'this machine (not root: no UTS namespace)'}"
               f"{'; left out: ' + ','.join(sorted(args.without)) if args.without else ''}"
               f"{f'; chipmock rejects the {args.reject_rate:g} of events marked' if args.reject_rate else ''}"
               f"; records in {run_dir}")
    try:
        deployment.start_servers()
        clock.t0 = time.time()
        deployment.emit_until = clock.t0 + args.seconds
        say(clock, deployment.start_chip())
        deployment.add_hosts()
        deployment.start_hosts()
        nemesis.start()
        acked = [Lines(host.acked) for host in deployment.hosts.values()]
        received = Lines(run_dir / "received.txt")
        next_sample = next_progress = 0.0
        while (now := clock.now()) < args.seconds + args.drain:
            for name in deployment.restart_exited_hosts(now):
                say(clock, f"! host {name} exited on its own (see host-{name}.log); started again")
            if now >= next_sample:
                samples.append(_sample(deployment, clock))
                next_sample = now + SAMPLE_EVERY
            if now >= next_progress:
                last = samples[-1]
                table = (f"{last['left']} rows in the table ({last['table_bytes'] / 2**20:.1f} MB, "
                         f"{last['dead_tuples']} dead tuples, {last['vacuums']} vacuums since the statistics' reset)"
                         if "left" in last else "the table cannot be read now")
                say(clock, f"acknowledged {sum(count() for count in acked):,}, received {received():,} "
                           f"(duplicates included), {table}")
                next_progress = now + PROGRESS_EVERY
            if now > args.seconds and samples[-1].get("left") == 0:
                break  # the hosts stopped emitting and the backlog drained
            time.sleep(0.5)
        nemesis.join(timeout=60)
        samples.append(_sample(deployment, clock))
        say(clock, "stopping the hosts (each flushes)")
        deployment.stop_hosts(deadline=60)
        final = deployment.table_figures()
        dead_rows = deployment.dead_letter_rows()
        assert deployment.chip is not None
        deployment.chip.stop()  # its receipts file is complete
        exits = [line for host in deployment.hosts.values() for line in host.exits]
    finally:
        stopping.set()
        deployment.stop()
    acked_ids = {name: read_ids(host.acked, clock.t0) for name, host in deployment.hosts.items()}
    receipts = read_ids(run_dir / "received.txt", clock.t0)
    publishers = Publishers({name: host.chip.upstream_ports for name, host in deployment.hosts.items()}, clock.t0)
    verdict = check(acked_ids, receipts, nemesis.timeline, float(DEFAULTS["publish_timeout"]), deployment.pooled,
                    publishers, [event_id for event_id, _ in dead_rows])
    hosts = deployment.hosts.values()
    dead = dead_letters([report for host in hosts for report in read_counters(host.counters)],
                        [pid for host in hosts for pid in host.pids], dead_rows,
                        [event_id for host in hosts for event_id, _, _ in read_ids(host.rejected, clock.t0)])
    print_timeline(verdict)
    image = run_dir / "soak.png"
    first_receipts = {}
    for event_id, at, _ in receipts:
        first_receipts.setdefault(event_id, at)
    picture(image, [at for ids in acked_ids.values() for _, at, _ in ids], list(first_receipts.values()),
            nemesis.timeline, samples, f"soak: seed {args.seed}, {args.seconds:g} s")
    causes = Counter((dup.cause or "unexplained").split()[0] for dup in verdict.duplicates)
    result = summary(args.seconds, args.seed, nemesis.timeline, verdict, final, samples, {
        "duplicates_by_cause": dict(causes), "host_exits": len(exits), "harness_errors": len(nemesis.errors),
        "dead_letter_counter": dead.counter, "dead_letter_rows": dead.rows,
        "dead_letter_counter_matches": dead.counter_matches, "dead_letter_unreported": dead.unreported,
        "reject_rate": args.reject_rate, "marked": dead.marked,
        "marked_not_dead_lettered": len(dead.marked_not_dead_lettered), "dead_lettered_unmarked": len(dead.unmarked),
        "picture": str(image), "records": str(run_dir)})
    failed = failures(result, args.reject_rate)
    if failed:
        print(f"soak: failed on {', '.join(failed)}", file=sys.stderr)
    details = {"summary": result, "t0": clock.t0,
               "pids": {name: host.pids for name, host in deployment.hosts.items()}, "timeline": [asdict(fault) for fault in nemesis.timeline],
               "resumes": [[fault.kind, fault.target, fault.start, resume] for fault, resume in verdict.resumes],
               "lost": verdict.lost, "duplicates": [asdict(dup) for dup in verdict.duplicates],
               "marked_not_dead_lettered": dead.marked_not_dead_lettered, "dead_lettered_unmarked": dead.unmarked,
               "host_exits": exits, "harness_errors": nemesis.errors, "samples": samples,
               "plan": [asdict(fault) for fault in faults]}
    (run_dir / "summary.json").write_text(json.dumps(details, indent=1))
    return result, not failed


def _seconds(text: str) -> float:
    """A number of seconds (``90``), or a duration with units (``10m``)."""
    try:
        return float(text)
    except ValueError:
        return duration(text)


def _kinds(text: str) -> frozenset[str]:
    """``host_kill,chip_kill``: fault kinds, each one the plan knows."""
    kinds = frozenset(kind.strip() for kind in text.split(",") if kind.strip())
    if unknown := sorted(kinds - set(KINDS)):
        raise argparse.ArgumentTypeError(f"no fault kind {', '.join(unknown)} (the kinds: {', '.join(KINDS)})")
    return kinds


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in [0, 1)")
    return value


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the run as Ctrl-C does: everything it started is stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=_seconds, default=120.0,
                        help="how long the hosts emit, in seconds or with a unit (default 120)")
    parser.add_argument("--seed", type=int, default=1, help="the faults drawn (default 1)")
    parser.add_argument("--rate", type=float, default=150.0, help="events/s each host offers (default 150)")
    parser.add_argument("--drain", type=duration, default=90.0,
                        help="longest wait for the backlog after the hosts stop emitting (default 90s)")
    parser.add_argument("--out", default=str(ROOT / "results"), help="where the run's folder goes (default results/)")
    parser.add_argument("--without", type=_kinds, default=frozenset(), metavar="KIND[,KIND...]",
                        help="fault kinds left out of the plan (the rest drawn from the same seed)")
    parser.add_argument("--reject-rate", type=_fraction, default=0.0, metavar="F",
                        help="fraction of events chipmock rejects for good, to be dead-lettered (implies "
                             "--without host_kill: a killed process's dead-letter counter dies with it)")
    args = parser.parse_args(argv)
    if args.reject_rate:
        args.without |= {"host_kill"}
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result, ok = soak(args)
    except KeyboardInterrupt:
        print("soak: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    print(json.dumps(result), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

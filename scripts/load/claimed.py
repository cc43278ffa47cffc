"""The claimed path beside the fresh one (``sustained --claimed``; ``just bench`` runs it).

Rows an instance did not write itself reach Chip only through a claim. Two such
drains, each against the ``Emitter.emit_many`` of 100 from 10 callers row of the
same run (events delivered per second, emit to flushed):

- outbox: ``--events`` rows written with ``outbox.emit_many`` (100 a call, 10
  connections) while no emitter runs, then one instance started in its own
  process: from its start (the process's spawn) to the last id chipmock received;
  also from its first delivery to its last (the drain without the start-up);
- backlog: an instance in its own process emits ``--rate`` events/s for
  ``--duration`` while chipmock is out (``--outage``: every call UNAVAILABLE);
  then Chip answers again: the time from then (seen by a Ping of our own every
  10 ms) to the first delivery, and the backlog's drain rate from its first
  delivery to its last (also from Chip answering).

Arrivals are read from chipmock's counters: every 10 ms until the first, then
every 50 ms. Chip runs in its own process; the CPU per event the emitter
process, Postgres and chipmock used during each drain is reported beside.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import psycopg

from chippb import chipingress_pb2 as pb
from chippb import chipingress_pb2_grpc as pb_grpc

from .chip import ChipFigures, ChipProcess, chip_args
from .cpu import per_event_us, postgres_cpu, process_cpu
from .emitter_process import EmitPlan, EmitterProcess
from .measure import MAX_SECONDS_PER_PHASE
from .outbox import BATCH, CONNECTIONS, analyzed, write_rows
from .progress import Progress
from .report import Run

FRESH = "10 callers x emit_many(100)"  # the reference row, sustained's label
COLUMNS = ("path", "events", "first_delivery_s", "drain_per_s", "drain_x_fresh", "overall_per_s", "overall_x_fresh",
           "leased_at_chip_back", "lease_left_max_s", "claimable_drain_per_s", "claimable_x_fresh",
           "emitter_cpu_us_per_event", "pg_cpu_us_per_event", "chip_cpu_us_per_event", "ready_s", "written_per_s",
           "emit_errors", "delivered_unique", "duplicates")
LEADS = (5.0, 10.0, 20.0)  # seconds for the emitter process to start before the outage; longer if it was late
EMITTING_MARGIN = 0.5  # the emits start this long after the outage starts, and end this long before it does


def measure(args, url: str, run: Run, fresh: dict, progress: Progress) -> None:
    """Both claimed drains, then their table beside ``fresh`` (the emit_many row) and the ratios."""
    outbox = outbox_drain(args, url, progress)
    backlog = backlog_after_outage(args, url, progress)
    reference = fresh["end_to_end_per_s"]
    rows = [{"path": f"fresh: Emitter.emit_many({BATCH}), {CONNECTIONS} callers, emit to flushed",
             "events": fresh["events"], "overall_per_s": reference,
             "emitter_cpu_us_per_event": fresh["cpu_us_per_event"],
             "pg_cpu_us_per_event": fresh.get("pg_cpu_us_per_event"),
             "chip_cpu_us_per_event": fresh.get("chip_cpu_us_per_event"), "emit_errors": fresh["emit_errors"],
             "delivered_unique": fresh["delivered_unique"]}]
    for row in (outbox, backlog):
        row["drain_x_fresh"] = round(row["drain_per_s"] / reference, 2) if reference else None
        row["overall_x_fresh"] = round(row["overall_per_s"] / reference, 2) if reference else None
        rows.append(row)
    if reference and backlog["claimable_drain_per_s"]:
        backlog["claimable_x_fresh"] = round(backlog["claimable_drain_per_s"] / reference, 2)
    run.tables["Claimed delivery against fresh emit_many (same run)"] = [
        {column: "" if row.get(column) is None else row[column] for column in COLUMNS} for row in rows]
    run.summary.update({
        "outbox drain, instance start to last id, x fresh emit_many": outbox["overall_x_fresh"],
        "outbox drain, first to last delivery, x fresh emit_many": outbox["drain_x_fresh"],
        "backlog drain, first to last delivery, x fresh emit_many": backlog["drain_x_fresh"],
        "backlog: Chip answering to the first backlog delivery, s": backlog["first_delivery_s"],
        "backlog: rows still leased when Chip answered (delivered only as their lease ends)":
            backlog["leased_at_chip_back"],
    })
    run.notes.append(
        "claimed rows: overall_per_s counts from the instance's start (outbox: the process's spawn, "
        "interpreter start-up included) or from Chip answering again (backlog) to the last id chipmock received; "
        "drain_per_s from the first delivery to the last; first_delivery_s from that same start. "
        "CPU per event: the emitter process (fresh: this process), every Postgres server process, chipmock. "
        "leased_at_chip_back: backlog rows whose lease had not ended as Chip answered (handed to the dispatcher in "
        "memory during the outage: published from memory while within their publish deadline, else claimable only "
        "once their lease ends); claimable_drain_per_s: the rest of the backlog (spilled, claimable at once), from "
        "the first delivery until as many rows had arrived")


def outbox_drain(args, url: str, progress: Progress) -> dict:
    """Outbox rows written with no emitter running, then one instance started in its own process."""
    written = write_rows(url, args.events, args.size, progress, "claimed: outbox rows")
    analyzed(url)
    pg_cpu = postgres_cpu(url)
    with ChipProcess(*chip_args(args.chip_latency)) as chip:
        before = {"pg": pg_cpu(), "chip": process_cpu(chip.proc.pid)}
        with EmitterProcess(url, chip.endpoint, seconds=MAX_SECONDS_PER_PHASE) as emitter:
            emitter_cpu = emitter.cpu()
            stop_at = emitter.spawned + MAX_SECONDS_PER_PHASE
            first = first_arrival(chip, 0, stop_at)
            last, figures = last_arrival(chip, written.events, stop_at, _shower(progress, "claimed: outbox drain"))
            used = {"emitter": (emitter_cpu, emitter.cpu()), "pg": (before["pg"], pg_cpu()),
                    "chip": (before["chip"], process_cpu(chip.proc.pid))}
        start = emitter.spawned
    progress.done()
    return {"path": f"claimed: outbox.emit_many({BATCH}) from {CONNECTIONS} connections, no emitter running; "
                    "then 1 instance (own process)",
            "events": written.events, "written_per_s": written.per_s,
            "ready_s": round(emitter.ready - start, 2), "first_delivery_s": round(first - start, 2),
            "drain_per_s": round(written.events / max(last - first, 1e-6), 1),
            "overall_per_s": round(written.events / (last - start), 1),
            **_cpu_columns(used, written.events), "delivered_unique": figures.unique,
            "duplicates": figures.duplicates}


class _LateStart(Exception):
    """The emitter process was not ready before the outage began."""


def backlog_after_outage(args, url: str, progress: Progress) -> dict:
    """Emits at ``args.rate`` for ``args.duration`` while Chip is out, then its drain once Chip answers."""
    for lead in LEADS:
        try:
            return _backlog(args, url, progress, lead)
        except _LateStart:
            progress.done()
    raise RuntimeError(f"the emitter process was not ready within {LEADS[-1]:g} s of chipmock's start")


def _backlog(args, url: str, progress: Progress, lead: float) -> dict:
    emitting = args.duration
    outage = emitting + 2 * EMITTING_MARGIN
    label = "claimed: backlog"
    pg_cpu = postgres_cpu(url)
    with ChipProcess(*chip_args(args.chip_latency, f"--outage={lead:g}s:{outage:g}s")) as chip:
        down = chip.started + lead  # chipmock counts its windows from its own start, a few ms before this
        plan = EmitPlan(args.rate, down + EMITTING_MARGIN, down + EMITTING_MARGIN + emitting, size=args.size)
        with EmitterProcess(url, chip.endpoint, seconds=lead + outage + MAX_SECONDS_PER_PHASE,
                            emit=plan) as emitter:
            if emitter.ready > plan.start - 0.1:
                raise _LateStart
            while (now := time.monotonic()) < plan.stop:
                progress.show(label, now - down, outage, f"Chip out, emitting {args.rate:g}/s")
                time.sleep(min(0.5, plan.stop - now))
            emitted, failed = (int(n) for n in emitter.expect("emitted", timeout=60))
            if delivered_before := chip.figures().unique:  # every emit fell in chipmock's outage window
                raise RuntimeError(f"chipmock received {delivered_before} events during its outage: its window "
                                   "and the emits did not line up")
            leased, lease_left = _leased(url)
            stop_at = time.monotonic() + outage + MAX_SECONDS_PER_PHASE
            back = answering_again(chip, stop_at)
            before = {"emitter": emitter.cpu(), "pg": pg_cpu(), "chip": process_cpu(chip.proc.pid)}
            first = first_arrival(chip, 0, stop_at)
            samples: list[tuple[float, int]] = []
            last, figures = last_arrival(chip, emitted, stop_at, _shower(progress, f"{label} drain"), samples)
            used = {"emitter": (before["emitter"], emitter.cpu()), "pg": (before["pg"], pg_cpu()),
                    "chip": (before["chip"], process_cpu(chip.proc.pid))}
    progress.done()
    backlog = emitted
    claimable = backlog - leased  # when Chip answered: the rest waits for its lease to end
    claimable_by = next((t for t, unique in samples if unique >= claimable), last)
    return {"path": f"claimed: backlog of a {outage:g} s Chip outage, emitting {args.rate:g}/s for {emitting:g} s "
                    "(own process)",
            "events": backlog, "emit_errors": failed, "first_delivery_s": round(first - back, 2),
            "drain_per_s": round(backlog / max(last - first, 1e-6), 1),
            "overall_per_s": round(backlog / (last - back), 1),
            "leased_at_chip_back": leased, "lease_left_max_s": lease_left,
            "claimable_drain_per_s": round(claimable / max(claimable_by - first, 1e-6), 1) if claimable else None,
            **_cpu_columns(used, backlog), "delivered_unique": figures.unique, "duplicates": figures.duplicates}


def _leased(url: str) -> tuple[int, float]:
    """Rows whose lease has not ended, and the longest lease left (s): rows an instance holds (in memory, or
    dropped from it) that no claim takes before their lease ends."""
    with psycopg.connect(url, autocommit=True) as conn:
        count, left = conn.execute("SELECT count(*) FILTER (WHERE lease_expires_at > now()), "
                                   "coalesce(extract(epoch FROM max(lease_expires_at) - now()), 0)::float8 "
                                   "FROM chip_durable_events").fetchone()
    return count, round(max(left, 0.0), 1)


def answering_again(chip: ChipProcess, stop_at: float) -> float:
    """When chipmock answers a Ping again (polled every 10 ms): the start of the Ping that worked."""
    with grpc.insecure_channel(chip.endpoint) as channel:
        stub = pb_grpc.ChipIngressStub(channel)
        while time.monotonic() < stop_at:
            sent = time.monotonic()
            try:
                stub.Ping(pb.EmptyRequest(), timeout=1.0)
                return sent
            except grpc.RpcError:
                time.sleep(0.01)
    raise RuntimeError("chipmock did not answer again")


def first_arrival(chip: ChipProcess, above: int, stop_at: float) -> float:
    """When chipmock had more than ``above`` distinct ids (polled every 10 ms): the start of that read."""
    while (now := time.monotonic()) < stop_at:
        if chip.figures().unique > above:
            return now
        time.sleep(0.01)
    raise RuntimeError(f"nothing was delivered within {MAX_SECONDS_PER_PHASE} s")


def last_arrival(chip: ChipProcess, total: int, stop_at: float, show: Callable[[int, int], None],
                 samples: list[tuple[float, int]] | None = None) -> tuple[float, ChipFigures]:
    """When chipmock had ``total`` distinct ids (polled every 50 ms, each read kept in ``samples``), and its
    figures then."""
    while True:
        now = time.monotonic()
        figures = chip.figures()
        if samples is not None:
            samples.append((now, figures.unique))
        if figures.unique >= total:
            return now, figures
        if now > stop_at:
            raise RuntimeError(f"{total - figures.unique:,} of {total:,} were not delivered in time")
        show(figures.unique, total)
        time.sleep(0.05)


def _shower(progress: Progress, label: str) -> Callable[[int, int], None]:
    return lambda done, total: progress.show(label, done, total, f"{done:,} delivered")


def _cpu_columns(used: dict[str, tuple[float | None, float | None]], events: int) -> dict:
    return {f"{who}_cpu_us_per_event": per_event_us(*readings, events) for who, readings in used.items()}

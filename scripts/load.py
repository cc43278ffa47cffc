"""``just load <scenario>``: load tests against real Postgres and chipmock, with baselines beside them.

Scenarios (each bounded in count and time, all traffic on 127.0.0.1):

  ramp       offered load in steps; per step achieved rate, latencies, Q max; names the saturation point
  sustained  N events from C concurrent emitters as fast as possible (--instances 1,2,3: processes)
  tps        hold a target rate, optionally through a Chip outage; time to drain afterwards
  payload    event sizes from 64 B to 1 MiB: events/s, MB/s, peak RSS

``--compare`` runs the baselines in the same invocation: ``naive`` (one INSERT
and commit per emit, one unary Publish per event, one DELETE per ack) and
``limit`` (batched COPY then batched DELETE on the same Postgres, no gRPC: the
ceiling of any Postgres outbox here). Results go to ``results/<scenario>-<time>/``:
report.md, PNG plots (when matplotlib is installed), and the raw samples as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import chipmock  # noqa: E402
from actors import EmitterConfig, EmitterError, open_emitter  # noqa: E402
from actors.config import default_state_dir, parse_duration  # noqa: E402
from actors.logs import configure_logging  # noqa: E402
from actors.metrics import histogram_mean, histogram_quantile, value  # noqa: E402
from actors.postgres import start_embedded  # noqa: E402
from actors.store import Store  # noqa: E402
from chipmock import ChipModel, Outage  # noqa: E402
from chippb import chipingress_pb2_grpc as pb_grpc  # noqa: E402
from chippb import cloudevent_pb2 as ce  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MAX_SECONDS_PER_PHASE = 600  # every loop here stops by itself


# -- plumbing ------------------------------------------------------------------------------


class Progress:
    """One line on stderr, rewritten in place: what runs now and how far it is."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def show(self, label: str, done: float, total: float, extra: str = "") -> None:
        if self.quiet:
            return
        width = 30
        filled = int(width * min(1.0, done / total)) if total else width
        print(f"\r  {label:<22} [{'#' * filled}{'.' * (width - filled)}] {extra:<40}", end="",
              file=sys.stderr, flush=True)

    def done(self) -> None:
        if not self.quiet:
            print(file=sys.stderr)


@dataclass
class Run:
    """Everything one scenario produced; written as JSON beside the report."""

    scenario: str
    machine: dict
    settings: dict
    rows: list[dict] = field(default_factory=list)
    series: dict[str, list] = field(default_factory=dict)
    baselines: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def server_url() -> str:
    return os.environ.get("DATABASE_URL") or start_embedded(default_state_dir() / "load-pgdata")


def fresh_database(server: str) -> str:
    name = f"load_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return psycopg.conninfo.make_conninfo(server, dbname=name)


def drop_database(server: str, url: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def machine_info(server: str) -> dict:
    with psycopg.connect(server) as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('server_version', 'shared_buffers', "
            "'synchronous_commit', 'wal_level', 'max_wal_size', 'fsync')").fetchall())
    return {
        "host": platform.node(), "cores": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(), "postgres": settings.pop("server_version", "?"), "postgres_settings": settings,
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def pending_rows(store: Store) -> int:
    return (await store.pending_stats()).rows


async def paced_emits(emitter, rate: float, seconds: float, concurrency: int, body: bytes,
                      latencies: list[float], errors: list[str], *, limit: int | None = None) -> int:
    """Offer ``rate`` events/s (0: as fast as possible) for ``seconds``; return how many were emitted.

    Open loop: each worker keeps its own schedule and never sleeps when behind,
    so a saturated system shows up as achieved < offered.
    """
    count = claimed = 0
    stop_at = trio.current_time() + min(seconds, MAX_SECONDS_PER_PHASE)
    gap = concurrency / rate if rate else 0.0

    async def worker(offset: float) -> None:
        nonlocal count, claimed
        next_at = trio.current_time() + offset
        while trio.current_time() < stop_at and (limit is None or claimed < limit):
            claimed += 1  # before the await, so concurrent workers stop at exactly ``limit``
            if gap:
                await trio.sleep_until(next_at)
                next_at += gap
            started = time.perf_counter()
            try:
                await emitter.emit(body, source="load", type="event")
            except EmitterError as exc:
                errors.append(type(exc).__name__)
                continue
            latencies.append(time.perf_counter() - started)
            count += 1

    async with trio.open_nursery() as nursery:
        for index in range(concurrency):
            nursery.start_soon(worker, gap * index / concurrency)
    return count


class Sampler:
    """Pending rows and cumulative counts every ``interval`` seconds, for plots and Q max."""

    def __init__(self, store: Store, emitter, interval: float = 0.25) -> None:
        self.store, self.emitter, self.interval = store, emitter, interval
        self.points: list[tuple[float, int, int, int]] = []  # (t, pending, emitted, delivered)
        self.started = time.monotonic()

    async def run(self) -> None:
        while True:
            pending = await pending_rows(self.store)
            metrics = self.emitter.metrics
            self.points.append((round(time.monotonic() - self.started, 3), pending,
                                int(value(metrics.emit_success)), int(value(metrics.delivery_completed))))
            await trio.sleep(self.interval)

    def q_max(self, since: float = 0.0) -> int:
        return max((p for t, p, _, _ in self.points if t >= since), default=0)


@dataclass
class Measured:
    mock: chipmock.ChipMockServer
    emitter: object
    store: Store
    sampler: Sampler
    nursery: trio.Nursery


@asynccontextmanager
async def measured(url: str, model: ChipModel) -> AsyncIterator[Measured]:
    """A chipmock, an emitter publishing to it, and a sampler of the table beside them."""
    mock = chipmock.start(model)
    try:
        async with open_emitter(emitter_config(url, mock.endpoint)) as emitter:
            store = Store(url)
            sampler = Sampler(store, emitter)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sampler.run)
                    yield Measured(mock, emitter, store, sampler, nursery)
                    with trio.move_on_after(MAX_SECONDS_PER_PHASE):  # drain before the next phase
                        await emitter.flush(timeout=MAX_SECONDS_PER_PHASE)
                    nursery.cancel_scope.cancel()
            finally:
                store.close()
    finally:
        mock.stop(0)


def emitter_config(url: str, endpoint: str, **overrides) -> EmitterConfig:
    return EmitterConfig.from_env(database_url=url, chip_endpoint=endpoint, instance_id=f"load-{os.getpid()}",
                                  log_interval=3600.0, **overrides)


# -- scenarios -------------------------------------------------------------------------------


async def scenario_ramp(args, url: str, run: Run, progress: Progress) -> None:
    body = os.urandom(args.size)
    async with measured(url, ChipModel(latency=args.chip_latency, jitter=args.chip_latency / 10)) as m:
        saturated = None
        for step in args.steps:
            latencies: list[float] = []
            errors: list[str] = []
            publish = m.emitter.metrics.publish_duration.labels("batch")
            publish_before = _hist_totals(publish)
            t0 = time.monotonic() - m.sampler.started
            progress.show(f"ramp {step:,}/s", 0, 1, "running")
            done = await paced_emits(m.emitter, step, args.step_seconds, args.concurrency, body, latencies, errors)
            t1 = time.monotonic() - m.sampler.started
            pending_end = await pending_rows(m.store)
            mid = [p for t, p, _, _ in m.sampler.points if t0 + (t1 - t0) / 2 <= t <= t1]
            achieved = done / (t1 - t0)
            growing = pending_end > max(1000, 2 * (min(mid) if mid else 0))
            mean_ms, p99_ms = _hist_window(publish, publish_before)
            row = {
                "offered_per_s": step, "achieved_per_s": round(achieved, 1),
                "emit_p50_ms": round(quantile(latencies, 0.5) * 1000, 2),
                "emit_p99_ms": round(quantile(latencies, 0.99) * 1000, 2),
                "publish_mean_ms": mean_ms, "publish_p99_ms": p99_ms,
                "q_max": m.sampler.q_max(since=t0), "pending_end": pending_end, "errors": len(errors),
            }
            run.rows.append(row)
            progress.show(f"ramp {step:,}/s", 1, 1, f"achieved {achieved:,.0f}/s, Q max {row['q_max']:,}")
            progress.done()
            if saturated is None and (achieved < 0.98 * step or growing):
                saturated = step
                if not args.keep_going:
                    break
        run.notes.append(f"saturation point: {saturated:,}/s offered" if saturated
                         else "no saturation within the steps offered")
    run.series["pending"] = m.sampler.points


def _hist_totals(histogram) -> dict[str, float]:
    return {f"{s.name}|{s.labels.get('le', '')}": s.value for m in histogram.collect() for s in m.samples}


def _hist_window(histogram, before: dict[str, float]) -> tuple[float, float]:
    """Mean and p99 (ms) of what a histogram observed since ``before``."""
    now = _hist_totals(histogram)
    delta = {k: v - before.get(k, 0.0) for k, v in now.items()}
    count = sum(v for k, v in delta.items() if k.endswith("_count|"))
    total = sum(v for k, v in delta.items() if k.endswith("_sum|"))
    buckets = sorted(((float(k.split("|")[1]), v) for k, v in delta.items() if "_bucket|" in k))
    p99 = 0.0
    if count:
        rank = 0.99 * count
        for bound, cumulative in buckets:
            if cumulative >= rank:
                p99 = bound if bound != float("inf") else buckets[-2][0]
                break
    return round(total / count * 1000, 2) if count else 0.0, round(p99 * 1000, 2)


async def scenario_sustained(args, url: str, run: Run, progress: Progress) -> None:
    for instances in args.instances:
        if instances == 1:
            row = await _sustained_in_process(args, url, progress)
        else:
            row = await _sustained_processes(args, url, instances, progress)
        run.rows.append(row)


async def _sustained_in_process(args, url: str, progress: Progress) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    async with measured(url, ChipModel(latency=args.chip_latency)) as m:
        async def show() -> None:
            while True:
                progress.show("sustained x1", len(latencies), args.events, f"{len(latencies):,} emitted")
                await trio.sleep(0.5)

        m.nursery.start_soon(show)
        started = time.perf_counter()
        emitted = await paced_emits(m.emitter, 0, MAX_SECONDS_PER_PHASE, args.concurrency, os.urandom(args.size),
                                    latencies, errors, limit=args.events)
        emit_done = time.perf_counter()
        await m.emitter.flush(timeout=MAX_SECONDS_PER_PHASE)
        finished = time.perf_counter()
    progress.done()
    publish = m.emitter.metrics.publish_duration.labels("batch")
    return {
        "implementation": "durable-emitter", "instances": 1, "events": emitted,
        "emit_per_s": round(emitted / (emit_done - started), 1),
        "end_to_end_per_s": round(emitted / (finished - started), 1), "emit_errors": len(errors),
        "emit_p50_ms": round(quantile(latencies, 0.5) * 1000, 2),
        "emit_p99_ms": round(quantile(latencies, 0.99) * 1000, 2),
        "publish_mean_ms": round(histogram_mean(publish) * 1000, 2),
        "publish_p99_ms": round(histogram_quantile(publish, 0.99) * 1000, 2),
        "q_max": m.sampler.q_max(), "drain_s": round(finished - emit_done, 2),
        "delivered_unique": m.mock.counters.snapshot().unique,
    }


async def _sustained_processes(args, url: str, instances: int, progress: Progress) -> dict:
    """N separate emitter processes (scripts/workload.py) on one table and one chipmock."""
    mock = chipmock.start(ChipModel(latency=args.chip_latency), max_workers=128)
    per_instance = args.events // instances
    folder = Path(tempfile.mkdtemp(prefix="load-ids-"))
    try:
        env = {**os.environ, "DATABASE_URL": url, "CHIP_INGRESS_ENDPOINT": mock.endpoint}
        started = time.perf_counter()
        procs = [subprocess.Popen(  # noqa: ASYNC220  (starting them does not block)
            [sys.executable, str(ROOT / "scripts" / "workload.py"), "--ids-file", str(folder / f"{i}.txt"),
             "--events", str(per_instance), "--concurrency", str(args.concurrency), "--size", str(args.size),
             "--duration", str(MAX_SECONDS_PER_PHASE)],
            env={**env, "DURABLE_EMITTER_INSTANCE_ID": f"load-{i}"}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL) for i in range(instances)]
        store = Store(url)
        q_max = 0
        delivered: list[tuple[float, int]] = []
        with trio.move_on_after(MAX_SECONDS_PER_PHASE):
            while any(p.poll() is None for p in procs):  # noqa: ASYNC110  (child processes)
                q_max = max(q_max, await pending_rows(store))
                delivered.append((time.perf_counter(), mock.counters.snapshot().unique))
                progress.show(f"sustained x{instances}", delivered[-1][1], args.events,
                              f"{delivered[-1][1]:,} delivered")
                await trio.sleep(0.1)
            while await pending_rows(store):  # noqa: ASYNC110  (the table, outside Trio)
                await trio.sleep(0.05)
        finished = time.perf_counter()
        delivered.append((finished, mock.counters.snapshot().unique))
        store.close()
        progress.done()
        total = instances * per_instance
        return {
            "implementation": "durable-emitter", "instances": instances, "events": total,
            "end_to_end_per_s": steady_rate(delivered, total), "emit_errors": 0, "q_max": q_max,
            "delivered_unique": mock.counters.snapshot().unique,
            "wall_s_with_startup": round(finished - started, 2),
            "note": "rate between 10% and 90% delivered (process start-up excluded)",
        }
    finally:
        for proc in locals().get("procs", []):
            proc.kill()
        mock.stop(0)


def steady_rate(samples: list[tuple[float, int]], total: int) -> float:
    """Events/s between the moments 10% and 90% of ``total`` had been delivered."""
    low = next((t for t, n in samples if n >= 0.1 * total), None)
    high = next((t for t, n in samples if n >= 0.9 * total), None)
    if low is None or high is None or high <= low:
        return 0.0
    return round(0.8 * total / (high - low), 1)


async def scenario_tps(args, url: str, run: Run, progress: Progress) -> None:
    outage = Outage.parse(args.outage) if args.outage else None
    latencies: list[float] = []
    errors: list[str] = []
    async with measured(url, ChipModel(latency=args.chip_latency)) as m:
        if outage:
            async def chip_goes_down() -> None:
                await trio.sleep(outage.start)
                m.mock.set_model(ChipModel(latency=args.chip_latency, outages=(Outage(0, 3600),)))
                await trio.sleep(outage.duration)
                m.mock.set_model(ChipModel(latency=args.chip_latency))

            m.nursery.start_soon(chip_goes_down)

        async def show() -> None:
            while True:
                elapsed = time.monotonic() - m.sampler.started
                pending = m.sampler.points[-1][1] if m.sampler.points else 0
                progress.show(f"tps {args.rate:,.0f}/s", elapsed, args.duration,
                              f"{elapsed:,.0f}/{args.duration:g} s, pending {pending:,}")
                await trio.sleep(0.5)

        m.nursery.start_soon(show)
        started = time.monotonic()
        emitted = await paced_emits(m.emitter, args.rate, args.duration, args.concurrency, os.urandom(args.size),
                                    latencies, errors)
        elapsed = time.monotonic() - started
    progress.done()
    drain_s = None
    if outage:
        back = outage.start + outage.duration
        before = [p for t, p, _, _ in m.sampler.points if t < outage.start] or [0]
        steady = max(100, 2 * max(before))
        recovered = [t for t, p, _, _ in m.sampler.points if t >= back and p <= steady]
        drain_s = round(recovered[0] - back, 2) if recovered else None
    run.rows.append({
        "target_per_s": args.rate, "achieved_per_s": round(emitted / elapsed, 1),
        "emit_p99_ms": round(quantile(latencies, 0.99) * 1000, 2), "emit_errors": len(errors),
        "q_max": m.sampler.q_max(), "outage": args.outage or "none", "drain_after_outage_s": drain_s,
        "duplicates": m.mock.counters.snapshot().duplicates,
    })
    run.series["pending"] = m.sampler.points


async def scenario_payload(args, url: str, run: Run, progress: Progress) -> None:
    mock = chipmock.start(ChipModel(latency=args.chip_latency))
    try:
        for size in sorted(args.sizes):  # ascending, so the process-lifetime RSS peak is this size's
            config = emitter_config(url, mock.endpoint, max_event_bytes=max(4 * 1024 * 1024, size + 4096))
            async with open_emitter(config) as emitter:
                latencies: list[float] = []
                errors: list[str] = []
                count = max(20, min(args.events, int(args.bytes_per_size // size)))
                progress.show(f"payload {size:,} B", 0, 1, f"{count:,} events")
                started = time.perf_counter()
                emitted = await paced_emits(emitter, args.rate, MAX_SECONDS_PER_PHASE, args.concurrency,
                                            os.urandom(size), latencies, errors, limit=count)
                await emitter.flush(timeout=MAX_SECONDS_PER_PHASE)
                took = time.perf_counter() - started
            progress.show(f"payload {size:,} B", 1, 1, f"{emitted / took:,.0f} events/s")
            progress.done()
            run.rows.append({
                "size_bytes": size, "events": emitted, "events_per_s": round(emitted / took, 1),
                "mb_per_s": round(emitted * size / took / 1e6, 2), "emit_p99_ms": round(quantile(latencies, 0.99) * 1000, 2),
                "peak_rss_mb": round(peak_rss_mb(), 1), "errors": len(errors),
            })
    finally:
        mock.stop(0)


# -- baselines -------------------------------------------------------------------------------


def baseline_naive(url: str, events: int, concurrency: int, size: int, latency: float, progress: Progress) -> dict:
    """The proof of concept's shape, written plainly: per event INSERT+commit, unary Publish, DELETE."""
    import grpc

    mock = chipmock.start(ChipModel(latency=latency))
    body = os.urandom(size)
    done = [0]
    lock = threading.Lock()

    def worker(count: int) -> None:
        with psycopg.connect(url, autocommit=True) as conn, grpc.insecure_channel(mock.endpoint) as channel:
            stub = pb_grpc.ChipIngressStub(channel)
            for _ in range(count):
                event = ce.CloudEvent(id=str(uuid.uuid4()), source="load", spec_version="1.0", type="event",
                                      binary_data=body)
                conn.execute("INSERT INTO chip_durable_events (id, payload, lease_owner, lease_expires_at) "
                             "VALUES (%s, %s, 'naive', now())", (event.id, event.SerializeToString()))
                stub.Publish(event, timeout=5)
                conn.execute("DELETE FROM chip_durable_events WHERE id = %s", (event.id,))
                with lock:
                    done[0] += 1

    try:
        threads = [threading.Thread(target=worker, args=(events // concurrency,)) for _ in range(concurrency)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            progress.show("baseline naive", done[0], events, f"{done[0]:,} delivered")
            time.sleep(0.25)
        took = time.perf_counter() - started
        progress.done()
        return {"implementation": "naive", "events": done[0], "end_to_end_per_s": round(done[0] / took, 1)}
    finally:
        mock.stop(0)


def baseline_limit(url: str, events: int, size: int, progress: Progress) -> dict:
    """Batched binary COPY of the same rows, then batched DELETE: no gRPC at all."""
    body = os.urandom(size)
    batch = 1000
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        written = 0
        while written < events:
            ids = [str(uuid.uuid4()) for _ in range(min(batch, events - written))]
            with conn.cursor() as cursor, cursor.copy(
                    "COPY chip_durable_events (id, payload, lease_owner, lease_expires_at) FROM STDIN") as copy:
                for event_id in ids:
                    copy.write_row((event_id, body, "limit", "-infinity"))
            conn.execute("DELETE FROM chip_durable_events WHERE id = ANY(%s)", (ids,))
            written += len(ids)
            progress.show("baseline limit", written, events, f"{written:,} rows")
        took = time.perf_counter() - started
    progress.done()
    return {"implementation": "limit (COPY+DELETE, no gRPC)", "events": written,
            "end_to_end_per_s": round(written / took, 1)}


# -- report ----------------------------------------------------------------------------------


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)\n"
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = []
        for key in keys:
            v = row.get(key, "")
            cells.append(f"{v:,}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(run: Run, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps(asdict(run), indent=2, default=str))
    plots = make_plots(run, folder)
    m = run.machine
    text = [f"# Load test: {run.scenario}", "",
            f"Machine: {m['host']}, {m['cores']} cores, Python {m['python']}, PostgreSQL {m['postgres']} "
            f"({', '.join(f'{k}={v}' for k, v in m['postgres_settings'].items())}), {m['platform']}", "",
            "Settings: " + ", ".join(f"{k}={v}" for k, v in run.settings.items()), "",
            "## Results", "", markdown_table(run.rows)]
    if run.baselines:
        text += ["## Baselines (same run, same machine)", "", markdown_table(run.baselines)]
        ours = next((r["end_to_end_per_s"] for r in run.rows if r.get("instances", 1) == 1
                     and "end_to_end_per_s" in r), None)
        if ours:
            text += ["Ratios (ours / baseline, end to end):", ""]
            text += [f"- vs {b['implementation']}: {ours / b['end_to_end_per_s']:.2f}x" for b in run.baselines
                     if b.get("end_to_end_per_s")]
            text.append("")
    if run.notes:
        text += ["## Notes", "", *(f"- {n}" for n in run.notes), ""]
    if plots:
        text += ["## Plots", "", *(f"![{p.stem}]({p.name})" for p in plots), ""]
    report = folder / "report.md"
    report.write_text("\n".join(text))
    return report


def make_plots(run: Run, folder: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        run.notes.append("plots skipped: matplotlib is not installed (pip install matplotlib)")
        return []
    made: list[Path] = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / name)
        plt.close(fig)
        made.append(folder / name)

    points = run.series.get("pending")
    if points and len(points) > 1:
        t = [p[0] for p in points]
        fig, left = plt.subplots(figsize=(8, 4))
        left.plot(t, [p[1] for p in points], label="pending rows", color="tab:red")
        left.set_xlabel("seconds")
        left.set_ylabel("pending rows")
        right = left.twinx()
        rates = [0.0] + [(b[3] - a[3]) / max(b[0] - a[0], 1e-6) for a, b in zip(points, points[1:], strict=False)]
        right.plot(t, rates, label="delivered/s", color="tab:blue", alpha=0.6)
        right.set_ylabel("delivered per second")
        fig.legend(loc="upper left")
        save(fig, "rate_and_pending.png")
    if run.scenario == "ramp" and run.rows:
        fig, ax = plt.subplots(figsize=(8, 4))
        steps = [str(r["offered_per_s"]) for r in run.rows]
        for key in ("emit_p50_ms", "emit_p99_ms", "publish_mean_ms", "publish_p99_ms"):
            ax.plot(steps, [r[key] for r in run.rows], marker="o", label=key)
        ax.set_xlabel("offered events/s")
        ax.set_ylabel("ms")
        ax.set_yscale("log")
        ax.legend()
        save(fig, "latency_per_step.png")
    if run.scenario == "payload" and run.rows:
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.plot([r["size_bytes"] for r in run.rows], [r["mb_per_s"] for r in run.rows], marker="o", label="MB/s")
        ax.set_xscale("log")
        ax.set_xlabel("event size (bytes)")
        ax.set_ylabel("MB/s")
        ax2 = ax.twinx()
        ax2.plot([r["size_bytes"] for r in run.rows], [r["events_per_s"] for r in run.rows], marker="s",
                 color="tab:orange", label="events/s")
        ax2.set_ylabel("events/s")
        fig.legend(loc="upper left")
        save(fig, "throughput_vs_payload.png")
    return made


# -- command line ----------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    values = [int(float(v.replace("k", "e3"))) for v in text.split(",") if v.strip()]
    if not values or min(values) <= 0:
        raise ValueError
    return values


_ints.__name__ = "comma-separated positive numbers (e.g. 100,500,1k)"


def _duration(text: str) -> float:
    return parse_duration(text)


_duration.__name__ = "duration (e.g. 20s, 1m)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="load", description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["ramp", "sustained", "tps", "payload"])
    parser.add_argument("--steps", type=_ints, default=[100, 500, 1000, 2000, 5000, 10000, 20000])
    parser.add_argument("--step-seconds", type=_duration, default=20.0)
    parser.add_argument("--keep-going", action="store_true", help="ramp: run every step past saturation")
    parser.add_argument("--events", type=int, default=100_000, help="sustained/payload: events (bounded)")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--instances", type=_ints, default=[1], help="sustained: e.g. 1,2,3 processes")
    parser.add_argument("--rate", type=float, default=None,
                        help="tps: events/s (default 1000); payload: events/s (default 0: as fast as possible)")
    parser.add_argument("--duration", type=_duration, default=60.0, help="tps: how long")
    parser.add_argument("--outage", default=None, help="tps: Chip outage START:DURATION, e.g. 20s:15s")
    parser.add_argument("--sizes", type=_ints,
                        default=[64, 256, 1024, 4096, 16384, 65536, 262144, 1048576])
    parser.add_argument("--bytes-per-size", type=float, default=256e6, help="payload: bytes sent per size")
    parser.add_argument("--size", type=int, default=256, help="event body bytes (ramp, sustained, tps)")
    parser.add_argument("--chip-latency", type=_duration, default=None,
                        help="added per Chip call (default: 50ms for ramp, 0 otherwise)")
    parser.add_argument("--compare", action="store_true", help="run the naive and limit baselines too")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--quiet", action="store_true")
    return parser


SCENARIOS = {"ramp": scenario_ramp, "sustained": scenario_sustained, "tps": scenario_tps,
             "payload": scenario_payload}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.chip_latency is None:
        args.chip_latency = 0.05 if args.scenario == "ramp" else 0.0
    if args.rate is None:
        args.rate = 1000.0 if args.scenario == "tps" else 0.0
    if args.outage:
        try:
            Outage.parse(args.outage)
        except ValueError as exc:
            parser.error(f"--outage: {exc}")
    if not 0 < args.events <= 10_000_000 or not 0 < args.concurrency <= 1000:
        parser.error("--events must be 1..10,000,000 and --concurrency 1..1000")
    if args.duration > MAX_SECONDS_PER_PHASE or args.step_seconds > MAX_SECONDS_PER_PHASE:
        parser.error(f"--duration and --step-seconds are capped at {MAX_SECONDS_PER_PHASE}s")
    configure_logging(json=True, level=30)
    progress = Progress(args.quiet)
    server = server_url()
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "quiet")}
    run = Run(args.scenario, machine_info(server), {k: str(v) for k, v in settings.items()})
    url = fresh_database(server)
    try:
        apply_schema(url)
        trio.run(SCENARIOS[args.scenario], args, url, run, progress)
        if args.compare:
            events = args.events if args.scenario == "sustained" else min(args.events, 20_000)
            run.baselines.append(baseline_naive(url, min(events, 20_000), args.concurrency, args.size,
                                                args.chip_latency, progress))
            run.baselines.append(baseline_limit(url, events, args.size, progress))
    finally:
        drop_database(server, url)
    folder = args.out / f"{args.scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
    report = write_report(run, folder)
    m = run.machine
    print(f"machine: {m['host']}, {m['cores']} cores, Python {m['python']}, PostgreSQL {m['postgres']}")
    print(markdown_table(run.rows), end="")
    if run.baselines:
        print(markdown_table(run.baselines), end="")
    for note in run.notes:
        print(f"- {note}")
    print(f"report: {report}")
    return 0


def apply_schema(url: str) -> None:
    async def apply() -> None:
        store = Store(url)
        await store.apply_schema()
        store.close()

    trio.run(apply)


if __name__ == "__main__":
    sys.exit(main())

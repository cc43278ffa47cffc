"""The load scenarios but backlog and ratelimit (in their own modules). Each adds its rows to a Run."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from actors import EmitterConfig, open_emitter
from actors.adapters.store import Store
from chipmock import Outage
from scripts import ROOT

from . import claimed
from . import outbox as outbox_load
from .backlog import backlog
from .chip import ChipProcess, chip_args, wait_for_unique
from .claimsize import claimsize
from .cpu import per_event_us, postgres_cpu, process_cpu
from .measure import (
    MAX_SECONDS_PER_PHASE,
    Latencies,
    cpu_seconds,
    emitter_config,
    measured,
    paced_emits,
    peak_rss_mb,
    pending_rows,
    publish_window,
    quantile,
    rss_trend,
)
from .mixed import mixed
from .progress import Progress
from .ratelimit import ratelimit
from .report import Run


async def ramp(args, url: str, run: Run, progress: Progress) -> None:
    """Offered load in steps; per step achieved rate, latencies, Q max; names the saturation point."""
    body = os.urandom(args.size)
    async with measured(url, chip_args(args.chip_latency, f"--jitter={args.chip_latency * 100:g}ms")) as m:
        saturated = None
        for step in args.steps:
            latencies: list[float] = []
            errors: list[str] = []
            before = m.emitter.statistics()
            t0 = time.monotonic() - m.sampler.started
            progress.show(f"ramp {step:,}/s", 0, 1, "running")
            done = await paced_emits(m.emitter, step, args.step_seconds, args.concurrency[0], body, latencies, errors)
            t1 = time.monotonic() - m.sampler.started
            pending_end = await pending_rows(m.store)
            mid = [p for t, p, _, _ in m.sampler.points if t0 + (t1 - t0) / 2 <= t <= t1]
            achieved = done / (t1 - t0)
            growing = pending_end > max(1000, 2 * (min(mid) if mid else 0))
            mean_ms, p99_ms = publish_window(before, m.emitter.statistics())
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


async def sustained(args, url: str, run: Run, progress: Progress) -> None:
    """N events as fast as possible: per caller count and emit batch (in one process), or per process count;
    with ``--claimed``, the claimed path too, against the emit_many(100) from 10 callers row."""
    for instances in args.instances:
        if instances == 1:
            for concurrency in args.concurrency:
                for batch in args.batch:
                    run.rows.append(await _sustained_in_process(args, url, concurrency, batch, progress))
        else:
            run.rows.append(await _sustained_processes(args, url, instances, progress))
    if args.claimed:
        fresh = next((row for row in run.rows if row.get("callers") == claimed.FRESH), None)
        if fresh is None:  # the reference the ratios need, when the rows asked for did not include it
            fresh = await _sustained_in_process(args, url, outbox_load.CONNECTIONS, outbox_load.BATCH, progress)
            run.rows.append(fresh)
        await trio.to_thread.run_sync(claimed.measure, args, url, run, fresh, progress)


async def _sustained_in_process(args, url: str, concurrency: int, batch: int, progress: Progress) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    label = f"{concurrency} callers x {'emit' if batch == 1 else f'emit_many({batch})'}"
    events = args.events // batch * batch
    pg_cpu = postgres_cpu(url)
    async with measured(url, chip_args(args.chip_latency)) as m:
        async def show() -> None:
            while True:  # until measured() cancels it
                done = len(latencies) * batch
                progress.show(f"sustained {label}", done, events, f"{done:,} emitted")
                await trio.sleep(0.5)

        m.nursery.start_soon(show)
        cpu_before, pg_before, chip_before = cpu_seconds(), pg_cpu(), process_cpu(m.chip.proc.pid)
        started = time.perf_counter()
        emitted = await paced_emits(m.emitter, 0, MAX_SECONDS_PER_PHASE, concurrency, os.urandom(args.size),
                                    latencies, errors, limit=events, batch=batch)
        emit_done = time.perf_counter()
        await m.emitter.flush(timeout=MAX_SECONDS_PER_PHASE)
        finished = time.perf_counter()
        cpu = cpu_seconds() - cpu_before
        pg_used, chip_used = (pg_before, pg_cpu()), (chip_before, process_cpu(m.chip.proc.pid))
    figures = m.chip_figures
    progress.done()
    publish = m.emitter.statistics().publish_seconds
    return {
        "implementation": "durable-emitter", "instances": 1, "callers": label, "events": emitted,
        "emit_per_s": round(emitted / (emit_done - started), 1),
        "end_to_end_per_s": round(emitted / (finished - started), 1), "emit_errors": len(errors),
        f"emit{'' if batch == 1 else '_call'}_p50_ms": round(quantile(latencies, 0.5) * 1000, 2),
        f"emit{'' if batch == 1 else '_call'}_p99_ms": round(quantile(latencies, 0.99) * 1000, 2),
        "publish_mean_ms": round(publish.mean * 1000, 2), "publish_p99_ms": round(publish.quantile(0.99) * 1000, 2),
        "q_max": m.sampler.q_max(), "drain_s": round(finished - emit_done, 2),
        "cpu_us_per_event": round(cpu / max(emitted, 1) * 1e6, 1),
        "pg_cpu_us_per_event": per_event_us(*pg_used, emitted), "chip_cpu_us_per_event": per_event_us(*chip_used, emitted),
        "delivered_unique": figures.unique,
    }


async def _sustained_processes(args, url: str, instances: int, progress: Progress) -> dict:
    """N separate emitter processes (``python -m scripts.workload``) on one table and one chipmock."""
    chip = ChipProcess(*chip_args(args.chip_latency))
    per_instance = args.events // instances
    folder = Path(tempfile.mkdtemp(prefix="load-ids-"))
    procs: list[subprocess.Popen] = []
    try:
        env = {**os.environ, "DATABASE_URL": url, "CHIP_INGRESS_ENDPOINT": chip.endpoint}
        started = time.perf_counter()
        for i in range(instances):
            procs.append(subprocess.Popen(  # noqa: ASYNC220  (starting them does not block)
                [sys.executable, "-m", "scripts.workload", "--ids-file", str(folder / f"{i}.txt"),
                 "--events", str(per_instance), "--concurrency", str(args.concurrency[0]), "--size", str(args.size),
                 "--duration", f"{MAX_SECONDS_PER_PHASE}s"],
                cwd=ROOT, env={**env, "DURABLE_EMITTER_INSTANCE_ID": f"load-{i}"}, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        store = Store(url)
        q_max = 0
        delivered: list[tuple[float, int]] = []
        with trio.move_on_after(MAX_SECONDS_PER_PHASE):
            while any(p.poll() is None for p in procs):  # noqa: ASYNC110  (child processes)
                q_max = max(q_max, await pending_rows(store))
                delivered.append((time.perf_counter(), (await trio.to_thread.run_sync(chip.figures)).unique))
                progress.show(f"sustained x{instances}", delivered[-1][1], args.events,
                              f"{delivered[-1][1]:,} delivered")
                await trio.sleep(0.1)
            while await pending_rows(store):  # noqa: ASYNC110  (the table, outside Trio)
                await trio.sleep(0.05)
        finished = time.perf_counter()
        figures = await trio.to_thread.run_sync(wait_for_unique, chip, instances * per_instance, 30.0)
        delivered.append((finished, figures.unique))
        store.close()
        progress.done()
        total = instances * per_instance
        return {
            "implementation": "durable-emitter", "instances": instances, "events": total,
            "end_to_end_per_s": steady_rate(delivered, total), "emit_errors": 0, "q_max": q_max,
            "delivered_unique": figures.unique,
            "wall_s_with_startup": round(finished - started, 2),
            "note": "rate between 10% and 90% delivered (process start-up excluded)",
        }
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        chip.stop()


def steady_rate(samples: list[tuple[float, int]], total: int) -> float:
    """Events/s between the moments 10% and 90% of ``total`` had been delivered."""
    low = next((t for t, n in samples if n >= 0.1 * total), None)
    high = next((t for t, n in samples if n >= 0.9 * total), None)
    if low is None or high is None or high <= low:
        return 0.0
    return round(0.8 * total / (high - low), 1)


async def tps(args, url: str, run: Run, progress: Progress) -> None:
    """Hold a target rate, optionally through a Chip outage (counted from Chip's start); time to drain afterwards."""
    outage = Outage.parse(args.outage) if args.outage else None
    latencies = Latencies()
    errors: list[str] = []
    extra = [f"--outage={args.outage}"] if outage else []
    async with measured(url, chip_args(args.chip_latency, *extra)) as m:
        async def show() -> None:
            while True:  # until measured() cancels it
                elapsed = time.monotonic() - m.sampler.started
                pending = m.sampler.points[-1][1] if m.sampler.points else 0
                progress.show(f"tps {args.rate:,.0f}/s", elapsed, args.duration,
                              f"{elapsed:,.0f}/{args.duration:g} s, pending {pending:,}")
                await trio.sleep(0.5)

        m.nursery.start_soon(show)
        started = time.monotonic()
        emitted = await paced_emits(m.emitter, args.rate, args.duration, args.concurrency[0], os.urandom(args.size),
                                    latencies, errors)
        elapsed = time.monotonic() - started
    progress.done()
    figures = m.chip_figures
    drain_s = None
    if outage:
        chip_to_sampler = m.chip.started - m.sampler.started  # Chip's windows count from its own start
        down, back = chip_to_sampler + outage.start, chip_to_sampler + outage.start + outage.duration
        before = [p for t, p, _, _ in m.sampler.points if t < down] or [0]
        steady = max(100, 2 * max(before))
        recovered = [t for t, p, _, _ in m.sampler.points if t >= back and p <= steady]
        drain_s = round(recovered[0] - back, 2) if recovered else None
    run.rows.append({
        "target_per_s": args.rate, "achieved_per_s": round(emitted / elapsed, 1),
        "emit_p99_ms": round(quantile(latencies, 0.99) * 1000, 2), "emit_errors": len(errors),
        "delivery_p50_ms": round(figures.ages.quantile(0.5) * 1000, 1),
        "delivery_p99_ms": round(figures.ages.quantile(0.99) * 1000, 1),
        "q_max": m.sampler.q_max(), "outage": args.outage or "none", "drain_after_outage_s": drain_s,
        "duplicates": figures.duplicates, **rss_trend(m.sampler.rss),
    })
    run.series["pending"] = m.sampler.points
    run.series["rss_mb"] = m.sampler.rss


async def latency(args, url: str, run: Run, progress: Progress) -> None:
    """Emit -> received by Chip, p50/p99, at each offered rate and each publish linger."""
    for linger in args.lingers or [EmitterConfig.publish_linger]:
        for rate in args.rates:
            latencies: list[float] = []
            errors: list[str] = []
            label = f"linger {linger * 1000:g} ms, {rate:,.0f}/s"
            async with measured(url, chip_args(args.chip_latency), publish_linger=linger) as m:
                progress.show(f"latency {label}", 0, 1, f"{args.duration:g} s")
                emitted = await paced_emits(m.emitter, rate, args.duration, args.concurrency[0],
                                            os.urandom(args.size), latencies, errors)
                publish_calls = m.emitter.statistics().publish_seconds.count
            figures = m.chip_figures
            progress.show(f"latency {label}", 1, 1, f"delivery p99 {figures.ages.quantile(0.99) * 1000:.1f} ms")
            progress.done()
            run.rows.append({
                "publish_linger_ms": linger * 1000, "offered_per_s": rate, "events": emitted,
                "emit_p50_ms": round(quantile(latencies, 0.5) * 1000, 2),
                "emit_p99_ms": round(quantile(latencies, 0.99) * 1000, 2),
                "delivery_p50_ms": round(figures.ages.quantile(0.5) * 1000, 1),
                "delivery_p99_ms": round(figures.ages.quantile(0.99) * 1000, 1),
                "publish_calls": publish_calls, "events_per_call": round(emitted / max(publish_calls, 1), 1),
                "emit_errors": len(errors), "delivered_unique": figures.unique,
            })
    run.notes.append("delivery = Chip's arrival time - the event's recordedtime (set in emit, ms precision: "
                     "up to 1 ms more than the true figure); Chip runs in its own process on this machine")


async def payload(args, url: str, run: Run, progress: Progress) -> None:
    """Event sizes from 64 B to 1 MiB: events/s, MB/s, peak RSS."""
    with ChipProcess(*chip_args(args.chip_latency)) as chip:
        for size in sorted(args.sizes):  # ascending, so the process-lifetime RSS peak is this size's
            config = emitter_config(url, chip.endpoint, max_event_bytes=max(4 * 1024 * 1024, size + 4096))
            async with open_emitter(config) as emitter:
                latencies: list[float] = []
                errors: list[str] = []
                count = max(20, min(args.events, int(args.bytes_per_size // size)))
                progress.show(f"payload {size:,} B", 0, 1, f"{count:,} events")
                started = time.perf_counter()
                emitted = await paced_emits(emitter, args.rate, MAX_SECONDS_PER_PHASE, args.concurrency[0],
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


async def outbox(args, url: str, run: Run, progress: Progress) -> None:
    """The outbox: commit -> Chip with LISTEN and with the scan alone; emit_many's rate beside Emitter's."""
    for listening in (True, False):
        run.rows.append(await trio.to_thread.run_sync(outbox_load.latency, args, url, listening, progress))
    row = await _sustained_in_process(args, url, outbox_load.CONNECTIONS, outbox_load.BATCH, progress)
    row["callers"] = f"Emitter.emit_many({outbox_load.BATCH}), {outbox_load.CONNECTIONS} callers, emitter in this process"
    run.rows.append(row)
    run.rows.append(await trio.to_thread.run_sync(outbox_load.throughput, args, url, progress))
    run.notes.append("delivery = Chip's arrival - recordedtime (set as the outbox builds the event, before its INSERT "
                     "and the commit; ms precision); chipmock, the emitter processes and Postgres share this machine")


SCENARIOS = {"ramp": ramp, "sustained": sustained, "tps": tps, "latency": latency, "payload": payload,
             "backlog": backlog, "ratelimit": ratelimit, "outbox": outbox, "mixed": mixed, "claimsize": claimsize}

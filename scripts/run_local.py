"""``just run-local`` (``python -m scripts.run_local``): the local environment in one command.

Starts (or reuses) the embedded PostgreSQL unless ``DATABASE_URL`` is set,
starts chipmock unless ``CHIP_INGRESS_ENDPOINT`` is set (then it talks to that
Chip, with TLS / basic auth from ``CHIP_INGRESS_*``), and runs a workflow host
that embeds the emitter: N simulated cron workflows, each emitting one
beholder-style event per interval. Shows a live view (or one JSON line per
interval when stdout is not a terminal); Ctrl-C stops everything and prints a
summary. Events still pending stay in the table and go out on the next run.

On a terminal, Ctrl-C is read as a key while the view runs instead of being a
SIGINT to the whole foreground process group: ``just`` (in that group) would
otherwise report "interrupted by SIGINT" and exit 130 however cleanly run-local
stopped. ``kill -INT`` / ``kill -TERM`` stop it the same way.
"""

from __future__ import annotations

import signal
import sys

STOPPED_WHILE_STARTING = ("\nrun-local stopped while starting (Ctrl-C): nothing was emitted; pending rows, if any, "
                          "stay in the table for the next run.")


def _stopped_while_importing(*_: object) -> None:
    print(STOPPED_WHILE_STARTING, flush=True)
    sys.exit(130)


# Ctrl-C during the imports below (grpc, trio, ... take a while) gets the summary too, not a traceback.
signal.signal(signal.SIGINT, _stopped_while_importing)

import argparse
import dataclasses
import json
import os
import socket
import tempfile
import termios
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import trio

import chipmock
from actors import EmitterConfig, EmitterError, open_emitter
from actors.adapters import schema
from actors.adapters.driver import Session
from actors.adapters.operations import Operations
from actors.adapters.postgres import start_embedded
from actors.logs import LOG_FORMATS, configure_logging
from chipmock.auth import AuthPolicy
from scripts.args_and_databases import duration

EMITTER_METRICS_PORT = 9465
CHIPMOCK_METRICS_PORT = 9464
STDIN = 0


@dataclass(frozen=True)
class EmitterFigures:
    """What run-local reads from the emitter at one moment."""

    emitted: int
    delivered: int
    dead_lettered: int
    retries: int
    publish_p50_ms: float
    publish_p99_ms: float


def emitter_figures(emitter) -> EmitterFigures:
    """The one place run-local reads the emitter's metrics."""
    stats = emitter.statistics()
    return EmitterFigures(
        emitted=stats.emitted, delivered=stats.delivered, dead_lettered=stats.dead_lettered,
        retries=stats.publish_retries,
        publish_p50_ms=round(stats.publish_seconds.quantile(0.5) * 1000, 2),
        publish_p99_ms=round(stats.publish_seconds.quantile(0.99) * 1000, 2),
    )


@dataclass
class Sample:
    """One refresh of the live view."""

    elapsed_s: float
    inserts: int
    deletes: int
    inserts_per_s: float
    deletes_per_s: float
    pending: int
    oldest_pending_s: float
    emitted: int
    emit_per_s: float
    publish_p50_ms: float
    publish_p99_ms: float
    retries: int
    dead_lettered: int
    chip_received: int | None
    chip_unique: int | None
    chip_duplicates: int | None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run-local", description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=5, help="simulated cron workflows (default 5)")
    parser.add_argument("--interval", type=duration, default=1.0, help="cron interval per workflow (default 1s)")
    parser.add_argument("--payload-size", type=int, default=256, help="event body bytes (default 256)")
    parser.add_argument("--duration", type=duration, default=0.0, help="stop after this long (default: until Ctrl-C)")
    parser.add_argument("--refresh", type=duration, default=1.0, help="live view refresh interval (default 1s)")
    parser.add_argument("--chip-latency", type=duration, default=0.0, help="chipmock latency, e.g. 50ms")
    parser.add_argument("--metrics-port", type=int, default=EMITTER_METRICS_PORT,
                        help=f"emitter /metrics port on 127.0.0.1 (default {EMITTER_METRICS_PORT}; 0 picks one)")
    parser.add_argument("--chipmock-metrics-port", type=int, default=CHIPMOCK_METRICS_PORT,
                        help=f"chipmock /metrics port on 127.0.0.1 (default {CHIPMOCK_METRICS_PORT}; 0 picks one)")
    parser.add_argument("--node-auth", action="store_true",
                        help="sign Chip's node token with a key generated for this run; chipmock verifies it")
    parser.add_argument("--json", action="store_true", help="one JSON line per interval even on a terminal")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="auto",
                        help="log lines on stderr: console, json, or auto (console on a terminal; default)")
    return parser


async def workflow(emitter, index: int, interval: float, body: bytes, stop: trio.Event) -> None:
    """A cron workflow: one beholder-style event per tick, like a CRE trigger, until ``stop``.

    It stops between ticks: an emit under way is never cancelled, because a
    cancelled emit may still be committed (and delivered) without being counted
    as emitted.
    """
    attributes = {
        "beholder_domain": "workflows", "beholder_entity": "cron.TriggerEvent",
        "beholder_data_schema": "/cre/workflows/cron/v1", "workflowid": f"wf-{index:04d}",
    }
    next_tick = trio.current_time()
    while not stop.is_set():
        try:
            await emitter.emit(body, attributes=attributes)
        except EmitterError as exc:  # the host keeps running; the view shows the failures
            print(f"workflow {index}: emit failed: {exc}", file=sys.stderr)
        next_tick += interval
        with trio.move_on_at(next_tick):
            await stop.wait()


def generated_node_key(stack: ExitStack) -> tuple[AuthPolicy, Path]:
    """An ed25519 key made for this run (its seed in a private temporary file, removed at the end)
    and the chipmock policy that admits only tokens it signed."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="run-local-key-")))
    path = folder / "node.key"
    path.touch(mode=0o600)
    path.write_text(key.private_bytes_raw().hex())
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return AuthPolicy(token_keys=(public,)), path


def render(sample: Sample, args: argparse.Namespace, where: dict[str, str]) -> str:
    chip = ("-" if sample.chip_received is None else
            f"{sample.chip_received} received, {sample.chip_unique} unique, {sample.chip_duplicates} duplicates")
    rows = [
        ("elapsed", f"{sample.elapsed_s:,.0f} s    workflows {args.workflows} x every {args.interval:g}s"),
        ("inserts", f"{sample.inserts:,} total, {sample.inserts_per_s:,.1f}/s"),
        ("deletes", f"{sample.deletes:,} total, {sample.deletes_per_s:,.1f}/s"),
        ("pending", f"{sample.pending:,} rows, oldest {sample.oldest_pending_s:.2f} s"),
        ("emitted", f"{sample.emitted:,} total, {sample.emit_per_s:,.1f}/s"),
        ("publish", f"p50 {sample.publish_p50_ms:.1f} ms, p99 {sample.publish_p99_ms:.1f} ms"),
        ("retries", f"{sample.retries:,}    dead-lettered {sample.dead_lettered:,}"),
        ("chip", chip),
    ]
    lines = ["durable-emitter run-local   (Ctrl-C to stop)", ""]
    lines += [f"  {name:<8} {text}" for name, text in rows]
    lines += ["", *(f"  {k}: {v}" for k, v in where.items())]
    return "\x1b[H\x1b[J" + "\n".join(lines) + "\n"


def usable_port(port: int, what: str) -> int:
    """``port`` if it is free, else a free one, said on stderr: run-local never dies on a busy port."""
    if port == 0:
        return 0
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            return port
        except OSError:
            pass
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free: int = probe.getsockname()[1]
    print(f"run-local: port {port} is in use; {what} on port {free} instead", file=sys.stderr)
    return free


async def rows_waiting(url: str, schema_name: str) -> int:
    """Rows in the table before the emitter starts (an earlier run's); 0 when there is no table yet."""
    if (await trio.to_thread.run_sync(schema.inspect, url, schema_name)).install:
        return 0
    store = Operations(url, Session(schema=schema_name))
    try:
        return (await store.pending_stats()).rows
    finally:
        store.close()


async def run(args: argparse.Namespace) -> int:
    mock = None
    try:
        config = EmitterConfig.from_env(
            metrics_port=usable_port(args.metrics_port, "emitter metrics"), log_interval=3600.0,
            embedded_postgres=not os.environ.get("DATABASE_URL"))
        # Before chipmock starts gRPC: Postgres' start forks, and a fork while
        # gRPC threads run prints grpc's fork_posix warnings.
        url = config.database_url or await trio.to_thread.run_sync(start_embedded, config.data_dir)
        waiting = await rows_waiting(url, config.schema)  # before the emitter delivers any of them
    except EmitterError as exc:
        print(f"run-local: {exc}", file=sys.stderr)
        return 2
    stack = ExitStack()
    auth = None
    if not config.chip_endpoint:
        auth, key_file = (generated_node_key(stack) if args.node_auth else (None, None))
        mock = chipmock.start(chipmock.ChipModel(latency=args.chip_latency), auth=auth,
                              metrics_port=usable_port(args.chipmock_metrics_port, "chipmock metrics"))
        config = dataclasses.replace(config, chip_endpoint=mock.endpoint, chip_auth_key_file=key_file)
    elif args.node_auth:
        print("run-local: --node-auth is ignored: CHIP_INGRESS_ENDPOINT is set, so no chipmock runs to verify "
              "a key made for this run (CHIP_INGRESS_AUTH_KEY_FILE names the node's own key)", file=sys.stderr)
    interactive = sys.stdout.isatty() and not args.json
    try:
        async with open_emitter(config) as emitter:
            where = {
                "database": config.redacted_database_url() if config.database_url else f"embedded, data in {config.data_dir}",
                "chip": (f"chipmock at {mock.endpoint}" if mock else f"Chip at {emitter.chip_endpoint}")
                + (" (node token of a key made for this run, verified)" if auth else ""),
                "metrics": f"http://127.0.0.1:{emitter.metrics_port}/metrics"
                + (f" and chipmock http://127.0.0.1:{mock.metrics_port}/metrics" if mock else ""),
            }
            if not interactive:
                print(json.dumps({"event": "run-local started", **where}), flush=True)
            store = Operations(emitter.database_url, Session(schema=config.schema))
            stack.callback(store.close)
            summary = await watch(args, emitter, store, mock, where, interactive)
        pending = (await store.pending_stats()).rows  # after shutdown: what stays for the next run
    except EmitterError as exc:
        print(f"run-local: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.close()
        if mock is not None:
            mock.stop(grace=1)
    figures = emitter_figures(emitter)
    # The delivered count includes rows an earlier run left pending: say so, so that
    # emitted + waiting = delivered + dead-lettered + pending when run-local is the table's only user.
    if not interactive:
        print(json.dumps({"event": "run-local stopped", "elapsed_s": summary.elapsed_s, "emitted": figures.emitted,
                          "waiting_before": waiting, "delivered": figures.delivered,
                          "dead_lettered": figures.dead_lettered, "pending": pending}), flush=True)
    earlier = f", plus {waiting:,} left pending by an earlier run" if waiting else ""
    print(f"\nrun-local stopped after {summary.elapsed_s:,.0f} s: {figures.emitted:,} emitted{earlier}; "
          f"{figures.delivered:,} delivered and deleted, {figures.dead_lettered:,} dead-lettered; "
          f"{pending:,} pending rows stay in the table for the next run.", flush=True)
    return 0


async def watch(args, emitter, store: Operations, mock, where, interactive: bool) -> Sample:
    async def counters() -> tuple[int, int]:
        activity = await store.table_activity()
        return activity.inserts, activity.deletes

    base_ins, base_del = await counters()
    started = time.monotonic()
    last: Sample | None = None
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        for index in range(args.workflows):
            nursery.start_soon(workflow, emitter, index, args.interval, os.urandom(args.payload_size), stop)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals, ctrl_c_as_a_key() as take_ctrl_c:
            with trio.move_on_after(args.duration or float("inf")):
                async with trio.open_nursery() as waiter:
                    waiter.start_soon(_first_signal, signals, waiter.cancel_scope)
                    if take_ctrl_c is not None:
                        waiter.start_soon(_ctrl_c_typed, take_ctrl_c, waiter.cancel_scope)
                    while True:
                        await trio.sleep(args.refresh)
                        last = await sample(emitter, store, mock, counters, base_ins, base_del, started, last)
                        if interactive:
                            print(render(last, args, where), end="", flush=True)
                        else:
                            print(json.dumps({"event": "run-local interval", **asdict(last)}), flush=True)
        stop.set()  # the workflows finish the emit under way; from here a second Ctrl-C interrupts
    return await sample(emitter, store, mock, counters, base_ins, base_del, started, last)  # at the stop


async def _first_signal(signals, scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
        return


@contextmanager
def ctrl_c_as_a_key() -> Iterator[Callable[[], None] | None]:
    """While the view runs, a terminal's Ctrl-C is a key run-local reads (on stdin), not a SIGINT.

    The terminal sends SIGINT to its whole foreground process group, ``just``
    included, and just then ends a cleanly stopped run with "error: interrupted by
    SIGINT" and exit 130. With the terminal's interrupt character switched off
    (and line buffering and echo with it), Ctrl-C arrives as the byte 0x03;
    Ctrl-Z and Ctrl-\\ keep their signals. The terminal is restored on the way out.
    Yields how to set that mode again (a shell resets the terminal when Ctrl-Z
    stops a job), or None when stdin is not a terminal this process has in the
    foreground. In the background (Ctrl-Z, then ``bg``) the terminal is the shell's.
    """
    if not os.isatty(STDIN) or not _in_the_foreground():
        yield None
        return
    saved = termios.tcgetattr(STDIN)
    mode = termios.tcgetattr(STDIN)
    mode[3] &= ~(termios.ICANON | termios.ECHO)
    mode[6][termios.VINTR] = 0  # _POSIX_VDISABLE: no key sends SIGINT
    mode[6][termios.VMIN], mode[6][termios.VTIME] = 1, 0

    def take_ctrl_c() -> None:
        if _in_the_foreground():  # else changing the terminal would stop us (SIGTTOU)
            termios.tcsetattr(STDIN, termios.TCSANOW, mode)

    take_ctrl_c()
    try:
        yield take_ctrl_c
    finally:
        if _in_the_foreground():
            termios.tcsetattr(STDIN, termios.TCSANOW, saved)


def _in_the_foreground() -> bool:
    try:
        return os.tcgetpgrp(STDIN) == os.getpgrp()
    except OSError:
        return False


async def _ctrl_c_typed(take_ctrl_c: Callable[[], None], scope: trio.CancelScope) -> None:
    """Cancel ``scope`` at the first Ctrl-C typed.

    Twice a second it sets the terminal's mode again: after Ctrl-Z and ``fg``
    (or ``bg`` and ``fg``) the shell has reset it. In the background, what is
    typed is the shell's, and reading it would stop us (SIGTTIN).
    """
    while True:
        take_ctrl_c()
        with trio.move_on_after(0.5):
            await trio.lowlevel.wait_readable(STDIN)
            if not _in_the_foreground():
                await trio.sleep(0.5)
                continue
            try:
                typed = os.read(STDIN, 64)
            except OSError:  # the terminal went away (its SIGHUP ends us)
                return
            if not typed:
                return
            if b"\x03" in typed:
                scope.cancel()
                return


async def sample(emitter, store, mock, counters, base_ins, base_del, started, last) -> Sample:
    inserts, deletes = await counters()
    stats = await store.pending_stats()
    figures = emitter_figures(emitter)
    elapsed = time.monotonic() - started
    span = elapsed - (last.elapsed_s if last else 0.0) or 1.0
    snap = mock.counters.snapshot() if mock else None
    current = Sample(
        elapsed_s=round(elapsed, 3), inserts=inserts - base_ins, deletes=deletes - base_del,
        inserts_per_s=0.0, deletes_per_s=0.0, pending=stats.rows,
        oldest_pending_s=round(stats.oldest_age_seconds, 3), emitted=figures.emitted, emit_per_s=0.0,
        publish_p50_ms=figures.publish_p50_ms, publish_p99_ms=figures.publish_p99_ms,
        retries=figures.retries, dead_lettered=figures.dead_lettered,
        chip_received=snap.received if snap else None, chip_unique=snap.unique if snap else None,
        chip_duplicates=snap.duplicates if snap else None,
    )
    previous = last or Sample(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, None, None, None)
    current.inserts_per_s = round((current.inserts - previous.inserts) / span, 1)
    current.deletes_per_s = round((current.deletes - previous.deletes) / span, 1)
    current.emit_per_s = round((current.emitted - previous.emitted) / span, 1)
    return current


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 1 <= args.workflows <= 10_000:
        parser.error("--workflows must be between 1 and 10000")
    if not 0 <= args.payload_size <= 4 * 1024 * 1024:
        parser.error("--payload-size must be between 0 and 4194304")
    if args.interval <= 0 or args.refresh <= 0:
        parser.error("--interval and --refresh must be greater than 0")
    configure_logging(args.log_format)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # trio handles Ctrl-C from here on
    try:
        return trio.run(run, args)
    except BaseException as exc:  # Ctrl-C before the live view took over signals: still a summary
        interrupted, rest = (exc, None) if isinstance(exc, KeyboardInterrupt) else (
            exc.split(KeyboardInterrupt) if isinstance(exc, BaseExceptionGroup) else (None, exc))
        if interrupted is None or rest is not None:
            raise
        print(STOPPED_WHILE_STARTING, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""A soak host (``python -m scripts.soak.host MODE``): emits through the public API, recording what was acknowledged.

MODE is how it emits: ``emit`` (Trio tasks calling ``Emitter.emit``),
``emit_many`` (batches), ``outbox`` (``actors.outbox`` in the host's own psycopg
transaction, next to a row of its own; a blocking emitter in the same process
delivers) or ``asyncio`` (``open_asyncio_emitter`` on an asyncio loop).

Each id goes to ``--acked`` with the time its ``emit`` (or the commit) returned,
one write per call, so the file of a SIGKILLed host lists exactly what it was
told was durable. With ``--reject-rate F``, that fraction of its events carry
:data:`REJECT_MARK` in their bytes (chipmock is told to reject those for good),
and their ids go to ``--rejected`` first. Emits until ``--until`` (unix time),
then only delivers; SIGTERM: stops emitting, flushes, appends ``<pid> <the
emitter's statistics().dead_lettered>`` to ``--counters`` and exits. Configuration
comes from the environment, as for any host.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import trio

from actors import (
    EmitterConfig,
    EmitterError,
    open_asyncio_emitter,
    open_blocking_emitter,
    open_emitter,
    outbox,
)
from actors.logs import configure_logging

MODES = ("emit", "emit_many", "outbox", "asyncio")
BATCH = 10  # events per emit_many call, and per outbox transaction
FLUSH_TIMEOUT = 20.0
BODY = b"soak " + b"x" * 250
REJECT_MARK = "soak-reject-me"  # chipmock rejects (VALIDATION_FAILED) every event whose bytes contain it
REJECT_BODY = f"soak {REJECT_MARK} ".encode() + b"x" * 235
OUTBOX_DEADLINE = 30.0  # an outbox transaction stuck longer has its socket shut (the host's own deadline)


def _append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


class Acked:
    """The acknowledged-ids file, ``<id> <unix time>`` a line, and the same of the marked ones in ``rejected``.

    One ``write`` per call to each; the marked ids first, so an id acknowledged is
    never missing from ``rejected`` (a kill in between leaves one there that was
    committed, not yet acknowledged: it is dead-lettered all the same).
    """

    def __init__(self, path: str, rejected: str) -> None:
        self._fd, self._rejected = _append(path), _append(rejected)

    def record(self, event_ids: list[str], bodies: list[bytes]) -> None:
        stamp = f" {time.time():.6f}\n"
        marked = [event_id for event_id, body in zip(event_ids, bodies, strict=True) if body == REJECT_BODY]
        if marked:
            os.write(self._rejected, "".join(event_id + stamp for event_id in marked).encode())
        os.write(self._fd, "".join(event_id + stamp for event_id in event_ids).encode())


class Marks:
    """Which bodies carry the reject mark: the events whose count crosses the next multiple of ``1 / rate``."""

    def __init__(self, rate: float) -> None:
        self.rate, self.count = rate, 0

    def bodies(self, count: int) -> list[bytes]:
        found = []
        for _ in range(count):
            self.count += 1
            found.append(REJECT_BODY if int(self.count * self.rate) > int((self.count - 1) * self.rate) else BODY)
        return found


def _report(args: argparse.Namespace, dead_lettered: int) -> None:
    """The library's own counter of this process, for the checker to sum against the dead-letter table."""
    with open(args.counters, "a") as file:
        file.write(f"{os.getpid()} {dead_lettered}\n")


class Failures:
    """Emits that raised: one line when the kind of failure changes, else at most one every 5 s."""

    def __init__(self) -> None:
        self._last_kind, self._last_at, self._since = "", 0.0, 0

    def note(self, exc: BaseException) -> None:
        kind, now = type(exc).__name__, time.monotonic()
        self._since += 1
        if kind != self._last_kind or now - self._last_at > 5:
            print(f"soak host: {self._since} failed, last {kind}: {str(exc)[:300]}", file=sys.stderr, flush=True)
            self._last_kind, self._last_at, self._since = kind, now, 0


class Pacer:
    """When a loop's next call is due, for ``rate`` calls/s; a loop held up does not burst to catch up."""

    def __init__(self, rate: float, now: float) -> None:
        self.gap, self.next_at = 1.0 / rate, now

    def due(self, now: float) -> float:
        self.next_at = max(self.next_at + self.gap, now)
        return self.next_at


def _ready(mode: str, config: EmitterConfig) -> None:
    print(f"soak host ready mode={mode} instance={config.instance_id}", flush=True)


async def _trio_host(args: argparse.Namespace) -> None:
    config = EmitterConfig.from_env()
    acked, failures, marks = Acked(args.acked, args.rejected), Failures(), Marks(args.reject_rate)
    calls_per_task = args.rate / args.tasks / (BATCH if args.mode == "emit_many" else 1)
    async with open_emitter(config) as emitter:
        _ready(args.mode, config)

        async def emit_loop(index: int) -> None:
            pacer = Pacer(calls_per_task, trio.current_time() + index / args.rate)
            while time.time() < args.until:
                await trio.sleep_until(pacer.due(trio.current_time()))
                bodies = marks.bodies(1 if args.mode == "emit" else BATCH)
                try:
                    if args.mode == "emit":
                        ids = [await emitter.emit(bodies[0], source="soak", type="emit")]
                    else:
                        ids = await emitter.emit_many(bodies, source="soak", type="emit_many")
                except EmitterError as exc:
                    failures.note(exc)
                    continue
                acked.record(ids, bodies)

        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                for index in range(args.tasks):
                    nursery.start_soon(emit_loop, index)
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()
        try:
            await emitter.flush(timeout=FLUSH_TIMEOUT)
        except EmitterError as exc:
            failures.note(exc)
        _report(args, emitter.statistics().dead_lettered)


async def _asyncio_host(args: argparse.Namespace) -> None:
    config = EmitterConfig.from_env()
    acked, failures, marks = Acked(args.acked, args.rejected), Failures(), Marks(args.reject_rate)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with open_asyncio_emitter(config) as emitter:
        _ready(args.mode, config)

        async def emit_loop(index: int) -> None:
            pacer = Pacer(args.rate / args.tasks, loop.time() + index / args.rate)
            while time.time() < args.until:
                await asyncio.sleep(max(0.0, pacer.due(loop.time()) - loop.time()))
                bodies = marks.bodies(1)
                try:
                    event_id = await emitter.emit(bodies[0], source="soak", type="asyncio")
                except EmitterError as exc:
                    failures.note(exc)
                    continue
                acked.record([event_id], bodies)

        tasks = [asyncio.create_task(emit_loop(index)) for index in range(args.tasks)]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await emitter.flush(timeout=FLUSH_TIMEOUT)
        except EmitterError as exc:
            failures.note(exc)
        _report(args, emitter.statistics().dead_lettered)


@contextmanager
def _deadline(conn: psycopg.Connection[Any], seconds: float) -> Iterator[None]:
    """Shut the connection's socket if the block outlives ``seconds``: psycopg's blocking calls then fail."""
    def cut() -> None:
        try:
            with socket.socket(fileno=os.dup(conn.fileno())) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    timer = threading.Timer(seconds, cut)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _outbox_host(args: argparse.Namespace) -> None:
    config = EmitterConfig.from_env()
    assert config.database_url is not None
    acked, failures, marks = Acked(args.acked, args.rejected), Failures(), Marks(args.reject_rate)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with open_blocking_emitter(config) as emitter:
        _ready(args.mode, config)
        conn: psycopg.Connection[Any] | None = None
        pacer = Pacer(args.rate / BATCH, time.monotonic())
        while not stop.wait(max(0.0, pacer.due(time.monotonic()) - time.monotonic())):
            if time.time() >= args.until:
                continue
            bodies = marks.bodies(BATCH)
            try:
                conn = conn or psycopg.connect(config.database_url, autocommit=True, connect_timeout=5)
                with _deadline(conn, OUTBOX_DEADLINE), conn.transaction():
                    conn.execute("INSERT INTO soak_orders (note) VALUES ('outbox')")
                    ids = outbox.emit_many(conn, bodies, source="soak", type="outbox")
            except (psycopg.Error, EmitterError) as exc:
                failures.note(exc)
                if conn is not None:
                    conn.close()
                conn = None
                continue
            acked.record(ids, bodies)
        if conn is not None:
            conn.close()
        try:
            emitter.flush(timeout=FLUSH_TIMEOUT)
        except EmitterError as exc:
            failures.note(exc)
        _report(args, emitter.statistics().dead_lettered)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--acked", required=True, help="file of acknowledged ids (appended)")
    parser.add_argument("--rate", type=float, default=150.0, help="events/s (default 150)")
    parser.add_argument("--tasks", type=int, default=4, help="concurrent emit loops (emit, emit_many, asyncio)")
    parser.add_argument("--until", type=float, required=True, help="unix time to stop emitting at")
    parser.add_argument("--reject-rate", type=float, default=0.0, help="fraction of events marked for rejection")
    parser.add_argument("--rejected", required=True, help="file of the marked ids (appended)")
    parser.add_argument("--counters", required=True, help="file of each clean stop's dead-letter counter (appended)")
    args = parser.parse_args(argv)
    configure_logging("json")
    if args.mode == "outbox":
        _outbox_host(args)
    elif args.mode == "asyncio":
        asyncio.run(_asyncio_host(args))
    else:
        trio.run(_trio_host, args)
    print("soak host done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

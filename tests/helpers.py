"""Plain functions the tests share: reading the database, emitting, waiting, reading a child's output.

Tests import these (``from tests.helpers import query, wait_until``); the
fixtures in ``tests/fix_*.py`` do too. Nothing here is a fixture or a pytest
plugin, and nothing here imports from ``scripts/`` (the programs under test).
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import IO, Protocol

import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from actors import EmitterConfig

# `just chaos` runs the fault suite with CHAOS_SCALE > 1: more rounds, more events.
CHAOS_SCALE = max(1, int(os.environ.get("CHAOS_SCALE", "1") or 1))


# -- Postgres ------------------------------------------------------------------------------------


def query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Run ``sql`` on a connection of its own (autocommit); its rows, or [] for a statement."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def pending_ids(url: str) -> set[str]:
    return {row[0] for row in query(url, "SELECT id FROM chip_durable_events")}


def dead_letters(url: str) -> dict[str, tuple[str, str]]:
    rows = query(url, "SELECT id, reason_code, reason FROM chip_durable_events_dead_letter")
    return {row[0]: (row[1], row[2]) for row in rows}


def refuse_rows_containing(url: str, text: str) -> None:
    """A trigger on the events table that refuses (check_violation) any row whose payload contains ``text``."""
    query(url, f"""CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
                   BEGIN IF position('{text}'::bytea IN NEW.payload) > 0 THEN
                     RAISE EXCEPTION 'poisoned row (simulated)' USING ERRCODE = 'check_violation';
                   END IF; RETURN NEW; END $$""")
    query(url, "CREATE TRIGGER refuse_poison BEFORE INSERT ON chip_durable_events "
               "FOR EACH ROW EXECUTE FUNCTION refuse_poison()")


@contextmanager
def scratch_database(server: str, prefix: str) -> Iterator[str]:
    """A new empty database ``<prefix>_<random>`` on ``server``; yields its URL, drops it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    query(server, f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(server, dbname=name)
    finally:
        query(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class _Listening(Protocol):
    port: int


def through_proxy(database_url: str, proxy: _Listening) -> str:
    """The same database, reached over TCP through ``proxy`` (a ``TcpProxy`` from the ``start_proxy`` fixture)."""
    return make_conninfo(database_url, host="127.0.0.1", port=proxy.port)


def postgres_socket(database_url: str) -> str:
    """Where a URL's server listens: its Unix socket path, or host:port."""
    params = conninfo_to_dict(database_url)
    host, port = str(params.get("host") or "localhost"), str(params.get("port") or "5432")
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else f"{host}:{port}"


# -- emitting and waiting ------------------------------------------------------------------------


def quick_config(chip, *, database_url: str, **knobs) -> EmitterConfig:
    """A config on ``database_url`` and ``chip``, quick to react (what the ``make_config`` fixture makes)."""
    defaults = dict(
        database_url=database_url, chip_endpoint=chip.endpoint,
        scan_interval=0.1, sample_interval=0.1, retry_initial=0.02, retry_max=0.2,
        publish_timeout=2.0, shutdown_timeout=2.0,
    )
    return EmitterConfig(**{**defaults, **knobs})


async def wait_until(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``predicate`` (run in a thread: it may do I/O) until true, or fail after ``timeout``."""
    with trio.move_on_after(timeout):
        # Polls state outside Trio (the database, a gRPC server), which no Event can signal.
        while not await trio.to_thread.run_sync(predicate):  # noqa: ASYNC110
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def emit_concurrently(emitter, count: int, *, emitters: int = 10, size: int | None = None) -> set[str]:
    """``count`` events from ``emitters`` concurrent tasks; return the ids emit() returned.

    Bodies are ``size`` bytes, or short distinct texts when ``size`` is None.
    """
    ids: set[str] = set()

    async def emit_some(n: int) -> None:
        for i in range(n):
            body = f"body {i}".encode() if size is None else b"x" * size
            ids.add(await emitter.emit(body, source="wf", type="tick"))

    async with trio.open_nursery() as nursery:
        for _ in range(emitters):
            nursery.start_soon(emit_some, count // emitters)
    return ids


def ids_from_threads(call: Callable[[], list[str]], threads: int) -> list[str]:
    """Run ``call`` in ``threads`` threads at once (a threaded host's callers); every id they returned."""
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(call) for _ in range(threads)]
        return [event_id for future in futures for event_id in future.result()]


# -- child processes -----------------------------------------------------------------------------


class ChildOutput:
    """A child process's stdout or stderr (opened with ``text=True``), read line by line, each wait bounded.

    A daemon thread reads the pipe into a queue, so no read in a test can block
    past its deadline and the child never stalls on a full pipe. Once this
    reads a stream, nothing else may (no ``communicate()``): use ``proc.wait``
    and :meth:`rest`.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._ended = False
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                self._lines.put(line)
        self._lines.put("")  # end of stream

    def line(self, timeout: float, what: str = "a line of output") -> str:
        """The next line, or ``""`` once the child closed the stream; AssertionError after ``timeout``."""
        if self._ended:
            return ""
        try:
            line = self._lines.get(timeout=max(0.0, timeout))
        except queue.Empty:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}") from None
        self._ended = line == ""
        return line

    def rest(self, timeout: float) -> str:
        """Everything up to the end of the stream (the child exited or closed it), within ``timeout``."""
        deadline = time.monotonic() + timeout
        lines = []
        while line := self.line(deadline - time.monotonic(), what="the end of the output"):
            lines.append(line)
        return "".join(lines)

"""The operator's commands behind ``durable-emitter``: status, dlq, drain and schema, one function each.

Each takes the configuration and the parsed arguments and returns the exit code.
The runtime (trio, psycopg, grpc, prometheus_client) is imported inside the
commands that use it, so ``--version`` and ``--help`` answer without loading it;
status loads psycopg alone and runs without Trio, dlq loads the store, and only drain loads
the actor tree.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING

from .config import EmitterConfig
from .errors import ConfigError

if TYPE_CHECKING:
    from .adapters.operations import Operations
    from .adapters.table_report import OwnerLiveness
    from .core.schema_plan import Plan


def choose_database(config: EmitterConfig, *, embedded: bool) -> EmitterConfig:
    """``DATABASE_URL``, or run-local's embedded PostgreSQL when asked or when it exists; else refuse."""
    if config.database_url:
        return config
    from .adapters.postgres import embedded_exists

    if embedded or config.embedded_postgres or embedded_exists(config.data_dir):
        print(f"durable-emitter: using the embedded PostgreSQL in {config.data_dir} (no DATABASE_URL)",
              file=sys.stderr)
        return dataclasses.replace(config, embedded_postgres=True)
    raise ConfigError(
        f"no database: set DATABASE_URL (postgresql://user:password@host:5432/db), or pass --embedded "
        f"to use run-local's embedded PostgreSQL (none exists yet in {config.data_dir})"
    )


async def _url(config: EmitterConfig) -> str:
    import trio

    from .adapters.postgres import start_embedded

    if config.database_url:
        return config.database_url
    return await trio.to_thread.run_sync(start_embedded, config.data_dir)


async def _store(config: EmitterConfig, *, writer: bool) -> Operations:
    """A store on a current schema (checked by catalog reads only; never migrated here)."""
    import trio

    from .adapters import schema
    from .adapters.driver import Session
    from .adapters.operations import Operations

    url = await _url(config)
    await trio.to_thread.run_sync(partial(schema.check, url, config.schema, auto_migrate=False, writer=writer))
    return Operations(url, Session(schema=config.schema, pooled=not config.session_liveness))


@asynccontextmanager
async def _opened(config: EmitterConfig, *, writer: bool) -> AsyncIterator[Operations]:
    """The operator's store for one command, closed when it is done."""
    store = await _store(config, writer=writer)
    try:
        yield store
    finally:
        store.close()


def _counted(n: int, *, cap: int | None = None) -> str:
    """``n``, with a ``+`` when counting stopped at ``cap`` (default: lease owners' cap)."""
    from .adapters.table_report import LEASE_OWNERS_CAP

    return f"{n:,}+" if n >= (cap or LEASE_OWNERS_CAP) else f"{n:,}"


_RUNNING = {"running": True, "gone": False}  # the others: not known (None)
_OWNER_STATES = {  # OwnerLiveness' values, as status says them
    "running": "running",
    "gone": "not running: claimable now",
    "lock lost": "liveness lock free: claimable unless taken back within its grace",
    "lease": "liveness off: waits for its leases",
    "unknown": "no liveness record: waits for its leases",
}


def _owner_line(owner: str, rows: int, lapsed: int, liveness: OwnerLiveness) -> str:
    return f"{owner}: {_counted(rows)} rows ({_OWNER_STATES[liveness.value]}, {_counted(lapsed)} lapsed)"


def status(config: EmitterConfig, args: argparse.Namespace) -> int:
    """Blocking, on psycopg alone (no Trio, gRPC or protobuf): a probe's answer in a fraction of a second."""
    from .adapters.postgres import start_embedded
    from .adapters.table_report import read_report

    url = config.database_url or start_embedded(config.data_dir)
    report = read_report(url, config.schema, statement_timeout=config.statement_timeout)
    pending, activity, owners = report.pending, report.activity, report.owners
    letters, oldest_xact = report.dead_letters, report.oldest_transaction_seconds
    too_old = args.max_oldest is not None and pending.oldest_age_seconds > args.max_oldest
    if args.json:
        print(json.dumps({
            "database": _where(config), "pending_rows": pending.rows, "pending_payload_bytes": pending.payload_bytes,
            "oldest_pending_seconds": round(pending.oldest_age_seconds, 3),
            "pending_rows_exact": pending.exact,
            "lease_owners": [{"owner": o, "rows": n, "lapsed": lapsed, "liveness": liveness.value,
                              "running": _RUNNING.get(liveness.value)}
                             for o, n, lapsed, liveness in owners],
            "dead_letters": dict(letters), "dead_tuples": activity.dead_tuples,
            "last_vacuum": activity.last_vacuum.isoformat() if activity.last_vacuum else None,
            "oldest_transaction_seconds": round(oldest_xact, 3),
        }))
    else:
        print(f"database        {_where(config)}")
        about = "" if pending.exact else "about "  # a large table: the planner's estimate, not a count
        print(f"pending rows    {about}{pending.rows:,} ({about}{pending.payload_bytes:,} payload bytes)")
        print(f"oldest pending  {pending.oldest_age_seconds:,.1f} s")
        print("lease owners    " + ("; ".join(_owner_line(*owner) for owner in owners) or "-"))
        print(f"dead letters    {', '.join(f'{code}: {n:,}' for code, n in letters) or '-'}")
        print(f"dead tuples     {activity.dead_tuples:,} (last vacuum {activity.last_vacuum or 'never'})")
        print(f"oldest xact     {oldest_xact:,.1f} s" + ("  <- pins the MVCC horizon: vacuum cannot clean up"
                                                         if oldest_xact > 60 else ""))
    if too_old:  # for probes: the exit code says it, stderr says why
        print(f"durable-emitter: the oldest pending event is {pending.oldest_age_seconds:,.1f} s old, "
              f"past --max-oldest {args.max_oldest:g} s", file=sys.stderr)
        return 3
    return 0


def _where(config: EmitterConfig) -> str:
    from .adapters.postgres import describe

    return describe(config.database_url) if config.database_url else f"embedded ({config.data_dir})"


async def dlq_list(config: EmitterConfig, args: argparse.Namespace) -> int:
    async with _opened(config, writer=False) as store:
        rows = await store.list_dead_letters(limit=args.limit, reason_code=args.reason)
    for event_id, code, reason, attempts, created, dead in rows:
        if args.json:
            print(json.dumps({"id": event_id, "reason_code": code, "reason": reason, "attempts": attempts,
                              "created_at": created.isoformat(), "dead_lettered_at": dead.isoformat()}))
        else:
            print(f"{event_id}  {code:<24} attempts={attempts}  created={created:%Y-%m-%d %H:%M:%S}  "
                  f"dead={dead:%Y-%m-%d %H:%M:%S}  {reason}")
    print(f"{len(rows)} dead letter(s)", file=sys.stderr)
    return 0


async def dlq_show(config: EmitterConfig, args: argparse.Namespace) -> int:
    from .core.events import decode_event

    async with _opened(config, writer=False) as store:
        row = await store.dead_letter_by_id(args.event_id)
    if row is None:
        print(f"durable-emitter: no dead letter with id {args.event_id}", file=sys.stderr)
        return 1
    event_id, payload, code, reason, attempts, created, dead = row
    print(json.dumps({"id": event_id, "reason_code": code, "reason": reason, "attempts": attempts,
                      "created_at": created.isoformat(), "dead_lettered_at": dead.isoformat(),
                      "event": decode_event(payload)}, indent=2))
    return 0


async def dlq_purge(config: EmitterConfig, args: argparse.Namespace) -> int:
    async with _opened(config, writer=True) as store:
        purged = await store.purge_dead_letters(older_than=args.older_than, reason_code=args.reason)
    print(f"purged {purged:,} dead letter(s) older than {args.older_than:g} s"
          + (f" with reason {args.reason}" if args.reason else ""))
    return 0


async def dlq_replay(config: EmitterConfig, args: argparse.Namespace) -> int:
    async with _opened(config, writer=True) as store:
        moved = await store.replay_dead_letters(None if args.all else args.id)  # UnknownDeadLetter: main says it
    print(f"replayed {len(moved)} event(s): they are pending again and will be delivered")
    return 0


async def drain(config: EmitterConfig, args: argparse.Namespace) -> int:
    """Run the delivery side only: recover what is pending, publish it, exit when empty.

    Progress goes to stderr, naming who holds what is left and whether it
    runs (rows of a running instance wait for it or for their lease); the
    summary (delivered, dead-lettered, left) goes to stdout.
    """
    import trio

    from .adapters.driver import Session
    from .adapters.operations import PENDING_COUNT_CAP, Operations
    from .tree import open_emitter

    left = -1
    async with open_emitter(config) as emitter:
        store = Operations(emitter.database_url, Session(schema=config.schema, pooled=not config.session_liveness))
        try:
            with trio.move_on_after(args.timeout):
                # Done on an exact count; the progress line may show the planner's estimate.
                while (left := await store.count_pending(cap=1)):
                    held = "; ".join(_owner_line(*owner) for owner in (await store.lease_owners())[:3])
                    about = (await store.pending_stats()).rows
                    delivery = emitter.statistics().delivery  # up, limited (Chip rate-limits), down, refused
                    print(f"\rdraining: {about:,} pending ({held}); delivery {delivery}", end="", file=sys.stderr,
                          flush=True)
                    await trio.sleep(0.5)
            if left:
                left = await store.count_pending()
        finally:
            store.close()
        done = emitter.statistics()
    timed_out = left != 0
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"drain {'timed out after ' + format(args.timeout, 'g') + ' s' if timed_out else 'finished'}: "
          f"{done.delivered:,} delivered, {done.dead_lettered:,} dead-lettered, {_counted(max(left, 0), cap=PENDING_COUNT_CAP)} left pending")
    return 1 if timed_out else 0


async def _inspect(config: EmitterConfig) -> Plan:
    """What the schema holds and what would bring it to this code's version (catalog reads only)."""
    import trio

    from .adapters import schema

    return await trio.to_thread.run_sync(schema.inspect, await _url(config), config.schema)


async def schema_show(config: EmitterConfig, args: argparse.Namespace) -> int:
    from .adapters import schema

    found = await _inspect(config)
    print(f"schema          {config.schema}")
    print(f"version found   {found.found}" + (" (no durable-emitter tables)" if found.install else ""))
    print(f"version needed  {found.expected}")
    steps = [name for name, _ in schema.statements(found)]
    print(f"to run          {', '.join(steps) if steps else '- (current)'}")
    return 0


async def schema_sql(config: EmitterConfig, args: argparse.Namespace) -> int:
    from .adapters import schema

    found = await _inspect(config)
    for name, text in schema.statements(found):
        print(f"-- {name}\n{text.rstrip()}\n")
    if found.current:
        print(f"-- schema {config.schema} is at version {found.found}: nothing to run", file=sys.stderr)
    return 0


async def schema_apply(config: EmitterConfig, args: argparse.Namespace) -> int:
    import trio

    from .adapters import schema

    found = await trio.to_thread.run_sync(partial(schema.apply, await _url(config), config.schema,
                                                  lock_timeout=args.lock_timeout, dry_run=args.dry_run))
    steps = ", ".join(name for name, _ in schema.statements(found))
    if found.current:
        print(f"schema {config.schema} is at version {found.found}: nothing to do")
    elif args.dry_run:
        print(f"dry run: {steps} ran and were rolled back; schema {config.schema} stays at version {found.found}")
    else:
        print(f"schema {config.schema}: version {found.found} -> {found.expected} ({steps})")
    return 0

"""``durable-emitter``: the operator's command line.

    durable-emitter status                      pending rows, ages, leases, dead letters, vacuum
    durable-emitter dlq list [--reason CODE]    dead-lettered events, newest first
    durable-emitter dlq replay --id ID ... | --all
    durable-emitter drain [--timeout 60s]       deliver pending rows, then exit
    durable-emitter schema show | sql | apply [--dry-run] [--lock-timeout 10s]

Only ``schema apply`` changes the schema; ``status`` and ``dlq list`` read, and
work with a role that may only SELECT.

Reads the same environment as the library (``DATABASE_URL``, ``CHIP_INGRESS_*``).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

import trio

from .adapters import schema
from .adapters.postgres import describe, start_embedded
from .adapters.store import LEASE_OWNERS_CAP, Store
from .config import EmitterConfig, parse_duration
from .errors import EmitterError
from .logs import configure_logging
from .tree import open_emitter


async def _url(config: EmitterConfig) -> str:
    if config.database_url is not None:
        return config.database_url
    return await trio.to_thread.run_sync(start_embedded, config.data_dir)


async def _store(config: EmitterConfig, *, writer: bool) -> Store:
    """A store on a current schema (checked by catalog reads only; never migrated here)."""
    url = await _url(config)
    await trio.to_thread.run_sync(partial(schema.check, url, config.schema, auto_migrate=False, writer=writer))
    return Store(url, schema=config.schema)


async def status(config: EmitterConfig, args: argparse.Namespace) -> int:
    store = await _store(config, writer=False)
    try:
        pending = await store.pending_stats()
        activity = await store.table_activity()
        owners = await store.lease_owners()
        letters = await store.dead_letters_by_reason()
        oldest_xact = await store.oldest_transaction_seconds()
    finally:
        store.close()
    print(f"database        {describe(config.database_url) if config.database_url else f'embedded ({config.data_dir})'}")
    about = "" if pending.exact else "about "  # a large table: the planner's estimate, not a count
    print(f"pending rows    {about}{pending.rows:,} ({about}{pending.payload_bytes:,} payload bytes)")
    print(f"oldest pending  {pending.oldest_age_seconds:,.1f} s")
    def counted(n: int) -> str:
        return f"{n:,}+" if n >= LEASE_OWNERS_CAP else f"{n:,}"

    print("lease owners    " + ("; ".join(
        f"{o}: {counted(n)} rows ({'running' if alive else 'not running: claimable now'}, {counted(lapsed)} lapsed)"
        for o, n, lapsed, alive in owners) or "-"))
    print(f"dead letters    {', '.join(f'{code}: {n:,}' for code, n in letters) or '-'}")
    print(f"dead tuples     {activity.dead_tuples:,} (last vacuum {activity.last_vacuum or 'never'})")
    print(f"oldest xact     {oldest_xact:,.1f} s" + ("  <- pins the MVCC horizon: vacuum cannot clean up"
                                                     if oldest_xact > 60 else ""))
    return 0


async def dlq_list(config: EmitterConfig, args: argparse.Namespace) -> int:
    store = await _store(config, writer=False)
    try:
        rows = await store.list_dead_letters(limit=args.limit, reason_code=args.reason)
    finally:
        store.close()
    for event_id, code, reason, attempts, created, dead in rows:
        print(f"{event_id}  {code:<24} attempts={attempts}  created={created:%Y-%m-%d %H:%M:%S}  "
              f"dead={dead:%Y-%m-%d %H:%M:%S}  {reason}")
    print(f"{len(rows)} dead letter(s)", file=sys.stderr)
    return 0


async def dlq_replay(config: EmitterConfig, args: argparse.Namespace) -> int:
    store = await _store(config, writer=True)
    try:
        moved = await store.replay_dead_letters(None if args.all else args.id)
    except KeyError as exc:
        print(f"durable-emitter: no dead letter with id {exc.args[0]}; nothing was replayed", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"replayed {len(moved)} event(s): they are pending again and will be delivered")
    return 0


async def drain(config: EmitterConfig, args: argparse.Namespace) -> int:
    """Run the delivery side only: recover what is pending, publish it, exit when empty."""
    async with open_emitter(config) as emitter:
        store = Store(emitter.database_url, schema=config.schema)
        try:
            with trio.move_on_after(args.timeout):
                while (stats := await store.pending_stats()).rows:
                    print(f"\rdraining: {stats.rows:,} pending", end="", file=sys.stderr, flush=True)
                    await trio.sleep(0.5)
                print("\rdrained: the table is empty", file=sys.stderr)
                return 0
        finally:
            store.close()
    print(f"\ndrain timed out after {args.timeout:g} s with {stats.rows:,} rows pending", file=sys.stderr)
    return 1


async def schema_show(config: EmitterConfig, args: argparse.Namespace) -> int:
    found = await trio.to_thread.run_sync(schema.inspect, await _url(config), config.schema)
    print(f"schema          {config.schema}")
    print(f"version found   {found.found}" + (" (no durable-emitter tables)" if found.install else ""))
    print(f"version needed  {found.expected}")
    steps = [name for name, _ in schema.statements(found)]
    print(f"to run          {', '.join(steps) if steps else '- (current)'}")
    return 0


async def schema_sql(config: EmitterConfig, args: argparse.Namespace) -> int:
    found = await trio.to_thread.run_sync(schema.inspect, await _url(config), config.schema)
    for name, text in schema.statements(found):
        print(f"-- {name}\n{text.rstrip()}\n")
    if found.current:
        print(f"-- schema {config.schema} is at version {found.found}: nothing to run", file=sys.stderr)
    return 0


async def schema_apply(config: EmitterConfig, args: argparse.Namespace) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="durable-emitter", description="Operate a durable-emitter table.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="pending rows, leases, dead letters, vacuum").set_defaults(run=status)
    dlq = commands.add_parser("dlq", help="the dead-letter table").add_subparsers(dest="dlq", required=True)
    listing = dlq.add_parser("list", help="dead-lettered events, newest first")
    listing.add_argument("--reason", help="only this reason code (e.g. SCHEMA_MISSING, EXPIRED)")
    listing.add_argument("--limit", type=int, default=100)
    listing.set_defaults(run=dlq_list)
    replay = dlq.add_parser("replay", help="move dead letters back to pending")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", action="append", help="an event id (repeatable)")
    which.add_argument("--all", action="store_true", help="every dead letter")
    replay.set_defaults(run=dlq_replay)
    draining = commands.add_parser("drain", help="deliver pending rows, then exit")
    draining.add_argument("--timeout", type=parse_duration, default=60.0, help="give up after (default 60s)")
    draining.set_defaults(run=drain)
    schemas = commands.add_parser("schema", help="the tables' version; show, print or apply what upgrades it")
    schema_commands = schemas.add_subparsers(dest="schema_command", required=True)
    schema_commands.add_parser("show", help="the version found and the one this code needs").set_defaults(
        run=schema_show)
    schema_commands.add_parser("sql", help="print the SQL that apply would run").set_defaults(run=schema_sql)
    applying = schema_commands.add_parser("apply", help="install or migrate, in one transaction")
    applying.add_argument("--dry-run", action="store_true", help="run it all, then roll back")
    applying.add_argument("--lock-timeout", type=parse_duration, default=10.0,
                          help="give up if a lock is not had within this (default 10s); nothing is changed")
    applying.set_defaults(run=schema_apply)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        config = EmitterConfig.from_env()
        code: int = trio.run(args.run, config, args)
        return code
    except EmitterError as exc:
        print(f"durable-emitter: {exc}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:  # the actor tree failed while draining
        matched, _ = group.split(EmitterError)
        if matched is None:
            raise
        first: BaseException = matched
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        print(f"durable-emitter: {first}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

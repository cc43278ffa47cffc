"""``durable-emitter``: the operator's command line.

    durable-emitter status                      pending rows, ages, leases, dead letters, vacuum
    durable-emitter dlq list [--reason CODE]    dead-lettered events, newest first
    durable-emitter dlq replay --id ID ... | --all
    durable-emitter drain [--timeout 60s]       deliver pending rows, then exit

Reads the same environment as the library (``DATABASE_URL``, ``CHIP_INGRESS_*``).
Without ``DATABASE_URL`` it uses run-local's embedded PostgreSQL only when asked
(``--embedded`` or ``DURABLE_EMITTER_EMBEDDED_POSTGRES=true``) or when that
database already exists, and says so on stderr: it never creates one by accident.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import trio

from .adapters.postgres import describe, embedded_exists, start_embedded
from .adapters.store import Store
from .config import EmitterConfig, parse_duration
from .errors import ConfigError, EmitterError
from .logs import LOG_FORMATS, configure_logging
from .tree import open_emitter


def choose_database(config: EmitterConfig, *, embedded: bool) -> EmitterConfig:
    """``DATABASE_URL``, or run-local's embedded PostgreSQL when asked or when it exists; else refuse."""
    if config.database_url:
        return config
    if embedded or config.embedded_postgres or embedded_exists(config.data_dir):
        print(f"durable-emitter: using the embedded PostgreSQL in {config.data_dir} (no DATABASE_URL)",
              file=sys.stderr)
        return dataclasses.replace(config, embedded_postgres=True)
    raise ConfigError(
        f"no database: set DATABASE_URL (postgresql://user:password@host:5432/db), or pass --embedded "
        f"to use run-local's embedded PostgreSQL (none exists yet in {config.data_dir})"
    )


async def _store(config: EmitterConfig) -> Store:
    url = config.database_url
    if not url:
        url = await trio.to_thread.run_sync(start_embedded, config.data_dir)
    store = Store(url)
    await store.apply_schema()
    return store


async def status(config: EmitterConfig, args: argparse.Namespace) -> int:
    store = await _store(config)
    try:
        pending = await store.pending_stats()
        activity = await store.table_activity()
        owners = await store.lease_owners()
        letters = await store.dead_letters_by_reason()
        oldest_xact = await store.oldest_transaction_seconds()
    finally:
        store.close()
    print(f"database        {describe(config.database_url) if config.database_url else f'embedded ({config.data_dir})'}")
    print(f"pending rows    {pending.rows:,} ({pending.payload_bytes:,} payload bytes)")
    print(f"oldest pending  {pending.oldest_age_seconds:,.1f} s")
    print(f"lease owners    {', '.join(f'{o}: {n:,} ({lapsed:,} lapsed)' for o, n, lapsed in owners) or '-'}")
    print(f"dead letters    {', '.join(f'{code}: {n:,}' for code, n in letters) or '-'}")
    print(f"dead tuples     {activity.dead_tuples:,} (last vacuum {activity.last_vacuum or 'never'})")
    print(f"oldest xact     {oldest_xact:,.1f} s" + ("  <- pins the MVCC horizon: vacuum cannot clean up"
                                                     if oldest_xact > 60 else ""))
    return 0


async def dlq_list(config: EmitterConfig, args: argparse.Namespace) -> int:
    store = await _store(config)
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
    store = await _store(config)
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
        store = Store(emitter.database_url)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="durable-emitter", description="Operate a durable-emitter table.")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="auto",
                        help="log lines on stderr: console, json, or auto (console on a terminal; default)")
    parser.add_argument("--embedded", action="store_true",
                        help="without DATABASE_URL, use (or start) run-local's embedded PostgreSQL")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_format)
    try:
        config = choose_database(EmitterConfig.from_env(), embedded=args.embedded)
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

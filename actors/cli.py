"""``durable-emitter``: the operator's command line.

    durable-emitter status [--json] [--max-oldest 5m]   pending rows, ages, leases, dead letters, vacuum
    durable-emitter dlq list [--reason CODE] [--json]   dead-lettered events, newest first
    durable-emitter dlq show ID                         one dead letter: its reason and decoded CloudEvent
    durable-emitter dlq replay --id ID ... | --all      move dead letters back to pending
    durable-emitter dlq purge --older-than 7d [--reason CODE]
    durable-emitter drain [--timeout 60s]               deliver pending rows, then exit with a summary
    durable-emitter schema show | sql | apply [--dry-run] [--lock-timeout 10s]

Only ``schema apply`` changes the schema; ``status`` and ``dlq list`` read, and
work with a role that may only SELECT.

Reads the same environment as the library (``DATABASE_URL``, ``CHIP_INGRESS_*``).
Without ``DATABASE_URL`` it uses run-local's embedded PostgreSQL only when asked
(``--embedded`` or ``DURABLE_EMITTER_EMBEDDED_POSTGRES=true``) or when that
database already exists, and says so on stderr: it never creates one by accident.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from functools import partial
from typing import TYPE_CHECKING

from . import __version__
from .config import EmitterConfig, parse_duration
from .errors import ConfigError, EmitterError
from .logs import LOG_FORMATS, configure_logging

if TYPE_CHECKING:
    from .adapters.operations import Operations

# The runtime (trio, psycopg, grpc, prometheus_client) is imported inside the
# commands that use it, so --version and --help answer without loading it;
# status and dlq load the store alone, and only drain loads the actor tree.


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


def _counted(n: int, *, cap: int | None = None) -> str:
    """``n``, with a ``+`` when counting stopped at ``cap`` (default: lease owners' cap)."""
    from .adapters.operations import LEASE_OWNERS_CAP

    return f"{n:,}+" if n >= (cap or LEASE_OWNERS_CAP) else f"{n:,}"


def _owner_line(owner: str, rows: int, lapsed: int, alive: bool) -> str:
    state = "running" if alive else "not running: claimable now"
    return f"{owner}: {_counted(rows)} rows ({state}, {_counted(lapsed)} lapsed)"


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
    too_old = args.max_oldest is not None and pending.oldest_age_seconds > args.max_oldest
    if args.json:
        print(json.dumps({
            "database": _where(config), "pending_rows": pending.rows, "pending_payload_bytes": pending.payload_bytes,
            "oldest_pending_seconds": round(pending.oldest_age_seconds, 3),
            "pending_rows_exact": pending.exact,
            "lease_owners": [{"owner": o, "rows": n, "lapsed": lapsed, "running": alive}
                             for o, n, lapsed, alive in owners],
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
    store = await _store(config, writer=False)
    try:
        rows = await store.list_dead_letters(limit=args.limit, reason_code=args.reason)
    finally:
        store.close()
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

    store = await _store(config, writer=False)
    try:
        row = await store.dead_letter_by_id(args.event_id)
    finally:
        store.close()
    if row is None:
        print(f"durable-emitter: no dead letter with id {args.event_id}", file=sys.stderr)
        return 1
    event_id, payload, code, reason, attempts, created, dead = row
    print(json.dumps({"id": event_id, "reason_code": code, "reason": reason, "attempts": attempts,
                      "created_at": created.isoformat(), "dead_lettered_at": dead.isoformat(),
                      "event": decode_event(payload)}, indent=2))
    return 0


async def dlq_purge(config: EmitterConfig, args: argparse.Namespace) -> int:
    store = await _store(config, writer=True)
    try:
        purged = await store.purge_dead_letters(older_than=args.older_than, reason_code=args.reason)
    finally:
        store.close()
    print(f"purged {purged:,} dead letter(s) older than {args.older_than:g} s"
          + (f" with reason {args.reason}" if args.reason else ""))
    return 0


async def dlq_replay(config: EmitterConfig, args: argparse.Namespace) -> int:
    store = await _store(config, writer=True)
    try:
        moved = await store.replay_dead_letters(None if args.all else args.id)  # UnknownDeadLetter: main says it
    finally:
        store.close()
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
                    print(f"\rdraining: {about:,} pending ({held})", end="", file=sys.stderr, flush=True)
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


async def schema_show(config: EmitterConfig, args: argparse.Namespace) -> int:
    import trio

    from .adapters import schema

    found = await trio.to_thread.run_sync(schema.inspect, await _url(config), config.schema)
    print(f"schema          {config.schema}")
    print(f"version found   {found.found}" + (" (no durable-emitter tables)" if found.install else ""))
    print(f"version needed  {found.expected}")
    steps = [name for name, _ in schema.statements(found)]
    print(f"to run          {', '.join(steps) if steps else '- (current)'}")
    return 0


async def schema_sql(config: EmitterConfig, args: argparse.Namespace) -> int:
    import trio

    from .adapters import schema

    found = await trio.to_thread.run_sync(schema.inspect, await _url(config), config.schema)
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


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:  # argparse shows this message, not "invalid parse_duration value"
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="durable-emitter", description="Operate a durable-emitter table.")
    parser.add_argument("--version", action="version", version=f"durable-emitter {__version__}")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="auto",
                        help="log lines on stderr: console, json, or auto (console on a terminal; default)")
    parser.add_argument("--embedded", action="store_true",
                        help="without DATABASE_URL, use (or start) run-local's embedded PostgreSQL")
    commands = parser.add_subparsers(dest="command", required=True)
    checking = commands.add_parser("status", help="pending rows, leases, dead letters, vacuum")
    checking.add_argument("--json", action="store_true", help="one JSON object")
    checking.add_argument("--max-oldest", type=_duration, metavar="DURATION",
                          help="exit 3 if the oldest pending event is older (for probes), e.g. 5m")
    checking.set_defaults(run=status)
    dlq = commands.add_parser("dlq", help="the dead-letter table").add_subparsers(dest="dlq", required=True)
    listing = dlq.add_parser("list", help="dead-lettered events, newest first")
    listing.add_argument("--reason", help="only this reason code (e.g. SCHEMA_MISSING, EXPIRED)")
    listing.add_argument("--limit", type=_positive_int, default=100)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(run=dlq_list)
    showing = dlq.add_parser("show", help="one dead letter: its reason and the decoded CloudEvent")
    showing.add_argument("event_id", metavar="ID")
    showing.set_defaults(run=dlq_show)
    replay = dlq.add_parser("replay", help="move dead letters back to pending")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", action="append", help="an event id (repeatable)")
    which.add_argument("--all", action="store_true", help="every dead letter")
    replay.set_defaults(run=dlq_replay)
    purge = dlq.add_parser("purge", help="delete dead letters for good")
    purge.add_argument("--older-than", type=_duration, required=True, metavar="DURATION",
                       help="only those dead-lettered longer ago than this, e.g. 7d")
    purge.add_argument("--reason", help="only this reason code")
    purge.set_defaults(run=dlq_purge)
    draining = commands.add_parser("drain", help="deliver pending rows, then exit with a summary")
    draining.add_argument("--timeout", type=_duration, default=60.0, help="give up after (default 60s)")
    draining.set_defaults(run=drain)
    schemas = commands.add_parser("schema", help="the tables' version; show, print or apply what upgrades it")
    schema_commands = schemas.add_subparsers(dest="schema_command", required=True)
    schema_commands.add_parser("show", help="the version found and the one this code needs").set_defaults(
        run=schema_show)
    schema_commands.add_parser("sql", help="print the SQL that apply would run").set_defaults(run=schema_sql)
    applying = schema_commands.add_parser("apply", help="install or migrate, in one transaction")
    applying.add_argument("--dry-run", action="store_true", help="run it all, then roll back")
    applying.add_argument("--lock-timeout", type=_duration, default=10.0,
                          help="give up if a lock is not had within this (default 10s); nothing is changed")
    applying.set_defaults(run=schema_apply)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # --help and --version end here, before the runtime loads
    import trio

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

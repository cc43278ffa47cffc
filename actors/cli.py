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
import inspect
import sys

from . import __version__
from .cli_commands import (
    choose_database,
    dlq_list,
    dlq_purge,
    dlq_replay,
    dlq_show,
    drain,
    schema_apply,
    schema_show,
    schema_sql,
    status,
)
from .config import EmitterConfig, parse_duration
from .errors import EmitterError, root_cause
from .logs import LOG_FORMATS, configure_logging

# The commands import the runtime (trio, psycopg, grpc, prometheus_client) when they
# run, so --version and --help answer without loading it; status loads psycopg alone.


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
    configure_logging(args.log_format)
    try:
        config = choose_database(EmitterConfig.from_env(), embedded=args.embedded)
        if not inspect.iscoroutinefunction(args.run):  # status: blocking, without Trio
            code: int = args.run(config, args)
            return code
        import trio

        code = trio.run(args.run, config, args)
        return code
    except EmitterError as exc:
        print(f"durable-emitter: {exc}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:  # the actor tree failed while draining
        cause = root_cause(group)
        if not isinstance(cause, EmitterError):
            raise
        print(f"durable-emitter: {cause}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

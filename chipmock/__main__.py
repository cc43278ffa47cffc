"""``python -m chipmock`` / ``just chipmock``: run the Chip Ingress stand-in.

Serves until SIGINT or SIGTERM, then stops cleanly and prints what it received.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from .auth import AuthPolicy, parse_header, parse_public_key
from .model import (
    ChipModel,
    LatencySpike,
    Outage,
    RejectContaining,
    RejectWindow,
    parse_duration,
    parse_rate,
)
from .server import RETRY_AFTER_KEY, start

_T = TypeVar("_T")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError
    return value


# argparse names the expected type from the function's __name__ in its error.
_fraction.__name__ = "fraction between 0 and 1"
_positive_int.__name__ = "positive integer"


def _parsed_by(parse: Callable[[str], _T]) -> Callable[[str], _T]:
    """An argparse type whose error is ``parse``'s own message ("'50' has no unit: write 50s or 50ms")."""
    def convert(text: str) -> _T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def _escaped(text: str) -> str:
    r"""Backslash escapes decoded (``\x00`` is a NUL byte), so a reason can hold any character."""
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


def build_parser() -> argparse.ArgumentParser:
    """The flags. Each ``dest`` is the ChipModel keyword it sets, so the model is built from them by name."""
    parser = argparse.ArgumentParser(prog="chipmock", description=__doc__.splitlines()[0],
                                     epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=50051, help="gRPC port (default 50051; 0 picks one)")
    parser.add_argument("--metrics-port", type=int, default=9464, help="Prometheus /metrics port (default 9464; -1 disables)")
    parser.add_argument("--latency", type=_parsed_by(parse_duration), default=0.0, help="added to every call, e.g. 50ms")
    parser.add_argument("--jitter", type=_parsed_by(parse_duration), default=0.0, help="uniform +/- around --latency")
    parser.add_argument("--latency-spike", dest="latency_spikes", type=_parsed_by(LatencySpike.parse), action="append",
                        default=[], metavar="DELAY@START:DURATION",
                        help="every publish in this window takes DELAY instead, e.g. 2s@10s:5s (repeatable)")
    parser.add_argument("--failure-rate", type=_fraction, default=0.0, help="fraction of calls failing UNAVAILABLE")
    parser.add_argument("--resource-exhausted-rate", type=_fraction, default=0.0,
                        help="fraction of calls failing RESOURCE_EXHAUSTED")
    parser.add_argument("--event-failure-rate", type=_fraction, default=0.0,
                        help="fraction of events answered with --event-failure-code")
    parser.add_argument("--event-failure-code", default="SCHEMA_MISSING", metavar="CODE",
                        help="the per-event code of --event-failure-rate (default SCHEMA_MISSING)")
    parser.add_argument("--outage", dest="outages", type=_parsed_by(Outage.parse), action="append", default=[],
                        metavar="START:DURATION", help="fail every call in this window after start, e.g. 10s:15s (repeatable)")
    parser.add_argument("--max-batch", type=_positive_int, default=None,
                        help="larger PublishBatch calls fail with INVALID_ARGUMENT")
    parser.add_argument("--unauthenticated", type=_parsed_by(Outage.parse), action="append", default=[],
                        metavar="START:DURATION",
                        help="refuse every call, Ping included, with UNAUTHENTICATED in this window (repeatable)")
    parser.add_argument("--internal", type=_parsed_by(Outage.parse), action="append", default=[],
                        metavar="START:DURATION",
                        help="fail every publish with INTERNAL in this window, as Chip does when its schema "
                             "registry is unreachable; Ping answers (repeatable)")
    parser.add_argument("--refuse", default=None, metavar="CODE",
                        help="fail every publish with this status, e.g. FAILED_PRECONDITION (a misconfigured server)")
    parser.add_argument("--max-request-bytes", type=_positive_int, default=None,
                        help="larger requests fail RESOURCE_EXHAUSTED 'message larger than max'")
    parser.add_argument("--reject-reason", type=_escaped, default="chipmock: injected permanent error",
                        help="reason text of --event-failure-rate rejections (escapes like \\x00 are decoded)")
    parser.add_argument("--rate-limit", type=_parsed_by(parse_rate), default=None, metavar="N/s",
                        help="past N events a second, whole calls fail RESOURCE_EXHAUSTED (see below)")
    parser.add_argument("--rate-limit-window", type=_parsed_by(Outage.parse), default=None, metavar="START:DURATION",
                        help="apply --rate-limit only in this window after start, e.g. 0s:60s (default: always)")
    parser.add_argument("--reject", dest="reject_windows", type=_parsed_by(RejectWindow.parse), action="append",
                        default=[], metavar="CODE@START:DURATION",
                        help="answer every event with CODE in this window, e.g. SCHEMA_MISSING@5s:10s (repeatable)")
    parser.add_argument("--reject-containing", type=_parsed_by(RejectContaining.parse), action="append", default=[],
                        metavar="CODE=TEXT",
                        help="answer events whose id or data contains TEXT with CODE, e.g. VALIDATION_FAILED=poison "
                             "(repeatable)")
    parser.add_argument("--require-schemas", action="store_true",
                        help="answer SCHEMA_MISSING to an event whose dataschema is not registered (see below)")
    parser.add_argument("--schema", dest="schemas", action="append", default=[], metavar="SUBJECT",
                        help="a subject (or path) registered from the start (repeatable)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for reproducible failures")
    parser.add_argument("--auth-token-key", dest="auth_token_keys", type=_parsed_by(parse_public_key),
                        action="append", default=[], metavar="HEX",
                        help="require a valid node token (X-Beholder-Node-Auth-Token, V2) signed by this ed25519 "
                             "public key, 64 hex characters (repeatable: any of them)")
    parser.add_argument("--auth-token-max-age", type=_parsed_by(parse_duration), default=900.0, metavar="DURATION",
                        help="oldest node token admitted (default 15m)")
    parser.add_argument("--auth-header", dest="auth_headers", type=_parsed_by(parse_header), action="append",
                        default=[], metavar="NAME=VALUE", help="require this header on every call (repeatable)")
    parser.add_argument("--ids-file", default=None, metavar="PATH",
                        help="append '<event id> <arrival, unix seconds> <peer>' for each event received, "
                             "written before the call is answered (an outside record of receipts)")
    return parser


def build_auth(args: argparse.Namespace) -> AuthPolicy:
    """What every call must carry, from the --auth-* flags."""
    return AuthPolicy(tuple(args.auth_token_keys), args.auth_token_max_age, tuple(args.auth_headers))


_EPILOG = f"""\
Per-event codes (CODE): PUBLISH_ERROR_CODE_UNKNOWN, VALIDATION_FAILED, SCHEMA_MISSING,
ENCODE_ERROR, DOMAIN_MISCONFIGURATION, or a number for a code this proto does not name.
An event gets the first that applies: required attributes missing (VALIDATION_FAILED),
--reject-containing, a --reject window, --require-schemas, --event-failure-rate.

--rate-limit N/s: a bucket of N events (at least 1) refilled at N a second. A call of k
events passes when the bucket holds min(k, N) and takes k; otherwise the whole call fails
RESOURCE_EXHAUSTED "request rate exceeds the maximum allowed (N events/s)" with trailing
metadata {RETRY_AFTER_KEY} (milliseconds until it would pass). Ping is never limited.
With --rate-limit-window START:DURATION the limit applies only then (a full bucket on entry).

--require-schemas: an event's dataschema attribute (ce_uri, ce_uri_ref or ce_string) must
equal the subject or the path of a schema registered with RegisterSchema or --schema;
an event without dataschema is answered SCHEMA_MISSING too (a real Chip encodes every
event against a registered schema)."""


def build_model(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ChipModel:
    """The ChipModel the flags ask for; a refused value ends in a usage error naming its flag."""
    flags = {action.dest: action.option_strings[0] for action in parser._actions if action.option_strings}
    knobs = {knob.name for knob in dataclasses.fields(ChipModel)}
    values: dict[str, Any] = {name: tuple(value) if isinstance(value, list) else value
                              for name, value in vars(args).items() if name in knobs}
    try:
        return ChipModel(**values)
    except ValueError as exc:
        message = str(exc)
        for name, flag in flags.items():  # the model speaks of keywords, the user typed flags
            message = re.sub(rf"\b{name}\b", flag, message)
        parser.error(message)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    model = build_model(parser, args)
    auth = build_auth(args)
    # Signals are taken with sigwait, never by a handler: a handler that sets an
    # Event the main thread waits on deadlocked when a second signal came while
    # stopping. Blocked before start(), so the server's threads inherit the mask.
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        server = start(model, host=args.host, port=args.port,
                       metrics_port=None if args.metrics_port < 0 else args.metrics_port, auth=auth,
                       ids_file=args.ids_file)
    except OSError as exc:  # it names the port that failed
        print(f"chipmock: {exc}", file=sys.stderr)
        return 2
    metrics = f", metrics on http://{args.host}:{server.metrics_port}/metrics" if server.metrics_port else ""
    knobs = " ".join(part for part in (model.describe(), auth.describe()) if part not in ("", "defaults")) or "defaults"
    print(f"chipmock listening on {server.endpoint} ({knobs}){metrics}", flush=True)
    signal.sigwait(stop_signals)
    server.stop(grace=1.0)  # further signals stay pending (blocked) and end with the process
    snap = server.counters.snapshot()
    admitted, tokens, refused = server.auth_counts
    if auth != AuthPolicy():
        print(f"chipmock auth: {admitted} calls admitted with {len(tokens)} distinct node tokens; refused: "
              f"{' '.join(f'{reason}={n}' for reason, n in sorted(refused.items())) or 'none'}", flush=True)
    print(f"chipmock stopped: {snap.calls} calls ({snap.failed_calls} failed on purpose), "
          f"{snap.received} events received, {snap.unique} unique, {snap.duplicates} duplicates, "
          f"{snap.rejected} rejected, {snap.bytes} bytes, {snap.rate_limited} calls rate limited; "
          f"PublishBatch calls by options.transaction_enabled: "
          f"{' '.join(f'{kind}={count}' for kind, count in snap.batch_options.items())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

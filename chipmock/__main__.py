"""``python -m chipmock`` / ``just chipmock``: run the Chip Ingress stand-in.

Serves until SIGINT or SIGTERM, then stops cleanly and prints what it received.
"""

from __future__ import annotations

import argparse
import signal
import sys

from .model import ChipModel, Outage, parse_duration
from .server import start


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError
    return value


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:  # its message says what is wrong ("has no unit: write 50s or 50ms")
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError
    return value


# argparse names the expected type from the function's __name__ in its error.
_fraction.__name__ = "fraction between 0 and 1"
_positive_int.__name__ = "positive integer"


def _outage(text: str) -> Outage:
    try:
        return Outage.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chipmock", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=50051, help="gRPC port (default 50051; 0 picks one)")
    parser.add_argument("--metrics-port", type=int, default=9464, help="Prometheus /metrics port (default 9464; -1 disables)")
    parser.add_argument("--latency", type=_duration, default=0.0, help="added to every call, e.g. 50ms")
    parser.add_argument("--jitter", type=_duration, default=0.0, help="uniform +/- around --latency")
    parser.add_argument("--failure-rate", type=_fraction, default=0.0, help="fraction of calls failing UNAVAILABLE")
    parser.add_argument("--resource-exhausted-rate", type=_fraction, default=0.0,
                        help="fraction of calls failing RESOURCE_EXHAUSTED")
    parser.add_argument("--event-failure-rate", type=_fraction, default=0.0,
                        help="fraction of events answered with a permanent per-event error")
    parser.add_argument("--outage", type=_outage, action="append", default=[], metavar="START:DURATION",
                        help="fail every call in this window after start, e.g. 10s:15s (repeatable)")
    parser.add_argument("--max-batch", type=_positive_int, default=None,
                        help="larger PublishBatch calls fail with INVALID_ARGUMENT")
    parser.add_argument("--unauthenticated", type=_outage, action="append", default=[], metavar="START:DURATION",
                        help="refuse every call, Ping included, with UNAUTHENTICATED in this window (repeatable)")
    parser.add_argument("--refuse", default=None, metavar="CODE",
                        help="fail every publish with this status, e.g. FAILED_PRECONDITION (a misconfigured server)")
    parser.add_argument("--max-request-bytes", type=_positive_int, default=None,
                        help="larger requests fail RESOURCE_EXHAUSTED 'message larger than max'")
    parser.add_argument("--reject-reason", default="chipmock: injected permanent error",
                        help="reason text of --event-failure-rate rejections (escapes like \\x00 are decoded)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for reproducible failures")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        model = ChipModel(
            latency=args.latency, jitter=args.jitter, failure_rate=args.failure_rate,
            resource_exhausted_rate=args.resource_exhausted_rate,
            event_failure_rate=args.event_failure_rate, outages=tuple(args.outage),
            max_batch=args.max_batch, seed=args.seed, unauthenticated=tuple(args.unauthenticated),
            refuse=args.refuse, max_request_bytes=args.max_request_bytes,
            reject_reason=args.reject_reason.encode("latin-1", "backslashreplace").decode("unicode_escape"),
        )
    except ValueError as exc:
        parser.error(str(exc))
    # Signals are taken with sigwait, never by a handler: a handler that sets an
    # Event the main thread waits on deadlocked when a second signal came while
    # stopping. Blocked before start(), so the server's threads inherit the mask.
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        server = start(model, host=args.host, port=args.port,
                       metrics_port=None if args.metrics_port < 0 else args.metrics_port)
    except OSError as exc:  # it names the port that failed
        print(f"chipmock: {exc}", file=sys.stderr)
        return 2
    metrics = f", metrics on http://{args.host}:{server.metrics_port}/metrics" if server.metrics_port else ""
    print(f"chipmock listening on {server.endpoint} (latency {args.latency * 1000:g} ms, "
          f"failure rate {args.failure_rate:g}){metrics}", flush=True)
    signal.sigwait(stop_signals)
    server.stop(grace=1.0)  # further signals stay pending (blocked) and end with the process
    snap = server.counters.snapshot()
    print(f"chipmock stopped: {snap.calls} calls ({snap.failed_calls} failed on purpose), "
          f"{snap.received} events received, {snap.unique} unique, {snap.duplicates} duplicates, "
          f"{snap.rejected} rejected, {snap.bytes} bytes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

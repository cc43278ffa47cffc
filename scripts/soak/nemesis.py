"""The nemesis: carries out the plan against the deployment, each fault in a thread of its own, and keeps the timeline.

A fault waits for its resource (Postgres, the pooler, chipmock, a host) when an
earlier one overran its plan (a standby rebuilt after a failover), so two faults
never pull the same handle at once. chipmock's windows need no action: chipmock
was given them as flags; they are only put on the timeline when they happen.
What happens is said on stderr as it happens, and kept as :class:`Happened`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from scripts.soak.deployment import Deployment
from scripts.soak.schedule import CHIP_WINDOWS, KINDS, Fault


@dataclass(frozen=True)
class Happened:
    """A fault as it happened, in seconds since the run's start (``end`` is when it was lifted)."""

    kind: str
    target: str
    start: float
    end: float
    detail: str = ""


class Clock:
    """Seconds since the run started (unix time underneath, as the hosts' and chipmock's records are)."""

    def __init__(self) -> None:
        self.t0 = time.time()

    def now(self) -> float:
        return time.time() - self.t0


def say(clock: Clock, text: str) -> None:
    print(f"[{clock.now():7.1f}s] {text}", file=sys.stderr, flush=True)


class Nemesis:
    def __init__(self, deployment: Deployment, faults: list[Fault], clock: Clock, stopping: threading.Event) -> None:
        self.deployment, self.faults, self.clock, self.stopping = deployment, faults, clock, stopping
        self.timeline: list[Happened] = []
        self.errors: list[str] = []  # a fault the harness could not carry out
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for fault in self.faults:
            thread = threading.Thread(target=self._run, args=(fault,), name=f"nemesis {fault.kind}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def join(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))

    def _sleep_until(self, at: float) -> bool:
        """Wait until ``at`` on the run's clock; False if the run is stopping."""
        return not self.stopping.wait(max(0.0, at - self.clock.now()))

    def _run(self, fault: Fault) -> None:
        if not self._sleep_until(fault.at):
            return
        if fault.kind in CHIP_WINDOWS:
            self._window(fault)
            return
        resource = fault.target if KINDS[fault.kind][1] == "host" else KINDS[fault.kind][1]
        lock = self._locks[resource]
        while not lock.acquire(timeout=0.2):
            if self.stopping.is_set():
                return
        try:
            begin, lift, after = self._actions(fault)
            start = self.clock.now()
            say(self.clock, f"+ {fault.kind} {fault.target}: {begin()}")
            if not self._sleep_until(start + fault.duration):
                return
            detail = lift()
            end = self.clock.now()
            say(self.clock, f"- {fault.kind} {fault.target} after {end - start:.1f}s{': ' + detail if detail else ''}")
            self.timeline.append(Happened(fault.kind, fault.target, start, end, detail))
            if after is not None:
                say(self.clock, f"  {after()}")
        except Exception as exc:  # said, counted, and the run goes on
            self.errors.append(f"{self.clock.now():.1f}s {fault.describe()}: {type(exc).__name__}: {exc}")
            say(self.clock, f"! {fault.kind} {fault.target} could not be carried out: {type(exc).__name__}: {exc}")
        finally:
            lock.release()

    def _window(self, fault: Fault) -> None:
        """A chipmock window: it begins and ends by itself, ``chip_lag`` after the plan (chipmock's start-up)."""
        lag = self.deployment.chip_lag
        if not self._sleep_until(fault.at + lag):
            return
        say(self.clock, f"+ {fault.describe()} (chipmock's own window)")
        if not self._sleep_until(fault.end + lag):
            return
        say(self.clock, f"- {fault.kind}")
        self.timeline.append(Happened(fault.kind, fault.target, fault.at + lag, fault.end + lag,
                                      f"{fault.value:g}" if fault.value else ""))

    def _actions(self, fault: Fault) -> tuple[Callable[[], str], Callable[[], str], Callable[[], str] | None]:
        """(begin, lift, after): what starts the fault, what ends it, what follows once it ended."""
        d, target = self.deployment, fault.target
        if fault.kind == "host_kill":
            return (lambda: f"pid {d.kill_host(target)} SIGKILLed",
                    lambda: f"restarted as pid {d.start_host(target)}", None)
        if fault.kind == "backend_kill":
            return lambda: d.kill_backend(fault.value), lambda: "", None
        if fault.kind == "postgres_stop":
            return (lambda: _done(d.stop_primary, "pg_ctl stop -m immediate"),
                    lambda: _done(d.start_primary, "started"), None)
        if fault.kind == "failover":
            return d.crash_primary, d.promote, d.rebuild_standby
        if fault.kind == "pooler_restart":
            return lambda: _done(d.restart_pooler, "PgBouncer stopped and started"), lambda: "", None
        if fault.kind == "chip_kill":
            return (lambda: f"chipmock pid {d.kill_chip()} SIGKILLed",
                    d.start_chip, None)
        side, _, how = fault.kind.partition("_")  # postgres_blackhole, chip_reset, ...
        return (lambda: _done(lambda: d.cut(target, side, how), f"{how} to {side}"),
                lambda: _done(lambda: d.heal(target, side), "healed"), None)


def _done(action: Callable[[], object], what: str) -> str:
    action()
    return what

"""The nemesis's plan: which fault, when, against what, for how long, all from the seed (pure, no I/O).

The whole plan is drawn before anything starts, so a seed replays the same
faults in the same order at the same offsets; only the machine's timing
differs between runs. Faults come every few seconds, sometimes two at once,
each on a resource nobody else is faulting then (Postgres, the pooler,
chipmock, each host), and all end by ``FAULTS_UNTIL`` of the run: the rest
is for the backlog to drain.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields

from actors.config import EmitterConfig

FAULTS_UNTIL = 0.8  # of the run's seconds: no fault goes on past this
FIRST_FAULT = 5.0  # seconds in: the hosts have emitted for a while
STANDBY_REBUILD = 20.0  # Postgres stays unfaulted this long after a promotion (a new standby is built)
TWO_AT_ONCE = 0.3  # how often two faults start together
DEFAULTS = {knob.name: knob.default for knob in fields(EmitterConfig)}
LEASE = float(DEFAULTS["lease_duration"])  # rows of a host without session liveness wait this long

# kind -> (weight, the resource it takes: "host" means the target host's own)
KINDS: dict[str, tuple[int, str]] = {
    "host_kill": (3, "host"),            # SIGKILL, restarted after a moment
    "backend_kill": (1, "postgres"),     # one backend SIGKILLed: the server's crash recovery ends every session
    "postgres_stop": (1, "postgres"),    # pg_ctl stop -m immediate, started again
    "failover": (1, "postgres"),         # the primary SIGKILLed, the standby promoted 2-15 s later
    "postgres_blackhole": (1, "host"),   # host <-> Postgres: nothing passes, nothing is reset
    "postgres_reset": (1, "host"),       # host <-> Postgres: every connection reset, new ones refused
    "chip_blackhole": (1, "host"),       # host <-> Chip, likewise
    "chip_reset": (1, "host"),
    "pooler_restart": (1, "pooler"),
    "chip_kill": (1, "chip"),            # chipmock SIGKILLed, restarted after a moment
    "chip_unavailable": (1, "chip"),     # chipmock windows, passed as its flags at its start
    "chip_internal": (1, "chip"),
    "chip_rate_limit": (1, "chip"),
    "chip_latency": (1, "chip"),
}
CHIP_WINDOWS = ("chip_unavailable", "chip_internal", "chip_rate_limit", "chip_latency")
GLOBAL = frozenset({"backend_kill", "postgres_stop", "failover", "chip_kill", *CHIP_WINDOWS})


@dataclass(frozen=True)
class Fault:
    """One planned fault: from ``at`` (seconds into the run) for ``duration``; ``value`` its strength.

    ``value``: a rate limit's events/s, a latency spike's seconds, which backend
    is killed (a fraction of the list); otherwise 0.
    """

    at: float
    kind: str
    target: str
    duration: float
    value: float = 0.0

    @property
    def end(self) -> float:
        return self.at + self.duration

    def describe(self) -> str:
        extra = {"chip_rate_limit": f" {self.value:g}/s", "chip_latency": f" {self.value:g}s"}.get(self.kind, "")
        return f"{self.kind} {self.target}{extra} for {self.duration:.1f}s"


def _duration(rng: random.Random, kind: str) -> tuple[float, float]:
    """(duration, value) of a fault of ``kind``."""
    if kind == "host_kill":
        return rng.uniform(0.5, 3.0), 0.0
    if kind == "backend_kill":
        return 0.0, rng.random()
    if kind == "postgres_stop":
        return rng.uniform(2.0, 8.0), 0.0
    if kind == "failover":
        return rng.uniform(2.0, 15.0), 0.0  # until the promotion
    if kind == "chip_kill":
        return rng.uniform(1.0, 6.0), 0.0
    if kind == "chip_rate_limit":
        return rng.uniform(5.0, 15.0), float(rng.choice((100, 200, 300)))
    if kind == "chip_latency":
        return rng.uniform(2.0, 10.0), round(rng.uniform(0.3, 3.0), 1)  # below publish_timeout: answers come
    if kind == "pooler_restart":
        return 0.0, 0.0
    return rng.uniform(1.0, 8.0), 0.0  # cuts and the other chip windows


def plan(seed: int, seconds: float, hosts: Sequence[str], pooled: str | None,
         without: Collection[str] = ()) -> list[Fault]:
    """The faults of a run of ``seconds`` against ``hosts`` (``pooled``: the one behind PgBouncer, if any).

    A killed pooled host's rows wait for their lease (no session liveness), so it
    is killed only where that lease lapses before the hosts stop emitting. At
    most one rate-limit window per chipmock process (its flag takes one). The
    kinds in ``without`` are never drawn (the others are, from the same seed).
    """
    rng = random.Random(seed)
    until = seconds * FAULTS_UNTIL
    busy: dict[str, float] = {}  # resource -> free from
    rate_limited = False  # since chipmock last started
    faults: list[Fault] = []
    at = FIRST_FAULT
    while at < until:
        for _ in range(2 if rng.random() < TWO_AT_ONCE else 1):
            for _attempt in range(5):  # a draw on a busy resource is drawn again
                fault = _draw(rng, at, until, seconds, hosts, pooled, busy, rate_limited, without)
                if fault is not None:
                    break
            else:
                continue
            resource = _resource(fault)
            busy[resource] = fault.end + (STANDBY_REBUILD if fault.kind == "failover" else 0.5)
            if fault.kind == "chip_kill":
                rate_limited = False
            rate_limited = rate_limited or fault.kind == "chip_rate_limit"
            faults.append(fault)
        at += rng.uniform(2.0, 5.0)
    return faults


def _draw(rng: random.Random, at: float, until: float, seconds: float, hosts: Sequence[str], pooled: str | None,
          busy: dict[str, float], rate_limited: bool, without: Collection[str]) -> Fault | None:
    kinds = [kind for kind in KINDS if kind not in without and not (kind == "pooler_restart" and pooled is None)
             and not (kind == "chip_rate_limit" and rate_limited)]
    if not kinds:
        return None
    kind = rng.choices(kinds, weights=[KINDS[kind][0] for kind in kinds])[0]
    target = rng.choice(list(hosts)) if KINDS[kind][1] == "host" else KINDS[kind][1]
    duration, value = _duration(rng, kind)
    fault = Fault(round(at, 2), kind, target, round(min(duration, max(0.0, until - at)), 2), value)
    if busy.get(_resource(fault), 0.0) > at:
        return None
    if kind == "host_kill" and target == pooled and at + LEASE + 5 > seconds:
        return None
    if kind == "failover" and fault.duration < 2.0:  # no room left for a promotion 2 s after the death
        return None
    return fault


def _resource(fault: Fault) -> str:
    return fault.target if KINDS[fault.kind][1] == "host" else KINDS[fault.kind][1]


def chip_flags(faults: Sequence[Fault], started: float) -> list[str]:
    """chipmock's window flags for a process started at ``started`` (seconds into the run).

    Windows count from chipmock's start: those still ahead, until the next
    planned chipmock kill (the next process gets the rest).
    """
    next_kill = min((f.at for f in faults if f.kind == "chip_kill" and f.at >= started), default=float("inf"))
    flags: list[str] = []
    for fault in faults:
        if fault.kind not in CHIP_WINDOWS or fault.end <= started or fault.at >= next_kill:
            continue
        start = max(0.0, fault.at - started)
        window = f"{start:.3f}s:{fault.end - started - start:.3f}s"
        if fault.kind == "chip_unavailable":
            flags += ["--outage", window]
        elif fault.kind == "chip_internal":
            flags += ["--internal", window]
        elif fault.kind == "chip_rate_limit":
            flags += ["--rate-limit", f"{fault.value:g}/s", "--rate-limit-window", window]
        else:
            flags += ["--latency-spike", f"{fault.value:g}s@{window}"]
    return flags

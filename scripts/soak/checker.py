"""The independent checker: what the hosts were told was durable against what chipmock received.

It trusts none of the emitter's counters. Its inputs are records kept outside
the library: each host's acknowledged ids (written when ``emit`` or the commit
returned), chipmock's receipts (written before it answered), the dead-letter
table and the faults' timeline. lost = acknowledged and neither received nor
dead-lettered. A duplicate (received more
than once) is explained only where design promise 6 allows one: a process died,
or a path to Chip was cut, while the event was in flight. Its first receipt must
then fall in that fault's in-flight window and, for a host killed or cut off,
have come from that host (chipmock logs which connection sent it; each host's
proxy to Chip, which of its connections are the host's). Every other duplicate
is unexplained. The library's dead-letter counter is only checked against the
table (:func:`dead_letters`), never believed.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.soak.nemesis import Happened
from scripts.soak.schedule import GLOBAL

SLACK = 1.0  # seconds around a window, for the clocks of three processes and the scheduler
# Postgres away from a host: its acker cannot delete what Chip took, and catches up within this once back.
POSTGRES_AWAY = frozenset({"backend_kill", "postgres_stop", "failover", "postgres_blackhole", "postgres_reset",
                           "pooler_restart"})
DELETE_LAG = 3.0


def read_ids(path: Path, t0: float) -> list[tuple[str, float, int | None]]:
    """``<id> <unix time> [<peer>]`` lines as (id, seconds into the run, the peer's port or None).

    A last line without its newline was cut short (its writer died mid-write) and is skipped.
    """
    if not path.exists():
        return []
    found = []
    for line in path.read_text().split("\n")[:-1]:
        fields = line.split(" ")
        if len(fields) < 2 or len(fields[0]) != 36:
            continue
        try:
            port = int(fields[2].rpartition(":")[2]) if len(fields) > 2 else None
            found.append((fields[0], float(fields[1]) - t0, port))
        except ValueError:
            continue
    return found


def read_counters(path: Path) -> list[tuple[int, int]]:
    """A host's ``<pid> <dead-lettered>`` lines, one per clean stop (a line cut short is skipped)."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text().split("\n")[:-1]:
        try:
            pid, count = line.split(" ")
            found.append((int(pid), int(count)))
        except ValueError:
            continue
    return found


class Publishers:
    """Which host a connection to chipmock belonged to: (unix time, local port) of each host's proxy's connections."""

    def __init__(self, connections: Mapping[str, Sequence[tuple[float, int]]], t0: float) -> None:
        self._by_port: defaultdict[int, list[tuple[float, str]]] = defaultdict(list)
        for host, opened in connections.items():
            for at, port in opened:
                self._by_port[port].append((at - t0, host))
        for history in self._by_port.values():
            history.sort()

    def __call__(self, port: int | None, at: float) -> str | None:
        """The host whose connection had ``port`` at ``at`` (ports are reused: the latest opened before)."""
        history = self._by_port.get(port, []) if port is not None else []
        index = bisect.bisect_right(history, (at, "\uffff"))
        return history[index - 1][1] if index else None


@dataclass(frozen=True)
class Duplicate:
    event_id: str
    first: float  # receipts, seconds into the run
    second: float
    first_from: str | None  # the host that sent it each time (None: not known)
    second_from: str | None
    cause: str | None  # the fault that explains it; None: unexplained


@dataclass(frozen=True)
class Verdict:
    acked: int
    delivered: int  # distinct ids received
    lost: list[str]
    duplicates: list[Duplicate]
    resumes: list[tuple[Happened, float | None]]  # each fault, and the seconds from its end to the next delivery

    @property
    def unexplained(self) -> list[Duplicate]:
        return [dup for dup in self.duplicates if dup.cause is None]

    @property
    def wedged(self) -> list[Happened]:
        return [fault for fault, resume in self.resumes if resume is None]

    @property
    def max_resume(self) -> float:
        return max((resume for _, resume in self.resumes if resume is not None), default=0.0)


def _in_flight_since(kill: Happened, timeline: Sequence[Happened], before: float, pooled: str | None) -> float:
    """Where a killed host's in-flight window begins: a publish deadline before the kill, or earlier
    while Postgres was away from it until (nearly) the kill: what Chip took meanwhile was not deleted yet."""
    since, changed = kill.start - before, True
    while changed:
        changed = False
        for fault in timeline:
            if (fault.kind in POSTGRES_AWAY and _scope(fault, pooled) in (None, kill.target)
                    and fault.start - before < since and fault.start < kill.start <= fault.end + DELETE_LAG):
                since, changed = fault.start - before, True
    return since


def in_flight_windows(timeline: Sequence[Happened], publish_timeout: float, pooled: str | None = None
                      ) -> list[tuple[float, float, str | None, str]]:
    """(from, to, host, cause): an event ``host`` (None: any) published then may come back, its answer lost.

    A killed host's window runs from a publish deadline (and a second) before the
    kill (earlier if Postgres was away from it: see :func:`_in_flight_since`) to
    the kill, or to the end of a cut of its path to Chip that held its last
    requests at the kill. chipmock killed: the answers it had not sent. A cut
    path to Chip: the calls in flight when it began, and those it held.
    """
    windows = []
    before = publish_timeout + SLACK
    for fault in timeline:
        cause = f"{fault.kind} {fault.target} at {fault.start:.1f}s"
        if fault.kind == "host_kill":
            held = [cut.end for cut in timeline if cut.kind == "chip_blackhole" and cut.target == fault.target
                    and cut.start <= fault.start <= cut.end]
            windows.append((_in_flight_since(fault, timeline, before, pooled), max([fault.start, *held]) + SLACK,
                            fault.target, cause))
        elif fault.kind == "chip_kill":
            windows.append((fault.start - before, fault.start + SLACK, None, cause))
        elif fault.kind in ("chip_blackhole", "chip_reset"):
            windows.append((fault.start - before, fault.end + SLACK, fault.target, cause))
    return windows


def _explain(first: float, sender: str | None, windows: Iterable[tuple[float, float, str | None, str]]
             ) -> str | None:
    return next((cause for start, end, host, cause in windows
                 if start <= first <= end and host in (None, sender)), None)


def _scope(fault: Happened, pooled: str | None) -> str | None:
    """Whose deliveries show a fault is over: everyone's (None) or one host's."""
    if fault.kind in GLOBAL:
        return None
    return pooled if fault.kind == "pooler_restart" else fault.target


def resumes(timeline: Sequence[Happened], receipts: Mapping[str | None, list[float]], pooled: str | None
            ) -> list[tuple[Happened, float | None]]:
    """For each fault, the seconds from its end to the next receipt in its scope (None: none followed).

    Its end is pushed to the end of any fault that holds the same deliveries (one
    on everyone, or on the same host) and began before they resumed: a delivery
    cannot resume while another fault holds it. ``receipts``: sorted receipt
    times, by the host that acknowledged the id (None: every receipt).
    """
    found = []
    for fault in timeline:
        scope = _scope(fault, pooled)
        holding = sorted((other for other in timeline if _scope(other, pooled) in (None, scope)),
                         key=lambda other: other.start)
        times = receipts.get(scope, [])
        end = fault.end
        while True:
            index = bisect.bisect_right(times, end)
            resumed = times[index] if index < len(times) else float("inf")
            later = max((other.end for other in holding if other.start <= resumed and other.end > end), default=None)
            if later is None:
                break
            end = later
        found.append((fault, resumed - end if resumed != float("inf") else None))
    return found


def check(acked: Mapping[str, list[tuple[str, float, int | None]]], received: list[tuple[str, float, int | None]],
          timeline: Sequence[Happened], publish_timeout: float, pooled: str | None, publishers: Publishers,
          dead_lettered: Collection[str] = ()) -> Verdict:
    """``acked``: each host's (id, time, _); ``received``: chipmock's (id, time, peer port), in any order;
    ``dead_lettered``: the ids in the dead-letter table (not lost: what they count for is the caller's)."""
    by_id: defaultdict[str, list[tuple[float, int | None]]] = defaultdict(list)
    for event_id, at, port in received:
        by_id[event_id].append((at, port))
    owner = {event_id: host for host, ids in acked.items() for event_id, _, _ in ids}
    lost = sorted(set(owner) - set(by_id) - set(dead_lettered))
    windows = in_flight_windows(timeline, publish_timeout, pooled)
    duplicates = []
    for event_id, receipts in by_id.items():
        if len(receipts) > 1:
            (first, first_port), (second, second_port) = sorted(receipts, key=lambda r: r[0])[:2]
            sender = publishers(first_port, first)
            duplicates.append(Duplicate(event_id, first, second, sender, publishers(second_port, second),
                                        _explain(first, sender, windows)))
    scoped: defaultdict[str | None, list[float]] = defaultdict(list)
    for event_id, at, _ in received:
        scoped[None].append(at)
        if event_id in owner:
            scoped[owner[event_id]].append(at)
    for times in scoped.values():
        times.sort()
    return Verdict(len(owner), len(by_id), lost, sorted(duplicates, key=lambda d: d.first),
                   resumes(timeline, scoped, pooled))


@dataclass(frozen=True)
class DeadLetters:
    """The library's dead-letter counter, summed over the host processes, against the dead-letter table."""

    counter: int  # summed over the processes that reported it
    unreported: int  # processes that ran and never reported (killed: their counter died with them)
    rows: int
    marked: int  # events the hosts marked for chipmock to reject
    marked_not_dead_lettered: list[str]
    unmarked: list[str]  # rows whose event carried no mark: dead-lettered for something else

    @property
    def counter_matches(self) -> bool | None:
        """Whether the counter equals the table; None when a process's counter is missing."""
        return None if self.unreported else self.counter == self.rows


def dead_letters(reports: Iterable[tuple[int, int]], pids: Iterable[int], rows: Sequence[tuple[str, bool]],
                 marked: Collection[str]) -> DeadLetters:
    """``reports``: (pid, counter) of each clean stop; ``pids``: every host process that ran; ``rows``: the
    table's (id, whether its bytes carry the mark); ``marked``: the ids the hosts marked."""
    reports = list(reports)
    unreported = Counter(pids) - Counter(pid for pid, _ in reports)
    in_table = {event_id for event_id, _ in rows}
    return DeadLetters(sum(count for _, count in reports), sum(unreported.values()), len(rows), len(set(marked)),
                       sorted(set(marked) - in_table), sorted(event_id for event_id, mark in rows if not mark))


def failures(result: Mapping[str, Any], reject_rate: float) -> list[str]:
    """What fails a run, by its summary's keys: empty when it passed.

    Nothing lost, left, wedged or sent twice without a cause, no host exit and no
    fault the harness could not carry out; and no dead letter, unless chipmock was
    told to reject some (``reject_rate``): then exactly those, with the counter
    summed over every host process equal to the table's rows. A counter that
    disagrees with the table fails any run.
    """
    bad = [key for key in ("lost", "unexplained_duplicates", "left", "wedged", "host_exits", "harness_errors")
           if result[key]]
    if reject_rate:
        bad += [key for key in ("marked_not_dead_lettered", "dead_lettered_unmarked") if result[key]]
        if result["dead_letter_counter_matches"] is not True:
            bad.append("dead_letter_counter_matches")
    else:
        bad += ["dead_lettered"] if result["dead_lettered"] else []
        bad += ["dead_letter_counter_matches"] if result["dead_letter_counter_matches"] is False else []
    return bad

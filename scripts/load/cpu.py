"""CPU seconds of the other processes a measurement runs (/proc): an emitter process, chipmock, Postgres.

Where the time goes when a rate falls short: each figure is user + system CPU
since the process started. Postgres counts as its postmaster, every server
process it runs now, and those that ended (the postmaster's reaped children),
so backends that come and go during a phase are not lost. Linux only; ``None``
where /proc cannot tell (a remote server, another platform).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import psycopg

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3, the state, first)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def process_cpu(pid: int, *, reaped_children: bool = False) -> float | None:
    """User + system CPU seconds of ``pid`` (and of its children it waited for, if asked)."""
    fields = _stat(pid)
    if fields is None:
        return None
    used = int(fields[11]) + int(fields[12])  # utime, stime
    if reaped_children:
        used += int(fields[13]) + int(fields[14])  # cutime, cstime
    return used / _TICKS


def postgres_cpu(url: str) -> Callable[[], float | None]:
    """A reader of the CPU the Postgres server behind ``url`` used so far (None if it is not local)."""
    with psycopg.connect(url, autocommit=True) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        fields = _stat(backend)
    postmaster = int(fields[1]) if fields else None  # the backend's parent

    def read() -> float | None:
        if postmaster is None:
            return None
        total = process_cpu(postmaster, reaped_children=True)
        if total is None:
            return None
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and (child := _stat(int(entry.name))) and child[1] == str(postmaster):
                total += (int(child[11]) + int(child[12])) / _TICKS
        return total

    return read


def per_event_us(before: float | None, after: float | None, events: int) -> float | None:
    """CPU microseconds per event between two readings; None if either is unknown."""
    if before is None or after is None or not events:
        return None
    return round((after - before) / events * 1e6, 1)

"""Which process runs an instance, and whether a process on this host is gone: liveness's proof of death.

A free liveness lock is not yet a dead process (a restart, a failover, a pooler
or a reset path frees it while the process lives), so an owner is given a grace.
One thing proves a death at once: a claimer on the same host, in the same pid
namespace, finding the owner's process gone (or its pid taken by a process that
started later). Each instance records its process as ``host boot-id pid-namespace
pid start-time``; anything else (another host, another container, not Linux)
proves nothing and the grace applies.
"""

from __future__ import annotations

import os
import socket
from functools import cache
from pathlib import Path


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _started(pid: int) -> str:
    """The process's start time (clock ticks since boot), or "" when there is no such process."""
    stat = _read(f"/proc/{pid}/stat")
    return stat.rpartition(")")[2].split()[19] if stat else ""


@cache
def _here() -> str:
    """This host, boot and pid namespace; "" where they cannot be told (then nothing is proven)."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = ""
    return f"{socket.gethostname()} {boot} {namespace}" if boot and namespace else ""


def this_process() -> str:
    """What an instance records of its process (recomputed after a fork: the pid changes)."""
    here, pid = _here(), os.getpid()
    return f"{here} {pid} {_started(pid)}" if here else ""


def gone(process: str) -> bool:
    """Whether ``process`` (as :func:`this_process` wrote it) ran on this host, boot and pid
    namespace and has ended: no such pid, or one that started at another time."""
    here = _here()
    if not here or not process.startswith(here + " "):
        return False
    pid, _, started = process[len(here) + 1:].partition(" ")
    return pid.isdigit() and started != "" and _started(int(pid)) != started

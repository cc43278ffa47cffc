"""Workload processes for tests where a crash must be a real process dying."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ChildOutput

ROOT = Path(__file__).resolve().parents[1]


class Workload:
    def __init__(self, proc: subprocess.Popen, ids_file: Path) -> None:
        self.proc = proc
        self.ids_file = ids_file
        self.progress = ChildOutput(proc.stdout)  # drained from the start: a full pipe would stall the workload

    def ids(self) -> list[str]:
        if not self.ids_file.exists():
            return []
        return [line for line in self.ids_file.read_text().splitlines() if len(line) == 36]

    def wait_for_ids(self, count: int, timeout: float = 60.0) -> None:
        """Block until ``count`` ids are recorded, woken by the progress lines the workload prints."""
        deadline = time.monotonic() + timeout
        while (emitted := len(self.ids())) < count:
            what = f"the workload to emit {count} events (it emitted {emitted})"
            if not self.progress.line(deadline - time.monotonic(), what=what):
                self.proc.wait(timeout=30)
                raise AssertionError(f"workload exited early: {ChildOutput(self.proc.stderr).rest(timeout=30)}")


@pytest.fixture
def start_workload(tmp_path: Path) -> Iterator:
    procs: list[subprocess.Popen] = []

    def _start(database_url: str, chip_endpoint: str, *args: str, name: str = "w", **env: str) -> Workload:
        ids_file = tmp_path / f"{name}-ids.txt"
        environment = {**os.environ, "DATABASE_URL": database_url, "CHIP_INGRESS_ENDPOINT": chip_endpoint, **env}
        proc = subprocess.Popen(
            [sys.executable, "-m", "scripts.workload", "--ids-file", str(ids_file), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment, cwd=ROOT,
        )
        procs.append(proc)
        return Workload(proc, ids_file)

    yield _start
    for proc in procs:
        proc.kill()
        proc.wait()

"""chipmock in its own process for measurements: a real Chip is remote, and an in-process server shares the GIL.

Started as ``python -m chipmock`` on free ports, read through its /metrics
endpoint, stopped by its pid (SIGTERM, then SIGKILL after a deadline).
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from actors.core.instruments import HistogramSnapshot
from scripts import ROOT

_LISTENING = re.compile(r"listening on (\S+) .*metrics on (http://\S+/metrics)")


@dataclass(frozen=True)
class ChipFigures:
    """What the out-of-process chipmock had received when read."""

    unique: int
    duplicates: int
    ages: HistogramSnapshot  # emit (recordedtime, ms precision) -> arrival at Chip
    calls: int = 0  # publish calls received, refused ones included (Ping is not counted)
    rate_limited: int = 0  # calls refused by --rate-limit


class ChipProcess:
    """A chipmock server process; ``endpoint`` for emitters, ``figures()`` for what it received."""

    def __init__(self, *chipmock_args: str, start_timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chipmock", "--port", "0", "--metrics-port", "0", *chipmock_args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            line = self._first_line(start_timeout)
            match = _LISTENING.search(line)
            if not match:
                raise RuntimeError(f"chipmock did not start: {line.strip() or self.proc.stderr.read()[-2000:]}")
        except BaseException:
            self.stop()
            raise
        self.endpoint, self.metrics_url = match.group(1), match.group(2)
        self.started = time.monotonic()  # within milliseconds of chipmock's own clock for --outage windows

    def _first_line(self, timeout: float) -> str:
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise RuntimeError(f"chipmock printed nothing within {timeout:g}s")
        return self.proc.stdout.readline()

    def figures(self) -> ChipFigures:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text = response.read().decode()
        values: dict[str, float] = {}
        bounds: list[float] = []
        cumulative: list[int] = []
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "chipmock_event_age_seconds_bucket":
                    bounds.append(float(sample.labels["le"]))
                    cumulative.append(int(sample.value))
                else:
                    values[sample.name] = sample.value
        counts = tuple(n - m for n, m in zip(cumulative, [0, *cumulative[:-1]], strict=True))
        return ChipFigures(int(values["chipmock_events_unique"]), int(values["chipmock_events_duplicate_total"]),
                           HistogramSnapshot(tuple(bounds[:-1]), counts, 0.0), int(values["chipmock_calls_total"]),
                           int(values["chipmock_rate_limited_calls_total"]))

    def stop(self, deadline: float = 10.0) -> None:
        """SIGTERM by pid, SIGKILL if it has not ended within ``deadline``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(deadline)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()

    def __enter__(self) -> ChipProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def chip_args(latency: float = 0.0, *extra: str) -> list[str]:
    return [f"--latency={latency * 1000:g}ms", *extra]


def wait_for_unique(chip: ChipProcess, count: int, timeout: float) -> ChipFigures:
    """Poll until ``count`` distinct events arrived or ``timeout`` passed; the last figures either way."""
    stop_at = time.monotonic() + timeout
    while (figures := chip.figures()).unique < count and time.monotonic() < stop_at:
        time.sleep(0.05)
    return figures

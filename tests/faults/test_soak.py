"""A seeded soak of 75 s in the test run: every kind of fault, nothing lost, nothing sent twice without a cause.

``python -m scripts.soak`` as a user runs it (its own process; it starts and stops
everything), with a seed whose plan draws each of the fourteen kinds of fault.
Its independent checker decides; this test reads its last line and its exit status.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from scripts import ROOT

SEED = 374  # its 75 s plan draws every kind of fault, failover included (tests/unit/test_soak.py keeps it so)
SECONDS = 75
DEADLINE = 240  # seconds for the whole run: set-up, 75 s of faults, the drain, the report
pytestmark = [pytest.mark.slow, pytest.mark.timeout(DEADLINE + 60), pytest.mark.xdist_group("fleets")]


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM by pid (the soak then stops everything it started, by pid); SIGKILL its group if it lingers."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(45)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_seeded_soak_loses_nothing_and_sends_nothing_twice_without_a_cause(tmp_path, capsys) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "scripts.soak", "--seconds", str(SECONDS), "--seed", str(SEED),
                             "--out", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        _stop(proc)
        pytest.fail(f"the soak did not end within {DEADLINE}s (a wedge?); its stderr ends:\n{proc.stderr.read()[-5000:]}")
    finally:
        _stop(proc)  # interrupted: it must not outlive the test
    lines = out.strip().splitlines()
    assert lines, f"the soak printed no summary (exit {proc.returncode}); its stderr ends:\n{err[-5000:]}"
    summary = json.loads(lines[-1])
    with capsys.disabled():
        print(f"\n  soak, seed {SEED}, {SECONDS} s: {json.dumps(summary)}")
    figures = {key: summary[key] for key in ("lost", "unexplained_duplicates", "dead_lettered", "left", "wedged")}
    assert figures == dict.fromkeys(figures, 0), err[-8000:]
    assert proc.returncode == 0, err[-8000:]

"""`just run-local` end to end as a user runs it: start, watch, Ctrl-C, summary, no orphans."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_run_local_reports_intervals_and_stops_cleanly_on_sigint(tmp_path) -> None:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    env.pop("DATABASE_URL", None)
    env.pop("CHIP_INGRESS_ENDPOINT", None)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "run_local.py"), "--workflows", "3", "--interval", "200ms",
         "--refresh", "300ms", "--metrics-port", "0", "--chipmock-metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )
    intervals = []
    try:
        for line in proc.stdout:
            if line.startswith("{"):
                record = json.loads(line)
                if record["event"] == "run-local interval":
                    intervals.append(record)
                    if len(intervals) >= 5 and record["chip_unique"] > 0:
                        break
        proc.send_signal(signal.SIGINT)
        rest, errors = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, errors
    assert intervals[-1]["emitted"] > 0 and intervals[-1]["chip_unique"] > 0
    assert "run-local stopped after" in rest and "pending rows stay in the table" in rest
    assert "Traceback" not in errors
    assert _processes_mentioning(str(tmp_path / "state")) == [], "the embedded Postgres was left running"


def test_run_local_rejects_bad_options() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_local.py"), "--interval", "often"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "usage: run-local" in done.stderr

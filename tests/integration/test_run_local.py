"""`just run-local` as a user runs it, and upstream's acceptance tests run against it.

Upstream's smoke and load tests watched ``pg_stat_user_tables`` inserts and
deletes on ``chip_durable_events`` while a workflow host emitted; run-local
prints exactly those counters, one JSON line per interval, so these tests read
its output as an operator would.
"""

import contextlib
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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


class Lines:
    """A child's output read line by line, each read bounded by a deadline: a silent child fails the test."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buffer, self.ended = fd, b"", False

    def next(self, deadline: float) -> str | None:
        """The next line (without its line end), or None once the output ended."""
        while b"\n" not in self.buffer and not self.ended:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"no output before the deadline; so far: {self.buffer[-2000:]!r}")
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # a terminal's side reads EIO once the child closed its end
                chunk = b""
            self.buffer += chunk
            self.ended = not chunk
        if not self.buffer:
            return None
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode(errors="replace").rstrip("\r")

    def rest(self, deadline: float) -> str:
        lines = []
        while (line := self.next(deadline)) is not None:
            lines.append(line)
        return "\n".join(lines)


def _records(lines: Lines, deadline: float, until, said: list[str] | None = None) -> list[dict]:
    """Interval records until ``until(records)``; the other lines (kept in ``said``) say why, if run-local ends first."""
    records: list[dict] = []
    said = [] if said is None else said
    while (line := lines.next(deadline)) is not None:
        if line.startswith('{"event": "run-local interval"'):
            records.append(json.loads(line))
            if until(records):
                return records
        else:
            said.append(line)
    raise AssertionError(f"run-local ended after {len(records)} intervals:\n" + "\n".join(said[-20:]))


def stopped_record(rest: str) -> dict:
    (record,) = [json.loads(line) for line in rest.splitlines() if line.startswith('{"event": "run-local stopped"')]
    return record


def run_local(args: list[str], env: dict[str, str], until, timeout: float = 90.0, said: list[str] | None = None):
    """Start run-local as ``just run-local`` does, collect interval records until ``until(records)``; then SIGINT it.

    Returns (records, the rest of stdout, stderr, exit code).
    """
    with tempfile.TemporaryFile() as stderr:  # a file: a chatty child never blocks on a full pipe
        proc = subprocess.Popen(
            [sys.executable, "-m", "scripts.run_local", "--metrics-port", "0", "--chipmock-metrics-port", "0", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=ROOT,
        )  # stdin: never the terminal pytest runs in, whose Ctrl-C run-local would take over
        try:
            lines = Lines(proc.stdout.fileno())
            records = _records(lines, time.monotonic() + timeout, until, said)
            proc.send_signal(signal.SIGINT)
            deadline = time.monotonic() + 30
            rest = lines.rest(deadline)
            code = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
        stderr.seek(0)
        return records, rest, stderr.read().decode(errors="replace"), code


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    for name in ("DATABASE_URL", "CHIP_INGRESS_ENDPOINT"):
        if name not in extra:
            env.pop(name, None)
    return env


def test_run_local_reports_intervals_and_stops_cleanly_on_sigint(tmp_path) -> None:
    state = tmp_path / "state"
    records, rest, errors, code = run_local(
        ["--workflows", "3", "--interval", "200ms", "--refresh", "300ms"], _env(XDG_STATE_HOME=str(state)),
        until=lambda r: len(r) >= 5 and r[-1]["chip_unique"] > 0)
    assert code == 0, errors
    assert records[-1]["emitted"] > 0 and records[-1]["chip_unique"] > 0
    assert "run-local stopped after" in rest and "pending rows stay in the table" in rest
    summary = stopped_record(rest)
    assert summary["waiting_before"] == 0 and summary["emitted"] >= records[-1]["emitted"]
    assert summary["emitted"] == summary["delivered"] + summary["dead_lettered"] + summary["pending"], summary
    assert "Traceback" not in errors
    assert _processes_mentioning(str(state)) == [], "the embedded Postgres was left running"


def test_rows_an_earlier_run_left_are_counted_apart_and_the_counts_add_up(database_url) -> None:
    first = subprocess.run(
        [sys.executable, "-m", "scripts.run_local", "--metrics-port", "0", "--duration", "2s", "--refresh", "500ms"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90, cwd=ROOT,
        env=_env(DATABASE_URL=database_url, CHIP_INGRESS_ENDPOINT="127.0.0.1:1"))  # Chip down: rows stay
    assert first.returncode == 0, first.stderr
    left = stopped_record(first.stdout)
    assert left["delivered"] == 0 and left["pending"] == left["emitted"] > 0

    _, rest, errors, code = run_local(["--workflows", "2", "--interval", "200ms", "--refresh", "300ms"],
                                      _env(DATABASE_URL=database_url),
                                      until=lambda r: r[-1]["chip_unique"] > left["pending"])
    assert code == 0, errors
    summary = stopped_record(rest)
    assert summary["waiting_before"] == left["pending"]
    assert (summary["emitted"] + summary["waiting_before"]
            == summary["delivered"] + summary["dead_lettered"] + summary["pending"]), summary
    assert f"plus {left['pending']:,} left pending by an earlier run" in rest


def test_ctrl_c_on_a_terminal_under_just_ends_with_the_summary_and_exit_0(tmp_path) -> None:
    """A terminal's Ctrl-C signals the whole foreground group, just included; just then said
    "error: interrupted by SIGINT" and exited 130 after run-local's clean stop."""
    just = shutil.which("just", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert just, "just comes with the dev extras (rust-just)"
    state = tmp_path / "state"
    terminal, child_side = pty.openpty()
    take_the_terminal = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                         "os.execv(sys.argv[1], sys.argv[1:])")  # a session leader's controlling terminal
    proc = subprocess.Popen(
        [sys.executable, "-c", take_the_terminal, just, "run-local", "--json", "--refresh", "300ms",
         "--metrics-port", "0", "--chipmock-metrics-port", "0"],
        stdin=child_side, stdout=child_side, stderr=child_side, start_new_session=True, cwd=ROOT,
        env=_env(XDG_STATE_HOME=str(state), PYTHON=sys.executable))
    os.close(child_side)
    try:
        lines = Lines(terminal)
        _records(lines, time.monotonic() + 90, until=lambda r: r[-1]["emitted"] > 0)
        os.write(terminal, b"\x03")
        deadline = time.monotonic() + 30
        rest = lines.rest(deadline)
        code = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        with contextlib.suppress(ProcessLookupError):  # the session's group: just and run-local, if still there
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        os.close(terminal)
    assert code == 0, rest
    assert "run-local stopped after" in rest.splitlines()[-1], rest
    assert "error:" not in rest and "Traceback" not in rest, rest
    summary = stopped_record(rest)
    assert summary["emitted"] == summary["delivered"] + summary["dead_lettered"] + summary["pending"], summary
    assert _processes_mentioning(str(state)) == [], "the embedded Postgres was left running"


def test_smoke_inserts_and_deletes_rise_while_pending_stays_small(database_url) -> None:
    # Upstream: one cron workflow every 5 s; within 4 minutes >= 30 inserts and deletes, pending <= 10.
    # Scaled to CI time: every 50 ms, within 90 s.
    records, _, errors, code = run_local(
        ["--workflows", "1", "--interval", "50ms", "--refresh", "250ms"], _env(DATABASE_URL=database_url),
        until=lambda r: r[-1]["inserts"] >= 30 and r[-1]["deletes"] >= 30)
    assert code == 0, errors
    assert records[-1]["inserts"] >= 30 and records[-1]["deletes"] >= 30
    assert max(r["pending"] for r in records) <= 10


def test_node_auth_signs_with_a_generated_key_that_chipmock_verifies(database_url) -> None:
    said: list[str] = []
    records, rest, errors, code = run_local(
        ["--node-auth", "--workflows", "1", "--interval", "50ms", "--refresh", "250ms"],
        _env(DATABASE_URL=database_url), until=lambda r: r[-1]["deletes"] >= 10, said=said)
    assert code == 0, errors
    (started,) = [json.loads(line) for line in said if line.startswith('{"event": "run-local started"')]
    assert started["chip"].endswith("(node token of a key made for this run, verified)")
    assert records[-1]["deletes"] >= 10  # delivered through a chipmock that admits only that key's tokens


def test_node_auth_says_it_is_ignored_when_chip_ingress_endpoint_is_set(database_url) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.run_local", "--node-auth", "--metrics-port", "0", "--duration", "500ms"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90, cwd=ROOT,
        env=_env(DATABASE_URL=database_url, CHIP_INGRESS_ENDPOINT="127.0.0.1:1"))  # no chipmock is started
    assert done.returncode == 0, done.stderr
    assert "run-local: --node-auth is ignored: CHIP_INGRESS_ENDPOINT is set" in done.stderr
    assert "key made for this run" not in done.stdout  # the run-local started line says no such thing


def test_load_twenty_workflows_every_second(database_url) -> None:
    # Upstream: 20 workflows every 1 s for 3 minutes, sampled every 15 s; inserts > 20 x 40,
    # deletes > 0, max and final pending <= 20 x 16. Scaled: 6 s, sampled every second.
    seconds = 6
    records, _, errors, code = run_local(
        ["--workflows", "20", "--interval", "1s", "--refresh", "1s"], _env(DATABASE_URL=database_url),
        until=lambda r: r[-1]["elapsed_s"] >= seconds)
    assert code == 0, errors
    final = records[-1]
    assert final["inserts"] > 20 * (seconds - 2)
    assert final["deletes"] > 20 * (seconds - 3)  # keeps pace (the stats view lags up to a second)
    assert max(r["pending"] for r in records) <= 20 * 16 and final["pending"] <= 20 * 16


def test_run_local_rejects_bad_options() -> None:
    done = subprocess.run([sys.executable, "-m", "scripts.run_local", "--interval", "often"],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 2 and "usage: run-local" in done.stderr


def test_busy_metrics_ports_are_replaced_by_free_ones_and_grpc_prints_no_fork_warnings(tmp_path) -> None:
    import socket

    holders = [socket.socket() for _ in range(2)]
    try:
        for holder in holders:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
        emitter_port, chipmock_port = (str(h.getsockname()[1]) for h in holders)
        done = subprocess.run(
            [sys.executable, "-m", "scripts.run_local", "--metrics-port", emitter_port,
             "--chipmock-metrics-port", chipmock_port, "--duration", "2s", "--refresh", "500ms"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, cwd=ROOT, env=_env(XDG_STATE_HOME=str(tmp_path / "state")))
    finally:
        for holder in holders:
            holder.close()
    assert done.returncode == 0, done.stderr
    assert f"port {emitter_port} is in use; emitter metrics on port" in done.stderr
    assert f"port {chipmock_port} is in use; chipmock metrics on port" in done.stderr
    assert "run-local stopped after" in done.stdout
    assert "fork_posix" not in done.stderr and "Traceback" not in done.stderr


def test_ctrl_c_at_any_moment_prints_a_summary_and_no_traceback(tmp_path) -> None:
    """A terminal's Ctrl-C signals the whole process group, start-up included (initdb gets it too)."""
    for moment in (0.3, 1.5, 4.0):
        proc = subprocess.Popen([sys.executable, "-m", "scripts.run_local", "--metrics-port", "0",
                                 "--chipmock-metrics-port", "0", "--refresh", "200ms"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                env=_env(XDG_STATE_HOME=str(tmp_path / f"state-{moment}")), start_new_session=True)
        try:
            try:
                proc.wait(timeout=moment)  # the moment of the Ctrl-C, not a synchronisation
            except subprocess.TimeoutExpired:
                pass
            os.killpg(proc.pid, signal.SIGINT)
            out, errors = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode in (0, 130), (moment, errors)
        assert "run-local stopped" in out and "Traceback" not in errors, (moment, out, errors)

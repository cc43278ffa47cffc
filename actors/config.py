"""Configuration: one frozen dataclass, from keywords or from the environment.

Every knob is validated when the config is built, so a bad value fails at
start with a message naming the setting, never deep inside an actor.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_duration(text: str) -> float:
    """``"50ms"`` -> 0.05, ``"2s"`` / ``"2"`` -> 2.0, ``"1m"``, ``"1h"``. Raises ValueError."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 50ms, 2s, 1.5, 1m, 1h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (use true or false)")


def default_state_dir() -> Path:
    """Where the embedded Postgres keeps its data: ``$XDG_STATE_HOME/durable-emitter``."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "durable-emitter"


def default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _seconds(**kw: Any) -> Any:
    return field(metadata={"unit": "seconds"}, **kw)


@dataclass(frozen=True)
class EmitterConfig:
    """Everything the emitter needs, validated at construction.

    Build it with keywords, or with :meth:`from_env`, which reads
    ``DATABASE_URL``, ``CHIP_INGRESS_*`` and ``DURABLE_EMITTER_<KNOB>`` (the
    knob's name in upper case; durations accept ``50ms``, ``2s``, ``1m``).
    """

    # Where events live. None: the embedded PostgreSQL in ``data_dir``.
    database_url: str | None = field(default=None, repr=False)  # may hold a password
    data_dir: Path = field(default_factory=lambda: default_state_dir() / "pgdata")

    # Chip Ingress, "host:port". Required to start: the library never picks a
    # stand-in by itself, because acknowledging into a mock deletes the events.
    chip_endpoint: str | None = None
    chip_tls: bool = False
    chip_ca_file: Path | None = None
    chip_username: str | None = None
    chip_password: str | None = field(default=None, repr=False)

    # Several instances may share one table; rows are leased to one at a time.
    instance_id: str = field(default_factory=default_instance_id)
    # A writer-only instance publishes what it emits but never claims others' rows.
    writer_only: bool = False
    lease_duration: float = _seconds(default=60.0)

    # Group commit: emits gathered into one INSERT and one commit.
    persist_batch_size: int = 1000
    # Connections committing in parallel: overlaps WAL flushes when few callers emit at once.
    persist_writers: int = 1
    # In-memory hand-off from persister to dispatcher; beyond it, events are
    # read back from the table (memory stays bounded whatever the backlog).
    dispatch_buffer: int = 20_000
    dispatch_buffer_bytes: int = 64 * 1024 * 1024

    # Publishing: PublishBatch calls of up to publish_batch_size events (and
    # max_request_bytes), several in flight, each with a deadline.
    publish_batch_size: int = 500
    publish_linger: float = _seconds(default=0.02)
    publishes_in_flight: int = 8
    publish_timeout: float = _seconds(default=5.0)
    max_request_bytes: int = 9 * 1024 * 1024
    # Transient failures: in-memory retries with exponential backoff and full
    # jitter; after publish_attempts, rows go back to the table to retry later.
    publish_attempts: int = 5
    retry_initial: float = _seconds(default=0.1)
    retry_multiplier: float = 2.0
    retry_max: float = _seconds(default=5.0)
    # Failed calls in a row before delivery pauses (outage mode: no claims, no
    # releases, Ping on backoff up to retry_max until Chip answers). A call Chip
    # refuses (credentials, its own set-up) pauses at once.
    failures_to_pause: int = 3
    # A row handed back to the table waits retry_initial-ish x retry_multiplier per
    # attempt it already had, up to this: rows that keep failing come back slowly.
    row_retry_max: float = _seconds(default=60.0)

    # Deletes after ack: one statement per batch.
    delete_batch_size: int = 2000

    # Every wait on Postgres has a deadline. A statement (claim, delete, count) is
    # cancelled after statement_timeout; a lock wait (a table locked by someone
    # else) after lock_timeout; emit's commit after commit_timeout, when emit
    # raises StoreUnavailable and nothing is written. A connection whose peer
    # vanished (half-open after a failover) is dropped after tcp_user_timeout of
    # unacknowledged data, or keepalive probes from tcp_keepalive_idle on.
    statement_timeout: float = _seconds(default=30.0)
    lock_timeout: float = _seconds(default=5.0)
    commit_timeout: float = _seconds(default=10.0)
    tcp_user_timeout: float = _seconds(default=10.0)
    tcp_keepalive_idle: float = _seconds(default=10.0)

    # Backpressure: emit waits up to backlog_timeout while pending >= max_pending.
    max_pending: int = 1_000_000
    backlog_timeout: float = _seconds(default=5.0)
    # A row older than this is moved to the dead-letter table, never dropped.
    event_ttl: float = _seconds(default=24 * 3600.0)
    max_event_bytes: int = 4 * 1024 * 1024
    # How often the table is scanned for claimable rows and expired events.
    scan_interval: float = _seconds(default=1.0)
    # Grace period for in-flight publishes when the emitter closes.
    shutdown_timeout: float = _seconds(default=5.0)

    # Supervisor: more than max_restarts in restart_period seconds fails the tree.
    # A crashed actor restarts after restart_delay, doubled for each restart
    # still within the period, up to restart_delay_max: no hot loop.
    max_restarts: int = 5
    restart_period: float = _seconds(default=10.0)
    restart_delay: float = _seconds(default=0.1)
    restart_delay_max: float = _seconds(default=2.0)

    # Observability. metrics_port None: no HTTP endpoint (the registry still counts).
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    log_interval: float = _seconds(default=10.0)
    sample_interval: float = _seconds(default=1.0)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "float") and not isinstance(value, (int, float)):
                raise ConfigError(f"{f.name} must be a number, got {value!r}")
        positive = [
            "lease_duration", "persist_batch_size", "persist_writers", "dispatch_buffer", "dispatch_buffer_bytes",
            "publish_batch_size",
            "publishes_in_flight", "publish_timeout", "max_request_bytes", "publish_attempts",
            "retry_initial", "retry_max", "failures_to_pause", "row_retry_max", "statement_timeout", "lock_timeout",
            "commit_timeout", "tcp_user_timeout", "tcp_keepalive_idle", "delete_batch_size", "max_pending", "event_ttl",
            "max_event_bytes", "scan_interval", "max_restarts", "restart_period",
            "log_interval", "sample_interval",
        ]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be greater than 0, got {getattr(self, name)!r}")
        for name in ["publish_linger", "backlog_timeout", "shutdown_timeout", "restart_delay", "restart_delay_max"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)!r}")
        if self.retry_multiplier < 1:
            raise ConfigError(f"retry_multiplier must be at least 1, got {self.retry_multiplier!r}")
        if self.max_event_bytes >= self.max_request_bytes:
            raise ConfigError(
                f"max_event_bytes ({self.max_event_bytes}) must be below max_request_bytes "
                f"({self.max_request_bytes}), or an event could never be sent"
            )
        if self.lease_duration <= 2 * self.publish_timeout:
            raise ConfigError(
                f"lease_duration ({self.lease_duration}s) must exceed twice publish_timeout "
                f"({self.publish_timeout}s), or leases lapse while a publish is in flight"
            )
        if self.chip_endpoint is not None and not _is_host_port(self.chip_endpoint):
            raise ConfigError(f"chip_endpoint must be host:port, got {self.chip_endpoint!r}")
        if (self.chip_username is None) != (self.chip_password is None):
            raise ConfigError("chip_username and chip_password must be given together")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port must be 0..65535, got {self.metrics_port!r}")
        if not self.instance_id:
            raise ConfigError("instance_id must not be empty")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> EmitterConfig:
        """Build from environment variables; ``overrides`` win over the environment.

        ``DATABASE_URL``, ``CHIP_INGRESS_ENDPOINT``, ``CHIP_INGRESS_TLS``,
        ``CHIP_INGRESS_CA_FILE``, ``CHIP_INGRESS_USERNAME``,
        ``CHIP_INGRESS_PASSWORD``, and ``DURABLE_EMITTER_<KNOB>`` for every
        other field (``DURABLE_EMITTER_MAX_PENDING=50000``). A malformed value
        raises :class:`ConfigError` naming the variable.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = ENV_NAMES.get(f.name, f"DURABLE_EMITTER_{f.name.upper()}")
            raw = env.get(name)
            if raw is None or f.name in overrides:
                continue
            try:
                values[f.name] = _parse_field(f, raw)
            except ValueError as exc:
                shown = raw if f.name != "chip_password" else "***"
                raise ConfigError(f"{name}={shown!r}: {exc}") from None
        values.update(overrides)
        return cls(**values)

    def redacted_database_url(self) -> str:
        return redact_dsn(self.database_url) if self.database_url else "(embedded)"


ENV_NAMES = {
    "database_url": "DATABASE_URL",
    "chip_endpoint": "CHIP_INGRESS_ENDPOINT",
    "chip_tls": "CHIP_INGRESS_TLS",
    "chip_ca_file": "CHIP_INGRESS_CA_FILE",
    "chip_username": "CHIP_INGRESS_USERNAME",
    "chip_password": "CHIP_INGRESS_PASSWORD",
}


def _parse_field(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = str(f.type)
    if f.metadata.get("unit") == "seconds":
        return parse_duration(raw)
    if kind.startswith("bool"):
        return parse_bool(raw)
    if kind.startswith("int"):
        try:
            return int(raw.replace("_", ""))
        except ValueError:
            raise ValueError(f"{raw!r} is not a whole number") from None
    if kind.startswith("float"):
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number") from None
    if "Path" in kind:
        return Path(raw)
    if not raw.strip():
        raise ValueError("is empty")
    return raw.strip()


def _is_host_port(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``***``, fit for logs and errors."""
    redacted = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", redacted, flags=re.I)

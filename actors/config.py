"""Configuration: one frozen dataclass, from keywords or from the environment.

Every knob is validated when the config is built, so a bad value fails at
start with a message naming the setting, never deep inside an actor.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_env import ENV_NAMES as ENV_NAMES
from .config_env import ENV_PREFIX as ENV_PREFIX
from .config_env import parse_duration as parse_duration
from .config_env import values_from_env
from .core.credentials import auth_problem, split_host_port
from .errors import ConfigError

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
def default_state_dir() -> Path:
    """Where the embedded Postgres keeps its data: ``$XDG_STATE_HOME/durable-emitter``."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "durable-emitter"


RESERVED_OWNERS = frozenset({"outbox", "replay"})  # owners of rows of no instance: the outbox's, replayed ones


def default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _seconds(**kw: Any) -> Any:
    return field(metadata={"unit": "seconds"}, **kw)


@dataclass(frozen=True)
class EmitterConfig:
    """Everything the emitter needs, validated at construction.

    Build it with keywords, or with :meth:`from_env`, which reads
    ``DATABASE_URL``, ``CHIP_INGRESS_*`` and ``DURABLE_EMITTER_<KNOB>`` (the
    knob's name in upper case; durations need a unit: ``50ms``, ``2s``, ``1m30s``).
    """

    # Where events live. Required, unless embedded_postgres asks for a local
    # server in data_dir: a mistyped DATABASE_URL must never mean "durable"
    # events on throwaway disk, so the library starts nothing by itself.
    database_url: str | None = field(default=None, repr=False)  # may hold a password
    embedded_postgres: bool = False  # start (or reuse) a local PostgreSQL in data_dir instead
    # the embedded server's data, kept across restarts
    data_dir: Path = field(default_factory=lambda: default_state_dir() / "pgdata")
    schema: str = "public"  # the Postgres schema holding the emitter's tables
    # An older schema at start: migrate it (True) or refuse, naming `durable-emitter
    # schema apply` (False). None: migrate only the embedded Postgres.
    auto_migrate: bool | None = None

    # Chip Ingress, "host:port". Required to start: the library never picks a
    # stand-in by itself, because acknowledging into a mock deletes the events.
    chip_endpoint: str | None = None
    chip_tls: bool = False  # TLS to Chip (system roots, or chip_ca_file)
    chip_ca_file: Path | None = None  # a CA bundle for Chip's certificate
    chip_username: str | None = None  # basic auth on every call, with chip_password
    chip_password: str | None = field(default=None, repr=False)  # never logged or shown

    # Chip's node token, as Chainlink nodes authenticate: an ed25519 key file (PEM
    # PKCS#8, or the 32-byte seed as 64 hex characters) signs a token refreshed once
    # older than chip_auth_ttl. Credentials never go in plaintext beyond loopback
    # unless chip_auth_plaintext says so.
    chip_auth_key_file: Path | None = None
    chip_auth_ttl: float = _seconds(default=600.0)  # token age before it is signed again (at least 10m)
    # hex: the key chip_auth_signer signs for (code: or Emitter.set_chip_signer)
    chip_auth_public_key: str | None = None
    # signs bytes (ed25519), sync or async, within 5 s
    chip_auth_signer: Callable[[bytes], bytes | Awaitable[bytes]] | None = field(
        default=None, repr=False, metadata={"env": False})
    # name=value,... on every call
    chip_auth_headers: Mapping[str, str] | None = field(default=None, repr=False, hash=False)
    chip_auth_plaintext: bool = False  # allow credentials without TLS to a host other than loopback

    # Several instances may share one table; rows are leased to one at a time.
    instance_id: str = field(default_factory=default_instance_id)
    # A writer-only instance publishes what it emits but never claims others' rows.
    writer_only: bool = False
    lease_duration: float = _seconds(default=60.0)  # how long a row stays with the instance that holds it
    # Each instance holds a session-level advisory lock while it runs, so the rows of
    # one that died are claimed at once instead of after their lease, and LISTENs for
    # outbox rows; its connections make their settings once per session and run the
    # hot statements prepared. Needs sessions of its own: behind a pooler in
    # transaction mode (refused at start), set this false on the instances there: each
    # transaction then makes its own settings, statements go unnamed, their rows wait
    # for their lease after a crash (the others' do not), and outbox rows for the scan.
    session_liveness: bool = True
    # With OpenTelemetry's API installed (the `otel` extra) and a span current, events carry
    # the CloudEvents distributed-tracing extension (traceparent, tracestate).
    trace_context: bool = True

    # Group commit: emits gathered into one INSERT and one commit.
    persist_batch_size: int = 1000
    # Connections committing at once; free ones split the queued emits. One measured fastest
    # on a local Postgres; more can pay when each commit's round trip is long.
    persist_writers: int = 1
    # In-memory hand-off from persister to dispatcher; beyond it, events are
    # read back from the table (memory stays bounded whatever the backlog).
    dispatch_buffer: int = 20_000
    dispatch_buffer_bytes: int = 64 * 1024 * 1024  # the same bound in bytes

    # Publishing: PublishBatch calls of up to publish_batch_size events (and
    # max_request_bytes), several in flight, each with a deadline.
    publish_batch_size: int = 500
    publish_linger: float = _seconds(default=0.02)  # wait this long for a fuller batch
    publishes_in_flight: int = 8  # PublishBatch calls at once
    publish_timeout: float = _seconds(default=5.0)  # deadline of one PublishBatch call
    max_request_bytes: int = 9 * 1024 * 1024  # largest PublishBatch request
    # Transient failures: in-memory retries with exponential backoff and full
    # jitter; after publish_attempts, rows go back to the table to retry later.
    publish_attempts: int = 5
    retry_initial: float = _seconds(default=0.1)  # first backoff
    retry_multiplier: float = 2.0  # backoff growth per attempt
    retry_max: float = _seconds(default=5.0)  # longest backoff
    # Failed calls in a row before delivery pauses (outage mode: no claims, no
    # releases, Ping on backoff up to retry_max, at most 1 s apart, until Chip answers).
    # A call Chip refuses (credentials, its own set-up) pauses at once.
    failures_to_pause: int = 3
    # A row handed back to the table waits retry_initial-ish x retry_multiplier per
    # attempt it already had, up to this: rows that keep failing come back slowly.
    row_retry_max: float = _seconds(default=60.0)

    # Deletes after ack: one statement per batch.
    delete_batch_size: int = 2000

    # Every wait on Postgres has a deadline. A statement (claim, delete, count) is
    # cancelled after statement_timeout; a lock wait (a table locked by someone
    # else) after lock_timeout; emit's commit after commit_timeout, when emit
    # asks Postgres again for up to commit_timeout whether it committed (see
    # CommitOutcomeUnknown). A connection whose peer
    # vanished (half-open after a failover) is dropped after tcp_user_timeout of
    # unacknowledged data, or keepalive probes from tcp_keepalive_idle on.
    statement_timeout: float = _seconds(default=30.0)
    lock_timeout: float = _seconds(default=5.0)  # a lock wait's deadline
    # emit's commit deadline, and then how long a lost answer is asked for
    commit_timeout: float = _seconds(default=10.0)
    tcp_user_timeout: float = _seconds(default=10.0)  # unacknowledged data before a connection is dropped
    tcp_keepalive_idle: float = _seconds(default=10.0)  # idle time before keepalive probes start

    # Backpressure: emit waits up to backlog_timeout while pending >= max_pending.
    max_pending: int = 1_000_000
    backlog_timeout: float = _seconds(default=5.0)  # then emit raises BacklogFull
    # A row older than this is moved to the dead-letter table, never dropped.
    event_ttl: float = _seconds(default=24 * 3600.0)

    max_event_bytes: int = 4 * 1024 * 1024  # larger events raise EventTooLarge
    # How often the table is scanned for claimable rows and expired events.
    scan_interval: float = _seconds(default=1.0)
    # Grace period for in-flight publishes when the emitter closes.
    shutdown_timeout: float = _seconds(default=5.0)
    # Opening the emitter waits this long for a Postgres that cannot be reached yet (a
    # failover, a restart), then raises StoreUnavailable; a server that refuses us for
    # good (no such role or database, a wrong password) is said at once.
    start_timeout: float = _seconds(default=30.0)

    # Supervisor: more than max_restarts in restart_period seconds fails the tree.
    # A crashed actor restarts after restart_delay, doubled for each restart
    # still within the period, up to restart_delay_max: no hot loop.
    max_restarts: int = 5
    restart_period: float = _seconds(default=10.0)  # the window max_restarts counts in
    restart_delay: float = _seconds(default=0.1)  # first restart delay
    restart_delay_max: float = _seconds(default=2.0)  # longest restart delay

    # Observability.
    metrics_port: int | None = None  # serve /metrics here; None: no endpoint (the registry still counts)
    metrics_host: str = "127.0.0.1"  # address the metrics endpoint binds
    log_interval: float = _seconds(default=10.0)  # how often the status line is logged
    sample_interval: float = _seconds(default=1.0)  # how often the table is counted for metrics and admission

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
        for name in ["publish_linger", "backlog_timeout", "shutdown_timeout", "start_timeout", "restart_delay",
                     "restart_delay_max"]:
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
        if self.database_url and self.embedded_postgres:
            raise ConfigError("DATABASE_URL and DURABLE_EMITTER_EMBEDDED_POSTGRES are both set: choose one")
        if self.chip_endpoint is not None and split_host_port(self.chip_endpoint) is None:
            raise ConfigError(f"chip_endpoint must be host:port ([address]:port for IPv6), "
                              f"got {self.chip_endpoint!r}")
        if (self.chip_username is None) != (self.chip_password is None):
            raise ConfigError("chip_username and chip_password must be given together")
        auth = auth_problem(endpoint=self.chip_endpoint, tls=self.chip_tls, plaintext_allowed=self.chip_auth_plaintext,
                            basic_auth=self.chip_username is not None, headers=self.chip_auth_headers,
                            key_file=self.chip_auth_key_file is not None, public_key=self.chip_auth_public_key,
                            signer=self.chip_auth_signer, ttl=self.chip_auth_ttl)
        if auth:
            raise ConfigError(auth)
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port must be 0..65535, got {self.metrics_port!r}")
        if not _IDENTIFIER.match(self.schema):
            raise ConfigError(f"schema must be a plain lower-case Postgres name (letters, digits, _), "
                              f"got {self.schema!r}")
        if not self.instance_id or self.instance_id in RESERVED_OWNERS:
            raise ConfigError(f"instance_id {self.instance_id!r} is empty or reserved (the outbox's and replayed rows "
                              "are held under 'outbox' and 'replay'); the default is <hostname>-<pid>")

    def check_startable(self) -> None:
        """Raise one :class:`ConfigError` naming every destination that is missing."""
        missing = []
        if not self.database_url and not self.embedded_postgres:
            missing.append(
                "set DATABASE_URL (postgresql://user:password@host:5432/db), or ask for the embedded "
                "PostgreSQL explicitly with DURABLE_EMITTER_EMBEDDED_POSTGRES=true "
                f"(EmitterConfig(embedded_postgres=True); its data goes to {self.data_dir})"
            )
        if not self.chip_endpoint:
            missing.append("set CHIP_INGRESS_ENDPOINT (host:port of Chip Ingress)")
        if missing:
            raise ConfigError("nothing to write to: " + "; and ".join(missing))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> EmitterConfig:
        """Build from environment variables; ``overrides`` win over the environment.

        ``DATABASE_URL``, ``CHIP_INGRESS_ENDPOINT``, ``CHIP_INGRESS_TLS``,
        ``CHIP_INGRESS_CA_FILE``, ``CHIP_INGRESS_USERNAME``,
        ``CHIP_INGRESS_PASSWORD``, and ``DURABLE_EMITTER_<KNOB>`` for every
        other field (``DURABLE_EMITTER_MAX_PENDING=50000``). A malformed value
        raises :class:`ConfigError` naming the variable.
        """
        values = values_from_env(dataclasses.fields(cls), os.environ if env is None else env, skip=list(overrides))
        values.update(overrides)
        return cls(**values)

    @property
    def migrates_at_start(self) -> bool:
        """Whether a start may migrate an older schema: the knob, else only the embedded Postgres."""
        return self.database_url is None if self.auto_migrate is None else self.auto_migrate

    @property
    def liveness_grace(self) -> float:
        """How long the others wait, from the moment one of them first saw this instance's liveness
        lock free, before they take its rows: a restart, a crash recovery or a failover freed every
        lock at once, and this instance's sampler takes its lock again once it reaches Postgres (two
        samples, a connection attempt that may time out on a dead host first: 5 s, and a margin).
        A process whose death is proven (its connections ended while others' did not) is not waited for."""
        return 2 * self.sample_interval + 8.0

    def redacted_database_url(self) -> str:
        return redact_dsn(self.database_url) if self.database_url else f"embedded PostgreSQL in {self.data_dir}"


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``***``, fit for logs and errors."""
    redacted = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", redacted, flags=re.I)

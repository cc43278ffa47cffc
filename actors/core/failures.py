"""Every failure, classified in one place. Pure: codes in, a kind out.

Actors never guess from exception types or message text on their own: they
ask here what a Postgres SQLSTATE or a Chip status means, and act on the kind.

- Postgres, by SQLSTATE class: connection trouble, shutdowns, lack of
  resources, serialization failures, timeouts and lock waits are
  **transient** (retry with backoff), and so is a server that cannot take
  writes now (a standby, a demoted primary: :func:`wrong_server` says to drop
  that connection, so the next try finds the primary); data and integrity
  errors are **poison** (something in *this* write is at fault: isolate it); missing
  rights or objects are **permanent** for every write (only a human helps).
- Chip, by meaning: **transient** (retry with backoff), **limited** (a rate limit: the same, after
  the server's hint; delivery reads "limited", not "down"),
  **too large** (only gRPC's own message-size error, or a cap named by an
  invalid-argument answer: split the call; a single event that is still too
  large is dead-lettered), **refused** (Chip is misconfigured or refuses us:
  pause delivery, raise an alert state, never dead-letter the backlog).
  Per-event codes come in the answer's results (see ``core.events``): only
  those that blame the event's own bytes are dead-lettered at once.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence


class StoreFailure(enum.Enum):
    TRANSIENT = "transient"  # retry the same write later
    POISON = "poison"  # the data of this write is at fault: split it to find the item
    PERMANENT = "permanent"  # every write of this kind fails until someone acts (rights, schema)


# SQLSTATE classes (two first characters) and single codes that are worth retrying.
_TRANSIENT_CLASSES = frozenset({
    "08",  # connection exception
    "40",  # transaction rollback: serialization failure, deadlock
    "53",  # insufficient resources: disk full, out of memory, too many connections
    "57",  # operator intervention: admin shutdown, crash shutdown, cannot connect now, query canceled
    "58",  # system error (I/O error)
    "HV",  # foreign data wrapper: remote errors
})
_TRANSIENT_CODES = frozenset({
    "25006",  # read_only_sql_transaction: a standby or a demoted primary (see _WRONG_SERVER_CODES)
    "55P03",  # lock_not_available: lock_timeout passed
    "55006",  # object_in_use
    "25P03",  # idle_in_transaction_session_timeout
    "25P04",  # transaction_timeout
    "XX000",  # internal_error: often a server restarting under us
})
_POISON_CLASSES = frozenset({
    "22",  # data exception: bad encoding (NUL byte), value too long, invalid text
    "23",  # integrity constraint violation
    "21",  # cardinality violation: ON CONFLICT touching a row twice (duplicate ids in one write)
})


# The server at the other end cannot take our writes now, or is ending this session:
# keeping the connection only repeats the failure, so it is dropped and the next try
# connects afresh (a multi-host DSN with target_session_attrs=read-write then finds
# the primary; a DNS name, where it points now).
# - 25006 read_only_sql_transaction: what a hot standby answers every write, lock or
#   FOR UPDATE ("cannot execute INSERT in a read-only transaction", "cannot execute
#   LOCK TABLE during recovery"), and a server or database set
#   default_transaction_read_only (a primary being demoted). SET, SELECT and advisory
#   locks still work there, so a connection left to a standby never mends itself.
# - 57P01 admin_shutdown (also "unexpected postmaster exit": the primary crashed),
#   57P02 crash_shutdown, 57P03 cannot_connect_now (starting, or in recovery),
#   57P04 database_dropped, 57P05 idle_session_timeout: the session is ending (FATAL);
#   dropped now, the next call does not spend itself on the dead socket first.
# Not 57014 (query_canceled: a statement timeout; the session is fine), nor 55000
# ("recovery is in progress", only from WAL control functions the emitter never calls).
_WRONG_SERVER_CODES = frozenset({"25006"})
_SESSION_ENDING_PREFIX = "57P"
# The server session is not the one the client prepared its statements on: 26000 (a
# prepared statement is gone: a pooler restarted into transaction mode, or reset the
# session) and 42P05 (one of that name is already there: a session pooler that passed on
# an earlier client's session with no reset query). Nothing ran; on a fresh connection
# the same statement works.
_STALE_SESSION_CODES = frozenset({"26000", "42P05"})


def wrong_server(sqlstate: str | None) -> bool:
    """Whether a failure means this connection's server cannot take writes now (or is ending the
    session, or is not the session its statements were prepared on): drop the connection, so the
    next try connects afresh. Always transient too."""
    return sqlstate is not None and (sqlstate in _WRONG_SERVER_CODES or sqlstate in _STALE_SESSION_CODES
                                     or sqlstate.startswith(_SESSION_ENDING_PREFIX))


def stale_session(sqlstate: str | None) -> bool:
    """Whether a named statement failed because the server session is not the one it was prepared on."""
    return sqlstate in _STALE_SESSION_CODES


# libpq gives no SQLSTATE for a connection the server refused, only its message: these
# say the server is up and refuses this role or database until someone changes a setting.
_REFUSED_FOR_GOOD = re.compile(r"FATAL:.*(does not exist|authentication failed|no pg_hba\.conf entry"
                               r"|permission denied|not permitted to log in|SSL (is )?(required|off))"
                               r"|server does not support SSL, but SSL was required", re.I | re.S)


def refused_for_good(message: str) -> bool:
    """Whether a failed connection attempt (its libpq message) was refused by a server that is up: a
    missing role or database, a wrong password, pg_hba.conf. Opening the emitter stops waiting for
    Postgres on this; a running emitter keeps retrying any failed connection (the fix may come)."""
    return bool(_REFUSED_FOR_GOOD.search(message))


def classify_sqlstate(sqlstate: str | None) -> StoreFailure:
    """The kind of a Postgres failure by its SQLSTATE; None (no server answer: a broken connection) is transient."""
    if not sqlstate:
        return StoreFailure.TRANSIENT
    if sqlstate in _TRANSIENT_CODES or sqlstate in _STALE_SESSION_CODES or sqlstate[:2] in _TRANSIENT_CLASSES:
        return StoreFailure.TRANSIENT
    if sqlstate[:2] in _POISON_CLASSES:
        return StoreFailure.POISON
    return StoreFailure.PERMANENT  # 42 (privilege, undefined table), 0A, 2B, 3D, 28, ...


class CallKind(enum.Enum):
    TRANSIENT = "transient"  # Chip may take the same request later (down, or failing for now)
    LIMITED = "limited"  # Chip answers but rate-limits us (RESOURCE_EXHAUSTED): retried, after its hint if any
    TOO_LARGE = "too_large"  # the request is too big for Chip: split it
    REFUSED = "refused"  # Chip is misconfigured or refuses us: pause delivery, alert


# (RESOURCE_EXHAUSTED is limited or too large: see classify_call.)
TRANSIENT_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "INTERNAL", "UNKNOWN", "CANCELLED"})
# Credentials, rights, or the service itself: a human must act; retrying in a loop cannot help.
CREDENTIAL_CODES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})
# Our side cannot make the node token (no signer yet, or it failed or hung): refused too, never a
# dead letter; delivery resumes by itself once the host's signer works (actors/adapters/chip_auth.py).
SIGNER_CODES = frozenset({"SIGNER_UNAVAILABLE", "SIGNER_FAILED"})
# No answer from Chip at all: no connection (nothing listens, it broke) or none within the deadline.
# Transient; but closing, not worth a retry: the rows wait in the table for the next start.
UNANSWERED_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})
# Everything else on a whole call (INVALID_ARGUMENT, FAILED_PRECONDITION, UNIMPLEMENTED,
# NOT_FOUND, ...) is about the request as a whole or the server's set-up, never one event:
# per-event errors come in the answer's results.
#
# RESOURCE_EXHAUSTED is a rate limit or an overload unless its detail is gRPC's own
# message-size error ("Received message larger than max (5000 vs. 4000)", "Sent message
# larger than max ..."): a rate limiter's "request rate exceeds the maximum allowed" must
# never split batches down to single events and dead-letter them as too large.
_GRPC_MESSAGE_SIZE = re.compile(r"message larger than max|message length \d+ exceeds", re.I)
# A request-shape refusal (INVALID_ARGUMENT, OUT_OF_RANGE) that names a size or count cap.
_OVER_A_CAP = re.compile(r"larger than (the )?max|too large|exceeds (the )?max", re.I)
# Server pushback on a failed call, in trailing metadata: gRPC's own key, then common ones.
RETRY_HINT_KEYS = ("grpc-retry-pushback-ms", "retry-after-ms", "retry-after")


def classify_call(code: str, detail: str) -> CallKind:
    """What a whole-call gRPC status (its name and detail text) means for delivery."""
    if code == "RESOURCE_EXHAUSTED":
        return CallKind.TOO_LARGE if _GRPC_MESSAGE_SIZE.search(detail) else CallKind.LIMITED
    if code in ("INVALID_ARGUMENT", "OUT_OF_RANGE") and (_OVER_A_CAP.search(detail)
                                                       or _GRPC_MESSAGE_SIZE.search(detail)):
        return CallKind.TOO_LARGE
    if code in CREDENTIAL_CODES or code in SIGNER_CODES:
        return CallKind.REFUSED  # by name: whatever becomes of the codes below, these pause delivery
    if code in TRANSIENT_CODES:
        return CallKind.TRANSIENT
    return CallKind.REFUSED  # the rest: the request as a whole, or Chip's set-up (see above)


def retry_hint(metadata: Sequence[tuple[str, str | bytes]]) -> float | None:
    """Seconds the server asked us to wait, from trailing metadata (``*-ms`` keys in milliseconds,
    ``retry-after`` in seconds); None when it gave no usable hint. A negative or absurd value is ignored."""
    found = {key.lower(): value for key, value in metadata}
    for key in RETRY_HINT_KEYS:
        value = found.get(key)
        if value is None:
            continue
        try:
            seconds = float(value.decode() if isinstance(value, bytes) else value)
        except ValueError:
            continue
        if key.endswith("-ms"):
            seconds /= 1000
        if 0 <= seconds <= 3600:
            return seconds
    return None


class CallFailed(Exception):
    """A whole PublishBatch (or Ping) failed with gRPC status ``code``; ``kind`` says what that means.

    ``retry_after``: the server's own hint, in seconds, if it gave one.
    """

    def __init__(self, code: str, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(code, detail)
        self.code, self.detail, self.retry_after = code, detail, retry_after
        self.kind = classify_call(code, detail)

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


def storable_text(text: str, limit: int = 2000) -> str:
    """``text`` made safe for a Postgres text column: no NUL bytes, no lone surrogates, at most ``limit`` chars.

    Chip's reasons are foreign input; one odd byte must not stop a whole batch from being written.
    """
    cleaned = text.replace("\x00", "\\x00")
    cleaned = cleaned.encode("utf-8", "backslashreplace").decode("utf-8")
    return cleaned[:limit]

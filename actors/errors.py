"""The error types callers can catch, each naming its cause.

Everything the library raises on purpose is an :class:`EmitterError`; a caller
that only wants "did my event become durable?" catches that one class.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .core.failures import StoreFailure, classify_sqlstate


class EmitterError(Exception):
    """Base class of every error durable-emitter raises on purpose."""


class ConfigError(EmitterError, ValueError):
    """A configuration value (keyword or environment variable) is invalid.

    Raised at construction, before anything starts; the message names the
    setting (and the environment variable, where it came from one).
    """


class InvalidEvent(EmitterError, ValueError):
    """``emit`` was given something that cannot become a CloudEvent.

    Nothing was written.
    """


class EventTooLarge(InvalidEvent):
    """The serialized event is larger than ``max_event_bytes``. Nothing was written."""


class BacklogFull(EmitterError):
    """Pending rows stayed at ``max_pending`` for ``backlog_timeout`` seconds.

    Nothing was written; Chip is down or slower than the emit rate. Retry later
    or raise ``max_pending``.
    """


class StoreUnavailable(EmitterError):
    """Postgres could not be reached, or the write failed.

    When raised by ``emit``, the event was NOT committed: Postgres answered
    the write with an error (the transaction rolled back), or the write was
    never sent (no connection). So retrying is safe, except for the subclass
    :class:`CommitOutcomeUnknown`, the one "maybe". ``sqlstate`` is the server's error code
    when the server answered (None: no answer, e.g. a broken connection).
    ``kind`` says what the failure means, decided once where the error is made:
    ``TRANSIENT`` (retrying later may succeed; every failure without a server
    answer), ``POISON`` (the data of this write is at fault) or ``PERMANENT``
    (every such write fails until someone acts: rights, schema). Left out, it
    is the classification of ``sqlstate``.
    """

    def __init__(self, message: str, sqlstate: str | None = None, kind: StoreFailure | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.kind = classify_sqlstate(sqlstate) if kind is None else kind


class CommitOutcomeUnknown(StoreUnavailable):
    """``emit`` sent its commit, the answer was lost, and Postgres could not be asked again in time.

    The only "maybe" ``emit`` ever answers. When the connection breaks, the
    answer deadline or ``commit_timeout`` passes, or the session ends with a
    FATAL error after the commit was sent, the emitter asks Postgres again on
    a fresh connection, for up to ``commit_timeout`` more, by writing the same
    rows again under the same ids, keeping any the lost commit wrote; once
    that answers, the events are committed and ``emit`` returns their ids.
    This is raised only when Postgres stayed unreachable (or refused the
    question) that long, or the emitter stopped before it could ask: the
    events may or may not be committed. If they were, they are delivered as
    usual, under ``event_ids`` (the call's own ids: one for ``emit``, all of
    an ``emit_many``, committed together or not at all).

    Retrying with ``emit`` writes a NEW id (the ``idempotencykey`` is the same:
    it is derived from source, type and body). Retry when a duplicate is
    acceptable or deduplicated downstream by ``idempotencykey``; when it is
    not, look for ``event_ids`` downstream first. ``kind`` is ``TRANSIENT``.
    """

    def __init__(self, message: str, event_ids: Sequence[str] = ()) -> None:
        super().__init__(message, kind=StoreFailure.TRANSIENT)
        self.event_ids = tuple(event_ids)

    @classmethod
    def of(cls, event_ids: Sequence[str], why: str) -> CommitOutcomeUnknown:
        """The error for one call's ``event_ids``; ``why`` says what was lost and why asking failed."""
        which = f"event {event_ids[0]}" if len(event_ids) == 1 else f"the {len(event_ids)} events (event_ids)"
        return cls(f"{why}: {which} may or may not be committed (if it was, it is delivered as usual). "
                   "emit again writes a NEW id with the same idempotencykey: retry if a duplicate is acceptable "
                   "or deduplicated by idempotencykey downstream; otherwise look for the id downstream first",
                   event_ids)


class UnknownDeadLetter(EmitterError, KeyError):
    """``dlq replay`` was given ids that are not in the dead-letter table; nothing was moved.

    ``ids`` names them. A ``KeyError`` too, for code written against earlier versions.
    """

    def __init__(self, ids: Sequence[str]) -> None:
        super().__init__(f"no dead letter with id {', '.join(ids)}; nothing was replayed")
        self.ids = tuple(ids)

    def __str__(self) -> str:  # KeyError would show the message quoted, as it shows a missing key
        return str(self.args[0])


class ChipRejected(EmitterError):
    """Chip refused our configuration: bad credentials, TLS mismatch, no such service.

    Not retried in a loop: fix the endpoint or credentials.
    """


class FlushTimeout(EmitterError, TimeoutError):
    """``flush`` gave up: events were still pending when its timeout passed.

    They stay in the table and are delivered later; nothing is lost.
    """


class EmitterClosed(EmitterError):
    """``emit`` was called on an emitter that is shutting down or has failed."""


class EmitterForked(EmitterClosed):
    """The emitter was opened in another process, before a fork: this process may not use it.

    Its connections, threads and gRPC channel belong to the parent, which keeps
    using them. Open the emitter after the fork, in each process that emits
    (gunicorn's ``post_fork``, Celery's ``worker_process_init``, the target of a
    ``multiprocessing.Process``). Nothing was written.
    """


class SupervisorGaveUp(EmitterError):
    """An actor crashed more often than the restart intensity allows: the tree failed.

    ``open_emitter`` raises it; the asyncio and blocking adapters' calls raise
    :class:`EmitterClosed` caused by it.
    """


class SchemaError(EmitterError):
    """The database's schema is not what this code needs, and was not changed.

    Missing, older (and auto-migration is off), newer than the code, of a
    foreign shape, or not usable by this role. The message names what was found
    and what to do (usually ``durable-emitter schema apply``).
    """


def root_cause(error: BaseException) -> BaseException:
    """The error worth naming inside Trio's exception groups: the first EmitterError, else the first leaf."""
    if isinstance(error, BaseExceptionGroup):
        leaves = [root_cause(inner) for inner in error.exceptions]
        return next((leaf for leaf in leaves if isinstance(leaf, EmitterError)), leaves[0])
    return error


def closed_error(failure: BaseException | None, *, consequence: str = "") -> EmitterClosed:
    """What a call gets once the tree is stopping or gone: EmitterClosed, caused by the tree's failure if it failed.

    ``consequence`` is appended to the message (e.g. "; the event was not written").
    """
    if failure is None:
        return EmitterClosed(f"the emitter is shutting down or not running{consequence}")
    cause = root_cause(failure)
    error = EmitterClosed(f"the emitter failed and stopped: {cause}{consequence}")
    error.__cause__ = cause
    return error


def current_pid() -> int:
    """This process's id, kept up to date across forks (read on every emit: no system call)."""
    return _pid


def _forked() -> None:
    global _pid
    _pid = os.getpid()


_pid = os.getpid()
os.register_at_fork(after_in_child=_forked)


def refuse_after_fork(opened_in: int) -> None:
    """Raise :class:`EmitterForked` when called in another process than ``opened_in`` (a pid)."""
    if _pid != opened_in:
        raise EmitterForked(
            f"this emitter was opened in process {opened_in}, before a fork; process {os.getpid()} may not use "
            "it (its connections and threads are the parent's): open an emitter after the fork, e.g. in "
            "gunicorn's post_fork or Celery's worker_process_init hook; nothing was written")

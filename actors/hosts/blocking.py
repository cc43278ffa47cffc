"""Threaded hosts: Trio runs in a background thread; ``emit`` blocks the calling thread until committed.

Once the tree has failed, every waiting and later call raises :class:`EmitterClosed`
caused by the failure, never hangs; leaving the ``with`` raises the failure.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial
from types import TracebackType
from typing import TypeVar

import trio
from prometheus_client import CollectorRegistry

from ..adapters.chip_auth import Signer
from ..config import EmitterConfig
from ..core.events import AttributeValue, Body
from ..emitter import Emitter
from ..errors import closed_error, current_pid, refuse_after_fork
from ..statistics import EmitterStatistics
from .serve import serve

_T = TypeVar("_T")


class BlockingEmitter:
    """The emitter for threaded code: ``emit`` blocks until the event is committed.

    Safe to call from many threads at once. Use it as a context manager, or
    call :meth:`start` and :meth:`close` where a ``with`` block does not fit
    (a framework's start-up and shut-down hooks). Get one from
    :func:`open_blocking_emitter`.
    """

    def __init__(self, config: EmitterConfig | None = None, *, registry: CollectorRegistry | None = None) -> None:
        self._config = config
        self._registry = registry
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread: threading.Thread | None = None
        self._failure: list[BaseException] = []  # the run's own end, raised by start() or close()
        self.emitter: Emitter | None = None
        self._tree_failure: BaseException | None = None  # why the tree stopped, told as it happens
        self._opened_in = current_pid()  # the tree's thread lives in this process only

    def start(self) -> BlockingEmitter:
        """Start the tree in a background thread; return once it accepts emits (or raise why it cannot)."""
        if self._thread is not None:
            raise RuntimeError("this BlockingEmitter was already started")
        started = threading.Event()

        def ready(emitter: Emitter, calls: trio.Nursery) -> None:
            self.emitter, self._token = emitter, trio.lowlevel.current_trio_token()
            started.set()

        def failed(error: BaseException) -> None:
            self._tree_failure = error  # calls from other threads raise it from now on

        async def main() -> None:
            self._stop = trio.Event()
            await serve(self._config, ready, self._stop, self._registry, failed)

        def thread_main() -> None:
            try:
                trio.run(main)
            except BaseException as exc:
                self._failure.append(exc)
            finally:
                started.set()

        self._thread = threading.Thread(target=thread_main, name="durable-emitter", daemon=True)
        self._thread.start()
        started.wait()
        if self._failure:
            raise self._failure[0]
        return self

    def close(self) -> None:
        """Stop intake, let the tree shut down in order, and wait for its thread. Idempotent."""
        token, self._token = self._token, None
        if token is not None and self._stop is not None:
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=token)
            except trio.RunFinishedError:
                pass
        if self._thread is not None:
            self._thread.join()
        if self._failure:
            raise self._failure.pop()

    def __enter__(self) -> BlockingEmitter:
        return self if self._thread is not None else self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _why(self) -> BaseException | None:
        """The tree's failure: told by the run, or already known to the emitter before it."""
        return self._tree_failure or (self.emitter.failure if self.emitter is not None else None)

    def _running(self) -> tuple[Emitter, trio.lowlevel.TrioToken]:
        refuse_after_fork(self._opened_in)  # in a forked child the tree's thread does not exist: never wait on it
        if self._why() is not None or self._token is None or self.emitter is None:
            raise closed_error(self._why())
        return self.emitter, self._token

    def _in_trio(self, fn: Callable[[], Awaitable[_T]], token: trio.lowlevel.TrioToken) -> _T:
        """Run ``fn`` in the tree's thread; once the tree is gone, raise why instead."""
        try:
            return trio.from_thread.run(fn, trio_token=token)
        except (trio.RunFinishedError, trio.Cancelled):  # the run ended under the call
            raise closed_error(self._why()) from None

    def emit(
        self,
        body: Body,
        *,
        source: str | None = None,
        type: str | None = None,  # noqa: A002  (the CloudEvent attribute's own name)
        attributes: Mapping[str, AttributeValue] | None = None,
        data_schema: str | None = None,
    ) -> str:
        """As :meth:`Emitter.emit`, blocking the calling thread until the event is committed."""
        emitter, token = self._running()
        return self._in_trio(partial(emitter.emit, body, source=source, type=type, attributes=attributes,
                                     data_schema=data_schema), token)

    def emit_many(
        self,
        bodies: Iterable[Body],
        *,
        source: str | None = None,
        type: str | None = None,  # noqa: A002  (the CloudEvent attribute's own name)
        attributes: Mapping[str, AttributeValue] | None = None,
        data_schema: str | None = None,
    ) -> list[str]:
        """As :meth:`Emitter.emit_many`, blocking the calling thread until all are committed (or none)."""
        emitter, token = self._running()
        return self._in_trio(partial(emitter.emit_many, bodies, source=source, type=type, attributes=attributes,
                                     data_schema=data_schema), token)

    def flush(self, timeout: float) -> None:
        """As :meth:`Emitter.flush`, blocking the calling thread."""
        emitter, token = self._running()
        self._in_trio(partial(emitter.flush, timeout), token)

    def set_chip_signer(self, sign: Signer, public_key: bytes | None = None) -> None:
        """As :meth:`Emitter.set_chip_signer`; ``sign`` is a plain function, called on a worker thread."""
        emitter, token = self._running()
        trio.from_thread.run_sync(partial(emitter.set_chip_signer, sign, public_key), trio_token=token)

    def statistics(self) -> EmitterStatistics:
        """As :meth:`Emitter.statistics`, read on the emitter's own thread."""
        emitter, token = self._running()
        return trio.from_thread.run_sync(emitter.statistics, trio_token=token)


def open_blocking_emitter(config: EmitterConfig | None = None, *,
                          registry: CollectorRegistry | None = None) -> BlockingEmitter:
    """A :class:`BlockingEmitter`: ``with open_blocking_emitter(config) as e: e.emit(...)``.

    ``registry`` as for :func:`open_emitter`.
    Without ``with``: ``e = open_blocking_emitter(config).start()`` ... ``e.close()``.
    """
    return BlockingEmitter(config, registry=registry)

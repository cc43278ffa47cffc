"""Threaded hosts: Trio runs in a background thread; ``emit`` blocks the calling thread until committed.

Once the tree has failed, every waiting and later call raises :class:`EmitterClosed`
caused by the failure, never hangs; leaving the ``with`` raises the failure.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

import trio

from ..config import EmitterConfig
from ..emitter import Emitter
from .serve import closed_error, serve

_T = TypeVar("_T")


class BlockingEmitter:
    """The emitter for threaded code: ``emit`` blocks until the event is committed.

    Safe to call from many threads at once. Get one from :func:`open_blocking_emitter`.
    """

    def __init__(self) -> None:
        self._token: trio.lowlevel.TrioToken | None = None
        self.emitter: Emitter | None = None
        self._failure: BaseException | None = None  # why the tree stopped, if it failed

    def _running(self) -> tuple[Emitter, trio.lowlevel.TrioToken]:
        if self._failure is not None or self._token is None or self.emitter is None:
            raise closed_error(self._failure)
        return self.emitter, self._token

    def _in_trio(self, fn: Callable[[], Awaitable[_T]], token: trio.lowlevel.TrioToken) -> _T:
        """Run ``fn`` in the tree's thread; once the tree is gone, raise why instead."""
        try:
            return trio.from_thread.run(fn, trio_token=token)
        except (trio.RunFinishedError, trio.Cancelled):  # the run ended under the call
            raise closed_error(self._failure) from None

    def emit(self, body: Any, **kwargs: Any) -> str:
        """As :meth:`Emitter.emit`, blocking the calling thread."""
        emitter, token = self._running()
        return self._in_trio(partial(emitter.emit, body, **kwargs), token)

    def flush(self, timeout: float) -> None:
        """As :meth:`Emitter.flush`, blocking the calling thread."""
        emitter, token = self._running()
        self._in_trio(partial(emitter.flush, timeout), token)


@contextmanager
def open_blocking_emitter(config: EmitterConfig | None = None) -> Iterator[BlockingEmitter]:
    """Run the emitter in a background thread for the duration of the ``with``."""
    handle = BlockingEmitter()
    started = threading.Event()
    stop: trio.Event | None = None
    failure: list[BaseException] = []

    def ready(emitter: Emitter, calls: trio.Nursery) -> None:
        handle.emitter, handle._token = emitter, trio.lowlevel.current_trio_token()
        started.set()

    def failed(error: BaseException) -> None:
        handle._failure = error  # calls from other threads raise it from now on

    async def main() -> None:
        nonlocal stop
        stop = trio.Event()
        await serve(config, ready, stop, failed)

    def thread_main() -> None:
        try:
            trio.run(main)
        except BaseException as exc:
            failure.append(exc)
        finally:
            started.set()

    thread = threading.Thread(target=thread_main, name="durable-emitter", daemon=True)
    thread.start()
    started.wait()
    if failure:
        raise failure[0]
    try:
        yield handle
    finally:
        token, handle._token = handle._token, None
        assert stop is not None and token is not None  # both set before ready() let us in
        try:
            trio.from_thread.run_sync(stop.set, trio_token=token)
        except trio.RunFinishedError:
            pass
        thread.join()
        if failure:
            raise failure[0]

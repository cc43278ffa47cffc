"""Adapters for hosts that are not Trio programs: asyncio services and plain threads.

Both are thin shells over :func:`open_emitter`: the same Trio tree runs, and
each call crosses into it. Nothing of the pipeline is written twice.

- asyncio: Trio runs in *guest mode* on the host's event loop (same thread,
  no second loop); ``await emitter.emit(...)`` from asyncio code runs the
  Trio ``emit`` as a task in the tree's nursery. Cancelling the asyncio caller
  cancels that task, and a failure of the tree fails the caller.
- threads: Trio runs in a background thread; ``emit`` blocks the calling
  thread until the event is committed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any

import trio

from .config import EmitterConfig
from .emitter import Emitter, open_emitter
from .errors import EmitterClosed


async def _serve(config: EmitterConfig | None, ready: Callable[[Emitter, trio.Nursery], None],
                 stop: trio.Event) -> None:
    """The Trio side of both adapters: run the tree until asked to stop."""
    async with open_emitter(config) as emitter, trio.open_nursery() as calls:
        ready(emitter, calls)
        await stop.wait()
        calls.cancel_scope.cancel()


class AsyncioEmitter:
    """The emitter as seen from asyncio code. Get one from :func:`open_asyncio_emitter`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._token: trio.lowlevel.TrioToken | None = None
        self._calls: trio.Nursery | None = None
        self.emitter: Emitter | None = None

    async def _call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        if self._calls is None or self._token is None:
            raise EmitterClosed("the emitter is not running")
        future: asyncio.Future[Any] = self._loop.create_future()
        scope = trio.CancelScope()

        async def run_in_trio() -> None:
            with scope:
                try:
                    result = await fn()
                except Exception as exc:  # the caller's failure, not the tree's
                    if not future.done():
                        future.set_exception(exc)
                    return
                except BaseException:  # Cancelled: the tree is stopping
                    if not future.done():
                        future.set_exception(EmitterClosed("the emitter stopped before the call finished"))
                    raise
                if not future.done():
                    future.set_result(result)
            if not future.done():  # our own scope was cancelled: the asyncio caller gave up
                future.cancel()

        calls = self._calls
        self._token.run_sync_soon(lambda: calls.start_soon(run_in_trio))
        try:
            return await future
        except asyncio.CancelledError:
            self._token.run_sync_soon(scope.cancel)
            raise

    @property
    def calls_in_flight(self) -> int:
        """Trio tasks currently running a call for an asyncio caller."""
        return len(self._calls.child_tasks) if self._calls is not None else 0

    async def emit(self, body: Any, **kwargs: Any) -> str:
        """As :meth:`Emitter.emit`; returns once the event is committed."""
        return await self._call(partial(self.emitter.emit, body, **kwargs))

    async def flush(self, timeout: float) -> None:
        """As :meth:`Emitter.flush`."""
        await self._call(partial(self.emitter.flush, timeout))


@asynccontextmanager
async def open_asyncio_emitter(config: EmitterConfig | None = None) -> AsyncIterator[AsyncioEmitter]:
    """Run the emitter inside the running asyncio loop (Trio guest mode)."""
    loop = asyncio.get_running_loop()
    handle = AsyncioEmitter(loop)
    started: asyncio.Future[None] = loop.create_future()
    finished: asyncio.Future[None] = loop.create_future()
    stop = trio.Event()

    def ready(emitter: Emitter, calls: trio.Nursery) -> None:
        handle.emitter, handle._calls = emitter, calls
        handle._token = trio.lowlevel.current_trio_token()
        started.set_result(None)

    def done(outcome: Any) -> None:
        error = getattr(outcome, "error", None)
        for future in (started, finished):
            if not future.done():
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(None)

    trio.lowlevel.start_guest_run(
        _serve, config, ready, stop,
        run_sync_soon_threadsafe=loop.call_soon_threadsafe, done_callback=done,
        host_uses_signal_set_wakeup_fd=True,
    )
    await started
    try:
        yield handle
    finally:
        handle._calls = None
        handle._token.run_sync_soon(stop.set)
        await finished


class BlockingEmitter:
    """The emitter for threaded code: ``emit`` blocks until the event is committed.

    Safe to call from many threads at once. Get one from :func:`open_blocking_emitter`.
    """

    def __init__(self) -> None:
        self._token: trio.lowlevel.TrioToken | None = None
        self.emitter: Emitter | None = None

    def emit(self, body: Any, **kwargs: Any) -> str:
        """As :meth:`Emitter.emit`, blocking the calling thread."""
        if self._token is None:
            raise EmitterClosed("the emitter is not running")
        return trio.from_thread.run(partial(self.emitter.emit, body, **kwargs), trio_token=self._token)

    def flush(self, timeout: float) -> None:
        """As :meth:`Emitter.flush`, blocking the calling thread."""
        if self._token is None:
            raise EmitterClosed("the emitter is not running")
        trio.from_thread.run(partial(self.emitter.flush, timeout), trio_token=self._token)


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

    async def main() -> None:
        nonlocal stop
        stop = trio.Event()
        await _serve(config, ready, stop)

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
        try:
            trio.from_thread.run_sync(stop.set, trio_token=token)
        except trio.RunFinishedError:
            pass
        thread.join()
        if failure:
            raise failure[0]

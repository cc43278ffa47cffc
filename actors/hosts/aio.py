"""asyncio hosts: Trio runs in guest mode on the host's event loop (same thread, no second loop).

``await emitter.emit(...)`` from asyncio code runs the Trio ``emit`` as a task
in the tree's nursery. Cancelling the asyncio caller cancels that task, and a
failure of the tree fails the caller: once the tree has failed, every waiting
and later call raises :class:`EmitterClosed` caused by the failure (e.g.
``SupervisorGaveUp``), never hangs; leaving the ``async with`` raises the failure.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import trio
from prometheus_client import CollectorRegistry

from ..adapters.chip_auth import Signer
from ..config import EmitterConfig
from ..core.events import AttributeValue, Body
from ..emitter import Emitter
from ..errors import EmitterClosed, closed_error, current_pid, refuse_after_fork
from ..statistics import EmitterStatistics
from .serve import serve

_T = TypeVar("_T")


class AsyncioEmitter:
    """The emitter as seen from asyncio code. Get one from :func:`open_asyncio_emitter`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._token: trio.lowlevel.TrioToken | None = None
        self._calls: trio.Nursery | None = None
        self.emitter: Emitter | None = None
        self._ended = False
        self._failure: BaseException | None = None  # why the tree stopped, if it failed
        self._waiting: set[asyncio.Future[Any]] = set()
        self._opened_in = current_pid()

    def _why(self) -> BaseException | None:
        """The tree's failure: told by the run's end, or already known to the emitter before it."""
        return self._failure or (self.emitter.failure if self.emitter is not None else None)

    def _tree_ended(self, failure: BaseException | None) -> None:
        """Every call still waiting, and every later one, gets the tree's end as an exception."""
        self._ended, self._failure = True, failure
        for future in self._waiting:
            if not future.done():
                future.set_exception(closed_error(failure))

    async def _call(self, fn: Callable[[Emitter], Awaitable[_T]]) -> _T:
        refuse_after_fork(self._opened_in)
        if self._ended or self._calls is None or self._token is None or self.emitter is None:
            raise closed_error(self._why())
        emitter = self.emitter
        future: asyncio.Future[_T] = self._loop.create_future()
        scope = trio.CancelScope()

        handed_over = False  # the call began in Trio: from then on, its event may be written

        async def run_in_trio() -> None:
            nonlocal handed_over
            if future.done():  # the caller was cancelled before the call reached Trio: never start it
                return
            handed_over = True
            with scope:
                try:
                    result = await fn(emitter)
                except Exception as exc:  # the caller's failure, not the tree's
                    if not future.done():
                        future.set_exception(exc)
                    return
                # Cancelled passes through: the tree is stopping, and _tree_ended resolves the future.
                if not future.done():
                    future.set_result(result)
            if not future.done():  # our own scope was cancelled: the asyncio caller gave up
                future.cancel()

        calls = self._calls
        token = self._token

        def start() -> None:
            try:
                calls.start_soon(run_in_trio)
            except RuntimeError:  # the nursery closed: the tree is stopping or failed
                if not future.done():
                    future.set_exception(closed_error(self._why()))

        self._waiting.add(future)
        try:
            try:
                token.run_sync_soon(start)
            except trio.RunFinishedError:
                raise closed_error(self._why()) from None
            return await future
        except asyncio.CancelledError as cancelled:
            try:
                token.run_sync_soon(scope.cancel)
            except trio.RunFinishedError:
                pass
            # Still a cancellation, as asyncio expects; its message says what became of the event.
            raise asyncio.CancelledError(
                "durable-emitter: cancelled after the call reached the emitter; its event may have been written "
                "(emit again only if a duplicate is acceptable: ids differ)" if handed_over else
                "durable-emitter: cancelled before the call reached the emitter; nothing was written"
            ) from cancelled
        finally:
            self._waiting.discard(future)

    @property
    def calls_in_flight(self) -> int:
        """Trio tasks currently running a call for an asyncio caller."""
        return len(self._calls.child_tasks) if self._calls is not None else 0

    async def emit(
        self,
        body: Body,
        *,
        source: str | None = None,
        type: str | None = None,  # noqa: A002  (the CloudEvent attribute's own name)
        attributes: Mapping[str, AttributeValue] | None = None,
        data_schema: str | None = None,
    ) -> str:
        """As :meth:`Emitter.emit`; returns once the event is committed."""
        return await self._call(lambda emitter: emitter.emit(
            body, source=source, type=type, attributes=attributes, data_schema=data_schema))

    async def emit_many(
        self,
        bodies: Iterable[Body],
        *,
        source: str | None = None,
        type: str | None = None,  # noqa: A002  (the CloudEvent attribute's own name)
        attributes: Mapping[str, AttributeValue] | None = None,
        data_schema: str | None = None,
    ) -> list[str]:
        """As :meth:`Emitter.emit_many`; returns once all are committed (or raises: none was, unless CommitOutcomeUnknown)."""
        return await self._call(lambda emitter: emitter.emit_many(
            bodies, source=source, type=type, attributes=attributes, data_schema=data_schema))

    async def flush(self, timeout: float) -> None:
        """As :meth:`Emitter.flush`."""
        await self._call(lambda emitter: emitter.flush(timeout))

    def set_chip_signer(self, sign: Signer, public_key: bytes | None = None) -> None:
        """As :meth:`Emitter.set_chip_signer`; a coroutine function runs as a task on this asyncio loop."""
        if self.emitter is None or self._token is None:
            raise EmitterClosed("the emitter is not running")
        if not inspect.iscoroutinefunction(sign):
            self.emitter.set_chip_signer(sign, public_key)
            return
        loop, token = self._loop, self._token
        signer = cast(Callable[[bytes], Coroutine[Any, Any, bytes]], sign)  # an asyncio coroutine function

        async def on_the_loop(message: bytes) -> bytes:
            task: asyncio.Task[bytes] = loop.create_task(signer(message))
            done = trio.Event()
            task.add_done_callback(lambda _: token.run_sync_soon(done.set))
            try:
                await done.wait()
            finally:
                task.cancel()  # nothing once it is done; the signing deadline otherwise
            if task.cancelled():  # its CancelledError is no Exception: it would crash the dispatcher
                raise RuntimeError("the asyncio signer's task was cancelled")  # SIGNER_FAILED, as a failure
            return task.result()

        self.emitter.set_chip_signer(on_the_loop, public_key)

    def statistics(self) -> EmitterStatistics:
        """As :meth:`Emitter.statistics` (same thread as the loop: read directly)."""
        if self.emitter is None:
            raise EmitterClosed("the emitter is not running")
        return self.emitter.statistics()


@asynccontextmanager
async def open_asyncio_emitter(config: EmitterConfig | None = None, *,
                               registry: CollectorRegistry | None = None) -> AsyncIterator[AsyncioEmitter]:
    """Run the emitter inside the running asyncio loop (Trio guest mode); ``registry`` as for :func:`open_emitter`."""
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
        handle._tree_ended(error)
        for future in (started, finished):
            if not future.done():
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(None)

    trio.lowlevel.start_guest_run(
        serve, config, ready, stop, registry, handle._tree_ended,
        run_sync_soon_threadsafe=loop.call_soon_threadsafe, done_callback=done,
        host_uses_signal_set_wakeup_fd=True,
    )
    await started
    try:
        yield handle
    finally:
        handle._calls = None
        assert handle._token is not None  # set by ready() before started resolved
        try:
            handle._token.run_sync_soon(stop.set)
        except trio.RunFinishedError:  # the tree already failed; ``finished`` holds why
            pass
        await finished

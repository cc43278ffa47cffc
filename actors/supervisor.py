"""A one_for_one supervisor in OTP's words: child specs, restart intensity, restart delay.

``open_supervisor`` is an async context manager that behaves like a nursery.
``await supervisor.start(spec)`` starts a child and returns once it reported
ready (``task_status.started()``); children start in order. A child that
raises is restarted, according to its restart type, with the same arguments
(so the same channels: nothing upstream notices), after a delay that doubles
with each recent restart, so a child that fails at once cannot hot-loop. More
than ``max_restarts`` restarts within ``period`` seconds means something is
beyond a restart's reach: the supervisor gives up and raises
:class:`SupervisorGaveUp`, failing the tree loudly.

``await supervisor.stop()`` stops the children in reverse start order, as OTP
does: each is asked to stop (its spec's ``stop``, e.g. closing its inbox), is
given its ``shutdown`` deadline to finish, and is cancelled after it. A
child's ``on_exit`` runs however it ends (closing the channels it fed, so
shutdown flows downstream).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from .core.instruments import LabelledCounts
from .errors import SupervisorGaveUp
from .logs import get_logger

log = get_logger("durable_emitter.supervisor")


class Restart(enum.Enum):
    PERMANENT = "permanent"  # always restarted, even after a normal return
    TRANSIENT = "transient"  # restarted only after a crash: returning normally means it finished
    TEMPORARY = "temporary"  # never restarted


@dataclass(frozen=True)
class ChildSpec:
    """One supervised actor. ``run(task_status=...)`` is its entry point with its record bound."""

    name: str
    run: Callable[..., Awaitable[object]]
    restart: Restart = Restart.TRANSIENT
    shutdown: float = 5.0  # seconds it may take to finish once asked to stop; 0: cancelled at once
    stop: Callable[[], object] | None = None  # asks it to finish (e.g. closes its inbox)
    on_exit: Callable[[], object] | None = None  # runs however it ends


@dataclass
class RestartIntensity:
    """At most ``max_restarts`` within any ``period`` seconds; the delay before each. Pure: pass the time in."""

    max_restarts: int
    period: float
    initial_delay: float = 0.0
    max_delay: float = 0.0
    _times: deque[float] = field(default_factory=deque, repr=False)

    def allow(self, now: float) -> bool:
        """Record a restart at ``now``; False once the intensity is exceeded."""
        self._times.append(now)
        while self._times and self._times[0] <= now - self.period:
            self._times.popleft()
        return len(self._times) <= self.max_restarts

    def delay(self) -> float:
        """Before the restart just allowed: doubles with each restart still inside the period."""
        return min(self.max_delay, self.initial_delay * 2.0 ** max(0, len(self._times) - 1))


class _Readiness:
    """Forwards ``started()`` and remembers that it happened."""

    def __init__(self, status: trio.TaskStatus[None]) -> None:
        self._status = status
        self.ready = False

    def started(self, value: object = None) -> None:
        self.ready = True
        self._status.started()


class _Child:
    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.scope = trio.CancelScope()
        self.stopping = False
        self.done = trio.Event()


class Supervisor:
    """Made by :func:`open_supervisor`."""

    def __init__(self, nursery: trio.Nursery, intensity: RestartIntensity) -> None:
        self._nursery = nursery
        self._intensity = intensity
        self._children: list[_Child] = []
        self.restarts = LabelledCounts()
        self.failure: BaseException | None = None  # why it gave up, once it has

    async def start(self, spec: ChildSpec) -> None:
        child = _Child(spec)
        self.restarts.add(spec.name, 0)  # a series from the start, not from the first restart
        await self._nursery.start(self._supervise, child, name=f"durable-emitter {spec.name}")  # in task dumps
        self._children.append(child)

    async def stop(self) -> None:
        """Stop the children in reverse start order, each within its shutdown deadline."""
        for child in reversed(self._children):
            child.stopping = True
            if child.spec.stop is not None:
                child.spec.stop()
            child.scope.deadline = min(child.scope.deadline, trio.current_time() + child.spec.shutdown)
            await child.done.wait()

    async def _supervise(self, child: _Child, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        spec = child.spec
        first = status = _Readiness(task_status)
        try:
            with child.scope:
                while True:
                    try:
                        await spec.run(task_status=status)
                    except Exception as exc:
                        if not first.ready:
                            raise  # failing before it was ever ready is a start-up error, not a crash
                        if child.stopping or spec.restart is Restart.TEMPORARY:
                            log.error("actor failed; not restarted", actor=spec.name, error=repr(exc),
                                      why="stopping" if child.stopping else "temporary")
                            return
                        if not self._intensity.allow(trio.current_time()):
                            self.failure = SupervisorGaveUp(
                                f"actor {spec.name!r} crashed more than {self._intensity.max_restarts} times "
                                f"in {self._intensity.period:g}s; last error: {exc!r}"
                            )
                            raise self.failure from exc
                        delay = self._intensity.delay()
                        log.error("actor crashed; restarting", actor=spec.name, error=repr(exc),
                                  restart_in_s=round(delay, 3))
                    else:
                        if child.stopping or spec.restart is not Restart.PERMANENT:
                            return
                        if not self._intensity.allow(trio.current_time()):
                            raise SupervisorGaveUp(f"actor {spec.name!r} kept returning; it must run until stopped")
                        delay = self._intensity.delay()
                    self.restarts.add(spec.name)
                    await trio.sleep(delay)
                    status = _Readiness(trio.TASK_STATUS_IGNORED)
        finally:
            if child.scope.cancelled_caught and child.stopping and spec.shutdown > 0:
                log.warning("actor did not stop within its shutdown deadline; cancelled", actor=spec.name,
                            shutdown_s=spec.shutdown)
            if spec.on_exit is not None:
                spec.on_exit()
            child.done.set()


@asynccontextmanager
async def open_supervisor(intensity: RestartIntensity) -> AsyncIterator[Supervisor]:
    """A nursery of supervised children. Leaving the block without :meth:`Supervisor.stop` cancels them."""
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery, intensity)
        yield supervisor
        nursery.cancel_scope.cancel()

"""A one_for_one supervisor in OTP's words: restart a crashed child, within an intensity.

Children start in order, each only once the previous one reported ready
(``task_status.started()``). A child that raises is restarted with the same
arguments (so the same channels: nothing upstream notices); more than
``max_restarts`` restarts within ``period`` seconds means something is wrong
beyond a restart's reach, and the supervisor gives up and raises, failing the
tree loudly. A child that returns normally has finished: its ``on_exit`` runs
(closing the channels it fed, so shutdown flows downstream) and it is not
restarted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
import trio

from .errors import EmitterError

log = structlog.get_logger("durable_emitter.supervisor")


class SupervisorGaveUp(EmitterError):
    """An actor crashed more often than the restart intensity allows."""


@dataclass
class RestartIntensity:
    """At most ``max_restarts`` within any ``period`` seconds. Pure: pass the time in."""

    max_restarts: int
    period: float

    def __post_init__(self) -> None:
        self._times: deque[float] = deque()

    def allow(self, now: float) -> bool:
        """Record a restart at ``now``; False once the intensity is exceeded."""
        self._times.append(now)
        while self._times and self._times[0] <= now - self.period:
            self._times.popleft()
        return len(self._times) <= self.max_restarts


@dataclass(frozen=True)
class ChildSpec:
    """One supervised actor: ``run(task_status=...)`` is the actor's entry point, bound."""

    name: str
    run: Callable[..., Awaitable[object]]
    on_exit: Callable[[], object] | None = None


class _Readiness:
    """Forwards ``started()`` and remembers that it happened."""

    def __init__(self, status: trio.TaskStatus[None]) -> None:
        self._status = status
        self.ready = False

    def started(self, value: object = None) -> None:
        self.ready = True
        self._status.started(value)


async def _supervise_one(child: ChildSpec, intensity: RestartIntensity, on_restart: Callable[[str], None],
                         *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    first = _Readiness(task_status)
    status = first
    while True:
        try:
            await child.run(task_status=status)
        except Exception as exc:
            if not first.ready:
                raise  # failing before it was ever ready is a start-up error, not a crash
            if not intensity.allow(trio.current_time()):
                raise SupervisorGaveUp(
                    f"actor {child.name!r} crashed more than {intensity.max_restarts} times "
                    f"in {intensity.period:g}s; last error: {exc!r}"
                ) from exc
            log.error("actor crashed; restarting", actor=child.name, error=repr(exc))
            on_restart(child.name)
            status = _Readiness(trio.TASK_STATUS_IGNORED)
            continue
        if child.on_exit is not None:
            child.on_exit()
        return


async def supervise(
    children: list[ChildSpec],
    intensity: RestartIntensity,
    on_restart: Callable[[str], None] = lambda name: None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the children one_for_one until all have returned, or one exceeds the intensity."""
    async with trio.open_nursery() as nursery:
        for child in children:
            await nursery.start(_supervise_one, child, intensity, on_restart)
        task_status.started()

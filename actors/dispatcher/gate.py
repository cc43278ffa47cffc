"""The delivery gate (outage mode): open while Chip answers; closed, with one prober, while it does not.

After ``failures_to_pause`` failed calls in a row, or one call Chip refused,
delivery pauses: batches wait in memory, no row is claimed or released, and
one task probes Chip with Ping on backoff up to ``retry_max``. The first
answer reopens the gate; :mod:`core.outage` decides, this performs and logs.

At close (:meth:`DeliveryGate.stop`) nothing is cancelled: calls in flight
finish and their answers are handled. Batches held for a Chip that does not
answer (or refuses us) leave, their rows back in the table; under a rate limit
Chip answers, so batches retry by themselves, after its hint, until the
shutdown deadline.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import trio

from ..adapters.chip import ChipClient
from ..core.backoff import Backoff
from ..core.failures import CallFailed
from ..core.outage import Change, ChipHealth, Delivery
from ..logs import get_logger
from ..statistics import DispatcherState

log = get_logger("durable_emitter.dispatcher")


class DeliveryGate:
    def __init__(self, chip: ChipClient, state: DispatcherState, *, failures_to_pause: int, probe_backoff: Backoff,
                 probe_timeout: float, rng: random.Random, nursery: trio.Nursery,
                 paused: Callable[[bool], None] = lambda _: None) -> None:
        self.chip, self.state, self.rng, self.nursery = chip, state, rng, nursery
        self.paused_changed = paused  # told when delivery pauses (True) and resumes (False)
        self.probe_timeout = probe_timeout
        self.health = ChipHealth(failures_to_pause=failures_to_pause, probe_backoff=probe_backoff)
        self._wake = trio.Event()  # held batches wait on it: set (and renewed) when delivery reopens or closes
        self._prober: trio.CancelScope | None = None  # while one task probes
        self.stop_by = math.inf  # closing: when the dispatcher must be done (its shutdown deadline, less a margin)

    def stop(self, budget: float) -> None:
        """The emitter is closing: the dispatcher must be done within ``budget`` seconds (its shutdown
        deadline, or the one its supervisor set if sooner); a tenth of it is kept to hand rows back.

        Held batches wake: they leave (Chip does not answer, or refuses us), or retry by themselves
        (a rate limit: Chip answers, after its hint). Nothing needs the prober any more.
        """
        deadline = min(trio.current_time() + budget, trio.current_effective_deadline())
        self.stop_by = deadline - budget / 10
        if self._prober is not None:
            self._prober.cancel()
        self._wake_held()

    @property
    def closing(self) -> bool:
        return self.stop_by < math.inf

    @property
    def open(self) -> bool:
        return not self.health.paused

    @property
    def paused(self) -> bool:
        """Chip is down, refuses us or rate-limits us, by the health model (the gate reopens on the first answer)."""
        return self.health.paused

    @property
    def holds(self) -> bool:
        """Whether a batch waits for the gate (or, closing, leaves): delivery is paused, except at close
        for a rate limit, where Chip answers and the batch retries after its hint within ``stop_by``."""
        return self.health.paused and not (self.closing and self.health.state is Delivery.LIMITED)

    async def wait_open(self) -> None:
        """Until delivery reopens, or the emitter closes (the caller looks at :attr:`holds` again)."""
        while self.health.paused and not self.closing:
            await self._wake.wait()

    async def sleep(self, delay: float) -> None:
        """A retry's backoff: ``delay``, cut short at ``stop_by`` once the emitter closes."""
        wake_at = trio.current_time() + delay
        while trio.current_time() < min(wake_at, self.stop_by):
            with trio.move_on_at(min(wake_at, self.stop_by)):
                await self._wake.wait()  # set when the emitter closes (or delivery reopens): look again

    def _wake_held(self) -> None:
        self._wake.set()
        self._wake = trio.Event()

    def call_answered(self, answer: CallFailed | None) -> None:
        """Tell the gate how a publish call ended (None: Chip answered)."""
        now = trio.current_time()
        if answer is None:
            self._changed(self.health.call_succeeded(now))
        else:
            self._changed(self.health.call_failed(answer.kind, str(answer), now, answer.retry_after))

    def _changed(self, change: Change | None) -> None:
        """Apply a change of delivery state: open or close the gate, start the prober, log what a human needs."""
        if change is None:
            return
        self.state.delivery = self.health.state.value  # "up" only once a publish worked again
        self.state.paused_calls = change.failed_calls
        self.state.paused_by = "" if change.state is Delivery.UP else change.reason.partition(":")[0]
        self.paused_changed(change.state is not Delivery.UP)
        if change.state is Delivery.UP:
            if change.line:
                log.warning("Chip answers again; delivery resumed", down_for_s=round(change.down_for, 1),
                            failed_calls=change.failed_calls)
            self._wake_held()
            return
        if self._prober is None and not self.closing:  # closing: batches leave, or retry by themselves
            self._prober = trio.CancelScope()
            self.nursery.start_soon(self._probe_until_answered, self._prober)
        if change.line:
            what = {Delivery.REFUSED: "Chip refuses our calls, or every event in them; delivery {} (check "
                                      "credentials, the node's key or signer, Chip's configuration and its "
                                      "schema registry)",
                    Delivery.LIMITED: "Chip rate-limits us; delivery {} until it takes more"}.get(
                change.state, "Chip does not answer; delivery {}")
            log.warning(what.format(change.line), reason=change.reason, down_for_s=round(change.down_for, 1),
                        failed_calls=change.failed_calls, held_events=self.state.held)

    async def _probe_until_answered(self, scope: trio.CancelScope) -> None:
        """Ping Chip on backoff (up to retry_max) until it answers; then delivery resumes on trial."""
        try:
            with scope:
                await self._probe_while_paused()
        finally:
            self._prober = None

    async def _probe_while_paused(self) -> None:
        while self.health.paused:
            await trio.sleep(self.health.next_probe_delay(self.rng))
            if not self.health.paused:
                break  # a publish under way worked meanwhile: delivery is up, no probe to make
            failed = await self.chip.probe(self.probe_timeout)
            now = trio.current_time()
            if failed is None:
                self._changed(self.health.probe_answered(now))
            else:
                self._changed(self.health.probe_failed(failed.kind, str(failed), now))

"""The delivery gate (outage mode): open while Chip answers; closed, with one prober, while it does not.

After ``failures_to_pause`` failed calls in a row, or one call Chip refused,
delivery pauses: batches wait in memory, no row is claimed or released, and
one task probes Chip with Ping on backoff up to ``retry_max``. The first
answer reopens the gate; :mod:`core.outage` decides, this performs and logs.
"""

from __future__ import annotations

import random

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
                 probe_timeout: float, rng: random.Random, nursery: trio.Nursery) -> None:
        self.chip, self.state, self.rng, self.nursery = chip, state, rng, nursery
        self.probe_timeout = probe_timeout
        self.health = ChipHealth(failures_to_pause=failures_to_pause, probe_backoff=probe_backoff)
        self._resumed = trio.Event()  # set while delivery is up; a fresh one while paused
        self._resumed.set()
        self._probing = False
        self.stopping = False  # the inbox closed: a failed call ends its batch, and a pause ends them all

    def stop(self) -> None:
        """The emitter is closing: batches that cannot be delivered now leave their rows in the table.

        Retrying, or waiting for a Chip that is away, would only hold the close up until the
        shutdown deadline; the rows are durable and the next start publishes them.
        """
        self.stopping = True
        if self.paused:
            self.nursery.cancel_scope.cancel()

    @property
    def open(self) -> bool:
        return self._resumed.is_set()

    @property
    def paused(self) -> bool:
        """Chip is down or refuses us, by the health model (the gate reopens on the first answer)."""
        return self.health.paused

    async def wait_open(self) -> None:
        while not self._resumed.is_set():
            await self._resumed.wait()

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
        if change.state is Delivery.UP:
            if change.line:
                log.warning("Chip answers again; delivery resumed", down_for_s=round(change.down_for, 1),
                            failed_calls=change.failed_calls)
            self._resumed.set()
            return
        if self.stopping:
            self.nursery.cancel_scope.cancel()
            return
        if self._resumed.is_set():
            self._resumed = trio.Event()
        if not self._probing:
            self._probing = True
            self.nursery.start_soon(self._probe_until_answered)
        if change.line:
            what = {Delivery.REFUSED: "Chip refuses our calls, or every event in them; delivery {} (check "
                                      "credentials, the node's key or signer, Chip's configuration and its "
                                      "schema registry)",
                    Delivery.LIMITED: "Chip rate-limits us; delivery {} until it takes more"}.get(
                change.state, "Chip does not answer; delivery {}")
            log.warning(what.format(change.line), reason=change.reason, down_for_s=round(change.down_for, 1),
                        failed_calls=change.failed_calls, held_events=self.state.held)

    async def _probe_until_answered(self) -> None:
        """Ping Chip on backoff (up to retry_max) until it answers; then delivery resumes on trial."""
        try:
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
        finally:
            self._probing = False

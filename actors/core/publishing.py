"""The dispatcher's decisions, without I/O: batch sizes, and what to do after each Chip answer.

The dispatcher feeds :func:`decide` what Chip answered, how many attempts
the events have had and where the clock and their lease stand; it performs
what comes back. Everything here is a plain function, tested without a
database, a network or real time.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .answers import PublishOutcome, Rejection
from .backoff import Backoff
from .events import framed_size
from .failures import UNANSWERED_CODES, CallFailed, CallKind


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with the events of one attempt: settled ones by id, the others by index in what was sent."""

    delivered: tuple[str, ...] = ()  # acknowledged: delete
    rejected: tuple[Rejection, ...] = ()  # the event itself is bad: dead-letter
    retry: tuple[int, ...] = ()  # publish again after ``delay`` seconds
    delay: float = 0.0
    reason: str = ""  # why the retried events were not delivered
    release: tuple[int, ...] = ()  # back to the table, claimable after ``retry_after`` seconds (row backoff)
    retry_after: float = 0.0
    release_reason: str = ""  # recorded on the released rows (their last error)
    split: bool = False  # the call was too large: publish each half on its own
    hold: bool = False  # delivery is paused (outage, or Chip refuses us): keep them, retry once Chip is back


def refusal(answer: PublishOutcome, sent: int) -> CallFailed | None:
    """A rejection storm, as a refused call: every event of a batch (two or more) deferred with one code.

    A schema registry outage or a domain configuration pushed wrong answers
    every event so; treated like a call Chip refused, it pauses delivery with
    an alert naming the code instead of cycling each event through the table.
    """
    if sent < 2 or len(answer.deferred) != sent:
        return None
    codes = {rejection.code for _, rejection in answer.deferred}
    if len(codes) != 1:
        return None
    code = codes.pop()
    return CallFailed(code, f"Chip rejected all {sent} events of a batch: {answer.deferred[0][1].reason}")


def decide(answer: PublishOutcome | CallFailed, sent: Sequence[str], *, attempt: int, attempts: int, now: float,
           publish_by: float, backoff: Backoff, rng: random.Random, paused: bool = False,
           stop_by: float = math.inf) -> Decision:
    """The decision after attempt number ``attempt`` (0 for the first) of the events ``sent`` (their ids).

    - Chip answered: delivered events and events rejected for their own bytes
      are settled; events Chip deferred for its own state (schema registry,
      domain configuration) go back to the table on the row backoff, recorded
      with Chip's reason, until delivered or past the TTL; the rest are retried.
    - The call was too large (gRPC's own size error): several events are split
      in halves; a single event is dead-lettered (``TOO_LARGE``), as it alone is over.
    - The call failed while delivery is ``paused`` (Chip is down, refuses us,
      or limits us): every event is held in memory until Chip is back; nothing
      is written, nothing dead-lettered.
    - The call failed transiently, or was limited (a rate limit): every event is
      retried after the backoff, or the server's retry hint if that is longer.
    - A retry that would run past ``publish_by`` (our lease minus a margin),
      or past ``attempts`` calls, becomes a release to the table. A call the
      server said when to try again (a retry hint: a rate limit) spends no
      attempt toward that release: the events are not at fault, and in the table
      they would wait on the row backoff, which grows with each release, long
      after the limit lifted.
    - Closing (``stop_by``: when the dispatcher must be done): what would be held
      (``paused``, a refusal) or a call nothing answered goes back to the table,
      claimable at once, and so does a retry that would start past ``stop_by``; a
      limited or transient call is still retried until then, after its hint.
    """
    deferred: tuple[int, ...] = ()
    deferred_reason = ""
    hint = 0.0
    told_when = False
    if isinstance(answer, CallFailed):
        kind = answer.kind
        if kind is CallKind.TOO_LARGE:
            if len(sent) == 1:
                return Decision(rejected=(Rejection(sent[0], "TOO_LARGE", answer.detail or answer.code),))
            return Decision(split=True)
        if stop_by < math.inf and (paused or kind is CallKind.REFUSED or answer.code in UNANSWERED_CODES):
            why = f"closing while Chip does not take calls: {answer}"
            return Decision(release=tuple(range(len(sent))), reason=answer.code, release_reason=why)
        if paused or kind is CallKind.REFUSED:
            return Decision(retry=tuple(range(len(sent))), hold=True, reason=answer.code)
        settled = Decision()
        retry, reason = tuple(range(len(sent))), answer.code
        hint = answer.retry_after or 0.0
        told_when = answer.retry_after is not None
    else:
        settled = Decision(delivered=tuple(answer.delivered), rejected=tuple(answer.rejected))
        retry, reason = tuple(answer.retry), "NOT_ACKNOWLEDGED"
        if answer.deferred:
            deferred = tuple(index for index, _ in answer.deferred)
            first = answer.deferred[0][1]
            deferred_reason = f"{first.code}: {first.reason}"
    deferral = Decision(settled.delivered, settled.rejected, release=deferred, retry_after=backoff.ceiling(attempt),
                        release_reason=deferred_reason)
    if not retry:
        return deferral
    delay = max(backoff.delay(attempt, rng), hint)
    spent = attempt + 1 >= attempts and not told_when
    if spent or now + delay > min(publish_by, stop_by):
        lapsing = not spent  # out of time (lease or close), not of attempts: claimable at once
        why = (reason if spent else "lease lapsing before delivery" if now + delay > publish_by
               else f"closing before a retry: {reason}")
        return Decision(settled.delivered, settled.rejected, release=retry + deferred,
                        retry_after=0.0 if lapsing else backoff.ceiling(attempt),
                        reason=why, release_reason=deferred_reason or why)
    return Decision(settled.delivered, settled.rejected, retry=retry, delay=delay, reason=reason,
                    release=deferred, retry_after=deferral.retry_after, release_reason=deferred_reason)


def publish_deadline(sent_at: float, lease: float, publish_timeout: float) -> float:
    """The last moment a row leased by a statement sent at ``sent_at`` may be published from memory.

    The database starts the lease at its ``now()``, which is never before the
    statement was sent, so measuring from ``sent_at`` errs on the safe side
    however slow the commit or the network: a publish (``publish_timeout``,
    retried once within the margin) ends before the lease lapses and another
    instance may claim the row.
    """
    return sent_at + lease - 2 * publish_timeout


def claim_limit(publish_batch_size: int, max_request_bytes: int, mean_payload: float) -> int:
    """How many rows to claim at once so one batch stays under the request size cap."""
    by_bytes = int(max_request_bytes // max(mean_payload + 8, 1))
    return max(1, min(publish_batch_size, by_bytes))


def fitting(payloads: Sequence[bytes], start: int, stop: int, room: int) -> tuple[int, int]:
    """How many of ``payloads[start:stop]``, in order, fit in ``room`` encoded bytes, and their size
    (an upper bound when the whole run fits).

    A whole run is taken at once when a cheap upper bound (6 framing bytes per
    event) fits; only a run near the cap is measured event by event.
    """
    count = stop - start
    if count <= 0:
        return 0, 0
    size = sum(map(len, payloads[start:stop]))
    if size + 6 * count <= room:
        return count, size + 6 * count
    size = 0
    for index in range(start, stop):
        item = framed_size(payloads[index])
        if size + item > room:
            return index - start, size
        size += item
    return count, size


def split_by_bytes(payloads: Sequence[bytes], max_bytes: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, stop)`` ranges whose encoded size stays within ``max_bytes`` (one event at least)."""
    ranges: list[tuple[int, int]] = []
    start = 0
    while start < len(payloads):
        count, _ = fitting(payloads, start, len(payloads), max_bytes)
        stop = start + max(count, 1)
        ranges.append((start, stop))
        start = stop
    return ranges

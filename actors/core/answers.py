"""What Chip's answer to one PublishBatch means for each event sent: delivered, rejected, deferred or unanswered.

Pure: the answer and the ids sent in, one :class:`PublishOutcome` out. Who is
at fault decides an event's fate: only codes that blame the event's own bytes
reject it; codes that describe Chip's state defer it (it waits in the table).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from chippb import chipingress_pb2 as pb

# Per-event codes that blame the event's own bytes: no retry can help, dead-letter at once.
# Every other code (SCHEMA_MISSING, DOMAIN_MISCONFIGURATION, unknown ones) describes Chip's
# registry or configuration, which a person or time fixes: the event waits in the table on
# the row backoff until its TTL (then it is dead-lettered with the last reason).
BAD_EVENT_ERRORS = frozenset({pb.VALIDATION_FAILED, pb.ENCODE_ERROR})


@dataclass(frozen=True, slots=True)
class Rejection:
    """Chip refused one event for good: its id, the error code's name and Chip's reason.

    Travels from Chip's answer through the dispatcher and the acker to the
    dead-letter table's ``reason_code`` and ``reason`` columns.
    """

    event_id: str
    code: str
    reason: str


@dataclass(frozen=True)
class PublishOutcome:
    """What one PublishBatch answer means for each event we sent."""

    delivered: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)  # the event is bad: dead-letter
    deferred: list[tuple[int, Rejection]] = field(default_factory=list)  # Chip's state is at fault: wait
    retry: list[int] = field(default_factory=list)  # indexes into what was sent


def interpret_response(event_ids: Sequence[str], response: pb.PublishResponse) -> PublishOutcome:
    """Positional results: no error = delivered; a bad event = rejected; Chip's state = deferred; else retry.

    Nothing is settled on a guess: when the results do not line up with the
    events (fewer, more), only a result that names its event's id is believed;
    a result naming another id, or none where the count is off, leaves its
    event unanswered, and unanswered events are retried.
    """
    results = response.results
    aligned = len(results) == len(event_ids)
    if aligned and not any(r.HasField("error") for r in results):
        answered = [r.event_id for r in results]  # the common case, checked in bulk
        if answered == list(event_ids) or not any(answered):
            return PublishOutcome(delivered=list(event_ids))
    outcome = PublishOutcome()
    for index, event_id in enumerate(event_ids):
        result = results[index] if index < len(results) else None
        # A result naming an id answers that id only; one without is positional, believed
        # only when the counts line up.
        if result is None or (result.event_id != event_id if result.event_id else not aligned):
            outcome.retry.append(index)
        elif not result.HasField("error"):
            outcome.delivered.append(event_id)
        else:
            code = pb.PublishErrorCode.Name(result.error.error_code) \
                if result.error.error_code in pb.PublishErrorCode.values() else f"CODE_{result.error.error_code}"
            rejection = Rejection(event_id, code, result.error.reason)
            if result.error.error_code in BAD_EVENT_ERRORS:
                outcome.rejected.append(rejection)
            else:
                outcome.deferred.append((index, rejection))
    return outcome

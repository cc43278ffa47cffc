"""Backoff, restart intensity, claim sizing, byte-limited splitting, the decision after each answer. Pure."""

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.core.admission import TableSample, pending_estimate
from actors.core.answers import PublishOutcome, Rejection
from actors.core.backoff import Backoff
from actors.core.events import framed_size
from actors.core.failures import CallFailed, CallKind
from actors.core.publishing import claim_limit, decide, fitting, refusal, split_by_bytes
from actors.handoff import open_hand_off
from actors.messages import Outgoing
from actors.supervisor import RestartIntensity

BACKOFF = Backoff(initial=0.1, multiplier=2, cap=1.0)


def test_backoff_grows_exponentially_to_its_cap_with_full_jitter() -> None:
    rng = random.Random(1)
    ceilings = [BACKOFF.ceiling(attempt) for attempt in range(6)]
    assert ceilings == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    for attempt, ceiling in enumerate(ceilings):
        assert 0 <= BACKOFF.delay(attempt, rng) <= ceiling


def test_backoff_jitter_spreads_delays() -> None:
    delays = {Backoff(1.0, 2, 10).delay(0, random.Random(seed)) for seed in range(20)}
    assert len(delays) == 20 and min(delays) < 0.3 and max(delays) > 0.7


def test_restart_intensity_allows_max_restarts_per_period() -> None:
    intensity = RestartIntensity(max_restarts=2, period=10)
    assert intensity.allow(0) and intensity.allow(1)
    assert not intensity.allow(2)  # third within 10 s
    fresh = RestartIntensity(max_restarts=2, period=10)
    assert fresh.allow(0) and fresh.allow(1) and fresh.allow(10.5)  # the first has aged out


def test_restart_delay_doubles_with_recent_restarts_up_to_its_cap() -> None:
    intensity = RestartIntensity(max_restarts=10, period=10, initial_delay=0.1, max_delay=0.5)
    delays = []
    for now in range(5):
        intensity.allow(now)
        delays.append(intensity.delay())
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    intensity.allow(100)  # the others aged out: back to the first delay
    assert intensity.delay() == pytest.approx(0.1)


def test_claim_limit_keeps_a_batch_under_the_request_cap() -> None:
    assert claim_limit(500, 1_000_000, 1000) == 500
    assert claim_limit(500, 1_000_000, 100_000) == 9
    assert claim_limit(500, 1_000_000, 10_000_000) == 1


def test_split_by_bytes_never_exceeds_the_cap_except_for_one_large_item() -> None:
    payloads = [b"x" * size for size in [40, 40, 40, 200, 10]]
    ranges = split_by_bytes(payloads, 100)
    assert ranges == [(0, 2), (2, 3), (3, 4), (4, 5)]
    for start, stop in ranges:
        assert stop - start == 1 or sum(framed_size(p) for p in payloads[start:stop]) <= 100
    assert split_by_bytes([], 100) == []


@given(st.lists(st.integers(0, 300), max_size=40), st.integers(1, 600))
def test_fitting_takes_the_longest_run_within_the_room(sizes: list[int], room: int) -> None:
    payloads = [b"x" * size for size in sizes]
    count, size = fitting(payloads, 0, len(payloads), room)
    exact = sum(framed_size(p) for p in payloads[:count])
    assert exact <= size <= room or count == 0 and size == 0
    if count < len(payloads):  # one more would not have fitted
        assert exact + framed_size(payloads[count]) > room


def test_pending_estimate_keeps_commits_made_while_the_table_was_counted() -> None:
    sample = TableSample(rows=15, committed_before=100, settled_before=40)
    assert pending_estimate(sample, committed=105, settled=40) == 20  # 5 committed while counting
    assert pending_estimate(sample, committed=105, settled=43) == 17
    assert pending_estimate(sample, committed=100, settled=90) == 0  # never negative


def test_hand_off_room_is_refused_past_either_limit_and_given_back_unless_sent() -> None:
    send, receive = open_hand_off(max_events=10, max_bytes=1000)
    with send.reserve(8, 100) as room:
        assert room is not None
        with send.reserve(3, 100) as over_events, send.reserve(1, 901) as over_bytes:
            assert over_events is None and over_bytes is None  # and they took nothing
        assert (receive.statistics().events, receive.statistics().bytes) == (8, 100)
    assert (receive.statistics().events, receive.statistics().bytes) == (0, 0)  # not sent: given back
    with pytest.raises(RuntimeError), send.reserve(2, 10):
        raise RuntimeError("a writer crashed mid-commit")
    assert receive.statistics().events == 0  # a crash cannot keep room
    with send.reserve(2, 10) as room:
        assert room is not None
        room.send(Outgoing(["a", "b"], [b"12345", b"12345"], 1.0))
    assert receive.statistics().events == 2  # sent: held until the dispatcher takes it
    assert receive.receive_nowait().event_ids == ["a", "b"] and receive.statistics().events == 0


# -- the decision after each Chip answer ----------------------------------------------------

IDS = [f"id-{i}" for i in range(8)]


def _decide(answer, sent=IDS, *, attempt=0, attempts=5, now=0.0, publish_by=100.0, seed=0, paused=False,
            stop_by=math.inf):
    return decide(answer, sent, attempt=attempt, attempts=attempts, now=now, publish_by=publish_by,
                  backoff=BACKOFF, rng=random.Random(seed), paused=paused, stop_by=stop_by)


def test_all_delivered_settles_everything() -> None:
    decision = _decide(PublishOutcome(delivered=list(IDS)))
    assert decision.delivered == tuple(IDS) and not (decision.retry or decision.release or decision.rejected)


def test_transient_failure_retries_everything_after_a_jittered_delay() -> None:
    decision = _decide(CallFailed("UNAVAILABLE", "down"), attempt=2)
    assert decision.retry == tuple(range(len(IDS))) and decision.reason == "UNAVAILABLE"
    assert 0 <= decision.delay <= BACKOFF.ceiling(2)


def test_last_attempt_releases_to_the_table_with_the_reason() -> None:
    decision = _decide(CallFailed("UNAVAILABLE", "down"), attempt=4, attempts=5)
    assert decision.release == tuple(range(len(IDS))) and not decision.retry
    assert decision.reason == "UNAVAILABLE" and decision.retry_after == BACKOFF.ceiling(4)


def test_a_retry_that_would_outlive_the_lease_is_released_now() -> None:
    decision = _decide(CallFailed("UNAVAILABLE", "down"), now=99.99, publish_by=100.0, seed=3)
    assert decision.release and decision.reason == "lease lapsing before delivery"
    assert decision.retry_after == 0.0


@pytest.mark.parametrize("code", ["INVALID_ARGUMENT", "FAILED_PRECONDITION", "UNAUTHENTICATED", "PERMISSION_DENIED"])
def test_a_refused_whole_call_holds_every_event_and_dead_letters_none(code: str) -> None:
    """A misconfigured Chip must never move the backlog to the dead-letter table, batch or single event."""
    for sent in (IDS, ["only"]):
        decision = _decide(CallFailed(code, "the server is not set up"), sent)
        assert decision.hold and decision.retry == tuple(range(len(sent)))
        assert not (decision.rejected or decision.split or decision.release)


def test_too_large_splits_a_batch_and_dead_letters_a_single_event() -> None:
    too_large = CallFailed("RESOURCE_EXHAUSTED", "Received message larger than max (5000 vs. 4000)")
    assert _decide(too_large).split
    assert _decide(too_large, ["only"]).rejected == (
        Rejection("only", "TOO_LARGE", "Received message larger than max (5000 vs. 4000)"),)


def test_while_paused_a_transient_failure_holds_instead_of_spending_attempts() -> None:
    decision = _decide(CallFailed("UNAVAILABLE", "down"), attempt=4, attempts=5, paused=True)
    assert decision.hold and decision.retry == tuple(range(len(IDS))) and not decision.release


def test_partial_answer_settles_some_and_retries_the_rest() -> None:
    outcome = PublishOutcome(delivered=["id-0"], rejected=[Rejection("id-1", "VALIDATION_FAILED", "why")], retry=[2, 3])
    decision = _decide(outcome, IDS[:4])
    assert decision.delivered == ("id-0",) and decision.rejected == (Rejection("id-1", "VALIDATION_FAILED", "why"),)
    assert decision.retry == (2, 3) and decision.reason == "NOT_ACKNOWLEDGED"


def test_events_chip_defers_for_its_own_state_wait_in_the_table_and_are_never_dead_lettered() -> None:
    outcome = PublishOutcome(delivered=["id-0"], deferred=[(1, Rejection("id-1", "SCHEMA_MISSING", "no schema"))],
                             retry=[2])
    decision = _decide(outcome, IDS[:3], attempt=2)
    assert decision.delivered == ("id-0",) and not decision.rejected
    assert decision.release == (1,) and decision.retry_after == BACKOFF.ceiling(2)  # the row backoff
    assert decision.release_reason == "SCHEMA_MISSING: no schema"  # recorded as the row's last error
    assert decision.retry == (2,)  # unanswered events still retry in memory


def test_a_whole_batch_deferred_with_one_code_is_a_refusal_that_pauses_delivery() -> None:
    storm = PublishOutcome(deferred=[(i, Rejection(IDS[i], "SCHEMA_MISSING", "registry down")) for i in range(3)])
    refused = refusal(storm, 3)
    assert refused is not None and refused.kind is CallKind.REFUSED and refused.code == "SCHEMA_MISSING"
    assert _decide(refused, IDS[:3]).hold  # held in memory, nothing written, nothing dead-lettered
    mixed = PublishOutcome(deferred=[(0, Rejection(IDS[0], "SCHEMA_MISSING", "r")),
                                     (1, Rejection(IDS[1], "DOMAIN_MISCONFIGURATION", "r"))])
    assert refusal(mixed, 2) is None  # two causes: each event waits on its own
    assert refusal(PublishOutcome(deferred=storm.deferred[:1]), 1) is None  # one event is no storm
    assert refusal(PublishOutcome(delivered=["x"], deferred=storm.deferred[1:]), 3) is None


def test_a_rate_limit_retries_after_the_backoff_or_the_servers_hint_whichever_is_longer() -> None:
    limited = CallFailed("RESOURCE_EXHAUSTED", "request rate exceeds the maximum allowed", retry_after=3.0)
    decision = _decide(limited, IDS[:2])
    assert decision.retry == (0, 1) and decision.delay == 3.0 and not (decision.split or decision.rejected)
    assert _decide(CallFailed("RESOURCE_EXHAUSTED", "request rate exceeds the maximum allowed"), IDS[:1]).retry == (0,)


def test_a_rate_limit_spends_no_attempts_and_waits_in_memory_until_the_lease_margin() -> None:
    """Released, the rows would wait on the row backoff (growing with each release) after the limit lifted."""
    limited = CallFailed("RESOURCE_EXHAUSTED", "request rate exceeds the maximum allowed", retry_after=1.0)
    decision = _decide(limited, IDS[:2], attempt=9, attempts=5)
    assert decision.retry == (0, 1) and decision.delay >= 1.0 and not decision.release
    lapsing = _decide(limited, IDS[:2], attempt=9, attempts=5, now=99.5, publish_by=100.0)
    assert lapsing.release == (0, 1) and lapsing.retry_after == 0.0  # claimable at once, no row backoff
    assert lapsing.reason == "lease lapsing before delivery"
    no_hint = _decide(CallFailed("RESOURCE_EXHAUSTED", "chipmock: injected overload"), IDS[:2], attempt=4)
    assert no_hint.release == (0, 1) and no_hint.retry_after == BACKOFF.ceiling(4)  # as any transient failure


@pytest.mark.parametrize("answer,paused", [(CallFailed("UNAVAILABLE", "connection refused"), False),
                                            (CallFailed("DEADLINE_EXCEEDED", ""), False),
                                            (CallFailed("UNAUTHENTICATED", "no token"), False),
                                            (CallFailed("INTERNAL", "registry"), True)])
def test_closing_hands_back_at_once_what_chip_does_not_take(answer: CallFailed, paused: bool) -> None:
    """Nothing answered, a refusal, or delivery paused for either: no retry, no hold; claimable at once."""
    decision = _decide(answer, IDS[:2], attempt=1, now=10.0, paused=paused, stop_by=14.0)
    assert decision.release == (0, 1) and decision.retry_after == 0.0 and not (decision.retry or decision.hold)
    assert decision.release_reason == f"closing while Chip does not take calls: {answer}"


def test_closing_retries_a_limited_or_transient_call_after_its_hint_while_time_is_left() -> None:
    limited = CallFailed("RESOURCE_EXHAUSTED", "request rate exceeds the maximum allowed", retry_after=0.5)
    decision = _decide(limited, IDS[:2], now=10.0, stop_by=14.0)
    assert decision.retry == (0, 1) and decision.delay == 0.5
    assert _decide(CallFailed("INTERNAL", "registry"), IDS[:2], now=10.0, stop_by=14.0).retry == (0, 1)
    late = _decide(limited, IDS[:2], now=13.8, stop_by=14.0)  # the hint ends past the close's deadline
    assert late.release == (0, 1) and late.retry_after == 0.0 and not late.retry
    assert late.release_reason == "closing before a retry: RESOURCE_EXHAUSTED"


answers = st.one_of(
    st.builds(CallFailed, st.sampled_from(["UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED",
                                           "INVALID_ARGUMENT", "FAILED_PRECONDITION", "UNAUTHENTICATED"]),
              st.sampled_from(["", "down", "Received message larger than max (9 vs. 8)",
                               "request rate exceeds the maximum allowed"]),
              retry_after=st.none() | st.floats(0, 10)),
    st.lists(st.sampled_from(["delivered", "rejected", "deferred", "retry"]), min_size=1, max_size=8).map(
        lambda kinds: PublishOutcome(
            delivered=[IDS[i] for i, k in enumerate(kinds) if k == "delivered"],
            rejected=[Rejection(IDS[i], "VALIDATION_FAILED", "r") for i, k in enumerate(kinds) if k == "rejected"],
            deferred=[(i, Rejection(IDS[i], "SCHEMA_MISSING", "r")) for i, k in enumerate(kinds) if k == "deferred"],
            retry=[i for i, k in enumerate(kinds) if k == "retry"],
        )
    ),
)


@given(answer=answers, attempt=st.integers(0, 10), attempts=st.integers(1, 10),
       now=st.floats(0, 200), seed=st.integers(0, 2**16), paused=st.booleans(),
       stop_by=st.just(math.inf) | st.floats(0, 200))
def test_every_event_gets_exactly_one_fate_and_retries_stay_bounded(answer, attempt, attempts, now, seed,
                                                                    paused, stop_by) -> None:
    sent = IDS if isinstance(answer, CallFailed) else IDS[:len(answer.delivered) + len(answer.rejected)
                                                          + len(answer.deferred) + len(answer.retry)]
    decision = _decide(answer, sent, attempt=attempt, attempts=attempts, now=now, seed=seed, paused=paused,
                       stop_by=stop_by)
    if isinstance(answer, CallFailed):
        assert not decision.rejected  # a whole-call failure never dead-letters several events
    else:  # only events whose own bytes are bad are dead-lettered
        assert {r.event_id for r in decision.rejected} == {r.event_id for r in answer.rejected}
    if decision.hold:  # paused: everything waits in memory for Chip, nothing written (never at close)
        assert stop_by == math.inf
        assert decision.retry == tuple(range(len(sent))) and not (decision.release or decision.rejected)
        return
    if decision.split:
        assert len(sent) > 1 and not (decision.delivered or decision.rejected or decision.retry or decision.release)
        return
    fates = ([sent.index(i) for i in decision.delivered] + [sent.index(r.event_id) for r in decision.rejected]
             + list(decision.retry) + list(decision.release))
    assert sorted(fates) == list(range(len(sent)))  # nothing dropped, nothing twice
    told_when = isinstance(answer, CallFailed) and answer.retry_after is not None
    if decision.retry:  # a retry happens only before the lease lapses, and within the attempts unless told when
        assert (attempt + 1 < attempts or told_when) and now + decision.delay <= min(100.0, stop_by)
        hint = answer.retry_after if isinstance(answer, CallFailed) and answer.retry_after else 0.0
        assert 0 <= decision.delay <= max(BACKOFF.ceiling(attempt), hint)


def test_the_publish_deadline_counts_from_before_the_statement_was_sent() -> None:
    from actors.core.publishing import publish_deadline

    # Sent at 100 s, a 60 s lease: the database's lease starts at 100 s or later, so
    # publishing stops two publish timeouts before 160 s, however late the answer came.
    assert publish_deadline(100.0, 60.0, 5.0) == 150.0

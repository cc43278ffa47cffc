"""The one classification of failures, and outage mode's state machine. Pure."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.core.backoff import Backoff
from actors.core.failures import (
    CallFailed,
    CallKind,
    StoreFailure,
    classify_call,
    classify_sqlstate,
    retry_hint,
    storable_text,
    wrong_server,
)
from actors.core.outage import ChipHealth, Delivery
from actors.errors import StoreUnavailable


@pytest.mark.parametrize(("sqlstate", "kind"), [
    (None, StoreFailure.TRANSIENT),  # no answer at all: the connection broke
    ("08006", StoreFailure.TRANSIENT),  # connection failure
    ("57P01", StoreFailure.TRANSIENT),  # admin shutdown
    ("57014", StoreFailure.TRANSIENT),  # statement timeout
    ("53100", StoreFailure.TRANSIENT),  # disk full
    ("40001", StoreFailure.TRANSIENT),  # serialization failure
    ("55P03", StoreFailure.TRANSIENT),  # lock timeout
    ("25006", StoreFailure.TRANSIENT),  # read-only transaction: a standby, a demoted primary
    ("57P02", StoreFailure.TRANSIENT),  # crash shutdown
    ("57P03", StoreFailure.TRANSIENT),  # cannot connect now: starting up, in recovery
    ("22021", StoreFailure.POISON),  # invalid byte sequence (a NUL byte)
    ("21000", StoreFailure.POISON),  # ON CONFLICT touching a row twice
    ("23505", StoreFailure.POISON),  # unique violation
    ("42501", StoreFailure.PERMANENT),  # permission denied
    ("42P01", StoreFailure.PERMANENT),  # undefined table
    ("P0001", StoreFailure.PERMANENT),  # a trigger raised: nobody said it would pass
])
def test_postgres_failures_are_classified_by_sqlstate(sqlstate, kind) -> None:
    assert classify_sqlstate(sqlstate) is kind


@pytest.mark.parametrize("sqlstate", [
    "25006",  # a standby's (or a read-only database's) answer to INSERT, UPDATE, DELETE, FOR UPDATE, LOCK
    "57P01",  # admin shutdown; also "terminating connection due to unexpected postmaster exit"
    "57P02",  # crash shutdown
    "57P03",  # cannot connect now
    "57P04",  # database dropped
    "57P05",  # idle session timeout
    "26000",  # a prepared statement is gone: the session is not the one it was prepared on
    "42P05",  # a prepared statement of that name is there already: an earlier client's session
])
def test_a_server_that_cannot_take_writes_now_is_transient_and_its_connection_dropped(sqlstate) -> None:
    assert wrong_server(sqlstate)
    assert classify_sqlstate(sqlstate) is StoreFailure.TRANSIENT


@pytest.mark.parametrize("sqlstate", [
    None,  # no answer: the connection is already broken, and reopened on the next call
    "57014",  # statement timeout: the session is fine
    "40001", "55P03", "53300",  # transient, but the server is the right one
    "23505", "42501", "0A000",
    "55000",  # "recovery is in progress": only WAL control functions, which the emitter never calls
])
def test_other_failures_keep_the_connection(sqlstate) -> None:
    assert not wrong_server(sqlstate)


def test_a_store_error_says_its_kind_decided_once_where_it_is_made() -> None:
    assert StoreUnavailable("Postgres: the connection broke").kind is StoreFailure.TRANSIENT  # no answer
    assert StoreUnavailable("Postgres: duplicate key", sqlstate="23505").kind is StoreFailure.POISON
    said = StoreUnavailable("Postgres: no answer in time", sqlstate=None, kind=StoreFailure.TRANSIENT)
    assert (said.sqlstate, said.kind) == (None, StoreFailure.TRANSIENT)


@pytest.mark.parametrize(("code", "detail", "kind"), [
    ("UNAVAILABLE", "", CallKind.TRANSIENT),
    ("RESOURCE_EXHAUSTED", "overloaded", CallKind.LIMITED),
    ("DEADLINE_EXCEEDED", "", CallKind.TRANSIENT),
    ("RESOURCE_EXHAUSTED", "Received message larger than max (10485760 vs. 4194304)", CallKind.TOO_LARGE),
    ("RESOURCE_EXHAUSTED", "Sent message larger than max (5000 vs. 4000)", CallKind.TOO_LARGE),
    # A rate limiter's words are not a size error, however much they sound like one.
    ("RESOURCE_EXHAUSTED", "request rate exceeds the maximum allowed", CallKind.LIMITED),
    ("RESOURCE_EXHAUSTED", "quota exceeded: too large a share of the limit", CallKind.LIMITED),
    ("INVALID_ARGUMENT", "batch of 9 exceeds max 3", CallKind.TOO_LARGE),
    ("INVALID_ARGUMENT", "bad request", CallKind.REFUSED),
    # Our side cannot make the node token: paused as refused, never retried as if Chip were down.
    ("SIGNER_UNAVAILABLE", "no signer for Chip's node token yet", CallKind.REFUSED),
    ("SIGNER_FAILED", "the signer did not answer within 5 s", CallKind.REFUSED),
    ("FAILED_PRECONDITION", "topic missing", CallKind.REFUSED),
    ("UNAUTHENTICATED", "", CallKind.REFUSED),
    ("PERMISSION_DENIED", "", CallKind.REFUSED),
    ("UNIMPLEMENTED", "", CallKind.REFUSED),
])
def test_chip_answers_are_classified_by_meaning(code, detail, kind) -> None:
    assert classify_call(code, detail) is kind


@given(st.text())
def test_any_text_becomes_storable_in_postgres(text) -> None:
    stored = storable_text(text)
    assert "\x00" not in stored and len(stored) <= 2000
    stored.encode("utf-8")  # no lone surrogates


def test_storable_text_keeps_a_readable_trace_of_odd_bytes() -> None:
    assert storable_text("bad\x00byte") == "bad\\x00byte"


def _health(failures_to_pause=3) -> ChipHealth:
    return ChipHealth(failures_to_pause=failures_to_pause, probe_backoff=Backoff(0.1, 2, 5.0), reminder_interval=60)


def test_a_few_failed_calls_in_a_row_pause_delivery_once() -> None:
    health = _health()
    assert health.call_failed(CallKind.TRANSIENT, "UNAVAILABLE", 0) is None
    assert health.call_failed(CallKind.TRANSIENT, "UNAVAILABLE", 1) is None
    change = health.call_failed(CallKind.TRANSIENT, "UNAVAILABLE", 2)
    assert change is not None and change.state is Delivery.DOWN and health.paused
    assert health.call_failed(CallKind.TRANSIENT, "UNAVAILABLE", 3) is None  # no second change


def test_a_blip_stays_quiet_and_an_outage_is_announced_when_the_first_probe_fails() -> None:
    health = _health(failures_to_pause=1)
    assert health.call_failed(CallKind.TRANSIENT, "UNAVAILABLE", 0).line is None
    health.probe_answered(0.1)
    assert health.call_succeeded(0.2).line is None  # paused and back within one probe: no lines
    health.call_failed(CallKind.TRANSIENT, "UNAVAILABLE", 1)
    assert health.probe_failed(CallKind.TRANSIENT, "UNAVAILABLE", 1.1).line == "paused"
    assert health.probe_failed(CallKind.TRANSIENT, "UNAVAILABLE", 1.2) is None
    health.probe_answered(2)
    back = health.call_succeeded(2.5)
    assert back.line == "resumed" and back.down_for == 1.5


def test_a_success_between_failures_starts_the_count_again() -> None:
    health = _health()
    health.call_failed(CallKind.TRANSIENT, "x", 0)
    health.call_failed(CallKind.TRANSIENT, "x", 1)
    assert health.call_succeeded(2) is None
    assert health.call_failed(CallKind.TRANSIENT, "x", 3) is None and not health.paused


def test_one_refusal_pauses_at_once_loudly_and_too_large_never_pauses() -> None:
    assert _health().call_failed(CallKind.TOO_LARGE, "big", 0) is None
    health = _health()
    change = health.call_failed(CallKind.REFUSED, "UNAUTHENTICATED", 0)
    assert change is not None and change.state is Delivery.REFUSED and change.line == "paused"


def test_while_chip_does_not_answer_probes_back_off_to_a_second_and_remind_once_a_minute() -> None:
    health = _health(failures_to_pause=1)
    health.call_failed(CallKind.TRANSIENT, "UNAVAILABLE", 0)
    rng, now, delays, lines = random.Random(1), 0.0, [], []
    for _ in range(100):
        delay = health.next_probe_delay(rng)
        delays.append(delay)
        now += delay
        change = health.probe_failed(CallKind.TRANSIENT, "UNAVAILABLE", now)
        if change is not None:
            lines.append(change.line)
    # Grew to a second, not retry_max: delivery resumes about a second after Chip is back.
    assert delays[0] <= 0.1 and max(delays) <= 1.0 and min(delays[20:]) >= 0.5
    assert lines[0] == "paused" and set(lines[1:]) == {"still paused"}
    assert now // 60 - 1 <= len(lines) - 1 <= now // 60  # reminders once a minute, not once per probe
    health.probe_answered(now)
    back = health.call_succeeded(now)
    assert back is not None and back.state is Delivery.UP and back.line == "resumed"
    assert back.failed_calls == 101 and back.down_for == pytest.approx(now)


@pytest.mark.parametrize("kind", [CallKind.REFUSED, CallKind.LIMITED])
def test_while_chip_answers_but_refuses_or_limits_probes_back_off_to_retry_max(kind) -> None:
    """Each trial then is a batch sent (or a token signed): not once a second."""
    health = _health(failures_to_pause=1)
    health.call_failed(kind, "X", 0)
    rng = random.Random(1)
    delays = [health.next_probe_delay(rng) for _ in range(30)]
    assert max(delays) <= 5.0 and min(delays[20:]) >= 2.5


def test_probe_backoff_resets_only_when_a_publish_works() -> None:
    """Chip answering Ping while refusing publishes must not make probes hot."""
    health = _health(failures_to_pause=1)
    rng = random.Random(0)
    for _ in range(10):
        health.call_failed(CallKind.REFUSED, "FAILED_PRECONDITION", 0)
        health.next_probe_delay(rng)
        health.probe_answered(0)
    assert health.next_probe_delay(rng) >= 2.5
    health.call_succeeded(0)
    assert health.next_probe_delay(rng) <= 0.1


def test_a_probe_waits_for_the_servers_retry_hint_since_a_ping_answers_whatever_the_rate_limit() -> None:
    health = _health()
    rng = random.Random(0)
    for now in (0, 0.01, 0.02):
        health.call_failed(CallKind.TRANSIENT, "RESOURCE_EXHAUSTED: request rate exceeds", now, retry_after=0.9)
    assert health.paused and health.next_probe_delay(rng) == 0.9  # not the first probe's 50-100 ms
    assert health.next_probe_delay(rng) <= 0.2  # a hint is used once
    health.probe_answered(1.0)
    health.call_failed(CallKind.TRANSIENT, "RESOURCE_EXHAUSTED: request rate exceeds", 1.1, retry_after=0.8)
    assert health.paused and health.next_probe_delay(rng) == 0.8  # the trial's refusal brings its own hint
    health.call_failed(CallKind.TRANSIENT, "UNAVAILABLE", 2)
    assert health.next_probe_delay(rng) <= 0.8  # no hint: the backoff alone (0.8 at most by now)


def test_a_ping_answer_resumes_on_trial_and_only_a_working_publish_is_logged_as_back() -> None:
    """Chip answering Ping while refusing publishes must not make the log flap."""
    health = _health()
    assert health.call_failed(CallKind.REFUSED, "FAILED_PRECONDITION", 0).line == "paused"
    trial = health.probe_answered(1)
    assert trial.line is None and not health.paused  # publishing again, quietly
    again = health.call_failed(CallKind.REFUSED, "FAILED_PRECONDITION", 2)
    assert again is not None and again.line is None and health.paused
    health.probe_answered(3)
    back = health.call_succeeded(4)
    assert back is not None and back.state is Delivery.UP and back.line == "resumed" and back.down_for == 4


def test_a_server_retry_hint_is_read_from_trailing_metadata() -> None:
    assert retry_hint([("grpc-retry-pushback-ms", "1500")]) == 1.5
    assert retry_hint([("Retry-After-Ms", b"250")]) == 0.25
    assert retry_hint([("retry-after", "2")]) == 2.0
    assert retry_hint([("retry-after", "soon"), ("x", "1")]) is None  # unusable: the backoff decides
    assert retry_hint([("grpc-retry-pushback-ms", "-1")]) is None
    assert retry_hint([]) is None
    assert CallFailed("RESOURCE_EXHAUSTED", "slow down", retry_after=1.5).retry_after == 1.5


def test_a_rate_limit_reads_limited_not_down_and_a_silent_chip_down() -> None:
    health = _health()
    for now in range(3):
        change = health.call_failed(CallKind.LIMITED, "RESOURCE_EXHAUSTED: request rate exceeds", now, 0.4)
    assert change is not None and change.state is Delivery.LIMITED and health.paused
    assert change.line is None  # Chip answers: nothing for a human to do, no line
    assert health.next_probe_delay(random.Random(1)) >= 0.4  # never before the hint
    health.probe_answered(3.5)
    assert health.state is Delivery.LIMITED  # until a publish works: it says why events go slowly
    change = health.call_failed(CallKind.TRANSIENT, "UNAVAILABLE", 4)
    assert change is not None and change.state is Delivery.DOWN  # now Chip does not answer
    health.probe_answered(5)
    assert health.call_succeeded(5.5).state is Delivery.UP

"""chipmock's decisions, without a server."""

import random
import subprocess
import sys

import pytest

from chipmock.model import (
    AGE_BUCKETS,
    INVALID_ARGUMENT,
    RESOURCE_EXHAUSTED,
    UNAVAILABLE,
    ChipModel,
    Counters,
    Outage,
    decide_call,
    decide_event_failures,
    decide_ping,
)

# chipmock's parse_duration is tested beside the library's (tests/unit/test_config.py): they must agree.


def test_chipmock_imports_nothing_from_the_library() -> None:
    """The test double stands alone: importing it (and its CLI) loads no ``actors`` module."""
    code = ("import sys, chipmock, chipmock.__main__; "
            "print(sorted(m for m in sys.modules if m == 'actors' or m.startswith('actors.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_outage_parses_durations_and_covers_its_window() -> None:
    outage = Outage.parse("10s:500ms")
    assert (outage.start, outage.duration) == (10.0, 0.5)
    assert not outage.covers(9.99) and outage.covers(10.0) and outage.covers(10.49) and not outage.covers(10.5)


@pytest.mark.parametrize("text", ["10s", "x:1s", "1s:y"])
def test_outage_rejects_malformed_windows(text: str) -> None:
    with pytest.raises(ValueError):
        Outage.parse(text)


def test_calls_fail_inside_an_outage_only() -> None:
    model = ChipModel(outages=(Outage(5, 5),))
    rng = random.Random(1)
    assert decide_call(model, rng, elapsed=6).status == UNAVAILABLE
    assert decide_call(model, rng, elapsed=11).status is None


def test_oversize_batches_are_invalid() -> None:
    model = ChipModel(max_batch=10)
    assert decide_call(model, random.Random(1), elapsed=0, batch_size=11).status == INVALID_ARGUMENT
    assert decide_call(model, random.Random(1), elapsed=0, batch_size=10).status is None


def test_failure_kinds_follow_their_rates() -> None:
    model = ChipModel(failure_rate=0.2, resource_exhausted_rate=0.1)
    rng = random.Random(7)
    statuses = [decide_call(model, rng, elapsed=0).status for _ in range(20_000)]
    assert statuses.count(UNAVAILABLE) == pytest.approx(4000, abs=300)
    assert statuses.count(RESOURCE_EXHAUSTED) == pytest.approx(2000, abs=250)


def test_latency_with_jitter_stays_in_its_band_and_never_negative() -> None:
    model = ChipModel(latency=0.05, jitter=0.08)
    rng = random.Random(3)
    delays = [decide_call(model, rng, elapsed=0).delay for _ in range(1000)]
    assert min(delays) == 0.0 and max(delays) <= 0.13


def test_event_failures_at_rate() -> None:
    flags = decide_event_failures(ChipModel(event_failure_rate=0.25), random.Random(2), 8000)
    assert sum(flags) == pytest.approx(2000, abs=200)
    assert decide_event_failures(ChipModel(), random.Random(2), 3) == [False] * 3


@pytest.mark.parametrize("kwargs", [{"failure_rate": 1.5}, {"failure_rate": 0.6, "resource_exhausted_rate": 0.6},
                                    {"latency": -1}, {"max_batch": 0}])
def test_invalid_models_are_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        ChipModel(**kwargs)


def test_counters_count_duplicates_and_bytes() -> None:
    counters = Counters()
    counters.record_events([("a", b"xx"), ("b", b"y")], rejected=1)
    counters.record_events([("a", b"xx")])
    snap = counters.snapshot()
    assert (snap.received, snap.unique, snap.duplicates, snap.rejected, snap.bytes) == (3, 2, 1, 1, 5)
    assert counters.seen(["a", "c"]) == {"a"}


def test_counters_bucket_event_ages() -> None:
    counters = Counters()
    counters.record_events([("a", 1), ("b", 1), ("c", 1)], ages=[0.0004, 0.012, 120.0])
    ages = counters.snapshot().ages
    assert len(ages) == len(AGE_BUCKETS) + 1 and sum(ages) == 3
    assert ages[0] == 1 and ages[AGE_BUCKETS.index(0.015)] == 1 and ages[-1] == 1  # <=1 ms, <=15 ms, older


def test_counters_keep_payloads_only_when_asked() -> None:
    kept = Counters(keep_payloads=True)
    kept.record_events([("a", b"xx")])
    assert kept.payloads == {"a": b"xx"}
    sizes_only = Counters()
    sizes_only.record_events([("a", 2)])
    assert sizes_only.payloads == {} and sizes_only.snapshot().bytes == 2


def test_unauthenticated_windows_refuse_pings_and_publishes_only_inside_them() -> None:
    model = ChipModel(unauthenticated=(Outage(10, 5),))
    assert decide_ping(model, elapsed=12).status == "UNAUTHENTICATED"
    assert decide_call(model, random.Random(0), elapsed=12).status == "UNAUTHENTICATED"
    assert decide_ping(model, elapsed=16).status is None
    assert decide_ping(ChipModel(outages=(Outage(0, 5),)), elapsed=1).status == UNAVAILABLE  # Ping too


def test_a_refusing_chip_fails_every_publish_with_its_code_and_a_bad_code_is_refused() -> None:
    assert decide_call(ChipModel(refuse="FAILED_PRECONDITION"), random.Random(0), elapsed=0).status == \
        "FAILED_PRECONDITION"
    with pytest.raises(ValueError, match="refuse must be one of"):
        ChipModel(refuse="OK")


def test_requests_over_the_size_limit_fail_like_grpcs_own_limit() -> None:
    model = ChipModel(max_request_bytes=100)
    too_large = decide_call(model, random.Random(0), elapsed=0, request_bytes=101)
    assert too_large.status == RESOURCE_EXHAUSTED and "larger than max (101 vs. 100)" in too_large.detail
    assert decide_call(model, random.Random(0), elapsed=0, request_bytes=100).status is None

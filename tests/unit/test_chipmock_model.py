"""chipmock's decisions, without a server."""

import random
import subprocess
import sys

import pytest

from chipmock.__main__ import build_model, build_parser
from chipmock.model import (
    AGE_BUCKETS,
    INVALID_ARGUMENT,
    RATE_LIMITED,
    RESOURCE_EXHAUSTED,
    UNAVAILABLE,
    ChipModel,
    ChipState,
    Counters,
    EventError,
    EventView,
    LatencySpike,
    Outage,
    RateLimiter,
    RejectContaining,
    RejectWindow,
    SchemaRegistry,
    code_number,
    decide_call,
    decide_event_failures,
    decide_events,
    decide_ping,
    parse_duration,
    parse_rate,
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


def test_internal_windows_fail_publishes_but_not_pings_only_inside_them() -> None:
    model = ChipModel(internal=(Outage(10, 5),))
    rng = random.Random(0)
    assert decide_call(model, rng, elapsed=12).status == "INTERNAL"
    assert decide_ping(model, elapsed=12).status is None
    assert decide_call(model, rng, elapsed=15).status is None


def test_a_latency_spike_replaces_the_latency_inside_its_window_only() -> None:
    model = ChipModel(latency=0.01, latency_spikes=(LatencySpike(2.0, Outage(10, 5)),))
    rng = random.Random(0)
    assert [decide_call(model, rng, elapsed=at).delay for at in (9.9, 10, 14.9, 15)] == [0.01, 2.0, 2.0, 0.01]
    assert LatencySpike.parse("2s@10s:5s") == LatencySpike(2.0, Outage(10, 5))
    assert str(LatencySpike(0.5, Outage(1, 2))) == "500ms@1s:2s"
    for text in ("2s", "2@1s:1s", "2s@1s"):
        with pytest.raises(ValueError, match="is not DELAY@START:DURATION"):
            LatencySpike.parse(text)


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


# --- the rate limit: a token bucket of events on the caller's clock ---


def test_a_burst_of_one_seconds_worth_passes_then_the_next_call_is_told_how_long_to_wait() -> None:
    limiter = RateLimiter(8, now=0.0)  # times in binary fractions: exact arithmetic
    assert [limiter.admit(3, now=0.0) for _ in range(2)] == [0.0, 0.0]  # 6 of 8 taken
    assert limiter.admit(3, now=0.0) == 0.125  # 2 left, 3 needed: 1/8 s at 8/s
    assert limiter.admit(3, now=0.0625) == 0.0625  # a refused call took nothing: 2.5 left now
    assert limiter.admit(3, now=0.125) == 0.0


def test_a_batch_larger_than_a_second_passes_once_the_bucket_is_full_and_later_calls_wait_out_its_debt() -> None:
    limiter = RateLimiter(4, now=0.0)
    assert limiter.admit(20, now=0.0) == 0.0  # never refused for ever: 16 events of debt
    assert limiter.admit(1, now=0.0) == 4.25
    assert limiter.admit(1, now=4.0) == 0.25 and limiter.admit(1, now=4.25) == 0.0


def test_events_let_through_converge_on_the_rate_whatever_the_batch_size() -> None:
    for batch in (1, 7, 100):
        limiter = RateLimiter(50, now=0.0)
        passed = sum(batch for tick in range(6000) if limiter.admit(batch, now=tick / 100) == 0.0)  # 60 s
        assert 50 * 60 <= passed <= 50 * 61 + batch


def test_a_rate_below_one_event_a_second_still_lets_one_event_through() -> None:
    limiter = RateLimiter(0.5, now=0.0)
    assert limiter.burst == 1.0 and limiter.admit(1, now=0.0) == 0.0
    assert limiter.admit(1, now=0.0) == pytest.approx(2.0)


def test_a_rate_limited_call_fails_resource_exhausted_with_a_rate_message_never_a_size_message() -> None:
    model = ChipModel(rate_limit=2)
    limiter = RateLimiter(2, now=0.0)
    assert decide_call(model, random.Random(0), elapsed=0, batch_size=2, limiter=limiter).status is None
    refused = decide_call(model, random.Random(0), elapsed=0.25, batch_size=1, limiter=limiter)
    assert (refused.status, refused.retry_after) == (RESOURCE_EXHAUSTED, pytest.approx(0.25))
    assert refused.detail == f"{RATE_LIMITED} (2 events/s)" and "larger than max" not in refused.detail
    assert ChipModel(resource_exhausted_rate=1).resource_exhausted_rate == 1  # the other RESOURCE_EXHAUSTED:
    assert decide_call(ChipModel(resource_exhausted_rate=1), random.Random(0), elapsed=0).retry_after is None


def test_calls_refused_for_size_or_batch_length_take_no_tokens() -> None:
    model = ChipModel(rate_limit=1, max_batch=5, max_request_bytes=100)
    limiter = RateLimiter(1, now=0.0)
    assert decide_call(model, random.Random(0), elapsed=0, batch_size=6, limiter=limiter).status == INVALID_ARGUMENT
    assert decide_call(model, random.Random(0), elapsed=0, request_bytes=101, limiter=limiter).status == \
        RESOURCE_EXHAUSTED
    assert decide_call(model, random.Random(0), elapsed=0, batch_size=1, limiter=limiter).status is None


def test_the_state_keeps_one_bucket_per_limit_and_starts_a_full_one_when_the_limit_changes() -> None:
    state = ChipState()
    assert state.call(ChipModel(rate_limit=1), elapsed=0).status is None
    assert state.call(ChipModel(rate_limit=1), elapsed=0.5).status == RESOURCE_EXHAUSTED
    assert state.call(ChipModel(rate_limit=3), elapsed=0.5).status is None
    assert state.call(ChipModel(), elapsed=0.5).status is None  # lifted


def test_a_rate_limit_window_limits_only_within_it_and_lifts_after() -> None:
    state = ChipState()
    model = ChipModel(rate_limit=1, rate_limit_window=Outage(1.0, 2.0))
    assert [state.call(model, elapsed=0.5).status for _ in range(3)] == [None] * 3  # before: no limit
    assert [state.call(model, elapsed=1.0).status for _ in range(2)] == [None, RESOURCE_EXHAUSTED]  # a full bucket
    assert [state.call(model, elapsed=3.0).status for _ in range(3)] == [None] * 3  # lifted at 1 s + 2 s
    assert model.describe() == "rate_limit=1/s rate_limit_window=1s:2s"
    with pytest.raises(ValueError, match="rate_limit_window needs rate_limit"):
        ChipModel(rate_limit_window=Outage(0, 1))


@pytest.mark.parametrize(("text", "rate"), [("100/s", 100.0), ("2.5/s", 2.5), (" 1/s ", 1.0)])
def test_rates_are_events_per_second(text: str, rate: float) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["100", "100/m", "0/s", "-1/s", "x/s", "/s"])
def test_malformed_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="N/s"):
        parse_rate(text)


# --- per-event answers ---


def _views(*ids: str, **kwargs) -> list[EventView]:
    return [EventView(i, **kwargs) for i in ids]


def test_a_reject_window_answers_every_event_with_its_code_inside_the_window_only() -> None:
    window = RejectWindow.parse("DOMAIN_MISCONFIGURATION@5s:10s")
    assert window == RejectWindow("DOMAIN_MISCONFIGURATION", Outage(5, 10)) and str(window) == \
        "DOMAIN_MISCONFIGURATION@5s:10s"
    model = ChipModel(reject_windows=(window, RejectWindow("SCHEMA_MISSING", Outage(0, 60))))
    inside = decide_events(model, random.Random(0), _views("a", "b"), elapsed=7)
    assert [answer.code for answer in inside] == ["DOMAIN_MISCONFIGURATION"] * 2  # the first window listed wins
    assert [answer.code for answer in decide_events(model, random.Random(0), _views("a"), elapsed=15)] == \
        ["SCHEMA_MISSING"]
    assert decide_events(model, random.Random(0), _views("a"), elapsed=60) == [None]


@pytest.mark.parametrize("text", ["SCHEMA_MISSING", "SCHEMA_MISSING@5s", "NOPE@1s:1s", "SCHEMA_MISSING@5:1s"])
def test_malformed_reject_windows_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        RejectWindow.parse(text)


def test_codes_are_the_proto_names_or_a_number_for_a_code_it_does_not_name() -> None:
    assert code_number("VALIDATION_FAILED") == 1 and code_number("7") == 7
    assert RejectWindow.parse("7@0s:1s").code == "7"
    with pytest.raises(ValueError, match="not a per-event error code"):
        code_number("validation_failed")
    with pytest.raises(ValueError, match="event_failure_code"):
        ChipModel(event_failure_code="NOPE")


def test_chosen_events_are_rejected_by_a_text_in_their_id_or_data_and_no_others() -> None:
    rule = RejectContaining.parse("VALIDATION_FAILED=poison=1")
    assert rule == RejectContaining("VALIDATION_FAILED", "poison=1")  # the text may hold "="
    model = ChipModel(reject_containing=(rule,))
    events = [EventView("a", b"fine"), EventView("b", b"xx poison=1 xx"), EventView("id-poison=1"), EventView("c")]
    answers = decide_events(model, random.Random(0), events, elapsed=0)
    assert [answer and answer.code for answer in answers] == [None, "VALIDATION_FAILED", "VALIDATION_FAILED", None]
    with pytest.raises(ValueError):
        RejectContaining.parse("VALIDATION_FAILED")
    with pytest.raises(ValueError, match="empty"):
        RejectContaining("VALIDATION_FAILED", "")


def test_the_first_rule_that_applies_answers_the_event() -> None:
    """Missing attributes, chosen events, windows, schemas, then the random roll."""
    model = ChipModel(reject_containing=(RejectContaining("ENCODE_ERROR", "bad"),), require_schemas=True,
                      reject_windows=(RejectWindow("DOMAIN_MISCONFIGURATION", Outage(10, 10)),),
                      event_failure_rate=1.0, event_failure_code="VALIDATION_FAILED", schemas=("/s/v1",))
    events = [EventView("a", b"bad", missing=("source",)), EventView("b", b"bad"), EventView("c"),
              EventView("d", dataschema="/s/v1")]
    codes = [[answer.code for answer in decide_events(model, random.Random(0), events, elapsed=elapsed)]
             for elapsed in (15, 0)]
    assert codes == [["VALIDATION_FAILED", "ENCODE_ERROR", "DOMAIN_MISCONFIGURATION", "DOMAIN_MISCONFIGURATION"],
                     ["VALIDATION_FAILED", "ENCODE_ERROR", "SCHEMA_MISSING", "VALIDATION_FAILED"]]


def test_the_random_roll_uses_its_code_and_reason_and_replays_with_a_seed() -> None:
    model = ChipModel(event_failure_rate=0.5, event_failure_code="ENCODE_ERROR", reject_reason="r\x00")
    first = decide_events(model, random.Random(4), _views(*"abcdefgh"), elapsed=0)
    assert first == decide_events(model, random.Random(4), _views(*"abcdefgh"), elapsed=0)
    assert set(first) == {None, EventError("ENCODE_ERROR", "r\x00")}
    assert [answer is not None for answer in first] == decide_event_failures(model, random.Random(4), 8)


def test_without_required_schemas_events_need_none() -> None:
    assert decide_events(ChipModel(), random.Random(0), _views("a"), elapsed=0) == [None]


def test_required_schemas_match_a_registered_subject_or_path_exactly() -> None:
    registry = SchemaRegistry()
    registry.register([("workflows-tick", "/workflows/tick/v1", "syntax = ...")])
    model = ChipModel(require_schemas=True, schemas=("/preloaded/v1",))
    events = [EventView("a", dataschema="workflows-tick"), EventView("b", dataschema="/workflows/tick/v1"),
              EventView("c", dataschema="/preloaded/v1"), EventView("d", dataschema="/workflows/tick/v1/"),
              EventView("e")]
    answers = decide_events(model, random.Random(0), events, elapsed=0, registry=registry)
    assert answers[:3] == [None, None, None]
    assert answers[3] == EventError("SCHEMA_MISSING", "chipmock: no registered schema for '/workflows/tick/v1/'")
    assert answers[4] is not None and answers[4].code == "SCHEMA_MISSING" and "names no dataschema" in \
        answers[4].reason


def test_the_registry_versions_each_subject_and_registers_all_or_nothing() -> None:
    registry = SchemaRegistry()
    assert registry.register([("s", "", "v1"), ("t", "/t", "v1")]) == [1, 1]
    assert registry.register([("s", "", "v1")]) == [1]  # the same text again: the same version
    assert registry.register([("s", "", "v2")]) == [2]
    with pytest.raises(ValueError, match=r"schemas\[1\] has no subject"):
        registry.register([("u", "", "v1"), ("", "/p", "v1")])
    assert not registry.knows("u") and not registry.knows("/p") and registry.knows("/t")
    with pytest.raises(ValueError, match="no schemas"):
        registry.register([])


def test_a_transactional_batch_is_all_or_nothing_and_a_partial_one_is_not() -> None:
    model = ChipModel(reject_containing=(RejectContaining("VALIDATION_FAILED", "bad"),))
    events = [EventView("a"), EventView("b", b"bad"), EventView("c")]
    partial = decide_events(model, random.Random(0), events, elapsed=0)
    assert [answer and answer.code for answer in partial] == [None, "VALIDATION_FAILED", None]
    whole = decide_events(model, random.Random(0), events, elapsed=0, transactional=True)
    assert [answer.code for answer in whole] == ["PUBLISH_ERROR_CODE_UNKNOWN", "VALIDATION_FAILED",
                                                 "PUBLISH_ERROR_CODE_UNKNOWN"]
    assert "transaction failed (VALIDATION_FAILED on another event)" in whole[0].reason
    assert decide_events(model, random.Random(0), [EventView("a")], elapsed=0, transactional=True) == [None]


def test_the_state_answers_events_from_its_own_registry() -> None:
    state = ChipState()
    model = ChipModel(require_schemas=True)
    assert state.events(model, [EventView("a", dataschema="s")], elapsed=0)[0] is not None
    state.registry.register([("s", "", "")])
    assert state.events(model, [EventView("a", dataschema="s")], elapsed=0) == [None]


# --- counters, description, flags ---


def test_counters_count_batches_by_their_options_and_rate_limited_calls() -> None:
    counters = Counters()
    for kind in ("absent", "false", "false", "true"):
        counters.record_batch_options(kind)
    counters.record_call(failed=True, rate_limited=True)
    snap = counters.snapshot()
    assert dict(snap.batch_options) == {"absent": 1, "unset": 0, "false": 2, "true": 1}
    assert (snap.calls, snap.failed_calls, snap.rate_limited) == (1, 1, 1)


def test_a_model_describes_the_knobs_it_changes_with_units() -> None:
    assert ChipModel().describe() == "defaults"
    model = ChipModel(latency=0.05, jitter=2, rate_limit=100, max_batch=3, outages=(Outage(10, 15),),
                      reject_windows=(RejectWindow("SCHEMA_MISSING", Outage(0.5, 60)),), reject_reason="a\x00",
                      require_schemas=True)
    assert model.describe() == ("latency=50ms jitter=2s outages=10s:15s max_batch=3 reject_reason='a\\x00' "
                                "reject_windows=SCHEMA_MISSING@500ms:60s rate_limit=100/s require_schemas=True")
    for window in (Outage(0, 3600), Outage(0.0005, 1.5)):  # what the banner shows reads back as a flag would
        assert Outage.parse(str(window)) == window
    assert parse_duration("0") == 0


def test_every_knob_but_the_test_only_one_has_a_flag_named_after_it() -> None:
    dests = {action.dest for action in build_parser()._actions}
    knobs = {name for name in ChipModel.__dataclass_fields__}
    assert knobs - dests == {"short_response"}


def test_the_cli_maps_each_flag_to_its_keyword() -> None:
    parser = build_parser()
    argv = ["--latency", "50ms", "--jitter", "10ms", "--failure-rate", "0.1", "--resource-exhausted-rate", "0.2",
            "--event-failure-rate", "0.3", "--event-failure-code", "ENCODE_ERROR", "--outage", "1s:2s",
            "--outage", "3s:4s", "--max-batch", "7", "--unauthenticated", "5s:6s", "--refuse", "NOT_FOUND",
            "--max-request-bytes", "1000", "--reject-reason", "x\\x00y", "--rate-limit", "20/s",
            "--latency-spike", "1s@2s:3s", "--internal", "4s:5s",
            "--rate-limit-window", "0s:1m", "--reject", "SCHEMA_MISSING@1s:2s",
            "--reject-containing", "VALIDATION_FAILED=poison",
            "--require-schemas", "--schema", "s1", "--schema", "/p/v1", "--seed", "9"]
    assert build_model(parser, parser.parse_args(argv)) == ChipModel(
        latency=0.05, jitter=0.01, failure_rate=0.1, resource_exhausted_rate=0.2, event_failure_rate=0.3,
        event_failure_code="ENCODE_ERROR", outages=(Outage(1, 2), Outage(3, 4)), max_batch=7,
        unauthenticated=(Outage(5, 6),), refuse="NOT_FOUND", max_request_bytes=1000, reject_reason="x\x00y",
        rate_limit=20, rate_limit_window=Outage(0, 60), latency_spikes=(LatencySpike(1, Outage(2, 3)),),
        internal=(Outage(4, 5),), reject_windows=(RejectWindow("SCHEMA_MISSING", Outage(1, 2)),),
        reject_containing=(RejectContaining("VALIDATION_FAILED", "poison"),), require_schemas=True,
        schemas=("s1", "/p/v1"), seed=9)
    assert build_model(parser, parser.parse_args([])) == ChipModel()


@pytest.mark.parametrize(("argv", "message"), [
    (["--refuse", "OK"], "--refuse must be one of"),
    (["--failure-rate", "0.6", "--resource-exhausted-rate", "0.6"],
     "--failure-rate + --resource-exhausted-rate must not exceed 1"),
    (["--event-failure-code", "NOPE"], "--event-failure-code: 'NOPE' is not a per-event error code"),
    (["--rate-limit", "5"], "argument --rate-limit: '5' is not a rate"),
    (["--rate-limit-window", "0s:1m"], "--rate-limit-window needs --rate-limit"),
    (["--reject", "SCHEMA_MISSING@1s"], "argument --reject: 'SCHEMA_MISSING@1s' is not CODE@START:DURATION"),
    (["--reject-containing", "poison"], "argument --reject-containing: 'poison' is not CODE=TEXT"),
    (["--max-batch", "0"], "argument --max-batch: invalid positive integer value: '0'"),
])
def test_a_bad_flag_value_is_a_usage_error_naming_the_flag(argv: list[str], message: str, capsys) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_:
        build_model(parser, parser.parse_args(argv))
    assert exit_.value.code == 2 and message in capsys.readouterr().err

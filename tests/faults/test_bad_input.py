"""Property-based: every emit input either round-trips to Chip exactly or is refused before any write."""

from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors import EventTooLarge, InvalidEvent, open_blocking_emitter
from chippb import cloudevent_pb2 as ce
from tests.helpers import query

anything = st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=20)
names = st.one_of(st.from_regex(r"[a-zA-Z0-9._-]{1,20}", fullmatch=True), anything)
attribute_names = st.one_of(st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True), anything)
values = st.one_of(
    st.text(max_size=50), st.booleans(), st.integers(min_value=-(2**33), max_value=2**33), st.binary(max_size=20),
    st.datetimes(timezones=st.just(UTC), min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)),
    st.floats(allow_nan=False), st.none(), st.lists(st.integers(), max_size=2),
)
bodies = st.one_of(st.binary(max_size=3000), st.text(max_size=500))


def _row_count(url: str) -> int:
    return query(url, "SELECT (SELECT count(*) FROM chip_durable_events) "
                      "+ (SELECT count(*) FROM chip_durable_events_dead_letter)")[0][0]


def test_emit_inputs_round_trip_or_are_refused_with_nothing_written(chip, make_config, database_url) -> None:
    outcomes = {"accepted": 0, "refused": 0}
    with open_blocking_emitter(make_config(chip, max_event_bytes=2500)) as emitter:
        emitter.flush(timeout=30)

        @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(body=bodies, source=names, type_=names, attributes=st.dictionaries(attribute_names, values, max_size=4))
        def check(body, source, type_, attributes) -> None:
            received_before = chip.counters.snapshot().received
            rows_before = _row_count(database_url)
            try:
                event_id = emitter.emit(body, source=source, type=type_, attributes=attributes)
            except (InvalidEvent, EventTooLarge) as refused:
                assert str(refused)  # says what was wrong
                assert _row_count(database_url) == rows_before and chip.counters.snapshot().received == received_before
                outcomes["refused"] += 1
                return
            outcomes["accepted"] += 1
            emitter.flush(timeout=30)
            event = ce.CloudEvent.FromString(chip.counters.payloads[event_id])
            assert (event.source, event.type) == (source, type_)
            if isinstance(body, bytes):
                assert event.binary_data == body
            else:
                assert event.text_data == body
            for name, value in attributes.items():
                kind = event.attributes[name].WhichOneof("attr")
                got = getattr(event.attributes[name], kind)
                if kind == "ce_timestamp":
                    got = got.ToDatetime(UTC)
                assert got == value, name

        check()
    assert outcomes["accepted"] >= 10 and outcomes["refused"] >= 10, outcomes  # both paths were exercised

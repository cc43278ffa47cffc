"""The outbox refuses bad input before it touches the host's connection; its channel names fit Postgres."""

import pytest

from actors import ConfigError, EventTooLarge, InvalidEvent, outbox
from actors.adapters.outbox_queries import outbox_channel


class Untouchable:
    """A connection no refusal may use: any attribute read fails the test."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the connection was used ({name}) before the input was checked")


def test_bad_events_are_refused_before_any_statement() -> None:
    conn = Untouchable()
    with pytest.raises(InvalidEvent, match="source"):
        outbox.emit(conn, b"x", type="created")  # type: ignore[arg-type]
    with pytest.raises(EventTooLarge, match="max_event_bytes is 300; nothing was written"):
        outbox.emit(conn, b"x" * 400, source="orders", type="created", max_event_bytes=300)  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent, match="a list of bodies, not one body"):
        outbox.emit_many(conn, b"one body", source="orders", type="created")  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent, match=r"bodies\[1\]: body must be bytes"):
        outbox.emit_many(conn, [b"a", 2], source="orders", type="created")  # type: ignore[arg-type,list-item]
    assert outbox.emit_many(conn, [], source="orders", type="created") == []  # type: ignore[arg-type]


def test_a_schema_name_that_is_not_a_plain_name_is_refused(monkeypatch) -> None:
    conn = Untouchable()
    with pytest.raises(ConfigError, match="schema must be a plain lower-case Postgres name"):
        outbox.emit(conn, b"x", source="orders", type="created", schema='x"; DROP TABLE orders; --')  # type: ignore[arg-type]
    monkeypatch.setenv("DURABLE_EMITTER_SCHEMA", "Mixed")
    with pytest.raises(ConfigError, match="'Mixed'"):
        outbox.emit(conn, b"x", source="orders", type="created")  # type: ignore[arg-type]


def test_channel_names_fit_postgres_and_stay_distinct() -> None:
    assert outbox_channel("public") == "durable_emitter_public"
    long_a, long_b = "a" * 60 + "_one", "a" * 60 + "_two"
    assert len(outbox_channel(long_a)) == len(outbox_channel(long_b)) == 63
    assert outbox_channel(long_a) != outbox_channel(long_b)
    assert outbox_channel(long_a) == outbox_channel(long_a)  # the writer and the listener agree

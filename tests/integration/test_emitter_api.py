"""The emitter's edges: backpressure, bad input, bad configuration, flush, shutdown, give-up."""

import math
import subprocess
import sys

import pytest
import trio

from actors import (
    BacklogFull,
    ConfigError,
    EmitterClosed,
    EmitterConfig,
    EventTooLarge,
    FlushTimeout,
    InvalidEvent,
    StoreUnavailable,
    open_emitter,
)
from chipmock import ChipModel, Outage
from chippb import cloudevent_pb2 as ce
from tests.helpers import dead_letters, emit_concurrently, pending_ids, query, wait_until


async def test_backpressure_at_max_pending_raises_backlog_full_and_writes_nothing(start_chipmock, make_config, database_url) -> None:
    down_chip = start_chipmock(ChipModel(failure_rate=1.0))
    config = make_config(down_chip, max_pending=20, backlog_timeout=0.3)
    async with open_emitter(config) as emitter:
        ids = {await emitter.emit(b"x", source="wf", type="tick") for _ in range(20)}
        with pytest.raises(BacklogFull, match="max_pending=20"):
            await emitter.emit(b"one too many", source="wf", type="tick")
        assert pending_ids(database_url) == ids
        down_chip.set_model(ChipModel())
        # Once Chip drains the backlog, emit works again.
        await emitter.flush(timeout=30)
        await emitter.emit(b"after", source="wf", type="tick")


async def test_oversize_event_is_refused_before_anything_is_written(chip, make_config, database_url) -> None:
    async with open_emitter(make_config(chip, max_event_bytes=2000)) as emitter:
        with pytest.raises(EventTooLarge, match="max_event_bytes is 2000"):
            await emitter.emit(b"x" * 5000, source="wf", type="tick")
        await emitter.emit(b"x" * 1000, source="wf", type="tick")
    assert len(chip.counters.ids) == 1


async def test_invalid_events_are_refused_with_the_reason(chip, make_config, database_url) -> None:
    async with open_emitter(make_config(chip)) as emitter:
        with pytest.raises(InvalidEvent, match="source"):
            await emitter.emit(b"x", type="tick")
        with pytest.raises(InvalidEvent, match="must match"):
            await emitter.emit(b"x", source="has space", type="tick")
        with pytest.raises(InvalidEvent, match="not supported"):
            await emitter.emit(b"x", source="wf", type="t", attributes={"extra": 1.5})
        assert pending_ids(database_url) == set()


async def test_beholder_attributes_and_protobuf_bodies(chip, make_config) -> None:
    body = ce.CloudEvent(id="inner")
    async with open_emitter(make_config(chip)) as emitter:
        event_id = await emitter.emit(body, attributes={
            "beholder_domain": "workflows", "beholder_entity": "cron.Tick",
            "beholder_data_schema": "/workflows/v1", "node": "n1",
        })
        await emitter.flush(timeout=30)
    event = ce.CloudEvent.FromString(chip.counters.payloads[event_id])
    assert (event.source, event.type) == ("workflows", "cron.Tick")
    assert event.proto_data.type_url == "/workflows/v1"
    assert ce.CloudEvent.FromString(event.proto_data.value).id == "inner"
    assert event.attributes["node"].ce_string == "n1"
    assert event.attributes["recordedtime"].ce_timestamp.nanos % 1_000_000 == 0


async def test_no_chip_endpoint_refuses_to_start_and_writes_nothing(blank_database_url) -> None:
    with pytest.raises(ConfigError, match="CHIP_INGRESS_ENDPOINT"):
        async with open_emitter(EmitterConfig(database_url=blank_database_url, auto_migrate=True)):
            pass
    assert query(blank_database_url, "SELECT to_regclass('chip_durable_events')") == [(None,)]  # refused before any I/O


def test_the_library_never_imports_its_test_double() -> None:
    """Choosing chipmock belongs to run-local, the load tests and the fixtures, never to the library."""
    code = "import sys, actors, actors.cli; sys.exit('chipmock' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


async def test_unreachable_database_fails_at_start_with_one_clear_line(chip) -> None:
    # Refused connections are waited on for start_timeout (30 s by default) before the start gives up.
    config = EmitterConfig(database_url="postgresql://u:topsecret@127.0.0.1:1/db", chip_endpoint=chip.endpoint,
                           start_timeout=1.0)
    with trio.fail_after(10), pytest.raises(StoreUnavailable) as info:
        async with open_emitter(config):
            pass
    assert "127.0.0.1:1/db" in str(info.value) and "topsecret" not in str(info.value)


async def test_flush_times_out_while_chip_is_down_and_nothing_is_lost(start_chipmock, make_config, database_url) -> None:
    down_chip = start_chipmock(ChipModel(failure_rate=1.0))
    async with open_emitter(make_config(down_chip)) as emitter:
        event_id = await emitter.emit(b"x", source="wf", type="tick")
        with pytest.raises(FlushTimeout):
            await emitter.flush(timeout=0.3)
    assert pending_ids(database_url) == {event_id}


async def test_emit_after_shutdown_began_raises_emitter_closed(chip, make_config) -> None:
    async with open_emitter(make_config(chip)) as emitter:
        pass
    with pytest.raises(EmitterClosed):
        await emitter.emit(b"x", source="wf", type="tick")


async def test_outage_backlog_drains_when_chip_returns(start_chipmock, make_config, database_url) -> None:
    # The outage ends when the test says so, not at a time counted from chipmock's start
    # (which a slow start-up could outlast before the first publish).
    chip = start_chipmock(ChipModel(outages=(Outage(0, math.inf),)))
    async with open_emitter(make_config(chip, dispatch_buffer=10)) as emitter:
        ids = {await emitter.emit(b"x", source="wf", type="tick") for _ in range(100)}
        await wait_until(lambda: emitter.statistics().delivery == "down", what="delivery paused by the outage")
        assert pending_ids(database_url) == ids  # the backlog waits in the table
        chip.set_model(ChipModel())  # Chip returns
        await emitter.flush(timeout=30)
    assert chip.counters.snapshot().failed_calls > 0
    assert chip.counters.seen(ids) == ids
    assert pending_ids(database_url) == set()


async def test_batches_split_to_stay_under_the_request_size(start_chipmock, make_config) -> None:
    chip = start_chipmock(ChipModel(max_batch=3))
    config = make_config(chip, max_request_bytes=10_000, max_event_bytes=4000)
    async with open_emitter(config) as emitter:
        ids = await emit_concurrently(emitter, 20, emitters=4, size=3000)
        await emitter.flush(timeout=30)
    assert chip.counters.seen(ids) == ids
    assert chip.counters.snapshot().failed_calls == 0  # never more than 3 events (9 KB) per call


async def test_credentials_revoked_mid_run_pause_delivery_with_an_alert_while_emits_stay_durable(
        chip, make_config, database_url) -> None:
    async with open_emitter(make_config(chip)) as emitter:
        first = await emitter.emit(b"x", source="wf", type="tick")
        await emitter.flush(timeout=30)
        chip.require_credentials("someone", "else")  # Chip now refuses us: a configuration error
        ids = {await emitter.emit(b"x", source="wf", type="tick") for _ in range(20)}  # emits keep working
        await wait_until(lambda: emitter.statistics().delivery == "refused", what="the alert state")
        await wait_until(lambda: len(pending_ids(database_url)) == 20, what="the events wait in the table")
        chip.require_credentials(None)  # fixed: delivery resumes by itself
        await emitter.flush(timeout=30)
        stats = emitter.statistics()
    assert chip.counters.seen(ids | {first}) == ids | {first} and dead_letters(database_url) == {}
    assert stats.restarts["dispatcher"] == 0 and stats.delivery == "up"


async def test_metrics_endpoint_serves_upstream_names(chip, make_config) -> None:
    import urllib.request

    async with open_emitter(make_config(chip, metrics_port=0)) as emitter:
        await emitter.emit(b"x", source="wf", type="tick")
        await emitter.flush(timeout=30)
        port = emitter.metrics_port
        body = await trio.to_thread.run_sync(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
    for name in ["durable_emitter_emit_success_total 1.0", "durable_emitter_delivery_completed_total 1.0",
                 "durable_emitter_queue_depth", "durable_emitter_publish_duration_seconds_bucket",
                 "durable_emitter_emit_duration_seconds_count 1.0"]:
        assert name in body


async def test_a_failed_commit_fails_its_emits_with_the_database_reason(chip, make_config, database_url) -> None:
    from tests.helpers import query

    async with open_emitter(make_config(chip)) as emitter:
        query(database_url, """CREATE FUNCTION refuse_insert() RETURNS trigger LANGUAGE plpgsql AS
                               $$ BEGIN RAISE EXCEPTION 'disk is full (simulated)' USING ERRCODE = 'disk_full'; END $$""")
        query(database_url, "CREATE TRIGGER refuse BEFORE INSERT ON chip_durable_events "
                            "FOR EACH STATEMENT EXECUTE FUNCTION refuse_insert()")
        with pytest.raises(StoreUnavailable, match="disk is full"):
            await emitter.emit(b"x", source="wf", type="tick")
        assert pending_ids(database_url) == set()
        query(database_url, "DROP TRIGGER refuse ON chip_durable_events")
        event_id = await emitter.emit(b"x", source="wf", type="tick")  # same tree, no restart needed
        await emitter.flush(timeout=30)
    assert chip.counters.seen([event_id]) == {event_id}

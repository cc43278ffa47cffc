"""Linger, backlog timeout, lease lapse and flush polling, on trio's virtual clock (no real time, no I/O)."""

import pytest
import trio

from actors.core.admission import Admission, TableSample
from actors.core.instruments import Tally
from actors.dispatcher.gathering import Gatherer
from actors.emitter import poll_until
from actors.errors import BacklogFull, StoreUnavailable
from actors.handoff import HandOffSender, open_hand_off
from actors.messages import Outgoing


def _send(send: HandOffSender, *ids: str, publish_by: float = 100.0, payloads: list[bytes] | None = None) -> None:
    """Hand over a committed group as the persister does: room reserved, then sent."""
    group = Outgoing(list(ids), payloads or [b"x"] * len(ids), publish_by)
    with send.reserve(len(group), sum(map(len, group.payloads))) as room:
        assert room is not None
        room.send(group)


async def test_a_batch_waits_the_linger_for_more_events_then_goes(autojump_clock) -> None:
    send, receive = open_hand_off(100, 100)
    gatherer = Gatherer(receive, batch_size=10, max_bytes=10_000, linger=0.02)
    _send(send, "a")

    async def late_arrivals() -> None:
        await trio.sleep(0.01)
        _send(send, "b")  # within the linger: joins the batch
        await trio.sleep(0.02)
        _send(send, "c")  # after it: starts the next batch

    async with trio.open_nursery() as nursery:
        nursery.start_soon(late_arrivals)
        assert await gatherer.wait_for_work()
        started = trio.current_time()
        batch = await gatherer.gather()
        assert trio.current_time() - started == pytest.approx(0.02)
        assert batch.event_ids == ["a", "b"]
        assert await gatherer.wait_for_work()
        assert (await gatherer.gather()).event_ids == ["c"]
    assert receive.statistics().events == 0  # each group's room came back as it left the channel


async def test_a_full_batch_goes_without_waiting_for_the_linger(autojump_clock) -> None:
    send, receive = open_hand_off(100, 100)
    gatherer = Gatherer(receive, batch_size=3, max_bytes=10_000, linger=5.0)
    _send(send, "a", "b", "c", "d")
    started = trio.current_time()
    assert await gatherer.wait_for_work()
    batch = await gatherer.gather()
    assert batch.event_ids == ["a", "b", "c"] and trio.current_time() == started
    assert (await gatherer.gather()).event_ids == ["d"]  # the rest of the group starts the next batch


async def test_a_batch_stops_at_the_byte_cap_and_the_next_takes_the_rest(autojump_clock) -> None:
    send, receive = open_hand_off(100, 10_000)
    gatherer = Gatherer(receive, batch_size=100, max_bytes=100, linger=5.0)
    _send(send, "a", "b", "c", "d", payloads=[b"x" * 40, b"x" * 40, b"x" * 200, b"x"])
    sizes = []
    for _ in range(3):
        assert await gatherer.wait_for_work()
        sizes.append((await gatherer.gather()).event_ids)
    assert sizes == [["a", "b"], ["c"], ["d"]]  # c alone above the cap still goes: Chip's answer decides


async def test_an_event_above_the_cap_goes_alone_even_when_its_group_ends_with_it(autojump_clock) -> None:
    send, receive = open_hand_off(100, 10_000)
    gatherer = Gatherer(receive, batch_size=100, max_bytes=100, linger=5.0)
    _send(send, "big", payloads=[b"x" * 200])
    _send(send, "next", payloads=[b"x" * 40])
    assert await gatherer.wait_for_work()
    assert (await gatherer.gather()).event_ids == ["big"]  # the next group does not ride on a full batch
    assert (await gatherer.gather()).event_ids == ["next"]


async def test_events_past_their_lease_margin_are_left_to_the_table(autojump_clock) -> None:
    send, receive = open_hand_off(100, 100)
    gatherer = Gatherer(receive, batch_size=10, max_bytes=10_000, linger=0.0)
    await trio.sleep(2.0)
    _send(send, "old", publish_by=1.0)
    _send(send, "fresh", "too", publish_by=5.0)
    assert await gatherer.wait_for_work()
    assert (await gatherer.gather()).event_ids == ["fresh", "too"]
    assert receive.statistics().events == 0  # the lapsed group's room came back too
    await trio.sleep(10.0)
    _send(send, "late", publish_by=5.0)
    send.close()
    assert not await gatherer.wait_for_work()  # it lapsed too; then the inbox ended


def _full_admission(settled: Tally, limit: int = 10) -> Admission:
    sample = TableSample(rows=limit)
    return Admission(limit, lambda: sample, Tally(), settled, resample_interval=1.0)


async def test_emit_waits_backlog_timeout_then_refuses(autojump_clock) -> None:
    admission = _full_admission(Tally())
    started = trio.current_time()
    with pytest.raises(BacklogFull, match="max_pending=10"):
        await admission.wait_for_room(5.0)
    assert trio.current_time() - started == pytest.approx(5.0)


async def test_emit_goes_on_as_soon_as_the_acker_removes_rows(autojump_clock) -> None:
    settled = Tally()
    admission = _full_admission(settled)

    async def acker_deletes_some() -> None:
        await trio.sleep(0.25)
        settled.add(3)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(acker_deletes_some)
        started = trio.current_time()
        await admission.wait_for_room(5.0)
    assert trio.current_time() - started == pytest.approx(0.25)
    assert admission.pending == 7


async def test_flush_polling_backs_off_survives_store_errors_and_times_out(autojump_clock) -> None:
    checks: list[float] = []

    async def never_settles() -> bool:
        checks.append(trio.current_time())
        if len(checks) == 3:
            raise StoreUnavailable("Postgres: restarting")
        return False

    assert await poll_until(never_settles, 2.0) == "Postgres: restarting"
    gaps = [later - earlier for earlier, later in zip(checks, checks[1:], strict=False)]
    assert gaps[:5] == pytest.approx([0.005, 0.01, 0.02, 0.04, 0.08]) and max(gaps) == pytest.approx(0.1)
    assert len(checks) < 30  # at most ten checks a second once backed off


async def test_flush_polling_returns_as_soon_as_settled(autojump_clock) -> None:
    async def settles_at_half_a_second() -> bool:
        return trio.current_time() >= 0.5

    assert await poll_until(settles_at_half_a_second, 10.0) is None
    assert trio.current_time() < 0.61


def test_histogram_quantiles_and_windows_between_snapshots() -> None:
    from actors.core.instruments import Histogram

    histogram = Histogram([0.01, 0.1, 1.0])
    histogram.observe(0.005, times=90)
    before = histogram.snapshot()
    histogram.observe(0.5, times=10)
    after = histogram.snapshot()
    assert after.count == 100 and after.quantile(0.5) == pytest.approx(0.01 * 50 / 90)
    assert 0.1 < after.quantile(0.99) <= 1.0
    window = after.since(before)
    assert window.count == 10 and window.mean == pytest.approx(0.5)

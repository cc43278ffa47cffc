"""Backlog timeout, lease lapse and flush polling, on trio's virtual clock (no real time, no I/O).

The linger and the lease margin of batches are tests/unit/test_gatherer.py's."""

import pytest
import trio

from actors.core.admission import Admission, TableSample
from actors.core.instruments import Tally
from actors.emitter import poll_until
from actors.errors import BacklogFull, StoreUnavailable


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

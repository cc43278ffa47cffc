"""The supervisor's OTP behaviour, with plain Trio actors (no I/O) on a virtual clock."""

import pytest
import trio

from actors.errors import SupervisorGaveUp
from actors.supervisor import (
    ChildSpec,
    Restart,
    RestartIntensity,
    open_supervisor,
)


async def test_crashed_child_is_restarted_and_others_keep_running(autojump_clock) -> None:
    runs = {"flaky": 0, "steady": 0}
    third_run = trio.Event()

    async def flaky(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
        runs["flaky"] += 1
        task_status.started()
        if runs["flaky"] < 3:
            raise RuntimeError("boom")
        third_run.set()
        await trio.sleep_forever()

    async def steady(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
        runs["steady"] += 1
        task_status.started()
        await trio.sleep_forever()

    async with open_supervisor(RestartIntensity(5, 10)) as tree:
        await tree.start(ChildSpec("steady", steady, shutdown=0))
        await tree.start(ChildSpec("flaky", flaky, shutdown=0))
        await third_run.wait()
        await tree.stop()
    assert runs == {"flaky": 3, "steady": 1}  # one_for_one: steady never restarted
    assert tree.restarts.snapshot() == {"steady": 0, "flaky": 2}


async def test_restarts_wait_a_delay_that_doubles_so_a_crashing_child_cannot_hot_loop(autojump_clock) -> None:
    started_at: list[float] = []

    async def crashes_at_once(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
        started_at.append(trio.current_time())
        task_status.started()
        raise RuntimeError("broken")

    with pytest.raises(BaseExceptionGroup) as info:
        async with open_supervisor(RestartIntensity(4, 60, initial_delay=0.5, max_delay=2.0)) as tree:
            await tree.start(ChildSpec("broken", crashes_at_once))
            await trio.sleep_forever()
    assert info.group_contains(SupervisorGaveUp, match="crashed more than 4 times")
    gaps = [later - earlier for earlier, later in zip(started_at, started_at[1:], strict=False)]
    assert gaps == pytest.approx([0.5, 1.0, 2.0, 2.0])


async def test_too_many_restarts_give_up_loudly(autojump_clock) -> None:
    async def always_crashes(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep(0.1)
        raise RuntimeError("still broken")

    with pytest.raises(BaseExceptionGroup) as info:
        async with open_supervisor(RestartIntensity(3, 10)) as tree:
            await tree.start(ChildSpec("broken", always_crashes))
            await trio.sleep_forever()
    assert info.group_contains(SupervisorGaveUp, match="crashed more than 3 times")


async def test_failure_before_ready_is_a_startup_error_not_a_restart() -> None:
    async def cannot_start(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
        raise OSError("no database")

    with pytest.raises(BaseExceptionGroup) as info:
        async with open_supervisor(RestartIntensity(3, 10)) as tree:
            await tree.start(ChildSpec("x", cannot_start))
    assert info.group_contains(OSError, match="no database")


async def test_restart_types_permanent_transient_temporary(autojump_clock) -> None:
    runs = {"permanent": 0, "transient": 0, "temporary": 0}

    def child(name: str, crash: bool):
        async def run(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
            runs[name] += 1
            task_status.started()
            await trio.sleep(1)
            if runs[name] < 3 and crash:
                raise RuntimeError(name)

        return run

    async with open_supervisor(RestartIntensity(20, 60)) as tree:
        await tree.start(ChildSpec("permanent", child("permanent", crash=False), restart=Restart.PERMANENT))
        await tree.start(ChildSpec("transient", child("transient", crash=True)))
        await tree.start(ChildSpec("temporary", child("temporary", crash=True), restart=Restart.TEMPORARY))
        await trio.sleep(10)
        await tree.stop()
    assert runs["permanent"] >= 5  # restarted even after returning normally
    assert runs["transient"] == 3  # restarted after each crash, then it finished
    assert runs["temporary"] == 1  # never restarted


async def test_stop_runs_in_reverse_order_within_each_shutdown_deadline(autojump_clock) -> None:
    order: list[str] = []
    inbox_closed = trio.Event()

    async def drains(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await inbox_closed.wait()
        order.append("drained")

    async def hangs(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async with open_supervisor(RestartIntensity(1, 1)) as tree:
        await tree.start(ChildSpec("hangs", hangs, shutdown=3, on_exit=lambda: order.append("hangs exit")))
        await tree.start(ChildSpec("drains", drains, shutdown=3, stop=inbox_closed.set,
                                   on_exit=lambda: order.append("drains exit")))
        before = trio.current_time()
        await tree.stop()
    assert order == ["drained", "drains exit", "hangs exit"]  # the last started stops first
    assert trio.current_time() - before == pytest.approx(3)  # "hangs" was cancelled at its deadline

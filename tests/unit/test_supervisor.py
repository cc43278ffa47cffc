"""The supervisor's OTP behaviour, with plain Trio actors (no I/O) on a virtual clock."""

import pytest
import trio

from actors.supervisor import ChildSpec, RestartIntensity, SupervisorGaveUp, supervise


async def test_crashed_child_is_restarted_and_others_keep_running() -> None:
    runs = {"flaky": 0, "steady": 0}
    done = trio.Event()
    third_run = trio.Event()

    async def flaky(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
        runs["flaky"] += 1
        task_status.started()
        if runs["flaky"] < 3:
            raise RuntimeError("boom")
        third_run.set()
        await done.wait()

    async def steady(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
        runs["steady"] += 1
        task_status.started()
        await done.wait()

    restarted: list[str] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(supervise, [ChildSpec("steady", steady), ChildSpec("flaky", flaky)],
                            RestartIntensity(5, 10), restarted.append)
        await third_run.wait()
        done.set()
    assert runs == {"flaky": 3, "steady": 1}  # one_for_one: steady never restarted
    assert restarted == ["flaky", "flaky"]


async def test_too_many_restarts_give_up_loudly(autojump_clock) -> None:
    async def always_crashes(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep(0.1)
        raise RuntimeError("still broken")

    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervise, [ChildSpec("broken", always_crashes)], RestartIntensity(3, 10))
    assert info.group_contains(SupervisorGaveUp, match="crashed more than 3 times")


async def test_failure_before_ready_is_a_startup_error_not_a_restart() -> None:
    async def cannot_start(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
        raise OSError("no database")

    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervise, [ChildSpec("x", cannot_start)], RestartIntensity(3, 10))
    assert info.group_contains(OSError, match="no database")


async def test_children_start_in_order_and_normal_exit_runs_on_exit() -> None:
    order: list[str] = []

    def child(name: str):
        async def run(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
            order.append(f"start {name}")
            task_status.started()

        return ChildSpec(name, run, on_exit=lambda: order.append(f"exit {name}"))

    await supervise([child("acker"), child("dispatcher")], RestartIntensity(1, 1))
    assert order.index("start acker") < order.index("start dispatcher")
    assert {"exit acker", "exit dispatcher"} <= set(order)

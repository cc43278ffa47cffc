"""The soak's plan and its independent checker, without running anything (scripts/soak/schedule.py, checker.py)."""

from __future__ import annotations

import argparse

import pytest

from scripts.soak.checker import Publishers, check, dead_letters, failures, read_ids, resumes
from scripts.soak.host import BODY, REJECT_BODY, REJECT_MARK, Marks
from scripts.soak.nemesis import Happened
from scripts.soak.schedule import CHIP_WINDOWS, FAULTS_UNTIL, KINDS, LEASE, chip_flags, plan

HOSTS = ("emit", "emit_many", "outbox", "asyncio")


def _resource(kind: str, target: str) -> str:
    return target if KINDS[kind][1] == "host" else KINDS[kind][1]


@pytest.mark.parametrize("seed", range(12))
def test_a_seed_draws_the_same_faults_each_on_a_free_resource_and_all_ended_by_four_fifths(seed: int) -> None:
    faults = plan(seed, 300, HOSTS, "emit_many")
    assert faults == plan(seed, 300, HOSTS, "emit_many") and faults != plan(seed + 100, 300, HOSTS, "emit_many")
    assert all(fault.end <= 300 * FAULTS_UNTIL + 1e-9 for fault in faults)
    by_resource: dict[str, list] = {}
    for fault in faults:
        by_resource.setdefault(_resource(fault.kind, fault.target), []).append(fault)
    for held in by_resource.values():
        for earlier, later in zip(held, held[1:], strict=False):
            assert earlier.end <= later.at, (earlier, later)
    killed_pooled = [f for f in faults if f.kind == "host_kill" and f.target == "emit_many"]
    assert all(f.at + LEASE < 300 for f in killed_pooled)  # its rows wait for their lease: lapsed in the run
    assert not any(f.kind == "pooler_restart" for f in plan(seed, 300, HOSTS, None))


def test_every_kind_of_fault_is_drawn_and_some_start_together() -> None:
    faults = [fault for seed in range(5) for fault in plan(seed, 600, HOSTS, "emit_many")]
    assert {fault.kind for fault in faults} == set(KINDS)
    starts = [fault.at for fault in faults]
    assert len(starts) > len(set(starts))


def test_each_chipmock_gets_the_windows_ahead_of_it_until_the_next_kill_with_one_rate_limit_at_most() -> None:
    for seed in range(20):
        faults = plan(seed, 600, HOSTS, "emit_many")
        starts = [0.0] + [f.end for f in faults if f.kind == "chip_kill"]
        for started in starts:
            flags = chip_flags(faults, started)
            assert flags.count("--rate-limit-window") <= 1
            windows = [f for f in faults if f.kind in CHIP_WINDOWS and f.at >= started
                       and f.at < min([k.at for k in faults if k.kind == "chip_kill" and k.at >= started] or [1e9])]
            assert len([flag for flag in flags if flag.startswith("--") and flag != "--rate-limit"]) == len(windows)


def test_windows_count_from_chipmocks_start_and_one_begun_before_it_keeps_only_what_is_left() -> None:
    from scripts.soak.schedule import Fault

    faults = [Fault(10, "chip_unavailable", "chip", 5), Fault(20, "chip_latency", "chip", 4, 1.5),
              Fault(30, "chip_kill", "chip", 2), Fault(40, "chip_rate_limit", "chip", 5, 200),
              Fault(50, "chip_internal", "chip", 3)]
    assert chip_flags(faults, -2.0) == ["--outage", "12.000s:5.000s", "--latency-spike", "1.5s@22.000s:4.000s"]
    assert chip_flags(faults, 12.0) == ["--outage", "0.000s:3.000s", "--latency-spike", "1.5s@8.000s:4.000s"]
    assert chip_flags(faults, 32.5) == ["--rate-limit", "200/s", "--rate-limit-window", "7.500s:5.000s",
                                        "--internal", "17.500s:3.000s"]


def test_the_checker_reads_records_with_or_without_the_sender_and_skips_a_line_cut_short(tmp_path) -> None:
    path = tmp_path / "ids.txt"
    event = "01a247e6-543a-7cd8-be17-0bed13f80b0a"
    path.write_text(f"{event} 1000.5\n{event} 1001.0 ipv4:127.0.0.1:4242\nshort\n{event} 10")
    assert read_ids(path, 1000.0) == [(event, 0.5, None), (event, 1.0, 4242)]
    assert read_ids(tmp_path / "missing.txt", 0) == []


def _id(n: int) -> str:
    return f"00000000-0000-7000-8000-{n:012d}"


def test_lost_is_acknowledged_never_received_and_a_duplicate_is_explained_only_by_its_senders_fault() -> None:
    timeline = [Happened("host_kill", "emit", 20.0, 21.0), Happened("postgres_reset", "outbox", 40.0, 45.0),
                Happened("chip_reset", "asyncio", 60.0, 62.0)]
    publishers = Publishers({"emit": [(100.0, 5001)], "outbox": [(100.0, 5002)], "asyncio": [(100.0, 5003)]}, 100.0)
    acked = {"emit": [(_id(1), 1.0, None), (_id(2), 1.0, None)], "outbox": [(_id(3), 2.0, None)]}
    received = [(_id(1), 18.0, 5001), (_id(1), 30.0, 5002),   # sent by emit 2 s before it was killed: explained
                (_id(3), 41.0, 5002), (_id(3), 41.1, 5001),   # the sender lived, only cut from Postgres: not
                (_id(4), 59.0, 5001), (_id(4), 63.0, 5003),   # during asyncio's cut, but emit sent it first: not
                (_id(5), 61.0, 5003), (_id(5), 66.0, 5003)]   # asyncio's own, held by its cut: explained
    verdict = check(acked, received, timeline, 5.0, None, publishers)
    assert verdict.lost == [_id(2)] and verdict.acked == 3 and verdict.delivered == 4
    causes = {dup.event_id: dup.cause for dup in verdict.duplicates}
    assert causes == {_id(1): "host_kill emit at 20.0s", _id(3): None, _id(4): None,
                      _id(5): "chip_reset asyncio at 60.0s"}
    assert [(dup.first_from, dup.second_from) for dup in verdict.unexplained] == [("outbox", "emit"),
                                                                                  ("emit", "asyncio")]


def test_a_fault_resumes_at_the_next_delivery_it_held_up_and_a_fault_that_begins_first_takes_over() -> None:
    timeline = [Happened("chip_unavailable", "chip", 10.0, 15.0), Happened("postgres_stop", "postgres", 16.0, 20.0),
                Happened("chip_blackhole", "emit", 30.0, 35.0), Happened("host_kill", "outbox", 30.0, 36.0)]
    receipts = {None: [5.0, 20.5, 31.0, 40.0], "emit": [35.5], "outbox": [39.0]}
    found = {fault.kind: resume for fault, resume in resumes(timeline, receipts, None)}
    # chipmock's outage gave way to Postgres stopped before anything was delivered: both resumed at 20.5
    assert found == {"chip_unavailable": pytest.approx(0.5), "postgres_stop": pytest.approx(0.5),
                     "chip_blackhole": pytest.approx(0.5), "host_kill": pytest.approx(3.0)}
    assert resumes([Happened("host_kill", "emit", 50.0, 51.0)], receipts, None)[0][1] is None  # a wedge


def test_the_seed_the_test_run_soaks_with_draws_every_kind_of_fault() -> None:
    from tests.faults.test_soak import SECONDS, SEED

    assert {fault.kind for fault in plan(SEED, SECONDS, HOSTS, "emit_many")} == set(KINDS)


def test_a_host_killed_while_postgres_was_away_from_it_may_send_again_what_chip_took_since_postgres_left() -> None:
    """Its acker could not delete meanwhile: what Chip took then was still in flight at the kill."""
    timeline = [Happened("postgres_blackhole", "emit", 10.0, 30.0), Happened("host_kill", "emit", 31.0, 32.0),
                Happened("postgres_reset", "outbox", 40.0, 45.0), Happened("host_kill", "outbox", 55.0, 56.0)]
    publishers = Publishers({"emit": [(0.0, 1)], "outbox": [(0.0, 2)], "asyncio": [(0.0, 3)]}, 0.0)
    received = [(_id(1), 12.0, 1), (_id(1), 40.0, 3),   # during emit's cut, which lasted until its kill
                (_id(2), 41.0, 2), (_id(2), 60.0, 3)]   # during outbox's cut, but that ended 10 s before its kill
    causes = {dup.event_id: dup.cause for dup in check({}, received, timeline, 5.0, None, publishers).duplicates}
    assert causes == {_id(1): "host_kill emit at 31.0s", _id(2): None}


def test_without_leaves_a_kind_out_and_draws_the_others() -> None:
    faults = [fault for seed in range(5) for fault in plan(seed, 600, HOSTS, "emit_many", {"host_kill"})]
    assert {fault.kind for fault in faults} == set(KINDS) - {"host_kill"}
    assert plan(3, 300, HOSTS, "emit_many", set(KINDS)) == []


def test_marks_hit_one_event_in_every_hundred_at_one_percent_and_none_at_zero() -> None:
    marks = Marks(0.01)
    bodies = [body for _ in range(100) for body in marks.bodies(10)]
    assert bodies.count(REJECT_BODY) == 10 and bodies.count(BODY) == 990
    assert REJECT_MARK.encode() in REJECT_BODY and REJECT_MARK.encode() not in BODY
    assert Marks(0.0).bodies(1000) == [BODY] * 1000


def test_the_dead_letter_counter_is_checked_against_the_table_and_a_killed_process_leaves_it_unknown() -> None:
    rows = [("a", True), ("b", True), ("x", False)]
    found = dead_letters([(10, 2), (11, 1)], [10, 11], rows, ["a", "b", "c"])
    assert (found.counter, found.rows, found.counter_matches) == (3, 3, True)
    assert found.marked_not_dead_lettered == ["c"] and found.unmarked == ["x"]
    assert dead_letters([(10, 2)], [10, 11], rows, []).counter_matches is None  # 11 never reported
    assert dead_letters([(10, 2), (11, 0)], [10, 11], rows, []).counter_matches is False


def test_a_run_fails_on_any_dead_letter_unless_rejections_were_asked_for_and_then_on_a_counter_off_the_table() -> None:
    clean = {"lost": 0, "unexplained_duplicates": 0, "left": 0, "wedged": 0, "host_exits": 0, "harness_errors": 0,
             "dead_lettered": 0, "dead_letter_counter_matches": True, "marked_not_dead_lettered": 0,
             "dead_lettered_unmarked": 0}
    assert failures(clean, 0.0) == []
    assert failures({**clean, "dead_lettered": 5}, 0.0) == ["dead_lettered"]
    assert failures({**clean, "dead_lettered": 5}, 0.01) == []
    assert failures({**clean, "dead_lettered": 5, "dead_letter_counter_matches": None}, 0.01) == [
        "dead_letter_counter_matches"]
    assert failures({**clean, "dead_lettered": 5, "marked_not_dead_lettered": 1}, 0.01) == ["marked_not_dead_lettered"]
    assert failures({**clean, "lost": 1, "dead_letter_counter_matches": False}, 0.0) == [
        "lost", "dead_letter_counter_matches"]


def test_the_command_line_refuses_an_unknown_kind_and_a_rate_outside_a_fraction() -> None:
    from scripts.soak.__main__ import _fraction, _kinds

    assert _kinds("host_kill, chip_kill") == {"host_kill", "chip_kill"}
    with pytest.raises(argparse.ArgumentTypeError, match="no fault kind nope"):
        _kinds("host_kill,nope")
    assert _fraction("0.01") == 0.01
    with pytest.raises(argparse.ArgumentTypeError, match="not a fraction"):
        _fraction("1.5")

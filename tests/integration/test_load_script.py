"""Short variants of every load scenario: the script runs and its report is right (speed is not asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(tmp_path: Path, pg_server_url: str, *args: str) -> tuple[dict, str]:
    done = subprocess.run([sys.executable, "-m", "scripts.load", *args, "--out", str(tmp_path), "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "DATABASE_URL": pg_server_url})
    assert done.returncode == 0, done.stderr
    (folder,) = tmp_path.iterdir()
    report = (folder / "report.md").read_text()
    assert "Machine:" in report and "cores" in report and "PostgreSQL" in report
    return json.loads((folder / "run.json").read_text()), report


def test_ramp_reports_each_step_and_plots(tmp_path, pg_server_url) -> None:
    # --keep-going: whether a step counts as saturated is decided by the rate per real second on a
    # shared machine; without it a slow first step would end the ramp before the second.
    run, report = load(tmp_path, pg_server_url, "ramp", "--steps", "50,200", "--step-seconds", "1s",
                       "--chip-latency", "10ms", "--keep-going")
    assert [row["offered_per_s"] for row in run["rows"]] == [50, 200]
    for row in run["rows"]:
        assert 0 < row["achieved_per_s"] and row["errors"] == 0 and row["q_max"] >= 0
    assert any("saturation" in note for note in run["notes"])
    assert "latency_per_step.png" in report and (next(tmp_path.iterdir()) / "latency_per_step.png").exists()


def test_sustained_with_baselines_reports_ratios(tmp_path, pg_server_url) -> None:
    run, report = load(tmp_path, pg_server_url, "sustained", "--events", "600", "--concurrency", "10,20",
                       "--batch", "1,50", "--compare")
    assert [row["callers"] for row in run["rows"]] == ["10 callers x emit", "10 callers x emit_many(50)",
                                                       "20 callers x emit", "20 callers x emit_many(50)"]
    for ours in run["rows"]:
        assert ours["events"] == 600 and ours["delivered_unique"] == 600 and ours["emit_errors"] == 0
        assert ours["cpu_us_per_event"] > 0
    assert {b["implementation"].split()[0] for b in run["baselines"]} == {"naive", "limit"}
    assert "- 10 callers x emit_many(50) vs naive:" in report and "- 20 callers x emit vs limit" in report


def test_sustained_across_instances(tmp_path, pg_server_url) -> None:
    run, _ = load(tmp_path, pg_server_url, "sustained", "--events", "900", "--instances", "2")
    (row,) = run["rows"]
    assert row["instances"] == 2 and row["delivered_unique"] == 900


def test_tps_with_an_outage_reports_the_drain(tmp_path, pg_server_url) -> None:
    run, report = load(tmp_path, pg_server_url, "tps", "--rate", "200", "--duration", "4s", "--outage", "1s:1s")
    (row,) = run["rows"]
    assert row["q_max"] > 0 and row["drain_after_outage_s"] is not None and row["emit_errors"] == 0
    assert "rate_and_pending.png" in report


def test_ratelimit_reports_each_interval_and_the_catch_up(tmp_path, pg_server_url) -> None:
    run, report = load(tmp_path, pg_server_url, "ratelimit", "--rate", "200", "--limit", "100", "--duration", "6s")
    assert [row["limit"] for row in run["rows"]][:2] == ["on", "on"] and run["rows"][-1]["limit"] == "lifted"
    assert sum(row["refused_per_s"] for row in run["rows"] if row["limit"] == "on") > 0  # the limit was in force
    assert all(row["refused_per_s"] == 0 for row in run["rows"] if row["limit"] == "lifted")
    summary = run["summary"]
    assert summary["catch_up_s"] is not None and run["rows"][-1]["backlog_end"] == 0
    assert summary["delivered_unique"] == summary["emitted"] > 0 and summary["emit_errors"] == 0
    assert summary["dead_lettered"] == 0 and summary["duplicates"] == 0
    assert "## Summary" in report and "- catch_up_s:" in report


def test_latency_reports_delivery_quantiles_per_rate_and_linger(tmp_path, pg_server_url) -> None:
    run, report = load(tmp_path, pg_server_url, "latency", "--rates", "200", "--lingers", "0,20ms",
                       "--duration", "1s")
    assert [(row["publish_linger_ms"], row["offered_per_s"]) for row in run["rows"]] == [(0, 200), (20, 200)]
    for row in run["rows"]:
        assert row["delivered_unique"] == row["events"] > 0 and row["emit_errors"] == 0
        assert 0 < row["delivery_p50_ms"] <= row["delivery_p99_ms"]  # measured, in order (speed is not asserted)
    assert "recordedtime" in report


def test_payload_sizes(tmp_path, pg_server_url) -> None:
    run, _ = load(tmp_path, pg_server_url, "payload", "--sizes", "64,65536", "--events", "50", "--rate", "0")
    assert [row["size_bytes"] for row in run["rows"]] == [64, 65536]
    assert all(row["events"] == 50 and row["peak_rss_mb"] > 0 for row in run["rows"])


def test_backlog_reports_reads_drain_and_plans(tmp_path, pg_server_url) -> None:
    run, report = load(tmp_path, pg_server_url, "backlog", "--events", "3000")
    (row,) = run["rows"]
    assert row["pending_rows"] == 3000 and row["delivered_unique"] == 3000  # every backlogged event delivered
    for key in ("claim_many_p99_ms", "claim_few_p99_ms", "sampler_p99_ms", "status_queries_p99_ms",
                "status_command_ms", "drain_per_s", "sustained_end_to_end_per_s", "drain_vs_sustained"):
        assert row[key] > 0, key
    assert "## Plan: claim, no row claimable (every lease live)" in report
    few = report.split("## Plan: claim, no row claimable")[1]
    assert "Index Scan using chip_durable_events_available_idx" in few.split("## ")[0]  # no scan of the whole table


def test_outbox_reports_latency_both_ways_and_rates_beside_emit_many(tmp_path, pg_server_url) -> None:
    run, report = load(tmp_path, pg_server_url, "outbox", "--rate", "50", "--duration", "1s", "--events", "600")
    listening, scanning, emitter, outbox = run["rows"]
    assert [listening["phase"], scanning["phase"]] == ["latency, LISTEN", "latency, scan only (LISTEN off)"]
    for row in (listening, scanning):
        assert row["delivered_unique"] == row["events"] == 50 and row["duplicates"] == 0
        assert 0 < row["delivery_p50_ms"] <= row["delivery_p99_ms"]  # measured, in order (speed is not asserted)
    assert emitter["callers"].startswith("Emitter.emit_many(100)") and emitter["delivered_unique"] == 600
    assert outbox["callers"].startswith("outbox.emit_many(100)") and outbox["delivered_unique"] == 600
    assert outbox["emit_per_s"] > 0 and outbox["end_to_end_per_s"] > 0
    assert "recordedtime" in report


def test_bench_claimed_rows_beside_fresh_emit_many(tmp_path, pg_server_url) -> None:
    run, report = load(tmp_path, pg_server_url, "sustained", "--events", "1000", "--concurrency", "10",
                       "--batch", "100", "--claimed", "--rate", "200", "--duration", "1s")
    (fresh,) = run["rows"]
    assert fresh["callers"] == "10 callers x emit_many(100)" and fresh["delivered_unique"] == 1000
    reference, outbox, backlog = run["tables"]["Claimed delivery against fresh emit_many (same run)"]
    assert reference["overall_per_s"] == fresh["end_to_end_per_s"]
    assert outbox["path"].startswith("claimed: outbox") and backlog["path"].startswith("claimed: backlog")
    assert outbox["events"] == outbox["delivered_unique"] == 1000  # chipmock received every outbox row
    assert 0 < backlog["events"] == backlog["delivered_unique"] and backlog["emit_errors"] == 0
    for row in (outbox, backlog):
        assert row["duplicates"] == 0 and row["first_delivery_s"] >= 0
        assert row["drain_per_s"] > 0 and row["drain_x_fresh"] > 0 and row["overall_x_fresh"] > 0
    assert run["summary"]["backlog: Chip answering to the first backlog delivery, s"] == backlog["first_delivery_s"]
    assert 0 <= backlog["leased_at_chip_back"] <= backlog["events"]
    assert "## Claimed delivery against fresh emit_many (same run)" in report and "load average" in report


def test_mixed_reports_fresh_emits_beside_the_backlog_drain(tmp_path, pg_server_url) -> None:
    run, report = load(tmp_path, pg_server_url, "mixed", "--events", "3000", "--rate", "200", "--concurrency", "10",
                       "--every", "1s", "--duration", "30s")
    summary = run["summary"]
    # The backlog is told from fresh events by its age at Chip: all of it, and none of the fresh ones.
    assert summary["backlog_drained"] and summary["backlog_delivered"] == 3000
    assert summary["fresh_delivered_over_60s"] == 0 and summary["duplicates"] == 0
    assert summary["fresh_emitted"] > 0 and summary["fresh_emit_errors"] == 0
    assert 0 < summary["fresh_delivery_p50_ms"] <= summary["fresh_delivery_p99_ms"]
    assert run["rows"] and run["rows"][-1]["backlog_left"] == 0
    assert sum(row["backlog_delivered_per_s"] for row in run["rows"]) > 0
    assert "## Summary" in report


def test_claimsize_reports_sizes_written_delivered_and_vacuumed(tmp_path, pg_server_url) -> None:
    run, report = load(tmp_path, pg_server_url, "claimsize", "--events", "3000")
    written, delivered, vacuumed = run["rows"]
    assert written["rows"] == 3000 and written["heap_mb"] > 0 and vacuumed["rows"] == 0
    assert delivered["deletes"] == 3000 and delivered["updates"] >= 3000  # each row claimed, then deleted
    assert vacuumed["n_dead_tup"] == 0 and vacuumed["heap_mb"] <= delivered["heap_mb"]
    assert all(row["indexes_mb"] > 0 and row["total_mb"] >= row["heap_mb"] for row in run["rows"])
    assert [row["phase"] for row in run["tables"]["Index sizes, MB"]] == [row["phase"] for row in run["rows"]]
    assert run["summary"]["delivered_unique"] == 3000 and "## Index sizes, MB" in report


@pytest.mark.parametrize("args", [["ramp", "--steps", "fast"], ["tps", "--outage", "soon"],
                                  ["ratelimit", "--limit", "0"], ["nothing"], ["tps", "--claimed"],
                                  ["mixed", "--rate", "0"]])
def test_bad_arguments_get_a_usage_error(args) -> None:
    done = subprocess.run([sys.executable, "-m", "scripts.load", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 2 and "usage: load" in done.stderr

"""What a load test run produced (``Run``) and how it is written out: tables, report.md, run.json, PNG plots."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg


@dataclass
class Run:
    """Everything one scenario produced; written as JSON beside the report."""

    scenario: str
    machine: dict
    settings: dict
    rows: list[dict] = field(default_factory=list)
    series: dict[str, list] = field(default_factory=dict)
    baselines: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)  # figures of the run as a whole, beside the rows
    plans: dict[str, str] = field(default_factory=dict)  # EXPLAIN (ANALYZE, BUFFERS) output by query
    tables: dict[str, list[dict]] = field(default_factory=dict)  # more tables of rows, by title


def machine_info(server: str) -> dict:
    """The machine and PostgreSQL settings the numbers came from."""
    with psycopg.connect(server) as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('server_version', 'shared_buffers', "
            "'synchronous_commit', 'wal_level', 'max_wal_size', 'fsync')").fetchall())
    return {
        "host": platform.node(), "cores": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(), "postgres": settings.pop("server_version", "?"), "postgres_settings": settings,
        "load_average": load_average(),
    }


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: on a shared machine, how busy it was besides this run."""
    return " ".join(f"{n:.2f}" for n in os.getloadavg())


def _machine_line(m: dict) -> str:
    load = f"load average {m.get('load_average', '?')} at the start"
    if "load_average_end" in m:
        load += f", {m['load_average_end']} at the end"
    return f"{m['host']}, {m['cores']} cores, Python {m['python']}, PostgreSQL {m['postgres']}, {load}"


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)\n"
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = []
        for key in keys:
            v = row.get(key, "")
            cells.append(_cell(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    return f"{value:,}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def print_summary(run: Run, report: Path) -> None:
    """The machine, the tables and the notes on stdout, then where the report is."""
    m = run.machine
    print(f"machine: {_machine_line(m)}")
    print(markdown_table(run.rows), end="")
    if run.baselines:
        print(markdown_table(run.baselines), end="")
    for title, rows in run.tables.items():
        print(f"{title}:")
        print(markdown_table(rows), end="")
    for key, value in run.summary.items():
        print(f"{key}: {_cell(value)}")
    for note in run.notes:
        print(f"- {note}")
    print(f"report: {report}")


def write_report(run: Run, folder: Path) -> Path:
    """run.json, the plots and report.md into ``folder``; returns report.md's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps(asdict(run), indent=2, default=str))
    plots = make_plots(run, folder)
    m = run.machine
    text = [f"# Load test: {run.scenario}", "",
            f"Machine: {_machine_line(m)}; PostgreSQL settings "
            f"{', '.join(f'{k}={v}' for k, v in m['postgres_settings'].items())}; {m['platform']}", "",
            "Settings: " + ", ".join(f"{k}={v}" for k, v in run.settings.items()), "",
            "## Results", "", markdown_table(run.rows)]
    for title, rows in run.tables.items():
        text += [f"## {title}", "", markdown_table(rows)]
    if run.summary:
        text += ["## Summary", "", *(f"- {key}: {_cell(value)}" for key, value in run.summary.items()), ""]
    if run.baselines:
        text += ["## Baselines (same run, same machine)", "", markdown_table(run.baselines)]
        ours = [r for r in run.rows if r.get("end_to_end_per_s")]
        if ours:
            text += ["Ratios (ours / baseline, end to end):", ""]
            text += [f"- {r.get('callers') or str(r.get('instances', 1)) + ' instance(s)'} vs {b['implementation']}: "
                     f"{r['end_to_end_per_s'] / b['end_to_end_per_s']:.2f}x"
                     for r in ours for b in run.baselines if b.get("end_to_end_per_s")]
            text.append("")
    if run.notes:
        text += ["## Notes", "", *(f"- {n}" for n in run.notes), ""]
    for query, plan in run.plans.items():
        text += [f"## Plan: {query}", "", "```", plan, "```", ""]
    if plots:
        text += ["## Plots", "", *(f"![{p.stem}]({p.name})" for p in plots), ""]
    report = folder / "report.md"
    report.write_text("\n".join(text))
    return report


def make_plots(run: Run, folder: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        run.notes.append("plots skipped: matplotlib is not installed (pip install matplotlib)")
        return []
    made: list[Path] = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / name)
        plt.close(fig)
        made.append(folder / name)

    points = run.series.get("pending")
    if points and len(points) > 1:
        t = [p[0] for p in points]
        fig, left = plt.subplots(figsize=(8, 4))
        left.plot(t, [p[1] for p in points], label="pending rows", color="tab:red")
        left.set_xlabel("seconds")
        left.set_ylabel("pending rows")
        right = left.twinx()
        rates = [0.0] + [(b[3] - a[3]) / max(b[0] - a[0], 1e-6) for a, b in zip(points, points[1:], strict=False)]
        right.plot(t, rates, label="delivered/s", color="tab:blue", alpha=0.6)
        right.set_ylabel("delivered per second")
        fig.legend(loc="upper left")
        save(fig, "rate_and_pending.png")
    if run.scenario == "ramp" and run.rows:
        fig, ax = plt.subplots(figsize=(8, 4))
        steps = [str(r["offered_per_s"]) for r in run.rows]
        for key in ("emit_p50_ms", "emit_p99_ms", "publish_mean_ms", "publish_p99_ms"):
            ax.plot(steps, [r[key] for r in run.rows], marker="o", label=key)
        ax.set_xlabel("offered events/s")
        ax.set_ylabel("ms")
        ax.set_yscale("log")
        ax.legend()
        save(fig, "latency_per_step.png")
    if run.scenario == "payload" and run.rows:
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.plot([r["size_bytes"] for r in run.rows], [r["mb_per_s"] for r in run.rows], marker="o", label="MB/s")
        ax.set_xscale("log")
        ax.set_xlabel("event size (bytes)")
        ax.set_ylabel("MB/s")
        ax2 = ax.twinx()
        ax2.plot([r["size_bytes"] for r in run.rows], [r["events_per_s"] for r in run.rows], marker="s",
                 color="tab:orange", label="events/s")
        ax2.set_ylabel("events/s")
        fig.legend(loc="upper left")
        save(fig, "throughput_vs_payload.png")
    return made

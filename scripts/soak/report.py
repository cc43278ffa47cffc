"""What a soak run shows: the timeline on stderr, a picture of emitted, delivered and backlog, the summary."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scripts.soak.checker import Verdict
from scripts.soak.nemesis import Happened

GROUPS = {  # the colour a fault's window is shaded in, by what it hits
    "host": ("tab:red", ("host_kill",)),
    "postgres": ("tab:blue", ("backend_kill", "postgres_stop", "failover", "pooler_restart")),
    "network": ("tab:purple", ("postgres_blackhole", "postgres_reset", "chip_blackhole", "chip_reset")),
    "chip": ("tab:orange", ("chip_kill", "chip_unavailable", "chip_internal", "chip_rate_limit", "chip_latency")),
}


def print_timeline(verdict: Verdict) -> None:
    print("\nfault timeline (seconds into the run; resumed: from its end to the next delivery it held up)",
          file=sys.stderr)
    for fault, resume in sorted(verdict.resumes, key=lambda item: item[0].start):
        resumed = "never" if resume is None else f"{resume:.2f}s"
        print(f"  {fault.start:7.1f} {fault.end:7.1f}  {fault.kind:<19} {fault.target:<10} resumed {resumed:>7}"
              f"  {fault.detail}", file=sys.stderr)
    for dup in verdict.unexplained[:50]:
        print(f"  UNEXPLAINED duplicate {dup.event_id}: received at {dup.first:.3f}s from {dup.first_from} and "
              f"{dup.second:.3f}s from {dup.second_from}", file=sys.stderr)
    for event_id in verdict.lost[:50]:
        print(f"  LOST {event_id}", file=sys.stderr)


def _cumulative(times: Sequence[float], grid: Sequence[float]) -> list[int]:
    ordered, counts, index = sorted(times), [], 0
    for at in grid:
        while index < len(ordered) and ordered[index] <= at:
            index += 1
        counts.append(index)
    return counts


def picture(path: Path, acked_times: Sequence[float], first_receipts: Sequence[float],
            timeline: Sequence[Happened], samples: Sequence[Mapping[str, Any]], title: str) -> None:
    """Emitted, delivered and backlog over time, fault windows shaded; below, table size and hosts' RSS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = max([*acked_times, *first_receipts, 1.0])
    grid = [step * 0.5 for step in range(int(end * 2) + 2)]
    emitted, delivered = _cumulative(acked_times, grid), _cumulative(first_receipts, grid)
    backlog = [max(0, e - d) for e, d in zip(emitted, delivered, strict=True)]
    figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(14, 10), sharex=True,
                                                 gridspec_kw={"height_ratios": [3, 2, 2]})
    top.plot(grid, emitted, label="emitted (acknowledged)", color="black")
    top.plot(grid, delivered, label="delivered (distinct ids chipmock received)", color="tab:green")
    top.set_ylabel("events")
    middle.plot(grid, backlog, label="backlog (acknowledged, not yet received)", color="tab:brown")
    middle.set_ylabel("events")
    times = [sample["t"] for sample in samples]
    bottom.plot(times, [sample.get("table_bytes", float("nan")) / 2**20 for sample in samples],
                label="events table + indexes (MB)", color="black", linestyle="--")
    for host in sorted({name for sample in samples for name in sample["rss_mb"]}):
        bottom.plot(times, [sample["rss_mb"].get(host, float("nan")) for sample in samples], label=f"RSS {host} (MB)")
    bottom.set_ylabel("MB")
    bottom.set_xlabel("seconds into the run")
    for axes in (top, middle, bottom):
        for group, (colour, kinds) in GROUPS.items():
            for index, fault in enumerate(f for f in timeline if f.kind in kinds):
                axes.axvspan(fault.start, max(fault.end, fault.start + 0.3), color=colour, alpha=0.15,
                             label=f"{group} faults" if index == 0 and axes is top else None)
        axes.legend(loc="upper left", fontsize="small")
    top.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def summary(seconds: float, seed: int, timeline: Sequence[Happened], verdict: Verdict, final: Mapping[str, int],
            samples: Sequence[Mapping[str, Any]], extra: Mapping[str, Any]) -> dict[str, Any]:
    """The run's figures as one JSON-able object (the keys ``just soak`` promises first).

    RSS and table size "at start": the first sample after a tenth of the run (at
    most 10 s), once the hosts are up and have emitted; "at end": the last.
    """
    warm = [sample for sample in samples if sample["t"] >= min(10.0, seconds / 10)]
    first = next((sample for sample in warm if "table_bytes" in sample), {})
    last = samples[-1] if samples else {"rss_mb": {}}
    hosts = sorted({name for sample in samples for name in sample["rss_mb"]})
    rss_start = {host: next((s["rss_mb"][host] for s in warm if host in s["rss_mb"]), 0.0) for host in hosts}
    return {
        "seconds": seconds, "seed": seed,
        "faults": dict(sorted(Counter(fault.kind for fault in timeline).items())),
        "acked": verdict.acked, "lost": len(verdict.lost), "duplicates": len(verdict.duplicates),
        "unexplained_duplicates": len(verdict.unexplained),
        "dead_lettered": final["dead_lettered"], "left": final["left"],
        "max_resume_s": round(verdict.max_resume, 2),
        "delivered": verdict.delivered,
        "resumed_after_5s": sum(1 for _, resume in verdict.resumes if resume is not None and resume > 5),
        "wedged": len(verdict.wedged),
        "rss_mb": {host: [round(rss_start[host], 1), round(last["rss_mb"].get(host, 0.0), 1)] for host in hosts},
        "table_bytes": [first.get("table_bytes"), final["table_bytes"]],
        "index_bytes": [first.get("index_bytes"), final["index_bytes"]],
        **extra,
    }

"""The metrics reference, generated from the collector (the docs' metrics page shows it).

Every family ``EmitterCollector`` exports, with its type, labels (and the values each
label takes from the start) and help text, then the process collector's families that
an emitter's own registry carries. The docs build renders it (docs/_ext/reference.py);
``python -m scripts.metrics_table`` prints it as Markdown.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import Metric

from actors.adapters.prometheus import EmitterCollector
from actors.statistics import (
    AckerState,
    DispatcherState,
    EmitState,
    PersisterState,
    SamplerState,
    Sources,
)

_SUFFIX = {"counter": "_total", "info": "_info"}


@dataclass(frozen=True)
class MetricRow:
    name: str  # as scraped: counters end in _total, histograms are _bucket/_sum/_count of this name
    kind: str
    labels: str  # each label with the values it takes from the start
    help: str


def emitter_families() -> list[Metric]:
    """What a fresh emitter's collector exports (every known label value is there from the start, at 0)."""
    sources = Sources(emit=EmitState().statistics, persister=PersisterState().statistics,
                      dispatcher=DispatcherState().statistics, acker=AckerState().statistics,
                      table=SamplerState().statistics, restarts=dict)
    return list(EmitterCollector(sources, version="0", instance_id="i").collect())


def process_families() -> list[Metric]:
    """The process collector's (an emitter's own registry has it; a host's registry has its own)."""
    return list(ProcessCollector(registry=CollectorRegistry()).collect())


def _labels(family: Metric) -> str:
    values: dict[str, set[str]] = {}
    for sample in family.samples:
        for key, value in sample.labels.items():
            if key not in ("le",) and not (family.type == "info"):
                values.setdefault(key, set()).add(value)
    if family.type == "info":
        return ", ".join(f"`{key}`" for key in family.samples[0].labels)
    if not family.samples:  # no value known before it happens (an actor's name once it restarts)
        return ", ".join(f"`{key}`" for key in getattr(family, "_labelnames", ()))
    return "; ".join(f"`{key}`: " + ", ".join(f"`{v}`" if v else "(empty)" for v in sorted(vals))
                     for key, vals in values.items())


def rows(families: list[Metric]) -> list[MetricRow]:
    return [MetricRow(f.name + _SUFFIX.get(f.type, ""), f.type, _labels(f), f.documentation) for f in families]


def render(families: list[Metric]) -> str:
    lines = ["| metric | type | labels | what it counts |", "|---|---|---|---|"]
    for row in rows(families):
        cells = [f"`{row.name}`", row.kind, row.labels, row.help]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(emitter_families()))
    print()
    print(render(process_families()))
    sys.exit(0)

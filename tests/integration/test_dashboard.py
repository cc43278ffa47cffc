"""The Grafana dashboard only queries metrics the emitter really exports (from a live scrape)."""

import json
import re
import urllib.request
from pathlib import Path

import trio

from actors import open_emitter

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "durable-emitter.json"
_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def _queried_metric_names() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert exprs, "the dashboard has no queries"
    return {name for expr in exprs for name in re.findall(r"\b(durable_emitter_[a-z_]+)", expr)}


async def test_every_dashboard_metric_is_exported(chip, make_config) -> None:
    async with open_emitter(make_config(chip, metrics_port=0)) as emitter:
        await emitter.emit(b"x", source="wf", type="t")
        await emitter.flush(timeout=30)
        url = f"http://127.0.0.1:{emitter.metrics_port}/metrics"
        body = await trio.to_thread.run_sync(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    exported = {line.split("{")[0].split(" ")[0] for line in body.splitlines() if line and not line.startswith("#")}
    missing = {name for name in _queried_metric_names() if name not in exported}
    assert not missing, f"dashboard queries metrics nobody exports: {sorted(missing)}"
    assert any(name.endswith(_SUFFIXES) for name in _queried_metric_names())

"""deploy/alerts.yml: every expression names only metrics the emitter exports, and promtool accepts the rules."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from actors import open_emitter

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created", "_info")


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"] for rule in group["rules"]]


def test_the_promised_alerts_are_there() -> None:
    names = {rule["alert"] for rule in _rules()}
    assert names == {"DurableEmitterOldestPendingTooOld", "DurableEmitterDeadLettersRising",
                     "DurableEmitterActorRestarting", "DurableEmitterBacklogFull", "DurableEmitterDeliveryPaused",
                     "DurableEmitterRejectionStorm", "DurableEmitterRateLimited"}


async def test_every_alert_expression_names_only_exported_metrics(chip, make_config) -> None:
    async with open_emitter(make_config(chip)) as emitter:
        await emitter.emit(b"x", source="wf", type="t")
        await emitter.flush(timeout=30)
        samples = [sample for family in emitter.registry.collect() for sample in family.samples]
    exported = {sample.name for sample in samples}
    labels = {key for sample in samples for key in sample.labels}
    for rule in _rules():
        names = set(re.findall(r"\b(durable_emitter_[a-z_]+)", rule["expr"]))
        assert names, rule["alert"]
        missing = names - exported
        assert not missing, f"{rule['alert']} queries metrics nobody exports: {sorted(missing)}"
        for label in re.findall(r"\{(\w+)=", rule["expr"]) + re.findall(r"by \(([\w, ]+)\)", rule["expr"]):
            for name in label.split(","):
                assert name.strip() in labels | {"instance", "job"}, (rule["alert"], name)
    failure_reasons = {s.labels.get("reason") for s in samples if s.name == "durable_emitter_emit_failure_total"}
    assert "backlog_full" in failure_reasons  # the label value DurableEmitterBacklogFull selects


def test_table_wide_gauges_are_aggregated_with_max() -> None:
    """Every instance reports the whole table: sum() would count it once per instance."""
    import json

    dashboard = json.loads((DEPLOY / "grafana" / "durable-emitter.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]] + [r["expr"] for r in _rules()]
    for expr in exprs:
        for gauge in re.findall(r"durable_emitter_queue_[a-z_]+", expr):
            assert re.search(rf"max(?: by \([^)]*\))?\s*\(\s*{gauge}\b", expr), expr


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool is not installed (apt-get install prometheus; .ci/run installs it)")
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    checked = subprocess.run(["promtool", "check", "rules", "alerts.yml"], capture_output=True, text=True,
                             cwd=DEPLOY, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], capture_output=True, text=True,
                            cwd=DEPLOY, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr


async def test_metrics_join_a_host_registry_and_leave_it_on_exit(chip, make_config) -> None:
    from prometheus_client import CollectorRegistry

    import actors

    host_registry = CollectorRegistry()
    async with open_emitter(make_config(chip, instance_id="node-7"), registry=host_registry) as emitter:
        assert emitter.registry is host_registry
        assert host_registry.get_sample_value(
            "durable_emitter_info", {"version": actors.__version__, "instance_id": "node-7"}) == 1
    assert host_registry.get_sample_value("durable_emitter_queue_depth") is None  # unregistered at exit


async def test_the_emitters_own_registry_carries_process_metrics(chip, make_config) -> None:
    async with open_emitter(make_config(chip)) as emitter:
        assert (emitter.registry.get_sample_value("process_resident_memory_bytes") or 0) > 0
        assert emitter.registry.get_sample_value("durable_emitter_info", {
            "version": __import__("actors").__version__, "instance_id": emitter.config.instance_id}) == 1

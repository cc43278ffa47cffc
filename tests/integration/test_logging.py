"""The library logs like a library: through the standard ``logging`` module, never to stdout."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HOST = """
import logging, sys, trio, actors
logging.basicConfig(level=getattr(logging, sys.argv[1]), stream=sys.stderr,
                    format="HOST %(name)s %(levelname)s %(message)s")
async def main():
    async with actors.open_emitter() as emitter:
        await emitter.emit(b"x", source="s", type="t")
        await emitter.flush(timeout=30)
trio.run(main)
"""


def _host(level: str, database_url: str, chip_endpoint: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": database_url, "CHIP_INGRESS_ENDPOINT": chip_endpoint}
    return subprocess.run([sys.executable, "-c", HOST, level], capture_output=True, text=True, timeout=120,
                          env=env, cwd=ROOT)


def test_logs_go_through_the_hosts_logging_configuration_and_nothing_to_stdout(database_url, chip) -> None:
    chatty = _host("INFO", database_url, chip.endpoint)
    assert chatty.returncode == 0, chatty.stderr
    assert chatty.stdout == ""
    assert "HOST durable_emitter INFO emitter starting database=" in chatty.stderr

    quiet = _host("WARNING", database_url, chip.endpoint)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == "" and "emitter starting" not in quiet.stderr


def test_cli_log_format_json_renders_each_record_as_one_object(database_url, chip) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "CHIP_INGRESS_ENDPOINT": chip.endpoint}
    done = subprocess.run([sys.executable, "-m", "actors.cli", "--log-format", "json", "drain", "--timeout", "30s"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    starting = next(r for r in records if r["event"] == "emitter starting")
    assert starting["logger"] == "durable_emitter" and starting["level"] == "info"
    assert starting["chip"] == chip.endpoint and "timestamp" in starting

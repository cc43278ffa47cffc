"""The embedded PostgreSQL starts only when asked: nothing configured is an error, never throwaway disk."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _env(state: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CHIP_INGRESS", "DURABLE_EMITTER"))}
    return {**env, "XDG_STATE_HOME": str(state), **extra}


def test_a_host_with_nothing_configured_is_refused_and_nothing_is_created(tmp_path) -> None:
    host = "import trio, actors\nasync def main():\n    async with actors.open_emitter(): pass\ntrio.run(main)\n"
    done = subprocess.run([sys.executable, "-c", host], capture_output=True, text=True, timeout=60,
                          env=_env(tmp_path, CHIP_INGRESS_ENDPOINT="127.0.0.1:9"), cwd=ROOT)
    assert done.returncode != 0
    assert "DATABASE_URL" in done.stderr and "DURABLE_EMITTER_EMBEDDED_POSTGRES=true" in done.stderr
    assert list(tmp_path.iterdir()) == [], "the library created a data directory nobody asked for"


def test_cli_uses_the_embedded_database_only_when_asked_or_when_it_exists(tmp_path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "actors.cli", *args], capture_output=True, text=True,
                              timeout=120, env=_env(tmp_path), cwd=ROOT)

    refused = cli("status")
    assert refused.returncode == 1 and "DATABASE_URL" in refused.stderr and "--embedded" in refused.stderr
    assert not (tmp_path / "durable-emitter").exists()

    asked = cli("--embedded", "schema", "apply")  # status never creates tables: install them first
    assert asked.returncode == 0, asked.stderr
    assert "using the embedded PostgreSQL" in asked.stderr

    existing = cli("status")  # run-local's database exists now: used, and said so
    assert existing.returncode == 0, existing.stderr
    assert "using the embedded PostgreSQL" in existing.stderr and "pending rows    0" in existing.stdout

"""examples/ runs as a user would run it: a Trio program, an asyncio service, a threaded host."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("example", "events"), [("trio_program.py", 3), ("asyncio_service.py", 5),
                                                 ("threaded_host.py", 8)])
def test_example_emits_and_delivers(example: str, events: int, database_url, chip) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "CHIP_INGRESS_ENDPOINT": chip.endpoint}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / example)], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert f"delivered {events}" in done.stdout
    assert chip.counters.snapshot().unique == events
    assert "emitter starting" in done.stderr  # the host's logging.basicConfig shows the library's records

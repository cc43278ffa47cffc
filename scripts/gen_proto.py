"""Generate the Python stubs in ``chippb/`` from ``proto/chippb/*.proto``.

The generated modules are committed, so installing the package needs no
protoc; ``tests/unit/test_proto_stubs.py`` regenerates them into a temporary
folder and fails if they differ from what is committed.

Usage: ``python scripts/gen_proto.py [OUT_DIR]`` (default: the project root).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
MESSAGES = ["chippb/cloudevent.proto", "chippb/chipingress.proto"]
SERVICES = ["chippb/chipingress.proto"]


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) into ``out_dir``; return the files written."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    base = ["protoc", f"-I{PROTO_DIR}", f"-I{include}"]
    runs = [
        [*base, f"--python_out={out_dir}", f"--pyi_out={out_dir}", *MESSAGES],
        [*base, f"--grpc_python_out={out_dir}", *SERVICES],
    ]
    for args in runs:
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed: {' '.join(args)}")
    package = out_dir / "chippb"
    init = package / "__init__.py"
    init.write_text('"""Generated protobuf and gRPC stubs for Chip Ingress. Do not edit: run `just proto`."""\n')
    return sorted(package.glob("*.py*"))


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for path in generate(target):
        print(path.relative_to(target))

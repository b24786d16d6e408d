"""Generate the Python gRPC stubs of ``proto/featureserve/v1/*.proto`` (run by the build and by a test).

Usage: ``python proto/generate.py [OUTPUT_ROOT]``; stubs land in ``OUTPUT_ROOT/featureserve/v1/``
(default: the repository root, i.e. the ``featureserve.v1`` package).
"""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = sorted(PROTO_ROOT.glob("featureserve/v1/*.proto"))


def generate(output_root: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) on every .proto; return the generated files."""
    from grpc_tools import protoc

    output_root.mkdir(parents=True, exist_ok=True)
    well_known = str(files("grpc_tools") / "_proto")
    arguments = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={output_root}",
        f"--pyi_out={output_root}",
        f"--grpc_python_out={output_root}",
        *(str(p) for p in PROTO_FILES),
    ]
    if protoc.main(arguments) != 0:
        raise RuntimeError(f"protoc failed on {[p.name for p in PROTO_FILES]}")
    return sorted((output_root / "featureserve" / "v1").glob("*_pb2*.py*"))


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT.parent
    for path in generate(root):
        print(path)

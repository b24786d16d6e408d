"""The generated stubs in featureserve/v1 are in step with proto/featureserve/v1/*.proto."""

import runpy
from pathlib import Path

import featureserve.v1

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_match_the_proto_files(tmp_path: Path) -> None:
    generated = runpy.run_path(str(ROOT / "proto" / "generate.py"))["generate"](tmp_path)
    assert {p.name for p in generated} >= {"features_pb2.py", "service_pb2.py", "service_pb2_grpc.py"}
    installed = Path(featureserve.v1.__file__).parent
    assert sorted(p.name for p in installed.glob("*_pb2*.py*")) == sorted(p.name for p in generated)
    for path in generated:
        assert (installed / path.name).read_bytes() == path.read_bytes(), (
            f"{path.name} is out of step with proto/: reinstall (scripts/install.sh) to regenerate the stubs"
        )

"""`benchmarks/performance/matching_speed.py` runs as documented and writes its ratios against OpenCV."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_matching_benchmark_times_both_matchers_and_writes_its_results(tmp_path: Path) -> None:
    out = tmp_path / "matching.json"
    argv = [sys.executable, "-m", "benchmarks.performance.matching_speed", "--keypoints", "300", "--threads", "1"]
    argv += ["--rounds", "2", "--warmup", "0", "--out", str(out)]
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, timeout=300)
    report = json.loads(out.read_text())
    assert [run["metric"] for run in report["runs"]] == ["hamming", "l2"]
    for run in report["runs"]:
        ours, opencv = run["featureserve"], run["opencv"]
        assert ours["median_ms"] > 0 and opencv["median_ms"] > 0
        # Both are mutual nearest neighbours: the counts differ at most by the ties each breaks its own way.
        assert abs(ours["matches"] - opencv["matches"]) <= 0.02 * opencv["matches"] and ours["matches"] > 50
    assert "| opencv |" in out.with_suffix(".md").read_text()

"""`benchmarks/performance/extraction_speed.py` runs as documented and writes its ratios against sift and orb."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from training.export import speed_summary

ROOT = Path(__file__).resolve().parents[2]


def test_the_speed_benchmark_times_models_against_sift_and_orb_and_writes_its_results(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    argv = [
        sys.executable,
        "-m",
        "benchmarks.performance.extraction_speed",
        "--models",
        "sift",
        "orb",
        "scfeat",
        "--no-variants",
    ]
    argv += ["--sizes", "160x120", "--threads", "1", "--rounds", "2", "--warmup", "0", "--out", str(out)]
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, timeout=300)
    report = json.loads(out.read_text())
    [run] = report["runs"]
    assert run["size"] == "160x120" and run["threads"] == 1 and set(run["models"]) == {"sift", "orb", "scfeat"}
    assert all(t["median_ms"] > 0 and t["keypoints"] > 0 for t in run["models"].values())
    table = out.with_suffix(".md").read_text()
    sift_row = next(line for line in table.splitlines() if "| sift |" in line)
    assert sift_row.split("|")[6].strip() == "1.00"  # sift against itself, in the "x sift" column
    # What `python -m training export --speed` puts in a model card.
    [card_run] = speed_summary(report, "scfeat")["runs"]
    times = {name: t["median_ms"] for name, t in run["models"].items()}
    assert card_run["x_sift"] == round(times["scfeat"] / times["sift"], 2) and card_run["size"] == "160x120"

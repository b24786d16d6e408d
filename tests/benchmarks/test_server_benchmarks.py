"""The server benchmarks run as documented (``python -m benchmarks.performance.NAME``) from a fresh shell, where
they first restart themselves under the server's allocator settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from featureserve.service.serve import MALLOC_ENVIRONMENT

ROOT = Path(__file__).resolve().parents[2]


def test_grpc_latency_restarts_itself_as_a_module_and_writes_its_results(tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if k not in MALLOC_ENVIRONMENT}
    out = tmp_path / "grpc.json"
    argv = [sys.executable, "-m", "benchmarks.performance.grpc_latency", "--models", "orb", "--iterations", "2"]
    argv += ["--warmup", "0", "--stream-frames", "3", "--frames", str(tmp_path / "none"), "--out", str(out)]
    done = subprocess.run(argv, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["machine"] and out.with_suffix(".md").is_file()
    stream = report["streams"]["orb"]
    assert stream["ok"] == 3 and stream["in_process"]["n"] == stream["round_trip"]["n"] == 1  # every frame, both ways


def test_throughput_measures_a_small_level_and_writes_its_results(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    argv = [sys.executable, "-m", "benchmarks.performance.throughput", "--models", "orb", "--concurrency", "1"]
    argv += ["--min-requests", "4", "--clients", "raw", "--inprocess-batches", "1", "--inprocess-images", "2"]
    argv += ["--sweep", "--out", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| raw | orb | 1 |" in out.with_suffix(".md").read_text()


def test_peers_runs_featureserve_and_the_fastapi_peer_on_the_same_requests(tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    argv = [sys.executable, "-m", "benchmarks.performance.peers", "--quick", "--models", "orb", "--concurrency", "1"]
    argv += ["--servers", "featureserve", "fastapi", "--out", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    levels = json.loads(out.read_text())["levels"]
    assert {row["server"] for row in levels} == {"featureserve", "fastapi"}
    # Every request of both servers was answered 200: the peer speaks the same request as the service.
    assert all(row["statuses"] == {"200": row["issued"]} and row["issued"] == 36 for row in levels), levels
    assert "| 1 | " in out.with_suffix(".md").read_text()

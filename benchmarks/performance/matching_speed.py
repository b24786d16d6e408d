"""Descriptor matching time of `match_descriptors` against OpenCV's brute-force matcher, in the same rounds.

Usage (from the repository root):
    python -m benchmarks.performance.matching_speed --out benchmarks/results/matching_speed.json

The descriptors are real: ORB (256-bit, Hamming) and SIFT (128-D float, L2) of a photo and of the photo warped by
a homography, ``--keypoints`` each. Both sides run mutual nearest neighbours: ours with ``matcher="mnn"``, OpenCV's
``BFMatcher(crossCheck=True)``; the table gives the median time, its ratio to OpenCV's, and how many matches each
found (equal but for ties between equally distant descriptors). Writes JSON and Markdown beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from benchmarks.common import RESULTS_DIR, Probe, benchmark_image, machine_info, quartiles_ms, run_rounds, timed
from featureserve.models import KeypointOptions, load_model, match_descriptors, matching
from training.evaluation.records import format_table, now_iso, write_results

DEFAULT_OUT = RESULTS_DIR / "matching_speed.json"
NORMS = {"hamming": cv2.NORM_HAMMING, "l2": cv2.NORM_L2}
MODELS = {"hamming": "orb", "l2": "sift"}
WARP = np.array([[0.9, 0.15, 40.0], [-0.1, 0.95, 30.0], [1e-4, -5e-5, 1.0]])


def descriptor_pair(metric: str, keypoints: int) -> tuple[np.ndarray, np.ndarray]:
    """Descriptors of the benchmark photo and of its warp, from the model that has ``metric``."""
    image = benchmark_image(1024, 768)
    warped = cv2.warpPerspective(image, WARP, (1024, 768))
    model = load_model(MODELS[metric])
    options = [KeypointOptions(max_keypoints=keypoints)] * 2
    f0, f1 = model.extract([image, warped], options)
    return f0.descriptors, f1.descriptors


def time_metric(metric: str, d0: np.ndarray, d1: np.ndarray, rounds: int, warmup: int) -> dict[str, dict[str, Any]]:
    """Median and quartiles (ms) of ours and OpenCV's matcher over interleaved rounds, and their match counts."""
    opencv = cv2.BFMatcher(NORMS[metric], crossCheck=True)
    runners = {"featureserve": lambda: match_descriptors(d0, d1, metric), "opencv": lambda: opencv.match(d0, d1)}
    probes = [Probe((name,), timed(run)) for name, run in runners.items()]
    run_rounds(probes, rounds, warmup, seed=0)
    counts = {"featureserve": len(runners["featureserve"]()), "opencv": len(runners["opencv"]())}
    return {probe.key[0]: quartiles_ms(probe.samples) | {"matches": counts[probe.key[0]]} for probe in probes}


def main() -> None:
    """Time both matchers per metric and thread count and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", nargs="+", default=["hamming", "l2"], choices=sorted(NORMS))
    parser.add_argument("--keypoints", type=int, default=2048)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    kernel = "int8 keyed product (oneDNN)" if matching.INT8_KEYS else "keyed float32 product"
    report: dict[str, Any] = {
        "date": now_iso(),
        "machine": machine_info(),
        "args": vars(args),
        "hamming_kernel": kernel,
        "runs": [],
    }
    rows = []
    for metric in args.metrics:
        d0, d1 = descriptor_pair(metric, args.keypoints)
        for threads in args.threads:
            torch.set_num_threads(threads)
            cv2.setNumThreads(threads)
            print(f"{metric}, {len(d0)} x {len(d1)}, {threads} thread(s)", flush=True)
            timings = time_metric(metric, d0, d1, args.rounds, args.warmup)
            report["runs"].append({"metric": metric, "sizes": [len(d0), len(d1)], "threads": threads, **timings})
            opencv = timings["opencv"]["median_ms"]
            for name, t in timings.items():
                quartiles = f"{t['q1_ms']:.1f}-{t['q3_ms']:.1f}"
                rows.append(
                    [
                        metric,
                        f"{len(d0)} x {len(d1)}",
                        threads,
                        name,
                        t["median_ms"],
                        quartiles,
                        t["median_ms"] / opencv,
                        t["matches"],
                    ]
                )
    headers = ["metric", "descriptors", "threads", "matcher", "median ms", "quartiles ms", "x opencv", "matches"]
    markdown = [
        "# Mutual nearest-neighbour matching against OpenCV's brute-force matcher (same rounds)",
        "",
        f"{report['date']}; {args.rounds} rounds after {args.warmup} warm-up; CPU {report['machine']['processor']} "
        f"({report['machine']['cpu_capability']}); Hamming kernel: {kernel}.",
        "",
        format_table(headers, rows),
    ]
    write_results(args.out, report, "\n".join(markdown))


if __name__ == "__main__":
    main()

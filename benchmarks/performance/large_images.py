"""Time and peak memory of torch models on large images, with the served `max_pixels` limit and without it.

Usage (from the repository root):
    python -m benchmarks.performance.large_images --models scfeat caps --sizes 1600x1200 3000x2250 \
        --out benchmarks/results/large_images.json

Each measurement runs in a fresh Python process (one warm-up extract on a small image, then one timed extract),
so its peak resident memory belongs to that model and image alone. Writes JSON and Markdown beside it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import (
    REPO_ROOT,
    RESULTS_DIR,
    benchmark_image,
    machine_info,
)
from featureserve.models import KeypointOptions, load_model
from training.evaluation.records import format_table, now_iso, write_results

DEFAULT_OUT = RESULTS_DIR / "large_images.json"
GIB = 2**30


def measure_here(model: str, width: int, height: int, max_keypoints: int, conf: dict) -> dict:
    """In this process: one warm-up extract on a small image, then one timed extract of the large one."""
    extractor = load_model(model, **conf)
    options = [KeypointOptions(max_keypoints=max_keypoints)]
    extractor.extract([benchmark_image(320, 240)], options)
    image = benchmark_image(width, height)
    start = time.perf_counter()
    [features] = extractor.extract([image], options)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"seconds": seconds, "peak_rss_bytes": peak, "keypoints": len(features), "image_size": features.image_size}


def measure(model: str, width: int, height: int, max_keypoints: int, conf: dict) -> dict:
    """`measure_here` in a fresh process (this script with ``--measure``), so the peak RSS is that run's alone."""
    argv = [
        sys.executable,
        "-m",
        "benchmarks.performance.large_images",
        "--measure",
        model,
        str(width),
        str(height),
        str(max_keypoints),
        json.dumps(conf),
    ]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """Measure every model at every size, bounded (served conf) and unbounded, and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["scfeat", "caps"])
    parser.add_argument("--sizes", nargs="+", default=["1600x1200", "3000x2250"], help="WIDTHxHEIGHT")
    parser.add_argument("--max-keypoints", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--measure", nargs=5, metavar=("MODEL", "W", "H", "K", "CONF"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        model, width, height, keypoints, conf = args.measure
        print(json.dumps(measure_here(model, int(width), int(height), int(keypoints), json.loads(conf))))
        return
    rows = []
    for model in args.models:
        for size in args.sizes:
            width, height = (int(v) for v in size.split("x"))
            for limit, conf in (("served", {}), ("none", {"max_pixels": None})):
                result = measure(model, width, height, args.max_keypoints, conf)
                rows.append({"model": model, "width": width, "height": height, "max_pixels": limit, **result})
                print(rows[-1], flush=True)
    report = {"date": now_iso(), "machine": machine_info(), "max_keypoints": args.max_keypoints, "rows": rows}
    table = format_table(
        ["model", "image", "max_pixels", "seconds", "peak RSS (GiB)", "keypoints"],
        [
            [
                r["model"],
                f"{r['width']}x{r['height']}",
                r["max_pixels"],
                r["seconds"],
                r["peak_rss_bytes"] / GIB,
                r["keypoints"],
            ]
            for r in rows
        ],
    )
    markdown = (
        "# Large images\n\n"
        f"Date: {report['date']}. `skimage.data.astronaut()` resized, at most {args.max_keypoints} keypoints, one "
        "extract per fresh process after a small warm-up; peak RSS is the whole process. `served`: the model's "
        "default `max_pixels` (2**21); `none`: no limit.\n\n" + table + "\n"
    )
    print(markdown)
    write_results(args.out, report, markdown)


if __name__ == "__main__":
    main()

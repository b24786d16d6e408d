"""Rotation and scale tolerance of in-process models: MMA@3 between an image and a rotated / scaled copy of it.

Each first image of the homography sequences is warped about its centre by a known similarity (no
perspective, no illumination change), so the figures isolate what a model does under in-plane rotation and
zoom; a drop here names the cause of a drop on sequences such as Oxford boat (rotation and zoom) or wall.

Usage (from the repository root):
    python -m training.evaluation.invariance --models sift scfeat --steered scfeat \
        --out benchmarks/results/invariance.json

Writes the JSON results and a Markdown file with the same stem next to it, and prints the Markdown.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from featureserve.models import KeypointOptions, load_model
from featureserve.models.base import image_size, resize_image

from .data import load_image
from .extraction import mutual_matches
from .metrics import matching_accuracy, reprojection_errors
from .records import DATA_ROOT, RESULTS_DIR, format_table, now_iso, run_info, write_results

DEFAULT_OUT = RESULTS_DIR / "invariance.json"
# (rotation in degrees, scale): rotations alone, zooms alone, and boat's pair 1-3 (about 40 degrees, 0.74).
WARPS: tuple[tuple[float, float], ...] = (
    (15, 1.0),
    (30, 1.0),
    (45, 1.0),
    (60, 1.0),
    (90, 1.0),
    (0, 0.75),
    (0, 0.5),
    (40, 0.74),
)
THRESHOLD_PX = 3.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA_ROOT / "oxford_affine", help="folder of homography sequences")
    parser.add_argument("--sequences", nargs="+", default=["bikes", "wall", "leuven"], help="whose img1 to warp")
    parser.add_argument("--models", nargs="+", default=["sift", "orb"], help="registry names")
    parser.add_argument(
        "--steered", nargs="*", default=[], help="dense models to measure again with upright: false (a row each)"
    )
    parser.add_argument("--max-keypoints", type=int, default=2048, help="keypoint budget per image")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output; Markdown goes beside it")
    return parser.parse_args(argv)


def similarity_warp(image: np.ndarray, degrees: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` scaled by ``scale`` then rotated by ``degrees`` about its centre, and the 3x3 homography used.

    The zoom is an area-averaging resize (``cv2.warpAffine`` has no anti-aliasing), the rotation a bilinear warp
    of the resized image onto a canvas of its own size.
    """
    height, width = image.shape[:2]
    resized = resize_image(image, scale)
    size = image_size(resized)
    sx, sy = size[0] / width, size[1] / height
    # Pixel centres at integers on both sides: x' = (x + 0.5) * s - 0.5.
    zoom = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
    rotation = cv2.getRotationMatrix2D(((size[0] - 1) / 2, (size[1] - 1) / 2), degrees, 1.0)
    warped = cv2.warpAffine(resized, rotation, size, flags=cv2.INTER_LINEAR)
    return warped, np.vstack([rotation, [0, 0, 1]]) @ zoom


def warp_accuracy(model: Any, images: list[np.ndarray], max_keypoints: int) -> dict[str, float]:
    """Mean MMA@3 over ``images`` for every warp in `WARPS`, keyed ``"<degrees>deg x<scale>"``."""
    options = [KeypointOptions(max_keypoints=max_keypoints)]
    originals = [model.extract([image], options)[0] for image in images]
    results = {}
    for degrees, scale in WARPS:
        accuracies = []
        for image, features0 in zip(images, originals, strict=True):
            warped, homography = similarity_warp(image, degrees, scale)
            [features1] = model.extract([warped], options)
            points0, points1 = mutual_matches(features0, features1)
            errors = reprojection_errors(points0, points1, homography)
            accuracies.append(float(matching_accuracy(errors, [THRESHOLD_PX])[0]))
        results[f"{degrees:g}deg x{scale:g}"] = float(np.mean(accuracies))
    return results


def main(argv: list[str] | None = None) -> None:
    """Measure each model, print the Markdown report and write the JSON and Markdown files."""
    args = parse_args(argv)
    images = [load_image(args.data / name / "img1.png") for name in args.sequences]
    models = {name: load_model(name) for name in args.models}
    models |= {f"{name} (steered)": load_model(name, upright=False) for name in args.steered}
    results = {name: warp_accuracy(model, images, args.max_keypoints) for name, model in models.items()}
    report = {
        "date": now_iso(),
        "machine": run_info(),
        "data": str(args.data),
        "sequences": args.sequences,
        "max_keypoints": args.max_keypoints,
        "threshold_px": THRESHOLD_PX,
        "mma": results,
    }
    warps = list(next(iter(results.values())))
    rows = [[name, *(f"{value:.3f}" for value in row.values())] for name, row in results.items()]
    markdown = "\n".join(
        [
            "# Rotation and scale tolerance",
            "",
            f"Data: img1 of {', '.join(args.sequences)} in `{report['data']}`, each resized (area averaging) and "
            f"rotated about its centre as the column says. Date: {report['date']}. "
            f"MMA@{THRESHOLD_PX:g} of plain mutual nearest neighbours, at most {args.max_keypoints} keypoints "
            "per image, mean over the images.",
            "",
            format_table(["model", *warps], rows),
            "",
        ]
    )
    print(markdown)
    write_results(args.out, report, markdown)


if __name__ == "__main__":
    main()

"""How far each model's homography estimates are from what its own correct matches allow, pair by pair.

For every pair (1, N) of the homography sequences, the evaluation's homography (MAGSAC++, 3 px, over all
mutual nearest-neighbour matches; `training.evaluation.hpatches`) is set beside an oracle: a least-squares
homography fitted only to the matches that the true homography puts within 1.5 px, which no estimator can
pick. Both are scored by the mean corner error against the ground truth. Where the oracle is far under 3 px
and the estimate is over it, the matches are good enough and the estimate is what misses; where the oracle is
itself over 3 px, the model's correct matches (or the ground truth) cannot pin that pair. The oracle leans
towards the ground truth by construction, so each model after the first is also set against the first one:
the corner distance between the two models' estimates (*agreement*). Where two unrelated detectors agree far
closer than either comes to the ground truth, it is the ground truth (or a scene that is not one plane) that
misses, and no feature model can register that pair at 3 px.

Usage (from the repository root):
    python -m training.evaluation.headroom --models sift scfeat --out benchmarks/results/homography_headroom.json

Writes the JSON results and a Markdown file with the same stem next to it, and prints the Markdown.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from featureserve.models import image_size, load_model

from .data import load_image, load_sequences
from .extraction import extract_capped, model_extractor, mutual_matches
from .homography import estimate_homography
from .metrics import finite_corner_error, reprojection_errors
from .records import DATA_ROOT, RESULTS_DIR, format_table, now_iso, run_info, write_results

DEFAULT_OUT = RESULTS_DIR / "homography_headroom.json"
RANSAC_THRESHOLD_PX = 3.0  # the evaluation's
ORACLE_THRESHOLD_PX = 1.5
# Estimates at least this many times closer to one another than to the ground truth, every one of them over the
# threshold: the pair is missed by the ground truth, not by the features.
AGREEMENT_RATIO = 3.0


def estimate_agreement(first: dict[str, Any], other: dict[str, Any]) -> float | None:
    """Mean corner distance in px between two models' estimates of one pair; ``None`` if either has none."""
    if first["estimate"] is None or other["estimate"] is None:
        return None
    return finite_corner_error(np.array(other["estimate"]), np.array(first["estimate"]), first["reference_size"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA_ROOT / "oxford_affine", help="folder of homography sequences")
    parser.add_argument("--models", nargs="+", default=["sift", "scfeat"], help="registry names")
    parser.add_argument("--max-keypoints", type=int, default=2048, help="keypoint budget per image")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output; Markdown goes beside it")
    return parser.parse_args(argv)


def pair_headroom(model: Any, data: Path, max_keypoints: int) -> list[dict[str, Any]]:
    """Per pair: matches, the evaluation's homography and its corner error, the oracle's, and its match count."""
    extract = model_extractor(model, max_keypoints)
    rows = []
    for sequence in load_sequences(data):
        reference = load_image(sequence.reference_path)
        features0, _ = extract_capped(extract, reference, max_keypoints)
        for pair in sequence.pairs:
            features1, _ = extract_capped(extract, load_image(pair.image_path), max_keypoints)
            points0, points1 = mutual_matches(features0, features1)
            size = image_size(reference)
            estimate, estimate_error, _ = estimate_homography(
                points0, points1, pair.homography, size, RANSAC_THRESHOLD_PX
            )
            close = reprojection_errors(points0, points1, pair.homography) <= ORACLE_THRESHOLD_PX
            oracle = None
            if close.sum() >= 4:
                oracle = cv2.findHomography(points0[close].astype(np.float64), points1[close].astype(np.float64), 0)[0]
            rows.append(
                {
                    "pair": f"{sequence.name} 1-{pair.index}",
                    "matches": len(points0),
                    "oracle_matches": int(close.sum()),
                    "reference_size": size,
                    "estimate": None if estimate is None else estimate.tolist(),
                    "estimate_corner_error": estimate_error,
                    "oracle_corner_error": finite_corner_error(oracle, pair.homography, size),
                }
            )
    return rows


def missed_by_ground_truth(errors: list[float | None], agreements: list[float | None]) -> bool:
    """Whether every estimate misses the ground truth by over the threshold yet they agree `AGREEMENT_RATIO` closer."""
    if not agreements or None in errors or None in agreements:
        return False
    return min(errors) > RANSAC_THRESHOLD_PX and AGREEMENT_RATIO * max(agreements) < min(errors)


def main(argv: list[str] | None = None) -> None:
    """Measure each model, print the Markdown report and write the JSON and Markdown files."""
    args = parse_args(argv)
    results = {name: pair_headroom(load_model(name), args.data, args.max_keypoints) for name in args.models}
    report = {
        "date": now_iso(),
        "machine": run_info(),
        "data": str(args.data),
        "max_keypoints": args.max_keypoints,
        "ransac_threshold_px": RANSAC_THRESHOLD_PX,
        "oracle_threshold_px": ORACLE_THRESHOLD_PX,
        "pairs": results,
    }
    names = list(results)
    headers = ["pair"] + [f"{name} {column}" for name in names for column in ("estimate", "oracle", "oracle matches")]
    headers += [f"{name} vs {names[0]}" for name in names[1:]]
    rows, ground_truth_misses = [], []
    for i, first in enumerate(results[names[0]]):
        row: list[Any] = [first["pair"]]
        for name in names:
            r = results[name][i]
            row += [r["estimate_corner_error"], r["oracle_corner_error"], r["oracle_matches"]]
        agreements = [estimate_agreement(first, results[name][i]) for name in names[1:]]
        rows.append(row + agreements)
        errors = [results[name][i]["estimate_corner_error"] for name in names]
        if missed_by_ground_truth(errors, agreements):
            ground_truth_misses.append(first["pair"])
    report["ground_truth_misses"] = ground_truth_misses
    markdown = "\n".join(
        [
            "# Homography headroom",
            "",
            f"Data: `{report['data']}`. Date: {report['date']}. At most {args.max_keypoints} keypoints per image, "
            "plain mutual nearest neighbours. Mean corner error (px) against the ground truth of: *estimate*, the "
            f"evaluation's MAGSAC++ homography ({RANSAC_THRESHOLD_PX:g} px) over all matches; *oracle*, a "
            f"least-squares homography over the matches the true homography puts within {ORACLE_THRESHOLD_PX:g} px "
            "(*oracle matches*). `-`: no estimate.",
            "",
            format_table(headers, rows),
            "",
            f"*model vs {names[0]}*: mean corner distance (px) between that model's estimate and {names[0]}'s. Pairs "
            f"where every model's estimate is over {RANSAC_THRESHOLD_PX:g} px from the ground truth but at least "
            f"{AGREEMENT_RATIO:g} times closer to {names[0]}'s: {', '.join(ground_truth_misses) or 'none'}.",
            "",
        ]
    )
    print(markdown)
    write_results(args.out, report, markdown)


if __name__ == "__main__":
    main()

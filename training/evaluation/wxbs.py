"""Fundamental matrices from each model's matches on the WxBS wide-baseline pairs, scored by hand-labelled points.

WxBS v1.1 (Mishkin et al., "WxBS: Wide Baseline Stereo Generalizations", BMVC 2015; `../shared/data/wxbs_v1.1`)
has 33 hard pairs (viewpoint, season, day and night, thermal against visible) with hand-labelled
correspondences. Per pair: each model's features (at most 2048 per image), plain mutual nearest neighbours, an
F by MAGSAC++ (OpenCV `USAC_MAGSAC`, 1 px: the posed evaluation's threshold), then the symmetric epipolar
distance of every labelled correspondence to that F. A pair scores, at threshold t, the fraction of its
labelled correspondences within t px (0 when no F was found); the table averages over pairs, and mAA is the
mean of that over t = 1 ... 20 px. No data of the set is used to choose anything.

Usage (from the repository root):
    python -m training.evaluation.wxbs --models sift akaze scfeat --out benchmarks/results/wxbs.json
    python -m training.evaluation.wxbs --models scfeat --model-conf '{"scfeat": {"image_prior": "cornerness"}}' \
        --out X.json

Writes the JSON results and a Markdown file with the same stem next to it, and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from featureserve.models import load_model

from .data import load_image
from .extraction import extract_capped, model_extractor, mutual_matches
from .metrics import symmetric_epipolar_distance
from .records import DATA_ROOT, RESULTS_DIR, format_table, now_iso, run_info, write_results

WXBS = DATA_ROOT / "wxbs_v1.1"
DEFAULT_OUT = RESULTS_DIR / "wxbs.json"
RANSAC_THRESHOLD_PX = 1.0
THRESHOLDS_PX = tuple(float(t) for t in range(1, 21))
REPORTED_PX = (2.0, 5.0, 10.0, 20.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=WXBS, help="WxBS v1.1 folder (category/pair/01.*, 02.*)")
    parser.add_argument("--models", nargs="+", default=["sift", "akaze", "scfeat"], help="registry names")
    parser.add_argument("--model-conf", type=json.loads, default={}, help="JSON {name: {option: value}}")
    parser.add_argument("--max-keypoints", type=int, default=2048, help="keypoint budget per image")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output; Markdown goes beside it")
    return parser.parse_args(argv)


def wxbs_pairs(data: Path) -> list[Path]:
    """Every pair folder (one holding ``corrs.txt``), in name order."""
    return sorted(path.parent for path in data.glob("*/*/corrs.txt"))


def pair_image(folder: Path, number: str) -> Path:
    """``01`` or ``02`` of a pair, whatever its extension."""
    [path] = [p for p in folder.glob(f"{number}.*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    return path


def evaluate_pair(extract: Any, folder: Path, max_keypoints: int) -> dict[str, Any]:
    """Matches, the F fit and the labelled points' epipolar distances to it, for one pair."""
    features = [extract_capped(extract, load_image(pair_image(folder, n)), max_keypoints)[0] for n in ("01", "02")]
    points0, points1 = mutual_matches(*features)
    labelled = np.loadtxt(folder / "corrs.txt", ndmin=2)
    fundamental = None
    if len(points0) >= 8:
        fundamental, _ = cv2.findFundamentalMat(
            points0.astype(np.float64), points1.astype(np.float64), cv2.USAC_MAGSAC, RANSAC_THRESHOLD_PX, 0.999, 10000
        )
    if fundamental is None or fundamental.shape != (3, 3):  # several solutions come stacked; none is not one F
        distances = np.full(len(labelled), np.inf)
    else:
        distances = symmetric_epipolar_distance(labelled[:, :2], labelled[:, 2:], fundamental)
    return {
        "pair": f"{folder.parent.name}/{folder.name}",
        "matches": len(points0),
        "within": [float((distances <= t).mean()) for t in THRESHOLDS_PX],
        "median_distance_px": float(np.median(distances)),
    }


def main(argv: list[str] | None = None) -> None:
    """Measure each model, print the Markdown report and write the JSON and Markdown files."""
    args = parse_args(argv)
    folders = wxbs_pairs(args.data)
    results = {}
    for name in args.models:
        extract = model_extractor(load_model(name, **args.model_conf.get(name, {})), args.max_keypoints)
        results[name] = [evaluate_pair(extract, folder, args.max_keypoints) for folder in folders]
    summary = {
        name: {
            "mAA": float(np.mean([r["within"] for r in rows])),
            "within": {
                f"{t:g}": float(np.mean([r["within"][THRESHOLDS_PX.index(t)] for r in rows])) for t in REPORTED_PX
            },
            "matches_per_pair": float(np.mean([r["matches"] for r in rows])),
        }
        for name, rows in results.items()
    }
    report = {
        "date": now_iso(),
        "machine": run_info(),
        "data": str(args.data),
        "num_pairs": len(folders),
        "max_keypoints": args.max_keypoints,
        "model_conf": args.model_conf,
        "ransac_threshold_px": RANSAC_THRESHOLD_PX,
        "summary": summary,
        "pairs": results,
    }
    headers = ["model", "mAA (1-20 px)"] + [f"within {t:g} px" for t in REPORTED_PX] + ["matches/pair"]
    rows = [
        [
            name,
            *(f"{v:.3f}" for v in (s["mAA"], *(s["within"][f"{t:g}"] for t in REPORTED_PX))),
            round(s["matches_per_pair"]),
        ]
        for name, s in summary.items()
    ]
    markdown = "\n".join(
        [
            "# Fundamental matrices on WxBS",
            "",
            f"Data: `{report['data']}` ({len(folders)} pairs). Date: {report['date']}. At most {args.max_keypoints} "
            f"keypoints per image, plain mutual nearest neighbours, F by MAGSAC++ ({RANSAC_THRESHOLD_PX:g} px). "
            "Per pair, the fraction of the hand-labelled correspondences within t px (symmetric epipolar distance) "
            "of the estimated F, averaged over pairs; mAA averages t = 1 ... 20 px. "
            f"Model conf: {args.model_conf or 'defaults'}.",
            "",
            format_table(headers, rows),
            "",
        ]
    )
    print(markdown)
    write_results(args.out, report, markdown)


if __name__ == "__main__":
    main()

"""Matching quality of in-process models on homography sequences: MMA, homography accuracy, counts.

Usage (from the repository root):
    python benchmarks/quality.py --data ../shared/data/oxford_affine --models orb sift akaze \
        --max-keypoints 2048 --out benchmarks/results/quality.json

Writes the JSON results and a Markdown file with the same stem next to it, and prints the Markdown.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path
from typing import Any

from common import OXFORD_AFFINE, REPO_ROOT, RESULTS_DIR, machine_info

from featureserve.models import load_model
from training.evaluation import (
    HomographyEvaluation,
    evaluate_homography_sequences,
    markdown_table,
    model_extractor,
    sequence_markdown_table,
)

DEFAULT_OUT = RESULTS_DIR / "quality.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=OXFORD_AFFINE, help="folder of homography sequences")
    parser.add_argument("--models", nargs="+", default=["orb", "sift", "akaze"], help="registry names")
    parser.add_argument("--max-keypoints", type=int, default=2048, help="keypoint budget per image")
    parser.add_argument("--sequences", nargs="+", default=None, help="evaluate only these sequences")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output; Markdown goes beside it")
    return parser.parse_args(argv)


def render_markdown(report: dict[str, Any], results: dict[str, HomographyEvaluation]) -> str:
    """The Markdown report: settings, the summary table and per-sequence MMA@3."""
    machine = report["machine"]
    return "\n".join(
        [
            "# Matching quality on homography sequences",
            "",
            f"Data: `{report['data']}` ({report['num_pairs']} pairs). Date: {report['date']}. "
            f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs, "
            f"OpenCV {machine['opencv_build']}, torch {machine['versions']['torch']}.",
            f"Protocol: D2-Net MMA, plain mutual nearest neighbours, at most {report['max_keypoints']} "
            "keypoints per image; homography accuracy = mean corner error of the MAGSAC++ estimate "
            f"(inlier threshold {report['ransac_threshold']:g} px) within t px, a failed estimate counts "
            "as inaccurate. MMA and Hacc are fractions of 1.",
            "",
            markdown_table(results),
            "",
            sequence_markdown_table(results, threshold=3),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Evaluate each model, print the Markdown report and write the JSON and Markdown files."""
    args = parse_args(argv)
    results: dict[str, HomographyEvaluation] = {}
    cards: dict[str, dict[str, Any]] = {}
    for name in args.models:
        model = load_model(name)
        cards[name] = model.card.to_dict()
        results[name] = evaluate_homography_sequences(
            model_extractor(model, args.max_keypoints),
            args.data,
            max_keypoints=args.max_keypoints,
            sequences=args.sequences,
        )
    first = next(iter(results.values()))
    report = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        # Relative to the repository, so reports from different checkouts compare.
        "data": os.path.relpath(args.data.resolve(), REPO_ROOT),
        "sequences": list(first.sequence_categories()),
        "num_pairs": len(first.pairs),
        "max_keypoints": args.max_keypoints,
        "ransac_threshold": first.ransac_threshold,
        "models": {name: {"card": cards[name], **result.to_dict()} for name, result in results.items()},
    }
    markdown = render_markdown(report, results)
    print(markdown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown)


if __name__ == "__main__":
    main()

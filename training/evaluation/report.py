"""One evaluation report for several registry models: homography sequences and posed sets, JSON + Markdown."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from featureserve.models import load_model

from .data import load_posed_set
from .extraction import model_extractor
from .homography import HomographyEvaluation, evaluate_homography_sequences, markdown_table
from .homography import sequence_markdown_table as homography_sequence_table
from .posed import PosedEvaluation, evaluate_posed_pairs, posed_markdown_table


def evaluate_models(
    models: Sequence[str],
    card: Path | None,
    homography_root: Path | None,
    posed_sets: Sequence[tuple[str, str]],
    max_keypoints: int,
    out: Path,
    conf: dict[str, Any] | None = None,
) -> str:
    """Evaluate each model with the same matcher and data; write ``out`` (JSON) and ``out.md``; return the Markdown.

    ``card``, when given, is the model card the first model loads (a run exported outside the checkpoints), and
    ``conf`` its options over the defaults.
    """
    homography: dict[str, HomographyEvaluation] = {}
    posed: dict[str, dict[str, PosedEvaluation]] = {}
    cards: dict[str, Any] = {}
    for name in models:
        options: dict[str, Any] = {}
        if name == models[0]:
            options = {**(conf or {}), **({"card": str(card)} if card else {})}
        model = load_model(name, **options)
        cards[name] = model.card.to_dict()
        extract = model_extractor(model, max_keypoints)
        if homography_root is not None:
            homography[name] = evaluate_homography_sequences(extract, homography_root, max_keypoints)
        for format, path in posed_sets:
            images, pairs = load_posed_set(format, path)
            posed.setdefault(Path(path).name, {})[name] = evaluate_posed_pairs(extract, images, pairs, max_keypoints)
    report = {
        "max_keypoints": max_keypoints,
        "matcher": "mutual nearest neighbour",
        "homography_data": str(homography_root),
        "homography": {k: v.to_dict() for k, v in homography.items()},
        "posed": {s: {k: v.to_dict() for k, v in r.items()} for s, r in posed.items()},
        "cards": cards,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    lines = [f"Same {max_keypoints}-keypoint budget and mutual-NN matcher for every model.", ""]
    if homography:
        lines += [f"Homography sequences ({homography_root}):", "", markdown_table(homography), ""]
        lines += [homography_sequence_table(homography, threshold=3), ""]
    for set_name, results in posed.items():
        lines += [f"Posed pairs ({set_name}):", "", posed_markdown_table(results), ""]
    markdown = "\n".join(lines)
    out.with_suffix(".md").write_text(markdown)
    return markdown


def card_summary(report: dict[str, Any], model: str = "caps") -> dict[str, Any]:
    """The headline figures of ``model`` (and of the other models, for comparison) for a model card."""
    summary: dict[str, Any] = {"max_keypoints": report["max_keypoints"], "matcher": report["matcher"]}
    keep_h = ("thresholds", "mma", "homography_thresholds", "homography_accuracy", "features_per_image")
    keep_h += ("matches_per_pair", "repeatability_threshold", "repeatability")
    # Reports written before repeatability was measured lack its two keys; they still summarise.
    optional_h = {"repeatability_threshold", "repeatability"}
    keep_p = ("auc_thresholds", "auc", "epipolar_thresholds", "epipolar_precision", "features_per_image")
    if report["homography"]:
        summary["homography"] = {
            "data": report["homography_data"],
            **{
                name: {k: r[k] for k in keep_h if k in r or k not in optional_h}
                for name, r in report["homography"].items()
            },
        }
    summary["posed"] = {
        set_name: {name: {k: r[k] for k in (*keep_p, "matches_per_pair")} for name, r in results.items()}
        for set_name, results in report["posed"].items()
    }
    summary["model"] = model
    return summary

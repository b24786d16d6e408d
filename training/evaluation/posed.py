"""Posed-pair evaluation: relative-pose AUC and epipolar precision of mutual-NN matches.

For each pair, features of both images are matched with plain mutual nearest neighbours (the matcher of
`extraction.py`); the essential matrix is fitted with MAGSAC++ from the known intrinsics and decomposed; the
pose error is the larger of the rotation error and the (sign-free) translation-direction error, in degrees,
and a failed estimate counts as 180°. AUC@t follows SuperGlue (area under the recall-vs-error curve up to
t, normalised). Epipolar precision@t is the fraction of matches whose symmetric epipolar distance under the
true F is within t pixels (0 without matches).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from featureserve.models import verify

from ..data.posed import PosedImage, load_posed_image
from ..geometry import (
    fundamental_matrix,
    pose_auc,
    relative_pose,
    rotation_error_deg,
    translation_error_deg,
)
from .extraction import ExtractFn, extract_capped, mutual_matches
from .metrics import symmetric_epipolar_distance


@dataclass
class PosedPairResult:
    """One posed pair: names, feature and match counts, pose errors (degrees) and epipolar precision."""

    names: tuple[str, str]
    num_features: tuple[int, int]
    num_matches: int
    num_inliers: int
    rotation_error: float
    translation_error: float
    epipolar_precision: list[float]


@dataclass
class PosedEvaluation:
    """Results of `evaluate_posed_pairs`; ``to_dict`` is JSON-ready.

    Attributes:
        auc_thresholds: Pose-error thresholds of ``auc``, degrees.
        epipolar_thresholds: Pixel thresholds of ``epipolar_precision``.
        max_keypoints: Keypoint cap per image.
        ransac_threshold: Inlier threshold of the essential-matrix fit, pixels.
        auc: Pose AUC at each threshold.
        epipolar_precision: Mean over pairs of the per-pair precision at each threshold.
        features_per_image: Mean keypoints per image.
        matches_per_pair: Mean mutual-NN matches per pair.
        extract_seconds_per_image: Mean wall time of the extractor per image.
        pairs: Per-pair results.
    """

    auc_thresholds: list[float]
    epipolar_thresholds: list[float]
    max_keypoints: int | None
    ransac_threshold: float
    auc: list[float]
    epipolar_precision: list[float]
    features_per_image: float
    matches_per_pair: float
    extract_seconds_per_image: float
    pairs: list[PosedPairResult]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return dataclasses.asdict(self)


def evaluate_posed_pairs(
    extract_fn: ExtractFn,
    images: Sequence[PosedImage],
    pairs: Iterable[tuple[int, int]],
    max_keypoints: int | None = 2048,
    auc_thresholds: Iterable[float] = (5, 10, 20),
    epipolar_thresholds: Iterable[float] = (1, 3, 5),
    ransac_threshold: float = 1.0,
) -> PosedEvaluation:
    """Pose AUC, epipolar precision, features and matches of ``extract_fn`` on posed image pairs.

    Args:
        extract_fn: Features of one ``(H, W, 3)`` uint8 RGB image.
        images: The posed images (undistorted on load when they carry distortion).
        pairs: Index pairs into ``images``.
        max_keypoints: Keep at most this many keypoints per image, highest score first.
        auc_thresholds: Pose-error thresholds, degrees.
        epipolar_thresholds: Epipolar-distance thresholds, pixels.
        ransac_threshold: Inlier threshold of the essential-matrix fit, pixels.
    """
    auc_thresholds = [float(t) for t in auc_thresholds]
    epipolar_thresholds = [float(t) for t in epipolar_thresholds]
    pairs = list(pairs)
    cache: dict[int, tuple[Any, np.ndarray, float]] = {}

    def features(index: int) -> tuple[Any, np.ndarray, float]:
        if index not in cache:
            pixels, k = load_posed_image(images[index])
            extracted, seconds = extract_capped(extract_fn, pixels, max_keypoints)
            cache[index] = (extracted, k, seconds)
        return cache[index]

    results = []
    for i, j in pairs:
        (features1, k1, _), (features2, k2, _) = features(i), features(j)
        rotation, translation = relative_pose(
            images[i].rotation, images[i].translation, images[j].rotation, images[j].translation
        )
        points1, points2 = mutual_matches(features1, features2)
        distances = symmetric_epipolar_distance(points1, points2, fundamental_matrix(k1, k2, rotation, translation))
        precision = [float((distances <= t).mean()) if len(distances) else 0.0 for t in epipolar_thresholds]
        fit = verify(points1, points2, "essential", ransac_threshold, intrinsics0=k1, intrinsics1=k2)
        errors = (180.0, 180.0)
        if fit.rotation is not None:
            errors = (rotation_error_deg(fit.rotation, rotation), translation_error_deg(fit.translation, translation))
        results.append(
            PosedPairResult(
                names=(images[i].path.name, images[j].path.name),
                num_features=(len(features1), len(features2)),
                num_matches=len(points1),
                num_inliers=fit.num_inliers,
                rotation_error=errors[0],
                translation_error=errors[1],
                epipolar_precision=precision,
            )
        )
    pose_errors = np.array([max(r.rotation_error, r.translation_error) for r in results])
    return PosedEvaluation(
        auc_thresholds=auc_thresholds,
        epipolar_thresholds=epipolar_thresholds,
        max_keypoints=max_keypoints,
        ransac_threshold=float(ransac_threshold),
        auc=pose_auc(pose_errors, tuple(auc_thresholds)),
        epipolar_precision=np.mean([r.epipolar_precision for r in results], axis=0).tolist(),
        features_per_image=float(np.mean([len(f) for f, _, _ in cache.values()])),
        matches_per_pair=float(np.mean([r.num_matches for r in results])),
        extract_seconds_per_image=float(np.mean([s for _, _, s in cache.values()])),
        pairs=results,
    )


def posed_markdown_table(results: Mapping[str, PosedEvaluation]) -> str:
    """Markdown table with one row per named result: pose AUC, epipolar precision, features and matches."""
    first = next(iter(results.values()))
    columns = [f"AUC@{t:g}°" for t in first.auc_thresholds] + [f"EP@{t:g}px" for t in first.epipolar_thresholds]
    columns += ["features/img", "matches/pair"]
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, r in results.items():
        cells = [f"{v:.3f}" for v in [*r.auc, *r.epipolar_precision]]
        cells += [f"{r.features_per_image:.0f}", f"{r.matches_per_pair:.0f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

"""The homography-sequence evaluation loop (HPatches layout, D2-Net protocol): MMA, homography accuracy, repeatability.

A sequence is a folder with six images of one planar scene, ``1.ppm`` .. ``6.ppm`` (HPatches) or
``img1.png`` .. ``img6.png`` (Oxford), and ground-truth homographies ``H_1_N`` (HPatches) or ``H1toNp``
(Oxford): 3x3 text matrices that map pixel ``(x, y)`` of image 1 to image N, with pixel centres at
integer coordinates, the same convention as `Features.keypoints`. Every pair (1, N) is matched with plain
mutual nearest neighbours. The protocol follows the D2-Net HPatches notebook: a match is correct at ``t``
pixels when the image-1 keypoint mapped by the true H lies within ``t`` px of its matched image-N keypoint;
the MMA of a pair is correct / matches (0 without matches) and MMA@t is the mean over pairs.

Repeatability is measured as `metrics.repeatability` describes; the sequences are loaded by `data`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featureserve.models import Features, image_size, verify

from .data import CATEGORY_NAMES, SEQUENCE_CATEGORIES, HomographyPair, HomographySequence, load_image, load_sequences
from .extraction import ExtractFn, extract_capped, mutual_matches
from .metrics import finite_corner_error, matching_accuracy, repeatability, reprojection_errors


@dataclass
class PairResult:
    """What one pair (1, N) of a sequence gave.

    Attributes:
        sequence: Sequence name.
        category: ``"i"`` or ``"v"``.
        index: N, the target image number.
        num_features: Keypoints in image 1 and in image N.
        num_matches: Mutual-nearest-neighbour matches.
        mma: Matching accuracy at each of the evaluation's ``thresholds``.
        num_inliers: Inliers of the estimated homography (0 when none was found).
        corner_error: Mean corner distance in pixels (image-1 corners) between the estimated and true H,
            or ``None`` when no homography could be estimated.
        repeatability: Detector repeatability at the evaluation's ``repeatability_threshold`` (see
            `repeatability`), in [0, 1].
    """

    sequence: str
    category: str
    index: int
    num_features: tuple[int, int]
    num_matches: int
    mma: list[float]
    num_inliers: int
    corner_error: float | None
    repeatability: float


@dataclass
class HomographyEvaluation:
    """Results of `evaluate_homography_sequences`; ``to_dict`` is JSON-ready.

    Attributes:
        thresholds: Pixel thresholds of the MMA lists.
        homography_thresholds: Corner-error thresholds of the homography-accuracy lists.
        max_keypoints: Keypoint cap per image (``None``: whatever ``extract_fn`` returned).
        ransac_threshold: Inlier threshold in pixels of the homography estimate.
        mma: MMA per threshold for ``"overall"`` (all pairs) and for each category present (``"i"``, ``"v"``).
        homography_accuracy: Fraction of pairs with corner error within each homography threshold, same keys;
            a pair without an estimate counts as inaccurate.
        repeatability_threshold: ``eps`` in pixels of the detector repeatability.
        repeatability: Mean detector repeatability over the pairs of each group, same keys as ``mma``.
        features_per_image: Mean keypoints per extracted image (image 1 of a sequence counted once).
        matches_per_pair: Mean matches per pair.
        extract_seconds_per_image: Mean wall time of ``extract_fn`` per image.
        pairs: Per-pair results.
    """

    thresholds: list[float]
    homography_thresholds: list[float]
    max_keypoints: int | None
    ransac_threshold: float
    mma: dict[str, list[float]]
    homography_accuracy: dict[str, list[float]]
    repeatability_threshold: float
    repeatability: dict[str, float]
    features_per_image: float
    matches_per_pair: float
    extract_seconds_per_image: float
    pairs: list[PairResult]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return dataclasses.asdict(self)

    def mma_at(self, threshold: float, group: str = "overall") -> float:
        """MMA at one of ``thresholds`` for ``"overall"``, ``"i"`` or ``"v"``."""
        return self.mma[group][_position(self.thresholds, threshold)]

    def homography_accuracy_at(self, threshold: float, group: str = "overall") -> float:
        """Homography accuracy at one of ``homography_thresholds`` for ``"overall"``, ``"i"`` or ``"v"``."""
        return self.homography_accuracy[group][_position(self.homography_thresholds, threshold)]

    def sequence_mma(self, threshold: float) -> dict[str, float]:
        """MMA at ``threshold`` per sequence (mean over its pairs), in evaluation order."""
        position = _position(self.thresholds, threshold)
        by_sequence: dict[str, list[float]] = {}
        for pair in self.pairs:
            by_sequence.setdefault(pair.sequence, []).append(pair.mma[position])
        return {name: float(np.mean(values)) for name, values in by_sequence.items()}

    def sequence_categories(self) -> dict[str, str]:
        """Category of each evaluated sequence, in evaluation order."""
        return {pair.sequence: pair.category for pair in self.pairs}


def _position(thresholds: Sequence[float], threshold: float) -> int:
    for i, t in enumerate(thresholds):
        if np.isclose(t, threshold):
            return i
    raise KeyError(f"threshold {threshold} was not evaluated; evaluated: {list(thresholds)}")


def estimate_homography(
    points0: np.ndarray,
    points1: np.ndarray,
    truth: np.ndarray,
    reference_size: tuple[int, int],
    ransac_threshold: float,
) -> tuple[np.ndarray | None, float | None, int]:
    """``(homography, corner error, inliers)`` of the MAGSAC++ fit to matched points; the error is ``None`` without
    a finite estimate."""
    verification = verify(points0, points1, "homography", threshold=ransac_threshold)
    matrix = verification.matrix
    return matrix, finite_corner_error(matrix, truth, reference_size), verification.num_inliers


def _evaluate_pair(
    sequence: HomographySequence,
    pair: HomographyPair,
    features0: Features,
    features1: Features,
    reference_size: tuple[int, int],
    target_size: tuple[int, int],
    thresholds: Sequence[float],
    ransac_threshold: float,
    repeatability_threshold: float,
) -> PairResult:
    points0, points1 = mutual_matches(features0, features1)
    accuracy = matching_accuracy(reprojection_errors(points0, points1, pair.homography), thresholds)
    _, corner_error, num_inliers = estimate_homography(
        points0, points1, pair.homography, reference_size, ransac_threshold
    )
    return PairResult(
        sequence=sequence.name,
        category=sequence.category,
        index=pair.index,
        num_features=(len(features0), len(features1)),
        num_matches=len(points0),
        mma=[float(a) for a in accuracy],
        num_inliers=num_inliers,
        corner_error=corner_error,
        repeatability=repeatability(
            features0.keypoints,
            features1.keypoints,
            pair.homography,
            reference_size,
            target_size,
            repeatability_threshold,
        ),
    )


def evaluate_homography_sequences(
    extract_fn: ExtractFn,
    root: str | Path,
    max_keypoints: int | None = 2048,
    thresholds: Iterable[float] = range(1, 11),
    homography_thresholds: Iterable[float] = (1, 3, 5),
    ransac_threshold: float = 3.0,
    categories: Mapping[str, str] = SEQUENCE_CATEGORIES,
    sequences: Iterable[str] | None = None,
    repeatability_threshold: float = 3.0,
) -> HomographyEvaluation:
    """MMA, homography accuracy, repeatability, features and matches of ``extract_fn`` on the sequences.

    Args:
        extract_fn: Features of one ``(H, W, 3)`` uint8 RGB image (an in-process model, see
            `model_extractor`, or a client of the service).
        root: Folder of sequence folders in HPatches or Oxford layout.
        max_keypoints: Keep at most this many keypoints per image, highest score first; ``None`` keeps all.
        thresholds: MMA thresholds in pixels.
        homography_thresholds: Corner-error thresholds in pixels for homography accuracy.
        ransac_threshold: Inlier threshold in pixels of the MAGSAC++ homography estimate.
        categories: Category (``"i"`` / ``"v"``) of sequences not named ``i_*`` / ``v_*``.
        sequences: Evaluate only these sequence names.
        repeatability_threshold: ``eps`` in pixels of the detector repeatability (SuperPoint protocol).
    """
    thresholds = [float(t) for t in thresholds]
    homography_thresholds = [float(t) for t in homography_thresholds]
    pairs: list[PairResult] = []
    feature_counts: list[int] = []
    seconds = 0.0
    for sequence in load_sequences(root, categories, sequences):
        reference = load_image(sequence.reference_path)
        features0, elapsed = extract_capped(extract_fn, reference, max_keypoints)
        feature_counts.append(len(features0))
        seconds += elapsed
        for pair in sequence.pairs:
            target = load_image(pair.image_path)
            features1, elapsed = extract_capped(extract_fn, target, max_keypoints)
            feature_counts.append(len(features1))
            seconds += elapsed
            pairs.append(
                _evaluate_pair(
                    sequence,
                    pair,
                    features0,
                    features1,
                    image_size(reference),
                    image_size(target),
                    thresholds,
                    ransac_threshold,
                    float(repeatability_threshold),
                )
            )
    groups = {"overall": pairs}
    for category in sorted({p.category for p in pairs}):
        groups[category] = [p for p in pairs if p.category == category]
    return HomographyEvaluation(
        thresholds=thresholds,
        homography_thresholds=homography_thresholds,
        max_keypoints=max_keypoints,
        ransac_threshold=float(ransac_threshold),
        mma={g: np.mean([p.mma for p in group], axis=0).tolist() for g, group in groups.items()},
        homography_accuracy={
            g: [_accurate_fraction(group, t) for t in homography_thresholds] for g, group in groups.items()
        },
        repeatability_threshold=float(repeatability_threshold),
        repeatability={g: float(np.mean([p.repeatability for p in group])) for g, group in groups.items()},
        features_per_image=float(np.mean(feature_counts)),
        matches_per_pair=float(np.mean([p.num_matches for p in pairs])),
        extract_seconds_per_image=seconds / len(feature_counts),
        pairs=pairs,
    )


def _accurate_fraction(pairs: Sequence[PairResult], threshold: float) -> float:
    return float(np.mean([p.corner_error is not None and p.corner_error <= threshold for p in pairs]))


def markdown_table(
    results: Mapping[str, HomographyEvaluation],
    mma_thresholds: Sequence[float] = (1, 3, 5, 10),
    homography_thresholds: Sequence[float] = (1, 3, 5),
) -> str:
    """Markdown table with one row per named result: MMA, homography accuracy, repeatability, features, matches."""
    rep_thresholds = {r.repeatability_threshold for r in results.values()}
    if len(rep_thresholds) > 1:
        raise ValueError(f"one repeatability column needs one threshold, got {sorted(rep_thresholds)}")
    rep_threshold = rep_thresholds.pop() if rep_thresholds else 3.0
    columns = [f"MMA@{t:g}" for t in mma_thresholds] + [f"Hacc@{t:g}" for t in homography_thresholds]
    columns += [f"Rep@{rep_threshold:g}", "features/img", "matches/pair"]
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [markdown_row(name, r, mma_thresholds, homography_thresholds) for name, r in results.items()]
    return "\n".join(lines)


def markdown_row(
    name: str,
    result: HomographyEvaluation,
    mma_thresholds: Sequence[float] = (1, 3, 5, 10),
    homography_thresholds: Sequence[float] = (1, 3, 5),
) -> str:
    """One `markdown_table` row: overall MMA, homography accuracy and repeatability as fractions, then counts."""
    cells = [f"{result.mma_at(t):.3f}" for t in mma_thresholds]
    cells += [f"{result.homography_accuracy_at(t):.3f}" for t in homography_thresholds]
    cells += [f"{result.repeatability['overall']:.3f}"]
    cells += [f"{result.features_per_image:.0f}", f"{result.matches_per_pair:.0f}"]
    return f"| {name} | " + " | ".join(cells) + " |"


def sequence_markdown_table(results: Mapping[str, HomographyEvaluation], threshold: float = 3) -> str:
    """Markdown table of MMA@``threshold``: one row per sequence, then per category and overall."""
    categories: dict[str, str] = {}
    for result in results.values():
        categories.update(result.sequence_categories())
    per_sequence = {name: r.sequence_mma(threshold) for name, r in results.items()}
    lines = [
        f"| sequence (MMA@{threshold:g}) | " + " | ".join(results) + " |",
        "|---" * (len(results) + 1) + "|",
    ]
    for sequence, category in categories.items():
        cells = [_cell(per_sequence[name].get(sequence)) for name in results]
        lines.append(f"| {sequence} ({category}) | " + " | ".join(cells) + " |")
    for group in [*sorted(set(categories.values())), "overall"]:
        label = f"all {CATEGORY_NAMES[group]} ({group})" if group in CATEGORY_NAMES else group
        cells = [_cell(r.mma_at(threshold, group) if group in r.mma else None) for r in results.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"

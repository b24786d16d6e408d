"""Homography-sequence evaluation (HPatches layout, D2-Net protocol): MMA, homography accuracy, repeatability.

A sequence is a folder with six images of one planar scene, ``1.ppm`` .. ``6.ppm`` (HPatches) or
``img1.png`` .. ``img6.png`` (Oxford), and ground-truth homographies ``H_1_N`` (HPatches) or ``H1toNp``
(Oxford): 3x3 text matrices that map pixel ``(x, y)`` of image 1 to image N, with pixel centres at
integer coordinates, the same convention as `Features.keypoints`. Every pair (1, N) is matched with plain
mutual nearest neighbours. The protocol follows the D2-Net HPatches notebook: a match is correct at ``t``
pixels when the image-1 keypoint mapped by the true H lies within ``t`` px of its matched image-N keypoint;
the MMA of a pair is correct / matches (0 without matches) and MMA@t is the mean over pairs.

Detector repeatability follows the SuperPoint protocol (DeTone, Malisiewicz and Rabinovich, "SuperPoint:
Self-Supervised Interest Point Detection and Description", CVPR Workshops 2018, section "Detector
repeatability"; the same measure is reported by D2-Net and R2D2). For pair (1, N) with true homography H, the
shared keypoints are those of image 1 whose H-warped position falls inside image N and those of image N whose
H^-1-warped position falls inside image 1; a point warped to or beyond the horizon (non-finite position) is
not shared. "Inside" is the pixel area ``-0.5 <= x <= W - 0.5``, ``-0.5 <= y <= H - 0.5``. Both shared sets
are compared in image N's frame: a shared keypoint is repeated when the nearest shared keypoint of the other
image lies within ``eps`` px (``<=``, as for MMA). Repeatability = (repeated in image 1 + repeated in image N)
/ (shared in image 1 + shared in image N), 0 when nothing is shared; it is computed at ``eps`` = 3 px by
default on the same capped keypoint sets as the MMA (the ``max_keypoints`` strongest by score) and averaged
over pairs like the MMA.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from featureserve.models import (
    FeatureModel,
    Features,
    KeypointOptions,
    homography_corner_error,
    image_size,
    match_descriptors,
    verify,
)

from ..geometry import warp_points

ExtractFn = Callable[[np.ndarray], Features]

# Sequences not named i_* / v_* by HPatches category. Oxford affine: only leuven changes the light; blur (bikes,
# trees) and JPEG (ubc) keep the geometry-changing "v" label that the Oxford names carry in the literature. The
# A-KAZE Iguazu set (one view, Gaussian noise) changes no geometry, like an illumination sequence.
SEQUENCE_CATEGORIES: dict[str, str] = {
    "akaze_iguazu_noise": "i",
    "bark": "v",
    "bikes": "v",
    "boat": "v",
    "graf": "v",
    "leuven": "i",
    "trees": "v",
    "ubc": "v",
    "wall": "v",
}
CATEGORY_NAMES: dict[str, str] = {"i": "illumination", "v": "viewpoint"}

_IMAGE_NAME = re.compile(r"^(?:img)?([1-9][0-9]*)\.(?:ppm|pgm|png|jpe?g)$", re.IGNORECASE)
_HOMOGRAPHY_NAME = re.compile(r"^(?:H_1_([1-9][0-9]*)|H1to([1-9][0-9]*)p)$")


@dataclass(frozen=True)
class HomographyPair:
    """Image N of a sequence and the ground-truth homography mapping image-1 pixels to it."""

    index: int
    image_path: Path
    homography: np.ndarray


@dataclass(frozen=True)
class HomographySequence:
    """One sequence: its name, category (``"i"`` or ``"v"``), reference image 1 and pairs (1, N)."""

    name: str
    category: str
    reference_path: Path
    pairs: tuple[HomographyPair, ...]


def sequence_category(name: str, categories: Mapping[str, str] = SEQUENCE_CATEGORIES) -> str:
    """``"i"`` or ``"v"`` for a sequence: from ``categories``, else the HPatches ``i_`` / ``v_`` prefix."""
    category = categories.get(name)
    if category is None and name[:2] in ("i_", "v_"):
        category = name[0]
    if category not in CATEGORY_NAMES:
        hint = f"name it i_* / v_* or pass categories={{{name!r}: 'i' or 'v'}}"
        raise ValueError(f"no category for sequence {name!r}: {hint}")
    return category


def load_image(path: str | Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB image (grey files are expanded to three channels)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_homography(path: str | Path) -> np.ndarray:
    """``(3, 3)`` float64 homography from a whitespace-separated text file."""
    matrix = np.loadtxt(path, dtype=np.float64)
    if matrix.shape != (3, 3) or not np.all(np.isfinite(matrix)):
        raise ValueError(f"{path}: expected a finite 3x3 matrix, got shape {matrix.shape}")
    return matrix


def _numbered_files(folder: Path) -> tuple[dict[int, Path], dict[int, Path]]:
    """Images and homography files of a folder, keyed by their image number."""
    images: dict[int, Path] = {}
    homographies: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        image_match = _IMAGE_NAME.match(path.name)
        h_match = _HOMOGRAPHY_NAME.match(path.name)
        if image_match:
            found, index = images, int(image_match.group(1))
        elif h_match:
            found, index = homographies, int(h_match.group(1) or h_match.group(2))
        else:
            continue
        if index in found:
            raise ValueError(f"{folder}: both {found[index].name} and {path.name} claim number {index}")
        found[index] = path
    return images, homographies


def load_sequence(folder: str | Path, categories: Mapping[str, str] = SEQUENCE_CATEGORIES) -> HomographySequence:
    """Read one sequence folder; raise ``ValueError`` if images and homography files do not pair up."""
    folder = Path(folder)
    images, homographies = _numbered_files(folder)
    if 1 not in images:
        raise ValueError(f"{folder}: no reference image (1.ppm or img1.png style)")
    if 1 in homographies:  # the A-KAZE sets ship an identity H1to1p; anything else is a mislabelled file
        if not np.allclose(load_homography(homographies[1]), np.eye(3), rtol=0, atol=1e-9):
            raise ValueError(f"{folder}: {homographies[1].name} maps image 1 to itself but is not the identity")
        del homographies[1]
    targets = sorted(set(images) - {1})
    if not targets or targets != sorted(homographies):
        raise ValueError(
            f"{folder}: images {sorted(images)} and homographies {sorted(homographies)} are not pairs (1, N)"
        )
    pairs = tuple(HomographyPair(n, images[n], load_homography(homographies[n])) for n in targets)
    return HomographySequence(folder.name, sequence_category(folder.name, categories), images[1], pairs)


def _holds_images(folder: Path) -> bool:
    return any(_IMAGE_NAME.match(f.name) for f in folder.iterdir() if f.is_file())


def load_sequences(
    root: str | Path,
    categories: Mapping[str, str] = SEQUENCE_CATEGORIES,
    names: Iterable[str] | None = None,
) -> list[HomographySequence]:
    """Every sequence folder under ``root`` (sorted by name), or only those in ``names``; ``root`` itself when it
    is one sequence folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no sequence folder at {root}")
    # A folder is a sequence when it holds numbered images; anything else under root is not ours to judge.
    if _holds_images(root):
        folders = {root.name: root}
    else:
        folders = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and _holds_images(p)}
    if names is not None:
        wanted = list(names)
        missing = sorted(set(wanted) - set(folders))
        if missing:
            raise FileNotFoundError(f"sequences {missing} not found under {root}")
        folders = {name: folders[name] for name in wanted}
    if not folders:
        raise FileNotFoundError(f"no homography sequences under {root}")
    return [load_sequence(folder, categories) for folder in folders.values()]


def reprojection_errors(points0: np.ndarray, points1: np.ndarray, homography: np.ndarray) -> np.ndarray:
    """``(M,)`` pixel distance between ``H @ points0[i]`` and ``points1[i]`` (``inf`` at the horizon)."""
    p1 = np.asarray(points1, np.float64).reshape(-1, 2)
    with np.errstate(invalid="ignore"):
        errors = np.linalg.norm(warp_points(points0, homography) - p1, axis=1)
    return np.where(np.isfinite(errors), errors, np.inf)


def inside_image(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(M,)`` bool: finite and within the pixel area of an image of ``size`` = ``(width, height)``."""
    width, height = size
    points = np.asarray(points, np.float64).reshape(-1, 2)
    with np.errstate(invalid="ignore"):
        x_in = (points[:, 0] >= -0.5) & (points[:, 0] <= width - 0.5)
        y_in = (points[:, 1] >= -0.5) & (points[:, 1] <= height - 0.5)
    return np.all(np.isfinite(points), axis=1) & x_in & y_in


def _nearest_distances(points: np.ndarray, others: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """``(M,)`` distance from each of ``points`` to its nearest neighbour in ``others`` (``inf`` if none)."""
    if len(others) == 0:
        return np.full(len(points), np.inf)
    # Chunked so that uncapped keypoint sets (max_keypoints=None) do not build one huge distance matrix.
    nearest = [
        np.sqrt(((points[i : i + chunk, None, :] - others[None, :, :]) ** 2).sum(axis=2).min(axis=1))
        for i in range(0, len(points), chunk)
    ]
    return np.concatenate(nearest) if nearest else np.zeros(0)


def repeatability(
    keypoints0: np.ndarray,
    keypoints1: np.ndarray,
    homography: np.ndarray,
    size0: tuple[int, int],
    size1: tuple[int, int],
    threshold: float = 3.0,
) -> float:
    """SuperPoint detector repeatability of a pair at ``threshold`` px (see the module docstring).

    Args:
        keypoints0: ``(M0, 2)`` keypoints ``(x, y)`` of image 1 in pixels, pixel centres at integers.
        keypoints1: ``(M1, 2)`` keypoints of image N.
        homography: ``(3, 3)`` true homography mapping image-1 pixels to image N.
        size0: ``(width, height)`` of image 1.
        size1: ``(width, height)`` of image N.
        threshold: ``eps`` in pixels of image N.
    """
    homography = np.asarray(homography, np.float64)
    warped0 = warp_points(keypoints0, homography)
    shared0 = warped0[inside_image(warped0, size1)]
    points1 = np.asarray(keypoints1, np.float64).reshape(-1, 2)
    shared1 = points1[inside_image(warp_points(points1, np.linalg.inv(homography)), size0)]
    total = len(shared0) + len(shared1)
    if total == 0:
        return 0.0
    repeated0 = int((_nearest_distances(shared0, shared1) <= threshold).sum())
    repeated1 = int((_nearest_distances(shared1, shared0) <= threshold).sum())
    return (repeated0 + repeated1) / total


def matching_accuracy(errors: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Fraction of matches with reprojection error ``<= t`` for each threshold ``t`` (0 with no matches)."""
    if len(errors) == 0:
        return np.zeros(len(thresholds))
    return (np.asarray(errors)[None, :] <= np.asarray(thresholds, np.float64)[:, None]).mean(axis=1)


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


def model_extractor(model: FeatureModel, max_keypoints: int) -> ExtractFn:
    """An ``extract_fn`` that runs ``model`` in process on one image with a keypoint budget."""
    options = [KeypointOptions(max_keypoints=max_keypoints)]
    return lambda image: model.extract([image], options)[0]


def extract_capped(extract_fn: ExtractFn, image: np.ndarray, max_keypoints: int | None) -> tuple[Features, float]:
    """Features of ``image`` capped at ``max_keypoints`` (strongest first) and the seconds they took."""
    start = time.perf_counter()
    features = extract_fn(image)
    seconds = time.perf_counter() - start
    if features.descriptors is None:
        raise ValueError("extract_fn returned features without descriptors")
    # The cap holds whatever the extractor does, so remote or learned models compete at the same budget.
    if max_keypoints is not None and len(features) > max_keypoints:
        features = features.subset(np.argsort(-features.scores, kind="stable")[:max_keypoints])
    return features, seconds


def mutual_matches(features0: Features, features1: Features) -> tuple[np.ndarray, np.ndarray]:
    """``(points0, points1)``: the keypoints of the plain mutual nearest-neighbour matches, ``(M, 2)`` each."""
    metric = features0.descriptor.metric
    if features1.descriptor.metric != metric:
        raise ValueError(f"descriptor metrics differ: {metric} vs {features1.descriptor.metric}")
    matches = match_descriptors(features0.descriptors, features1.descriptors, metric=metric, matcher="mnn")
    return features0.keypoints[matches.indices[:, 0]], features1.keypoints[matches.indices[:, 1]]


def finite_corner_error(estimate: np.ndarray | None, truth: np.ndarray, size: tuple[int, int]) -> float | None:
    """Mean corner error of ``estimate`` against ``truth`` in pixels; ``None`` without an estimate or when infinite."""
    if estimate is None:
        return None
    error = homography_corner_error(estimate, truth, size)
    return error if np.isfinite(error) else None


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

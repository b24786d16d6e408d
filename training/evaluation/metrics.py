"""Evaluation metrics: reprojection error, matching accuracy, detector repeatability, corner and epipolar errors.

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

from collections.abc import Sequence

import numpy as np
import torch

from featureserve.models import homography_corner_error

from ..geometry import epipolar_distance, warp_points


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


def finite_corner_error(estimate: np.ndarray | None, truth: np.ndarray, size: tuple[int, int]) -> float | None:
    """Mean corner error of ``estimate`` against ``truth`` in pixels; ``None`` without an estimate or when infinite."""
    if estimate is None:
        return None
    error = homography_corner_error(estimate, truth, size)
    return error if np.isfinite(error) else None


def symmetric_epipolar_distance(points1: np.ndarray, points2: np.ndarray, fundamental: np.ndarray) -> np.ndarray:
    """``(M,)`` mean of the two point-to-epipolar-line distances, pixels."""
    p1 = torch.as_tensor(points1, dtype=torch.float64)[None]
    p2 = torch.as_tensor(points2, dtype=torch.float64)[None]
    f = torch.as_tensor(fundamental, dtype=torch.float64)[None]
    forward = epipolar_distance(p1, p2, f)
    backward = epipolar_distance(p2, p1, f.transpose(1, 2))
    return ((forward + backward) / 2)[0].numpy()

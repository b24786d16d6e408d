"""Geometric verification of matches with OpenCV's USAC (MAGSAC++): homography, fundamental, essential."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

GeometryKind = Literal["homography", "fundamental", "essential"]
# Fewest correspondences each estimator accepts (4-point homography, 8-point F, 5-point E).
MIN_POINTS: dict[str, int] = {"homography": 4, "fundamental": 8, "essential": 5}


@dataclass
class GeometryResult:
    """The outcome of robust model fitting on matched points.

    Attributes:
        geometry: Which model was fitted.
        matrix: ``(3, 3)`` float64 model (H maps image-0 pixels to image-1 pixels; F and E satisfy
            ``x1^T F x0 = 0``), or ``None`` when no model could be fitted.
        inliers: ``(M,)`` bool, one flag per input correspondence.
        groups: ``(M,)`` index of each correspondence among the distinct ones (equal coordinates in both
            images), or ``None`` when all are distinct. SIFT gives a keypoint per dominant orientation, so one
            location can be matched more than once; the model is fitted to, and `num_inliers` counts, distinct
            correspondences only.
        rotation: ``(3, 3)`` relative rotation from camera 0 to camera 1 (essential only).
        translation: ``(3,)`` unit-norm relative translation (essential only).
        message: Why ``matrix`` is ``None``, for users.
    """

    geometry: GeometryKind
    matrix: np.ndarray | None
    inliers: np.ndarray
    rotation: np.ndarray | None = None
    translation: np.ndarray | None = None
    message: str | None = None
    groups: np.ndarray | None = None

    @property
    def num_inliers(self) -> int:
        """Number of distinct inlier correspondences."""
        if self.groups is None:
            return int(self.inliers.sum())
        return len(np.unique(self.groups[self.inliers]))

    @property
    def inlier_ratio(self) -> float:
        """Distinct inliers per distinct correspondence (0 without correspondences)."""
        total = len(self.inliers) if self.groups is None else int(self.groups.max(initial=-1)) + 1
        return self.num_inliers / total if total else 0.0


def intrinsics_matrix(intrinsics: Sequence[float] | Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """``(3, 3)`` camera matrix from ``[fx, fy, cx, cy]`` or a 3x3 nested list; raises ``ValueError``."""
    values = np.asarray(intrinsics, dtype=np.float64)
    if values.shape == (4,):
        fx, fy, cx, cy = values
        values = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float64)
    if values.shape != (3, 3):
        raise ValueError(f"intrinsics must be [fx, fy, cx, cy] or a 3x3 matrix, got shape {values.shape}")
    if not np.all(np.isfinite(values)) or values[0, 0] <= 0 or values[1, 1] <= 0:
        raise ValueError("intrinsics must be finite with positive focal lengths fx, fy")
    return values


def verify(
    points0: np.ndarray,
    points1: np.ndarray,
    geometry: GeometryKind,
    threshold: float = 3.0,
    confidence: float = 0.9999,
    max_iterations: int = 10000,
    intrinsics0: np.ndarray | None = None,
    intrinsics1: np.ndarray | None = None,
) -> GeometryResult:
    """Fit ``geometry`` to ``(M, 2)`` matched pixel coordinates with MAGSAC++.

    Args:
        points0: ``(M, 2)`` points in image 0, pixels.
        points1: ``(M, 2)`` corresponding points in image 1, pixels.
        geometry: ``"homography"``, ``"fundamental"`` or ``"essential"``.
        threshold: Inlier threshold in pixels (reprojection error for H, epipolar distance for F and E).
        confidence: RANSAC confidence.
        max_iterations: RANSAC iteration cap.
        intrinsics0: ``(3, 3)`` camera matrix of image 0 (needed for ``essential``).
        intrinsics1: ``(3, 3)`` camera matrix of image 1 (needed for ``essential``).
    """
    if geometry not in MIN_POINTS:
        raise ValueError(f"geometry must be one of {sorted(MIN_POINTS)}, got {geometry!r}")
    p0 = np.ascontiguousarray(points0, np.float64).reshape(-1, 2)
    p1 = np.ascontiguousarray(points1, np.float64).reshape(-1, 2)
    if len(p0) != len(p1):
        raise ValueError(f"points0 and points1 differ in length: {len(p0)} vs {len(p1)}")
    if geometry == "essential" and (intrinsics0 is None or intrinsics1 is None):
        raise ValueError("essential geometry needs intrinsics for both images")
    first, groups = distinct_rows(np.concatenate([p0, p1], axis=1))
    result = _fit(p0[first], p1[first], geometry, threshold, confidence, max_iterations, intrinsics0, intrinsics1)
    if len(first) < len(p0):  # the distinct correspondences' verdicts, given to every copy
        result.inliers, result.groups = result.inliers[groups], groups
    return result


def distinct_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first, groups)``: the index of each distinct row's first occurrence, in order, and each row's group."""
    if len(rows) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    _, first, groups = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order], rank[groups.reshape(-1)]


def _fit(
    p0: np.ndarray,
    p1: np.ndarray,
    geometry: GeometryKind,
    threshold: float,
    confidence: float,
    max_iterations: int,
    intrinsics0: np.ndarray | None,
    intrinsics1: np.ndarray | None,
) -> GeometryResult:
    if len(p0) < MIN_POINTS[geometry]:
        message = f"{geometry} needs at least {MIN_POINTS[geometry]} distinct matches, got {len(p0)}"
        return GeometryResult(geometry, None, np.zeros(len(p0), bool), message=message)
    if geometry == "homography":
        matrix, mask = cv2.findHomography(p0, p1, cv2.USAC_MAGSAC, threshold, None, max_iterations, confidence)
        return _verification(geometry, matrix, mask, len(p0))
    if geometry == "fundamental":
        matrix, mask = cv2.findFundamentalMat(p0, p1, cv2.USAC_MAGSAC, threshold, confidence, max_iterations)
        return _verification(geometry, None if matrix is None else matrix[:3], mask, len(p0))
    return _verify_essential(p0, p1, threshold, confidence, max_iterations, intrinsics0, intrinsics1)


def _verify_essential(
    p0: np.ndarray,
    p1: np.ndarray,
    threshold: float,
    confidence: float,
    max_iterations: int,
    intrinsics0: np.ndarray,
    intrinsics1: np.ndarray,
) -> GeometryResult:
    # Cameras may differ, so normalise each side by its own K and fit E with an identity camera; the
    # pixel threshold becomes a normalised one through the mean focal length.
    n0 = cv2.undistortPoints(p0[:, None], intrinsics0, None)[:, 0]
    n1 = cv2.undistortPoints(p1[:, None], intrinsics1, None)[:, 0]
    focal = np.mean([intrinsics0[0, 0], intrinsics0[1, 1], intrinsics1[0, 0], intrinsics1[1, 1]])
    eye = np.eye(3)
    matrix, mask = cv2.findEssentialMat(n0, n1, eye, cv2.USAC_MAGSAC, confidence, threshold / focal, max_iterations)
    result = _verification("essential", None if matrix is None else matrix[:3], mask, len(p0))
    if result.matrix is not None and result.num_inliers >= MIN_POINTS["essential"]:
        _, rotation, translation, _ = cv2.recoverPose(
            result.matrix, n0, n1, eye, mask=result.inliers.astype(np.uint8)[:, None].copy()
        )
        result.rotation, result.translation = rotation, translation.reshape(3)
    return result


def _verification(geometry: GeometryKind, matrix: np.ndarray | None, mask: np.ndarray | None, n: int) -> GeometryResult:
    if matrix is None or mask is None or not np.all(np.isfinite(matrix)):
        return GeometryResult(geometry, None, np.zeros(n, bool), message=f"no {geometry} consistent with the matches")
    return GeometryResult(geometry, np.asarray(matrix, np.float64), mask.reshape(-1).astype(bool))


def homography_corner_error(estimate: np.ndarray, truth: np.ndarray, image_size: tuple[int, int]) -> float:
    """Mean distance in pixels between the image corners mapped by ``estimate`` and by ``truth``."""
    width, height = image_size
    corners = np.array([[0, 0, 1], [width - 1, 0, 1], [width - 1, height - 1, 1], [0, height - 1, 1]], np.float64)

    def warp(h: np.ndarray) -> np.ndarray:
        mapped = corners @ np.asarray(h, np.float64).T
        return mapped[:, :2] / mapped[:, 2:]

    return float(np.linalg.norm(warp(estimate) - warp(truth), axis=1).mean())

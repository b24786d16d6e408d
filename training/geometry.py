"""Two-view geometry: relative pose, fundamental matrix, epipolar distance, homography warps, pose errors.

Poses are world -> camera ``(R, t)``: ``x_cam = R @ X + t``. ``F`` maps image-1 pixels to image-2 epipolar
lines (``x2^T F x1 = 0``), pixel centres at integer coordinates (the convention of `Features.keypoints`).
"""

from __future__ import annotations

import numpy as np
import torch


def relative_pose(
    rotation1: np.ndarray, translation1: np.ndarray, rotation2: np.ndarray, translation2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(R_21, t_21)`` mapping camera-1 coordinates to camera-2 coordinates."""
    rotation = rotation2 @ rotation1.T
    return rotation, translation2 - rotation @ translation1


def skew(v: np.ndarray) -> np.ndarray:
    """``(3, 3)`` cross-product matrix ``[v]_x``."""
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]], np.float64)


def fundamental_matrix(k1: np.ndarray, k2: np.ndarray, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """``F = K2^-T [t]_x R K1^-1`` for the relative pose ``(R, t)`` from camera 1 to camera 2, unit Frobenius norm."""
    f = np.linalg.inv(k2).T @ skew(translation) @ rotation @ np.linalg.inv(k1)
    return f / np.linalg.norm(f)


def warp_points(points: np.ndarray, homography: np.ndarray) -> np.ndarray:
    """``(M, 2)`` float64 positions ``H @ points[i]`` in pixels (``inf`` / ``nan`` at the horizon)."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    mapped = np.concatenate([p, np.ones((len(p), 1))], axis=1) @ np.asarray(homography, np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        return mapped[:, :2] / mapped[:, 2:]


def epipolar_distance(points1: torch.Tensor, points2: torch.Tensor, fundamental: torch.Tensor) -> torch.Tensor:
    """Distance in pixels from ``points2`` to the epipolar lines ``F x1`` in image 2.

    Args:
        points1: ``(B, N, 2)`` pixels in image 1.
        points2: ``(B, N, 2)`` pixels in image 2.
        fundamental: ``(B, 3, 3)``.

    Returns:
        ``(B, N)`` point-to-line distances, pixels.
    """
    x1 = torch.cat([points1, torch.ones_like(points1[..., :1])], dim=-1)
    x2 = torch.cat([points2, torch.ones_like(points2[..., :1])], dim=-1)
    lines = x1 @ fundamental.transpose(1, 2)  # row i = F @ x1_i
    numerator = (lines * x2).sum(-1).abs()
    return numerator / lines[..., :2].norm(dim=-1).clamp_min(1e-12)


def rotation_error_deg(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Angle of ``estimate^T truth`` in degrees."""
    cosine = (np.trace(estimate.T @ truth) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))


def translation_error_deg(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Angle between translation directions in degrees, sign-free (E fixes t only up to sign), in [0, 90]."""
    cosine = abs(float(estimate @ truth)) / max(np.linalg.norm(estimate) * np.linalg.norm(truth), 1e-12)
    return float(np.degrees(np.arccos(np.clip(cosine, 0.0, 1.0))))


def pose_auc(errors: np.ndarray, thresholds: tuple[float, ...] = (5.0, 10.0, 20.0)) -> list[float]:
    """Area under the recall-vs-error curve up to each threshold, normalised to [0, 1] (SuperGlue protocol)."""
    errors = np.sort(np.asarray(errors, np.float64))
    recall = (np.arange(len(errors)) + 1) / max(len(errors), 1)
    errors = np.concatenate([[0.0], errors])
    recall = np.concatenate([[0.0], recall])
    aucs = []
    for t in thresholds:
        last = int(np.searchsorted(errors, t))
        e = np.concatenate([errors[:last], [t]])
        r = np.concatenate([recall[:last], [recall[last - 1]]])
        aucs.append(float(np.trapezoid(r, x=e) / t))
    return aucs

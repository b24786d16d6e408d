"""Geometric verification: homography, fundamental and essential matrices from synthetic data."""

import cv2
import numpy as np
import pytest

from featureserve.models import homography_corner_error, intrinsics_matrix, verify


def test_homography_recovered_with_30_percent_outliers() -> None:
    rng = np.random.default_rng(0)
    truth = np.array([[1.1, 0.05, 30.0], [-0.04, 0.95, -12.0], [2e-4, 1e-4, 1.0]])
    points0 = rng.uniform(0, 640, (200, 2))
    points1 = cv2.perspectiveTransform(points0[None], truth)[0]
    outliers = rng.random(200) < 0.3
    points1[outliers] = rng.uniform(0, 640, (outliers.sum(), 2))
    result = verify(points0, points1, "homography", threshold=2.0)
    assert result.matrix is not None
    assert homography_corner_error(result.matrix, truth, (640, 480)) < 0.5
    assert np.array_equal(result.inliers, ~outliers)


def test_repeated_correspondences_are_fitted_and_counted_once() -> None:
    """SIFT's one keypoint per orientation matches one location twice: same fit, distinct inliers counted."""
    rng = np.random.default_rng(1)
    truth = np.array([[1.1, 0.05, 30.0], [-0.04, 0.95, -12.0], [2e-4, 1e-4, 1.0]])
    points0 = rng.uniform(0, 640, (200, 2))
    points1 = cv2.perspectiveTransform(points0[None], truth)[0]
    points1[:50] = rng.uniform(0, 640, (50, 2))  # outliers
    once = verify(points0, points1, "homography", threshold=2.0)
    copies = np.r_[np.arange(200), np.arange(0, 200, 3)]  # a third of them twice, outliers among them
    twice = verify(points0[copies], points1[copies], "homography", threshold=2.0)
    np.testing.assert_allclose(twice.matrix, once.matrix)
    np.testing.assert_array_equal(twice.inliers, once.inliers[copies])
    assert twice.num_inliers == once.num_inliers == 150 < int(twice.inliers.sum())
    assert twice.inlier_ratio == once.inlier_ratio == 0.75
    assert verify(points0[[0, 0, 0, 0, 1]], points1[[0, 0, 0, 0, 1]], "homography").message.startswith(
        "homography needs at least 4 distinct matches, got 2"
    )


def _two_view_scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    K = intrinsics_matrix([500.0, 500.0, 320.0, 240.0])
    angle = np.deg2rad(10)
    R = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    t = np.array([-1.0, 0.1, 0.05])
    world = np.column_stack([rng.uniform(-3, 3, 150), rng.uniform(-2, 2, 150), rng.uniform(6, 12, 150)])
    p0 = world @ K.T
    p1 = (world @ R.T + t) @ K.T
    return K, R, t, p0[:, :2] / p0[:, 2:], p1[:, :2] / p1[:, 2:]


def test_fundamental_matrix_satisfies_epipolar_constraint() -> None:
    _, _, _, p0, p1 = _two_view_scene(np.random.default_rng(1))
    result = verify(p0, p1, "fundamental", threshold=1.0)
    assert result.matrix is not None and result.num_inliers >= 140
    h0 = np.column_stack([p0, np.ones(len(p0))])
    h1 = np.column_stack([p1, np.ones(len(p1))])
    lines = h0 @ result.matrix.T
    distance = np.abs((h1 * lines).sum(1)) / np.linalg.norm(lines[:, :2], axis=1)
    assert np.median(distance) < 0.1


def test_essential_matrix_recovers_relative_pose() -> None:
    K, R, t, p0, p1 = _two_view_scene(np.random.default_rng(2))
    result = verify(p0, p1, "essential", threshold=1.0, intrinsics0=K, intrinsics1=K)
    assert result.rotation is not None and result.translation is not None
    assert np.allclose(result.rotation, R, atol=1e-3)
    assert np.allclose(result.translation, t / np.linalg.norm(t), atol=1e-3)


def test_too_few_points_says_why() -> None:
    result = verify(np.zeros((3, 2)), np.zeros((3, 2)), "homography")
    assert result.matrix is None and result.num_inliers == 0
    assert "at least 4" in result.message


def test_essential_without_intrinsics_is_refused() -> None:
    with pytest.raises(ValueError, match="intrinsics"):
        verify(np.zeros((10, 2)), np.zeros((10, 2)), "essential")


def test_intrinsics_validation() -> None:
    assert intrinsics_matrix([[1, 0, 2], [0, 1, 3], [0, 0, 1]])[1, 2] == 3
    with pytest.raises(ValueError):
        intrinsics_matrix([1.0, 2.0, 3.0])
    with pytest.raises(ValueError):
        intrinsics_matrix([-1.0, 1.0, 0.0, 0.0])

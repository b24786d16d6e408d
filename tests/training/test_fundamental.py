"""Eight-point F, degeneracy, Hartley normalisation, Sampson error, F distance and random draws on synthetic cameras."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from training.fundamental import (
    RANK_TOLERANCE,
    DegenerateConfigurationError,
    clip_lines,
    eight_point,
    estimate_fundamental,
    fundamental_distance,
    hartley_normalise,
    random_eight_point_draws,
    sampson_error,
)
from training.geometry import fundamental_matrix

SIZE = (640, 480)  # (W, H) of both images
K1 = np.array([[500.0, 0.0, 319.5], [0.0, 500.0, 239.5], [0.0, 0.0, 1.0]])
K2 = np.array([[450.0, 0.0, 330.0], [0.0, 470.0, 235.0], [0.0, 0.0, 1.0]])


def rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    """Rotation matrix about ``axis`` (Rodrigues)."""
    k = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    angle = np.radians(degrees)
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


R = rotation((0.2, 1.0, 0.1), 8.0)
T = np.array([-1.0, 0.1, 0.2])


def project(points: np.ndarray, k: np.ndarray, rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """Pixels ``(N, 2)`` of world points ``(N, 3)`` seen by the camera ``x_cam = R X + t``."""
    camera = points @ rot.T + trans
    pixels = camera @ k.T
    return pixels[:, :2] / pixels[:, 2:]


def inside(pixels: np.ndarray) -> np.ndarray:
    return (pixels >= -0.5).all(-1) & (pixels[:, 0] <= SIZE[0] - 0.5) & (pixels[:, 1] <= SIZE[1] - 0.5)


def correspondences(
    rng: np.random.Generator, n: int, planar: bool = False, rot: np.ndarray = R, trans: np.ndarray = T
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` exact correspondences visible in both images and the true ``F``; camera 1 is the world frame.

    Non-planar points lie at depths 4-12 along random image-1 rays; planar ones on a tilted plane at depth ~6.
    """
    pixels1 = rng.uniform([0.0, 0.0], [SIZE[0] - 1, SIZE[1] - 1], size=(8 * n, 2))
    rays = np.c_[pixels1, np.ones(8 * n)] @ np.linalg.inv(K1).T
    if planar:
        normal = rotation((1.0, -0.5, 0.2), 35.0) @ np.array([0.0, 0.0, 1.0])
        depth = 6.0 / (rays @ normal)
    else:
        depth = rng.uniform(4.0, 12.0, size=8 * n)
    world = rays * depth[:, None]
    pixels2 = project(world, K2, rot, trans)
    keep = inside(pixels2)
    assert keep.sum() >= n
    return pixels1[keep][:n], pixels2[keep][:n], fundamental_matrix(K1, K2, rot, trans)


def gauge(fundamental: np.ndarray) -> np.ndarray:
    """``F`` with unit norm and its largest-magnitude entry positive, the gauge `eight_point` returns."""
    fundamental = fundamental / np.linalg.norm(fundamental)
    return fundamental * np.sign(fundamental.flat[np.abs(fundamental).argmax()])


def up_to_scale(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Frobenius distance between the unit-norm matrices, minimised over sign."""
    estimate = estimate / np.linalg.norm(estimate)
    truth = truth / np.linalg.norm(truth)
    return float(min(np.linalg.norm(estimate - truth), np.linalg.norm(estimate + truth)))


def tensors(*arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(a) for a in arrays]


# -- eight_point ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [8, 9, 50])
def test_exact_non_planar_correspondences_give_the_true_f(n: int) -> None:
    points1, points2, truth = correspondences(np.random.default_rng(n), n)
    fundamental, degenerate = eight_point(*tensors(points1, points2))
    assert fundamental.shape == (3, 3) and fundamental.dtype == torch.float64
    assert not degenerate
    assert up_to_scale(fundamental.numpy(), truth) < 1e-9
    assert np.allclose(fundamental.numpy(), gauge(truth), atol=1e-9)
    singular = torch.linalg.svdvals(fundamental)
    assert singular[2] < 1e-12 * singular[0]
    assert torch.linalg.matrix_norm(fundamental) == pytest.approx(1.0, abs=1e-12)
    assert sampson_error(fundamental, *tensors(points1, points2)).max() < 1e-7


def test_different_subsets_give_the_same_f_in_the_same_sign_gauge() -> None:
    points1, points2, _ = correspondences(np.random.default_rng(1), 40)
    first, _ = eight_point(*tensors(points1[:20], points2[:20]))
    second, _ = eight_point(*tensors(points1[20:][::-1].copy(), points2[20:][::-1].copy()))
    assert torch.allclose(first, second, atol=1e-9)
    assert first.flatten()[first.abs().argmax()] > 0


def test_float32_input_is_solved_in_float64() -> None:
    points1, points2, truth = correspondences(np.random.default_rng(2), 50)
    fundamental, degenerate = eight_point(*(t.float() for t in tensors(points1, points2)))
    assert fundamental.dtype == torch.float64 and not degenerate
    assert up_to_scale(fundamental.numpy(), truth) < 1e-5


def test_batched_draws_recover_each_pairs_f() -> None:
    # B = 2 image pairs with different poses, D = 6 random eight-point draws each, as the detector reward uses it.
    rng = np.random.default_rng(3)
    scenes = [correspondences(rng, 50), correspondences(rng, 50, rot=rotation((1, 0, 0), -5), trans=[0.3, -1, 0.1])]
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([random_eight_point_draws(50, 6, generator) for _ in scenes])  # (B, D, 8)
    points1 = torch.stack([torch.from_numpy(s[0]) for s in scenes])[torch.arange(2)[:, None, None], draws]
    points2 = torch.stack([torch.from_numpy(s[1]) for s in scenes])[torch.arange(2)[:, None, None], draws]
    assert points1.shape == (2, 6, 8, 2)
    fundamental, degenerate = eight_point(points1, points2)
    assert fundamental.shape == (2, 6, 3, 3) and degenerate.shape == (2, 6)
    assert not degenerate.any()
    for b, (_, _, truth) in enumerate(scenes):
        for d in range(6):
            assert up_to_scale(fundamental[b, d].numpy(), truth) < 1e-7


@pytest.mark.parametrize("n", [8, 50])
def test_coplanar_correspondences_are_degenerate(n: int) -> None:
    planar1, planar2, _ = correspondences(np.random.default_rng(4), n, planar=True)
    general1, general2, _ = correspondences(np.random.default_rng(5), n)
    batch1 = torch.from_numpy(np.stack([general1, planar1]))
    batch2 = torch.from_numpy(np.stack([general2, planar2]))
    _, degenerate = eight_point(batch1, batch2)
    assert degenerate.tolist() == [False, True]
    # Float32 rounding of the pixels must not hide the degeneracy.
    _, degenerate = eight_point(batch1.float(), batch2.float())
    assert degenerate.tolist() == [False, True]
    with pytest.raises(DegenerateConfigurationError, match="coplanar or repeated"):
        estimate_fundamental(planar1, planar2)
    assert estimate_fundamental(general1, general2).shape == (3, 3)


def test_repeated_points_are_degenerate_but_a_spare_repeat_is_not() -> None:
    points1, points2, truth = correspondences(np.random.default_rng(6), 8)
    # Seven distinct correspondences, one of them twice: F has a pencil of solutions.
    seven1, seven2 = points1.copy(), points2.copy()
    seven1[7], seven2[7] = seven1[0], seven2[0]
    _, degenerate = eight_point(*tensors(seven1, seven2))
    assert degenerate
    with pytest.raises(DegenerateConfigurationError):
        estimate_fundamental(seven1, seven2)
    # Many copies of seven points are no better.
    _, degenerate = eight_point(*tensors(np.tile(seven1[:7], (7, 1)), np.tile(seven2[:7], (7, 1))))
    assert degenerate
    # One point repeated eight times: no spread at all, still a clean flag rather than NaNs or an exception.
    _, degenerate = eight_point(*tensors(np.repeat(points1[:1], 8, 0), np.repeat(points2[:1], 8, 0)))
    assert degenerate
    # Eight distinct points plus a duplicate still determine F.
    fundamental, degenerate = eight_point(*tensors(np.r_[points1, points1[:1]], np.r_[points2, points2[:1]]))
    assert not degenerate
    assert up_to_scale(fundamental.numpy(), truth) < 1e-9


def test_rank_tolerance_separates_exact_planar_from_general_draws() -> None:
    assert 1e-8 < RANK_TOLERANCE < 1e-4
    rng = np.random.default_rng(7)
    flags = [bool(eight_point(*tensors(*correspondences(rng, 8)[:2]))[1]) for _ in range(50)]
    assert sum(flags) == 0


def test_too_few_or_mismatched_correspondences_are_rejected() -> None:
    points1, points2, _ = correspondences(np.random.default_rng(8), 8)
    with pytest.raises(ValueError, match="at least 8"):
        eight_point(*tensors(points1[:7], points2[:7]))
    with pytest.raises(ValueError, match="expected"):
        eight_point(*tensors(points1, points2[:, :1]))
    with pytest.raises(ValueError, match="at least 8"):
        estimate_fundamental(points1[:7], points2[:7])


# -- hartley_normalise ------------------------------------------------------------------------------------------


def test_hartley_normalisation_centres_scales_and_is_the_returned_similarity() -> None:
    rng = np.random.default_rng(9)
    points = torch.from_numpy(rng.normal(size=(3, 4, 20, 2)) * [300.0, 20.0] + [1000.0, -300.0]).float()
    normalised, transform = hartley_normalise(points)
    assert normalised.shape == (3, 4, 20, 2) and transform.shape == (3, 4, 3, 3)
    assert torch.allclose(normalised.mean(dim=-2), torch.zeros(3, 4, 2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(normalised.norm(dim=-1).mean(dim=-1), torch.full((3, 4), np.sqrt(2.0), dtype=torch.float64))
    homogeneous = torch.cat([points.double(), torch.ones(3, 4, 20, 1, dtype=torch.float64)], -1)
    mapped = homogeneous @ transform.transpose(-1, -2)
    assert torch.allclose(mapped[..., 2], torch.ones(3, 4, 20, dtype=torch.float64))
    assert torch.allclose(mapped[..., :2], normalised, atol=1e-10)
    # A similarity: equal scales, no rotation or shear.
    assert torch.equal(transform[..., 0, 0], transform[..., 1, 1])
    assert (transform[..., 0, 1] == 0).all() and (transform[..., 1, 0] == 0).all()


# -- sampson_error ----------------------------------------------------------------------------------------------


def geometric_error(fundamental: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> float:
    """Smallest joint displacement of (x1, x2) onto the epipolar geometry, by numerical minimisation."""

    def squared(delta: np.ndarray) -> float:
        # For a moved x1 the best x2 is the foot of the perpendicular onto its epipolar line.
        line = fundamental @ np.r_[x1 + delta, 1.0]
        return float(delta @ delta + (line @ np.r_[x2, 1.0]) ** 2 / (line[:2] @ line[:2]))

    return float(
        np.sqrt(minimize(squared, np.zeros(2), method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-14}).fun)
    )


def test_sampson_error_is_zero_for_exact_and_along_line_shifts() -> None:
    points1, points2, truth = correspondences(np.random.default_rng(10), 30)
    assert sampson_error(*tensors(truth, points1, points2)).max() < 1e-9
    lines = points1 @ truth[:, :2].T + truth[:, 2]  # F x1 for every point
    along = np.stack([-lines[:, 1], lines[:, 0]], -1) / np.linalg.norm(lines[:, :2], axis=-1, keepdims=True)
    assert sampson_error(*tensors(truth, points1, points2 + 5.0 * along)).max() < 1e-9


def test_sampson_error_matches_the_geometric_error_for_a_perpendicular_shift() -> None:
    points1, points2, truth = correspondences(np.random.default_rng(11), 10)
    shift = 0.5
    lines = points1 @ truth[:, :2].T + truth[:, 2]
    normals = lines[:, :2] / np.linalg.norm(lines[:, :2], axis=-1, keepdims=True)
    moved = points2 + shift * normals
    errors = sampson_error(*tensors(truth, points1, moved)).numpy()
    expected = np.array([geometric_error(truth, a, b) for a, b in zip(points1, moved, strict=True)])
    assert np.allclose(errors, expected, rtol=1e-4)
    # Moving x1 as well beats moving x2 back alone, by about 1/sqrt(2) when both images see the line alike.
    assert (errors < shift).all() and (errors > 0.5 * shift).all()


def test_sampson_error_ignores_the_scale_and_sign_of_f_and_broadcasts() -> None:
    rng = np.random.default_rng(12)
    points1, points2, truth = correspondences(rng, 20)
    noisy2 = torch.from_numpy(points2 + rng.normal(scale=2.0, size=points2.shape))
    base = sampson_error(torch.from_numpy(truth), torch.from_numpy(points1), noisy2)
    assert base.min() > 1e-3  # otherwise the comparison below proves nothing
    for factor in (7.0, -0.01):
        assert torch.allclose(sampson_error(torch.from_numpy(factor * truth), torch.from_numpy(points1), noisy2), base)
    # Float32 points come back as float32 errors; the reference sees the same rounded points.
    single1 = torch.from_numpy(points1).float()
    batched = sampson_error(torch.from_numpy(np.stack([truth, 7 * truth])), single1, noisy2)
    assert batched.shape == (2, 20) and batched.dtype == torch.float32
    reference = sampson_error(torch.from_numpy(truth), single1.double(), noisy2)
    assert torch.allclose(batched, reference.float().expand(2, 20), rtol=1e-5)


# -- fundamental_distance ---------------------------------------------------------------------------------------


def reference_distance(estimate: np.ndarray, truth: np.ndarray, grid: int = 10) -> float:
    """`fundamental_distance` written point by point, with segment ends found from the four border crossings."""
    width, height = SIZE
    xs = (np.arange(grid) + 0.5) * width / grid - 0.5
    ys = (np.arange(grid) + 0.5) * height / grid - 0.5

    def sampson(f: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> float:
        h1, h2 = np.r_[x1, 1.0], np.r_[x2, 1.0]
        l2, l1 = f @ h1, f.T @ h2
        return abs(h2 @ f @ h1) / np.sqrt(l2[:2] @ l2[:2] + l1[:2] @ l1[:2])

    means = []
    for forward, generator in ((True, truth), (False, truth.T)):
        errors = []
        for x in xs:
            for y in ys:
                a, b, c = generator @ np.array([x, y, 1.0])
                ends = []
                for border in (-0.5, width - 0.5):
                    if b != 0 and -0.5 <= -(a * border + c) / b <= height - 0.5:
                        ends.append((border, -(a * border + c) / b))
                for border in (-0.5, height - 0.5):
                    if a != 0 and -0.5 <= -(b * border + c) / a <= width - 0.5:
                        ends.append((-(b * border + c) / a, border))
                if len(ends) < 2:
                    continue
                ends = np.array(ends)
                along = ends @ np.array([-b, a])
                start, end = ends[along.argmin()], ends[along.argmax()]
                if np.allclose(start, end):
                    continue
                middle = (start + end) / 2
                pair = ((x, y), middle) if forward else (middle, (x, y))
                errors.append(sampson(estimate, np.array(pair[0]), np.array(pair[1])))
        if errors:
            means.append(np.mean(errors))
    return float(np.mean(means)) if means else float("inf")


def test_clipped_lines_end_on_the_image_border() -> None:
    lines = torch.tensor([[0.0, 1.0, -10.0], [1.0, 1.0, -50.0], [1.0, 0.0, 500.0]])  # y = 10; x + y = 50; x = -500
    start, end, crosses = clip_lines(lines, (100, 80))
    assert crosses.tolist() == [True, True, False]
    ends = sorted([tuple(start[0].tolist()), tuple(end[0].tolist())])
    np.testing.assert_allclose(ends, [(-0.5, 10.0), (99.5, 10.0)])
    ends = sorted([tuple(start[1].tolist()), tuple(end[1].tolist())])
    np.testing.assert_allclose(ends, [(-0.5, 50.5), (50.5, -0.5)])


def test_distance_is_zero_for_the_truth_at_any_scale_and_sign() -> None:
    truth = torch.from_numpy(fundamental_matrix(K1, K2, R, T))
    assert fundamental_distance(truth, truth, SIZE) < 1e-9
    assert fundamental_distance(-3 * truth, truth, SIZE) < 1e-9
    assert fundamental_distance(truth, 0.2 * truth, SIZE) < 1e-9


def test_distance_grows_with_the_pose_error_and_is_nearly_symmetric() -> None:
    truth = fundamental_matrix(K1, K2, R, T)
    distances = []
    for degrees in (1.0, 4.0, 12.0):
        wrong = torch.from_numpy(fundamental_matrix(K1, K2, R, rotation((0.0, 1.0, 0.3), degrees) @ T))
        forward = float(fundamental_distance(wrong, torch.from_numpy(truth), SIZE))
        backward = float(fundamental_distance(torch.from_numpy(truth), wrong, SIZE))
        assert 0.5 < forward / backward < 2.0
        distances.append(forward)
    assert distances[0] > 0.3 and distances[-1] > 5.0
    assert distances == sorted(distances)


@pytest.mark.parametrize(
    "rot, trans", [(R, T), (np.eye(3), np.array([1.0, 0.0, 0.0])), (rotation((0, 0, 1), 30), np.array([0.2, 0.1, 1.0]))]
)
def test_distance_matches_a_point_by_point_reference(rot: np.ndarray, trans: np.ndarray) -> None:
    # The second pose has horizontal epipolar lines (parallel to the image rows), the third an epipole inside.
    truth = fundamental_matrix(K1, K1, rot, trans)
    estimate = fundamental_matrix(K1, K1, rotation((1, 1, 0), 2) @ rot, trans + np.array([0.0, 0.05, 0.0]))
    distance = float(fundamental_distance(*tensors(estimate, truth), SIZE))
    assert distance == pytest.approx(reference_distance(estimate, truth), rel=1e-9)
    assert distance > 0.1


def test_distance_is_batched_and_infinite_without_crossing_lines() -> None:
    truth = fundamental_matrix(K1, K2, R, T)
    estimates = np.stack(
        [
            [fundamental_matrix(K1, K2, R, rotation((0, 1, 0), d) @ T) for d in (0.0, 2.0, 5.0)],
            [fundamental_matrix(K1, K2, rotation((1, 0, 0), d) @ R, T) for d in (0.0, 2.0, 5.0)],
        ]
    )
    batched = fundamental_distance(*tensors(estimates, truth), SIZE, grid=7)
    assert batched.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            single = fundamental_distance(*tensors(estimates[i, j], truth), SIZE, grid=7)
            assert batched[i, j].item() == pytest.approx(single.item(), rel=1e-12, abs=1e-12)
    assert fundamental_distance(*tensors(estimates, truth), SIZE).float().dtype == torch.float32
    # Epipolar lines y = y1 + 10^4 in image 2 and y = y2 - 10^4 in image 1: none meets the other image.
    away = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, -1e4]], dtype=torch.float64)
    assert torch.isinf(fundamental_distance(torch.from_numpy(truth), away, SIZE))


# -- random_eight_point_draws -----------------------------------------------------------------------------------


def test_draws_are_distinct_varied_and_in_range() -> None:
    draws = random_eight_point_draws(50, 100, torch.Generator().manual_seed(0))
    assert draws.shape == (100, 8) and draws.dtype == torch.int64
    assert draws.min() >= 0 and draws.max() < 50
    assert (draws.sort(dim=-1).values.diff(dim=-1) > 0).all()
    assert len({tuple(row) for row in draws.sort(dim=-1).values.tolist()}) >= 95


def test_draws_are_reproducible_from_the_seed_and_advance_the_generator() -> None:
    first = random_eight_point_draws(50, 20, torch.Generator().manual_seed(3))
    again = random_eight_point_draws(50, 20, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    generator = torch.Generator().manual_seed(3)
    assert torch.equal(random_eight_point_draws(50, 20, generator), first)
    assert not torch.equal(random_eight_point_draws(50, 20, generator), first)


def test_draws_are_uniform_over_the_rows() -> None:
    draws = random_eight_point_draws(20, 4000, torch.Generator().manual_seed(1))
    counts = torch.bincount(draws.flatten(), minlength=20).double()
    # Each row is in a draw with probability 8/20: mean 1600, standard deviation 31 per row.
    assert (counts - 1600).abs().max() < 5 * np.sqrt(4000 * 0.4 * 0.6)
    # The first slot is uniform too, not biased towards low or high indices.
    first = torch.bincount(draws[:, 0], minlength=20).double()
    assert (first - 200).abs().max() < 5 * np.sqrt(4000 * 0.05 * 0.95)


def test_draws_need_eight_rows() -> None:
    with pytest.raises(ValueError, match="at least 8"):
        random_eight_point_draws(7, 10, torch.Generator().manual_seed(0))
    assert (
        random_eight_point_draws(8, 3, torch.Generator().manual_seed(0)).sort(dim=-1).values.tolist()
        == [list(range(8))] * 3
    )


# -- noise ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_noisy_correspondences_give_a_close_f(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    points1, points2, truth = correspondences(rng, 50)
    noisy1 = points1 + rng.normal(scale=0.5, size=points1.shape)
    noisy2 = points2 + rng.normal(scale=0.5, size=points2.shape)
    fundamental, degenerate = eight_point(*tensors(noisy1, noisy2))
    assert not degenerate
    # Noise makes the least-squares solution full rank; the estimate must still be a fundamental matrix.
    singular = torch.linalg.svdvals(fundamental)
    assert singular[2] < 1e-12 * singular[0]
    distance = float(fundamental_distance(fundamental, torch.from_numpy(truth), SIZE))
    assert 0.0 < distance < 2.0

"""Fundamental matrices for the SCFeat detector reward: eight-point estimation, Sampson error, F distance, draws.

The reward of the DISK-style policy gradient scales with how well an ``F`` estimated from eight randomly drawn
"good" matches agrees with the ground-truth ``F``. Everything here is batched over leading dimensions and
computes in float64.

Conventions (those of `training.geometry`): pixels are ``(x, y)`` with pixel centres at integer coordinates, and
``F`` maps image-1 pixels to image-2 epipolar lines, ``x2^T F x1 = 0``.

References:
    R. Hartley, "In defense of the eight-point algorithm", IEEE TPAMI 19(6), 1997. The linear eight-point
    solution is badly conditioned in raw pixel coordinates, because the entries of the design matrix range
    from about 1 to about 10^5; moving each image's points to their centroid and scaling them to a mean
    distance of sqrt(2) before solving, then undoing the two similarities, makes it as accurate as iterative
    methods in practice.
    R. Hartley and A. Zisserman, "Multiple View Geometry in Computer Vision", 2nd ed., 2003, §11.4.3. The
    Sampson error linearises the epipolar constraint about the measured correspondence, which gives a
    closed-form first-order approximation of the smallest joint displacement of both points that makes them
    satisfy ``x2^T F x1 = 0`` (the geometric, or "gold standard", error).
    Z. Zhang, "Determining the epipolar geometry and its uncertainty: a review", IJCV 27(2), 1998, for the
    idea behind `fundamental_distance`: compare two ``F`` through correspondences that one of them generates.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# sigma_8 / sigma_1 of the Hartley-normalised design matrix at or below which F counts as undetermined. Exact
# coplanar or repeated input gives about 1e-16, and at most about 4e-8 once 640 x 480 pixels are rounded to
# float32; of 20 000 random eight-point draws from non-planar synthetic scenes, 0.03 % fell below 1e-6 (0.2 % below
# 1e-5). Noisy coplanar input is not caught by any tolerance: its ratio is set by the noise.
RANK_TOLERANCE = 1e-6


class DegenerateConfigurationError(ValueError):
    """The correspondences do not determine a fundamental matrix (coplanar or repeated points)."""


def homogeneous(points: Tensor) -> Tensor:
    """``(..., N, 3)`` homogeneous coordinates ``(x, y, 1)`` of ``(..., N, 2)`` points."""
    return torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)


def _check_correspondences(points1: Tensor, points2: Tensor, minimum: int) -> None:
    if points1.shape[-1:] != (2,) or points1.dim() < 2:
        raise ValueError(f"points1 has shape {tuple(points1.shape)}, expected (..., N, 2)")
    if points2.shape != points1.shape:
        raise ValueError(f"points2 has shape {tuple(points2.shape)}, expected that of points1 {tuple(points1.shape)}")
    if points1.shape[-2] < minimum:
        raise ValueError(f"{points1.shape[-2]} correspondences given, at least {minimum} are needed")


def hartley_normalise(points: Tensor) -> tuple[Tensor, Tensor]:
    """Translate points to their centroid and scale them to a mean distance of sqrt(2) from it.

    Args:
        points: ``(..., N, 2)`` pixels.

    Returns:
        The normalised points ``(..., N, 2)`` in float64 and the similarity ``T`` ``(..., 3, 3)`` with
        ``x_norm = T x`` in homogeneous coordinates.
    """
    points = points.to(torch.float64)
    centroid = points.mean(dim=-2, keepdim=True)
    centred = points - centroid
    # Repeated points have zero spread; any finite scale keeps them at the origin, and eight_point flags them.
    mean_distance = centred.norm(dim=-1).mean(dim=-1)
    scale = np.sqrt(2.0) / mean_distance.clamp_min(1e-12)
    transform = torch.zeros(*points.shape[:-2], 3, 3, dtype=torch.float64, device=points.device)
    transform[..., 0, 0] = scale
    transform[..., 1, 1] = scale
    transform[..., :2, 2] = -scale[..., None] * centroid[..., 0, :]
    transform[..., 2, 2] = 1.0
    return centred * scale[..., None, None], transform


def eight_point(points1: Tensor, points2: Tensor) -> tuple[Tensor, Tensor]:
    """Hartley-normalised linear eight-point fundamental matrix, with a flag for undetermined configurations.

    Args:
        points1: ``(..., N, 2)`` pixels in image 1, ``N >= 8``.
        points2: ``(..., N, 2)`` the corresponding pixels in image 2.

    Returns:
        ``F`` ``(..., 3, 3)`` float64 of rank 2 and unit Frobenius norm, its sign fixed so that the entry of
        largest magnitude is positive; and ``degenerate`` ``(...,)`` bool, True where the correspondences do not
        determine ``F`` (coplanar scene points, repeated points) or the result is not finite. ``F`` is
        meaningless where ``degenerate`` is True.

    Raises:
        ValueError: if the shapes differ, are not ``(..., N, 2)``, or ``N < 8``.
    """
    _check_correspondences(points1, points2, 8)
    normalised1, transform1 = hartley_normalise(points1)
    normalised2, transform2 = hartley_normalise(points2)
    x1 = homogeneous(normalised1)
    x2 = homogeneous(normalised2)
    # Row n is kron(x2_n, x1_n), so that row . vec(F) (row-major) = x2_n^T F x1_n.
    design = (x2[..., :, None] * x1[..., None, :]).flatten(-2)
    # With exactly eight rows the null vector is the ninth right singular vector, which only full_matrices gives.
    _, singular, vh = torch.linalg.svd(design, full_matrices=design.shape[-2] < 9)
    # Coplanar points satisfy x2 ~ H x1, so every F = H^-T [e]_x fits them: a null space of dimension >= 3, and
    # hence sigma_8 = 0. Repeated points leave fewer than eight independent rows, with the same effect.
    degenerate = singular[..., 7] <= RANK_TOLERANCE * singular[..., 0]
    fundamental = vh[..., -1, :].reshape(*vh.shape[:-2], 3, 3)
    # A fundamental matrix has rank 2; the closest rank-2 matrix in Frobenius norm drops the smallest singular value.
    u, s, vh_f = torch.linalg.svd(fundamental)
    s = torch.cat([s[..., :2], torch.zeros_like(s[..., 2:])], dim=-1)
    fundamental = u @ torch.diag_embed(s) @ vh_f
    # x2n^T Fn x1n = x2^T (T2^T Fn T1) x1.
    fundamental = transform2.transpose(-1, -2) @ fundamental @ transform1
    fundamental = fundamental / torch.linalg.matrix_norm(fundamental).clamp_min(1e-300)[..., None, None]
    flat = fundamental.flatten(-2)
    largest = flat.gather(-1, flat.abs().argmax(dim=-1, keepdim=True))
    fundamental = fundamental * torch.where(largest < 0, -1.0, 1.0)[..., None]
    degenerate = degenerate | ~torch.isfinite(fundamental).flatten(-2).all(dim=-1)
    return fundamental, degenerate


def estimate_fundamental(points1: np.ndarray, points2: np.ndarray) -> np.ndarray:
    """Fundamental matrix ``(3, 3)`` (float64, unit Frobenius norm) from ``(N, 2)`` pixel correspondences, N >= 8.

    Raises:
        DegenerateConfigurationError: if the correspondences do not determine ``F``.
        ValueError: if the shapes are not two equal ``(N, 2)`` with ``N >= 8``.
    """
    points1 = np.asarray(points1, np.float64)
    points2 = np.asarray(points2, np.float64)
    if points1.ndim != 2:
        raise ValueError(f"points1 has shape {points1.shape}, expected (N, 2)")
    fundamental, degenerate = eight_point(torch.from_numpy(points1), torch.from_numpy(points2))
    if bool(degenerate):
        raise DegenerateConfigurationError("the correspondences are coplanar or repeated: F is not determined")
    return fundamental.numpy()


def sampson_error(fundamental: Tensor, points1: Tensor, points2: Tensor) -> Tensor:
    """Sampson error of each correspondence, a first-order geometric distance in pixels.

    ``|x2^T F x1| / sqrt((F x1)_1^2 + (F x1)_2^2 + (F^T x2)_1^2 + (F^T x2)_2^2)``: the square root of the usual
    squared Sampson error, so it approximates the length of the smallest joint displacement of both points onto
    the epipolar geometry of ``F``. It does not change when ``F`` is scaled by any non-zero factor.

    Args:
        fundamental: ``(..., 3, 3)``.
        points1: ``(..., N, 2)`` pixels in image 1.
        points2: ``(..., N, 2)`` pixels in image 2.

    Returns:
        ``(..., N)`` pixels, in the dtype of ``points1`` (float64 if it is not floating point).
    """
    dtype = points1.dtype if points1.is_floating_point() else torch.float64
    fundamental = fundamental.to(torch.float64)
    x1 = homogeneous(points1.to(torch.float64))
    x2 = homogeneous(points2.to(torch.float64))
    lines2 = x1 @ fundamental.transpose(-1, -2)  # row n = F x1_n, the epipolar line in image 2
    lines1 = x2 @ fundamental  # row n = F^T x2_n, the epipolar line in image 1
    algebraic = (lines2 * x2).sum(dim=-1)
    gradient = lines2[..., :2].square().sum(dim=-1) + lines1[..., :2].square().sum(dim=-1)
    # |a| / sqrt(g) rather than sqrt(a^2 / g): the gradient stays finite for exact correspondences.
    return (algebraic.abs() / gradient.clamp_min(1e-300).sqrt()).to(dtype)


def _grid(image_size: tuple[int, int], grid: int) -> Tensor:
    """``(grid * grid, 2)`` centres of a regular grid of cells covering the image, pixels."""
    width, height = image_size
    xs = (torch.arange(grid, dtype=torch.float64) + 0.5) * width / grid - 0.5
    ys = (torch.arange(grid, dtype=torch.float64) + 0.5) * height / grid - 0.5
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([x, y], dim=-1).reshape(-1, 2)


def clip_lines(lines: Tensor, image_size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Where lines ``(..., 3)`` cross a ``(W, H)`` image: both ends ``(..., 2)`` and whether they cross it at all.

    The image is the pixel area ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``; lines that miss it get both ends at the
    point of the line closest to the image centre (or anywhere, for the line at infinity).
    """
    width, height = image_size
    low = lines.new_tensor([-0.5, -0.5])
    high = lines.new_tensor([width - 0.5, height - 0.5])
    normal = lines[..., :2]
    norm = normal.norm(dim=-1, keepdim=True)
    finite_line = norm[..., 0] > 0  # (0, 0, c) is the line at infinity, which never enters the image
    norm = torch.where(norm > 0, norm, 1.0)
    # Parametrise the line as foot + s * direction, the foot being the point closest to the image centre, then
    # intersect the parameter intervals in which x and y lie inside the image (Liang-Barsky clipping).
    centre = (low + high) / 2
    offset = ((normal * centre).sum(dim=-1, keepdim=True) + lines[..., 2:]) / norm
    foot = centre - offset * normal / norm
    direction = torch.stack([-normal[..., 1], normal[..., 0]], dim=-1) / norm
    moving = direction != 0
    safe = torch.where(moving, direction, 1.0)
    to_low = (low - foot) / safe
    to_high = (high - foot) / safe
    inside = (foot >= low) & (foot <= high)
    # An axis the line runs parallel to either constrains nothing or excludes the whole line.
    unbounded = torch.where(inside, torch.inf, -torch.inf)
    start = torch.where(moving, torch.minimum(to_low, to_high), -unbounded).amax(dim=-1)
    end = torch.where(moving, torch.maximum(to_low, to_high), unbounded).amin(dim=-1)
    crosses = finite_line & (start < end)
    start, end = torch.where(crosses, start, 0.0), torch.where(crosses, end, 0.0)
    return foot + start[..., None] * direction, foot + end[..., None] * direction, crosses


def fundamental_distance(estimate: Tensor, truth: Tensor, image_size: tuple[int, int], grid: int = 10) -> Tensor:
    """Symmetric geometric distance in pixels between two fundamental matrices, after Zhang (IJCV 1998).

    A ``grid x grid`` regular grid of points in image 1 is sent to its epipolar lines under ``truth`` in image 2;
    for every line that crosses image 2, the midpoint of its segment inside the image makes a correspondence that
    fits ``truth`` exactly. The distance in that direction is the mean `sampson_error` of ``estimate`` over these
    correspondences; the same is done from image 2 with ``truth^T``, and the two means are averaged (a direction
    without any crossing line is left out). Both images have the same size. Scale and sign of either matrix do
    not matter.

    Args:
        estimate: ``(..., 3, 3)``.
        truth: ``(..., 3, 3)``, broadcastable with ``estimate``.
        image_size: ``(W, H)`` pixels.
        grid: points per side of the grid.

    Returns:
        ``(...)`` pixels, in the dtype of ``estimate`` (float64 if it is not floating point); ``inf`` where no
        grid point in either image has an epipolar line crossing the other image, NaN where ``estimate`` is not
        finite.
    """
    dtype = estimate.dtype if estimate.is_floating_point() else torch.float64
    batch = torch.broadcast_shapes(estimate.shape[:-2], truth.shape[:-2])
    estimate = estimate.to(torch.float64).expand(*batch, 3, 3)
    truth = truth.to(torch.float64).expand(*batch, 3, 3)
    points = _grid(image_size, grid).to(truth.device).expand(*batch, grid * grid, 2)
    total = truth.new_zeros(batch)
    directions = truth.new_zeros(batch)
    for forward in (True, False):
        # Backward, the roles of the images swap: F^T maps image-2 points to image-1 lines.
        generator = truth if forward else truth.transpose(-1, -2)
        lines = homogeneous(points) @ generator.transpose(-1, -2)
        first, last, crosses = clip_lines(lines, image_size)
        partners = (first + last) / 2
        pair = (points, partners) if forward else (partners, points)
        errors = sampson_error(estimate, *pair)
        count = crosses.sum(dim=-1)
        mean = torch.where(crosses, errors, 0.0).sum(dim=-1) / count.clamp_min(1)
        total = total + torch.where(count > 0, mean, 0.0)
        directions = directions + (count > 0).to(directions.dtype)
    return torch.where(directions > 0, total / directions.clamp_min(1), torch.inf).to(dtype)


def random_eight_point_draws(count: int, draws: int, generator: torch.Generator) -> Tensor:
    """Indices ``(draws, 8)`` (int64) of eight distinct rows out of ``count``, uniform per draw.

    Every draw comes from ``generator``, which is advanced and never re-seeded, so successive calls differ and a
    run is reproducible from the generator's seed alone. The indices are on the generator's device.

    Raises:
        ValueError: if ``count < 8`` or ``draws < 0``.
    """
    if count < 8:
        raise ValueError(f"{count} correspondences to draw from, at least 8 are needed")
    if draws < 0:
        raise ValueError(f"draws is {draws}, expected a non-negative count")
    # The top 8 of i.i.d. uniform keys is a uniformly random 8-subset; topk never repeats an index, even on ties.
    keys = torch.rand(draws, count, generator=generator, device=generator.device)
    return keys.topk(8, dim=-1).indices

"""Image gradients and the dominant gradient orientation at keypoints, for descriptors steered by quarter turns.

A dense network that was trained on upright images describes a keypoint well only while the image is rotated by
less than about 30 degrees (docs/models/scfeat.md, "Steered descriptors"). Rotating the whole image by multiples of
90 degrees is exact on a pixel grid, so a steered descriptor is the network's descriptor on the two quarter-turn
rotations of the image that bring the keypoint's dominant orientation nearest to zero, blended linearly by how
near each one brings it: the blend is a continuous function of the orientation, so noise in the orientation
moves the descriptor a little instead of flipping it to another rotation.

Conventions: ``torch.rot90(x, k, dims=(-2, -1))`` and ``np.rot90(x, k)`` turn an image by ``k`` quarter turns,
which lowers every orientation ``atan2(dy, dx)`` in pixel coordinates (y down) by ``k * pi / 2``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

ORIENTATION_BINS = 36  # 10-degree bins, as in SIFT (Lowe, IJCV 2004, section 5)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x`` ``(B, C, H, W)`` smoothed by a separable Gaussian of standard deviation ``sigma`` (reflect padding)."""
    radius = max(1, round(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    if x.device.type == "cpu" and x.dtype == torch.float32 and not (x.requires_grad and torch.is_grad_enabled()):
        return _opencv_blur(x, kernel.float().numpy())
    weights = kernel.tolist()
    # Weighted sums of shifted views: on the CPU, faster than a depth-wise convolution of a few channels.
    for dim, pad in ((-1, (radius, radius, 0, 0)), (-2, (0, 0, radius, radius))):
        padded, length = F.pad(x, pad, mode="reflect"), x.shape[dim]
        x = padded.narrow(dim, 0, length) * weights[0]
        for offset, weight in enumerate(weights[1:], start=1):
            x = x.add(padded.narrow(dim, offset, length), alpha=weight)
    return x


def _opencv_blur(x: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """`gaussian_blur` on the CPU without autograd: OpenCV's separable filter per plane, faster than the
    shifted-view sums on the single-channel maps of the detectors (its BORDER_REFLECT_101 is torch's "reflect")."""
    x = x.contiguous()
    out = torch.empty_like(x)
    planes, blurred = x.numpy().reshape(-1, *x.shape[-2:]), out.numpy().reshape(-1, *x.shape[-2:])
    for plane, target in zip(planes, blurred, strict=True):
        cv2.sepFilter2D(plane, -1, kernel, kernel, dst=target, borderType=cv2.BORDER_REFLECT_101)
    return out


def central_gradients(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dx, dy)`` of a ``(B, C, H, W)`` image by central differences, one-sided (replicated) on the border."""
    dx = F.pad(image[..., :, 2:] - image[..., :, :-2], (1, 1, 0, 0), mode="replicate") / 2
    dy = F.pad(image[..., 2:, :] - image[..., :-2, :], (0, 0, 1, 1), mode="replicate") / 2
    return dx, dy


def dominant_orientations(
    image: torch.Tensor, points: torch.Tensor, smoothing: float = 1.5, window: float = 6.0
) -> torch.Tensor:
    """``(N,)`` dominant gradient orientation in radians, in ``[-pi, pi)``, at ``(N, 2)`` pixel ``(x, y)`` points.

    SIFT's orientation assignment (Lowe 2004, section 5) at one scale: the gradients of the ``(H, W)`` grey image
    smoothed by ``smoothing`` px vote, by magnitude times a Gaussian window of ``window`` px, into 36 bins within
    two window radii of the point; the histogram is smoothed circularly and its peak refined by a parabola.
    """
    height, width = image.shape
    dx, dy = central_gradients(gaussian_blur(image[None, None].float(), smoothing))
    magnitude, angle = torch.hypot(dx, dy)[0, 0], torch.atan2(dy, dx)[0, 0]
    radius = math.ceil(2 * window)
    offsets = torch.arange(-radius, radius + 1, device=image.device)
    oy, ox = torch.meshgrid(offsets, offsets, indexing="ij")
    weights = torch.exp(-(ox**2 + oy**2) / (2 * window**2)).flatten()
    centres = points.round().long()
    xs = (centres[:, :1] + ox.flatten()).clamp(0, width - 1)
    ys = (centres[:, 1:] + oy.flatten()).clamp(0, height - 1)
    votes = magnitude[ys, xs] * weights
    bins = ((angle[ys, xs] + math.pi) / (2 * math.pi) * ORIENTATION_BINS).long() % ORIENTATION_BINS
    histogram = torch.zeros(len(points), ORIENTATION_BINS, device=image.device).scatter_add_(1, bins, votes)
    for _ in range(2):
        histogram = (histogram.roll(1, 1) + histogram + histogram.roll(-1, 1)) / 3
    peak = histogram.argmax(dim=1, keepdim=True)
    before, centre, after = (histogram.gather(1, (peak + d) % ORIENTATION_BINS)[:, 0] for d in (-1, 0, 1))
    curvature = before - 2 * centre + after
    offset = torch.where(curvature < 0, 0.5 * (before - after) / curvature.clamp(max=-1e-12), 0.0)
    return (peak[:, 0] + 0.5 + offset) * (2 * math.pi / ORIENTATION_BINS) - math.pi


def quarter_turn_weights(orientations: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` weights of the images turned by 0..3 quarter turns: the two that bring each orientation nearest
    to zero, linear in how near (they sum to 1)."""
    turns = orientations / (math.pi / 2)
    lower = turns.floor()
    upper_weight = turns - lower
    weights = torch.zeros(len(orientations), 4, device=orientations.device)
    weights.scatter_(1, (lower.long() % 4)[:, None], (1 - upper_weight)[:, None])
    return weights.scatter_add_(1, ((lower.long() + 1) % 4)[:, None], upper_weight[:, None])


def turn_points(points: torch.Tensor, turns: int, size: tuple[int, int]) -> torch.Tensor:
    """``(N, 2)`` pixel ``(x, y)`` of a ``(width, height)`` image -> the same pixels in the image turned by
    ``turns`` quarter turns (``torch.rot90`` / ``np.rot90``)."""
    width, height = size
    for _ in range(turns % 4):
        points = torch.stack([points[:, 1], width - 1 - points[:, 0]], dim=1)
        width, height = height, width
    return points

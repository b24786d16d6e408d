"""Dominant orientations, quarter turns and the steered descriptors of dense models (`upright: False`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from featureserve.models import load_model
from featureserve.models.orientation import dominant_orientations, gaussian_blur, quarter_turn_weights, turn_points

# 256 x 320: a multiple of the 64-px size bucket, so turning the image and padding it commute exactly.
IMAGE = np.ascontiguousarray(data.camera()[100:356, 96:416])
SIZE = (IMAGE.shape[1], IMAGE.shape[0])


@pytest.fixture(scope="module")
def points() -> torch.Tensor:
    """Interior pixels of ``IMAGE`` on a grid, away from the border that the histogram window would clip."""
    ys, xs = np.mgrid[24 : SIZE[1] - 24 : 16, 24 : SIZE[0] - 24 : 16]
    return torch.from_numpy(np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32))


def angle_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a - b`` wrapped to ``[-pi, pi)``."""
    return (a - b + math.pi) % (2 * math.pi) - math.pi


def test_turn_points_follows_rot90(points: torch.Tensor) -> None:
    image = torch.from_numpy(IMAGE)
    xs, ys = points[:, 0].long(), points[:, 1].long()
    for turns in range(4):
        turned = turn_points(points, turns, SIZE).long()
        np.testing.assert_array_equal(torch.rot90(image, turns)[turned[:, 1], turned[:, 0]], image[ys, xs])


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_dominant_orientation_turns_with_the_image(points: torch.Tensor, turns: int) -> None:
    image = torch.from_numpy(IMAGE).float()
    upright = dominant_orientations(image, points)
    turned = dominant_orientations(torch.rot90(image, turns), turn_points(points, turns, SIZE))
    error = angle_difference(turned, upright - turns * math.pi / 2).abs()
    # Blur and histogram are the same up to float rounding, which can only tip a near-tie between two peaks.
    assert (error < math.radians(0.5)).float().mean() > 0.95


def test_quarter_turn_weights_blend_the_two_nearest_turns() -> None:
    orientations = torch.tensor([0.0, math.pi / 4, -math.pi / 2, math.pi / 2 + 0.3, 3.0])
    weights = quarter_turn_weights(orientations)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(5))
    torch.testing.assert_close(weights[0], torch.tensor([1.0, 0, 0, 0]))
    torch.testing.assert_close(weights[1], torch.tensor([0.5, 0.5, 0, 0]))
    torch.testing.assert_close(weights[2], torch.tensor([0, 0, 0, 1.0]))  # turned 3 times, it points at 0
    assert weights[3, 1] > weights[3, 2] > 0 and weights[3, [0, 3]].sum() == 0
    assert (weights > 0).sum(dim=1).max() <= 2


def test_steered_descriptors_survive_a_quarter_turn(points: torch.Tensor) -> None:
    """The same pixels in the image and in the image turned by 90 degrees: steered descriptors agree, upright
    ones do not."""
    turned_image = np.ascontiguousarray(np.rot90(IMAGE))
    turned_points = turn_points(points, 1, SIZE).numpy()
    similarity = {}
    for upright in (True, False):
        caps = load_model("caps", upright=upright)
        [before, after] = caps.describe([IMAGE, turned_image], [points.numpy(), turned_points])
        similarity[upright] = np.sum(before.descriptors * after.descriptors, axis=1)
    assert np.median(similarity[False]) > 0.99 and np.mean(similarity[False] > 0.95) > 0.9
    assert np.median(similarity[True]) < 0.9


def test_steered_model_reports_it_in_its_card() -> None:
    assert load_model("caps", upright=False).card.details["conf"]["upright"] is False
    with pytest.raises(ValueError, match="unknown options"):
        load_model("sift", upright=False)  # the classical models have their own orientation


@pytest.mark.parametrize("sigma", [0.5, 1.6, 2.0])
def test_gaussian_blur_is_the_separable_convolution_and_keeps_gradients(sigma: float) -> None:
    """The shifted-view sums equal a depth-wise convolution by the normalised kernel, reflect-padded."""
    x = torch.randn(2, 3, 40, 56, dtype=torch.float64, requires_grad=True)
    radius = max(1, round(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).repeat(3, 1, 1, 1)
    rows = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel, groups=3)
    expected = F.conv2d(F.pad(rows, (0, 0, radius, radius), mode="reflect"), kernel.transpose(2, 3), groups=3)
    assert torch.allclose(gaussian_blur(x, sigma), expected, atol=1e-12)
    assert torch.allclose(gaussian_blur(torch.ones(1, 1, 9, 9), sigma), torch.ones(1, 1, 9, 9))
    assert torch.autograd.gradcheck(lambda v: gaussian_blur(v, sigma), (x[:1, :1, :10, :12].detach().requires_grad_(),))
    # float32 on the CPU without gradients goes through OpenCV: the same values, rounding aside.
    with torch.no_grad():
        crop = x.detach().float()[:, :, 3:, 5:]  # a non-contiguous view too
        assert not crop.is_contiguous()
        assert torch.allclose(gaussian_blur(crop, sigma).double(), gaussian_blur(crop.double(), sigma), atol=1e-5)

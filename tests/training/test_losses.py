"""The CAPS equations: soft-argmax, pixel convention, epipolar geometry and the loss on perfect matches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featureserve.models.dense import sample_descriptors
from training.data.synthetic import SceneConfig, SceneGenerator, project
from training.geometry import epipolar_distance, fundamental_matrix, pose_auc
from training.losses import CAPSLoss, LossConfig, cell_centres, match_in_window, sample_map, soft_argmax, window_offsets


def test_one_hot_soft_argmax_returns_the_location_and_zero_spread() -> None:
    coordinates = torch.tensor([[3.0, 4.0], [10.0, -2.0], [7.5, 1.25]])
    logits = torch.full((1, 1, 3), float("-inf"))
    logits[0, 0, 2] = 0.0
    location, spread = soft_argmax(logits, coordinates)
    assert torch.equal(location[0, 0], coordinates[2])
    assert spread.item() == pytest.approx(0.0, abs=1e-4)


def test_uniform_soft_argmax_spread_is_the_sum_of_standard_deviations() -> None:
    coordinates = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [2.0, 4.0]])
    location, spread = soft_argmax(torch.zeros(1, 1, 4), coordinates)
    assert location[0, 0].tolist() == [1.0, 2.0]
    assert spread.item() == pytest.approx(1.0 + 2.0)


@pytest.mark.parametrize("stride", [1, 4, 16])
def test_pixel_convention_round_trips(stride: int) -> None:
    # A map whose cell (j, i) holds its own centre pixel (x, y): sampling at a pixel returns that pixel.
    h, w = 6, 8
    centres = cell_centres((h, w), stride).reshape(h, w, 2).permute(2, 0, 1)[None]
    points = cell_centres((h, w), stride)[None]
    assert torch.allclose(sample_map(centres, points, stride), points, atol=1e-4)
    # Between cell centres bilinear sampling interpolates linearly in pixels.
    between = points[:, :-1] + stride / 2
    inner = (between[..., 0] < (w - 1) * stride) & (between[..., 1] < (h - 1) * stride)
    assert torch.allclose(sample_map(centres, between, stride)[inner], between[inner], atol=1e-4)
    # The serving sampler shares the convention: a one-hot map peaks where its cell centre is.
    one_hot = torch.zeros(1, 2, h, w)
    one_hot[0, 0, 2, 3] = 1
    one_hot[0, 1] = 1 - one_hot[0, 0]
    centre = torch.tensor([[[(3 + 0.5) * stride - 0.5, (2 + 0.5) * stride - 0.5]]])
    assert sample_descriptors(one_hot, centre, stride)[0, 0, 0].item() == pytest.approx(1.0)


@pytest.fixture(scope="module")
def synthetic_pair():
    """One procedural-texture synthetic pair (no photo textures needed)."""
    generator = SceneGenerator([], SceneConfig(width=160, height=120))
    return generator.pair(np.random.default_rng(3))


def test_synthetic_points_have_zero_epipolar_distance(synthetic_pair) -> None:
    pair = synthetic_pair
    projected, depth2 = project(pair.depth1, pair.k1, pair.k2, pair.rotation, pair.translation)
    ys, xs = np.nonzero(pair.visible1)
    assert len(xs) > 1000
    x1 = torch.tensor(np.stack([xs, ys], 1), dtype=torch.float64)[None]
    x2 = torch.tensor(projected[ys, xs], dtype=torch.float64)[None]
    f = torch.tensor(fundamental_matrix(pair.k1, pair.k2, pair.rotation, pair.translation))[None]
    assert epipolar_distance(x1, x2, f).max().item() < 1e-3
    assert (depth2[ys, xs] > 0).all()
    # A point moved off its epipolar line by 5 px along the line's normal is 5 px away.
    line = (f[0] @ torch.cat([x1[0, 0], torch.ones(1, dtype=torch.float64)]))[:2]
    moved = x2[:, :1] + 5 * line / line.norm()
    assert epipolar_distance(x1[:, :1], moved, f).item() == pytest.approx(5.0, rel=1e-6)


def test_window_soft_argmax_finds_a_planted_match() -> None:
    target = F.normalize(torch.randn(1, 8, 12, 16), dim=1)
    true_pixel = torch.tensor([[[25.5, 17.5]]])  # the centre of fine cell (6, 4): its descriptor is unit-length
    query = sample_map(target, true_pixel, 4)
    offsets = window_offsets(9, (8.0, 8.0))  # 2 px spacing; the window is centred off the true pixel
    centre = true_pixel + torch.tensor([4.0, -2.0])
    result = match_in_window(query, target, 4, centre, offsets, (64, 48), temperature=1000.0)
    assert torch.allclose(result.location, true_pixel, atol=0.5)


def _one_hot_map(size: tuple[int, int], stride: int) -> torch.Tensor:
    """A map whose descriptor at each cell is a one-hot code of that cell: matching it is unambiguous."""
    h, w = size[1] // stride, size[0] // stride
    return torch.eye(h * w).reshape(1, h * w, h, w)


def test_loss_is_zero_for_perfect_correspondences() -> None:
    # Identity pose with a pure x translation: F maps each point to its own row; image 2 = image 1.
    width, height = 128, 96
    k = np.array([[100.0, 0, 63.5], [0, 100.0, 47.5], [0, 0, 1]])
    fundamental = torch.tensor(fundamental_matrix(k, k, np.eye(3), np.array([1.0, 0, 0])), dtype=torch.float32)
    # Query points at fine-cell centres that are also coarse-cell centres, so both arg-max grids hit them.
    points = torch.tensor([[[23.5, 23.5], [71.5, 39.5], [103.5, 71.5], [55.5, 55.5]]])
    outputs = {"coarse": _one_hot_map((width, height), 16), "fine": _one_hot_map((width, height), 4)}
    batch = {"image1": torch.zeros(1, 1, height, width), "queries": points, "fundamental": fundamental[None]}
    terms = CAPSLoss(LossConfig(temperature=200.0, window_samples=9))(outputs, outputs, batch)
    for name in ("epipolar_coarse", "epipolar_fine", "cycle_coarse", "cycle_fine", "loss"):
        assert terms[name].item() == pytest.approx(0.0, abs=2e-3), name


def test_pose_auc_of_perfect_and_failed_poses() -> None:
    assert pose_auc(np.zeros(4)) == pytest.approx([1.0, 1.0, 1.0])
    assert pose_auc(np.full(4, 180.0)) == pytest.approx([0.0, 0.0, 0.0])
    # Errors 0 and 10 degrees: recall rises linearly from 0.5 at 0 to 1 at 10 (SuperGlue interpolates), then
    # stays 1, so AUC@20 = (0.75 * 10 + 1 * 10) / 20.
    assert pose_auc(np.array([0.0, 10.0]), (20.0,))[0] == pytest.approx(0.875)

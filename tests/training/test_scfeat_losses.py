"""SCFeat's training signals: proposals per cell, reward signs, the F-consistency factor, line-to-window search."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from training.geometry import fundamental_matrix
from training.scfeat_losses import (
    DetectorRewardConfig,
    WindowLossConfig,
    cell_points,
    consistency_factor,
    dual_softmax,
    line_to_window_terms,
    match_rewards,
    policy_gradient_terms,
    sample_cells,
)

SIZE = (160, 120)


def posed_correspondences(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact correspondences of non-planar 3-D points seen by two cameras, and the true F (image 1 -> 2)."""
    rng = np.random.default_rng(seed)
    k = np.array([[150.0, 0, 79.5], [0, 150.0, 59.5], [0, 0, 1]])
    angle = np.radians(5)
    rotation = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    translation = np.array([-0.6, 0.1, 0.05])
    points = np.column_stack([rng.uniform(-1.5, 1.5, count), rng.uniform(-1, 1, count), rng.uniform(4, 9, count)])
    x1 = points @ k.T
    x2 = (points @ rotation.T + translation) @ k.T
    to_pixels = lambda x: torch.tensor(x[:, :2] / x[:, 2:], dtype=torch.float32)  # noqa: E731
    f = torch.tensor(fundamental_matrix(k, k, rotation, translation), dtype=torch.float32)
    return to_pixels(x1), to_pixels(x2), f


def test_proposals_stay_in_their_cells_and_follow_peaks() -> None:
    scores = torch.zeros(2, 1, 16, 24)
    scores[:, :, 3, 5] = 50.0  # a dominant pixel in the first cell: it must be proposed and accepted
    points, log_prob, accepted = sample_cells(scores, 8, torch.Generator().manual_seed(0))
    assert points.shape == (2, 6, 2) and log_prob.shape == accepted.shape == (2, 6)
    cells = torch.stack([torch.arange(6) % 3, torch.arange(6) // 3], dim=-1).float()
    assert torch.equal(torch.div(points, 8, rounding_mode="floor"), cells.expand(2, -1, -1))
    assert torch.equal(points[:, 0], torch.tensor([[5.0, 3.0], [5.0, 3.0]])) and accepted[:, 0].all()
    # Flat cells: the proposal has probability 1/64 and the decision 1/2 (score 0 -> sigmoid 0.5).
    np.testing.assert_allclose(log_prob[:, 1:].detach(), np.log(1 / 64) + np.log(0.5), rtol=1e-5)


def test_the_factor_is_small_for_exact_matches_and_none_without_eight() -> None:
    x1, x2, f = posed_correspondences(40)
    generator = torch.Generator().manual_seed(0)
    phi = consistency_factor(x1, x2, f, SIZE, DetectorRewardConfig(), generator)
    assert phi is not None and phi < 0.01
    noisy = x2 + torch.randn(x2.shape, generator=generator) * 3.0
    noisy_phi = consistency_factor(x1, noisy, f, SIZE, DetectorRewardConfig(), generator)
    assert noisy_phi is not None and noisy_phi > phi
    assert consistency_factor(x1[:7], x2[:7], f, SIZE, DetectorRewardConfig(), generator) is None


def test_a_correct_match_is_rewarded_and_a_wrong_one_penalised() -> None:
    x1, x2, f = posed_correspondences(30)
    wrong = x2.flip(0) + torch.tensor([0.0, 30.0])  # other points, moved off their epipolar lines
    points2 = torch.cat([x2, wrong])[None]
    good = torch.zeros(1, 30, 60, dtype=torch.bool)
    good[0, torch.arange(30), torch.arange(30)] = True
    probabilities = good.float()
    both = torch.ones(1, 30, 60, dtype=torch.bool)  # every proposal accepted
    config = DetectorRewardConfig()
    rewards, phi, fell_back = match_rewards(
        x1[None], points2, good, probabilities, both, f[None], SIZE, config, torch.Generator()
    )
    assert 0 < float(phi) < 0.01 and not fell_back.any()
    assert (rewards[good] > 0.99).all() and (rewards[~good] < 0).all()
    # Too few matches to estimate F: PoSFeat's constant rewards.
    few = good.clone()
    few[0, 7:] = False
    rewards, phi, fell_back = match_rewards(
        x1[None], points2, few, few.float(), both, f[None], SIZE, config, torch.Generator()
    )
    assert float(phi) == 1.0 and fell_back.all() and set(rewards.unique().tolist()) == {1.0, -0.25}


def test_policy_gradient_raises_scores_where_matches_are_correct() -> None:
    # Image 2 is image 1 shifted right by 8 px (F of a sideways camera: epipolar lines are rows). Each cell has a
    # spike at the same offset in both images and the descriptor map is unique per pixel, so proposals at the
    # spikes match their true counterparts: descending the loss must raise the scores there.
    torch.manual_seed(0)
    maps1 = F.normalize(torch.randn(1, 32, 16, 16), dim=1)
    maps2 = torch.roll(maps1, shifts=2, dims=3)
    fundamental = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]])
    scores = torch.zeros(2, 1, 64, 64)
    scores[:, :, 2::8, 5::8] = 6.0
    scores.requires_grad_(True)
    config = DetectorRewardConfig()
    terms = policy_gradient_terms(
        scores[:1], scores[1:], maps1, maps2, fundamental, config, torch.Generator().manual_seed(0)
    )
    terms["loss"].backward()
    # The same draws again: image-1 proposals whose true counterpart was proposed and accepted in image 2.
    generator = torch.Generator().manual_seed(0)
    points1, _, accepted1 = sample_cells(scores[:1].detach(), config.cell, generator)
    points2, _, accepted2 = sample_cells(scores[1:].detach(), config.cell, generator)
    partners = {tuple(p) for p in points2[0, accepted2[0]].long().tolist()}
    counterparts = torch.stack([(points1[0, :, 0] + 8) % 64, points1[0, :, 1]], dim=-1).long().tolist()
    matched = accepted1[0] & torch.tensor([tuple(c) in partners for c in counterparts])
    xs, ys = points1[0, matched].long().T
    assert matched.sum() > 20 and float(terms["match_precision"]) > 0.5
    assert (scores.grad[0, 0, ys, xs] < 0).all(), "a gradient step must raise the scores of correct matches"


def test_dual_softmax_is_the_product_of_the_row_and_column_softmaxes() -> None:
    d1, d2 = F.normalize(torch.randn(1, 5, 8), dim=-1), F.normalize(torch.randn(1, 7, 8), dim=-1)
    p = dual_softmax(d1, d2, 10.0)
    cost = 1 - d1[0] @ d2[0].T
    rows = torch.exp(-10 * cost) / torch.exp(-10 * cost).sum(dim=1, keepdim=True)
    columns = torch.exp(-10 * cost) / torch.exp(-10 * cost).sum(dim=0, keepdim=True)
    torch.testing.assert_close(p[0], rows * columns)


def test_line_to_window_finds_the_match_along_the_epipolar_line() -> None:
    # Image 2 is image 1 moved 12 px to the left; epipolar lines are image rows. A per-pixel-unique map and its
    # shifted copy let the line search and the window land on the true match, so the epipolar error is small;
    # against an unrelated map it is not.
    torch.manual_seed(0)
    width, height = 128, 96
    maps1 = F.avg_pool2d(torch.randn(1, 32, height // 4 + 2, width // 4 + 2), 3, stride=1)
    maps2 = torch.roll(maps1, shifts=-3, dims=3)
    fundamental = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]])
    generator = torch.Generator().manual_seed(0)
    points = cell_points(1, (width, height), 16, generator)
    config = WindowLossConfig()
    matched = line_to_window_terms(maps1, maps2, points, fundamental, (width, height), config, generator)
    unrelated = line_to_window_terms(
        maps1, torch.randn_like(maps1), points, fundamental, (width, height), config, generator
    )
    assert float(matched["valid"]) > 0.9  # a jittered window centre may leave the image
    assert float(matched["median_error_px"]) < 1.0 < float(unrelated["median_error_px"])


def test_cell_points_cover_every_cell_once() -> None:
    points = cell_points(3, (64, 48), 16, torch.Generator().manual_seed(1))
    assert points.shape == (3, 12, 2)
    cells = torch.div(points, 16, rounding_mode="floor")
    assert torch.equal(cells[0], torch.stack([torch.arange(12) % 4, torch.arange(12) // 4], dim=-1).float())
    assert not torch.equal(points[0], points[1])  # a different pixel per image

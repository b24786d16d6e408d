"""The HNDesc AP loss and the patch descriptor's ratio loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.descriptor_losses import (
    APConfig,
    RatioConfig,
    bag_match_score,
    bag_ratio_loss,
    hardest_negative_ap_loss,
    hardest_patches,
    quantised_ap,
)
from training.methods.hndesc import local_negatives

BINS = 20
STEP = 1 / (BINS - 1)  # spacing of the bin centres


def test_ap_is_one_when_the_positive_outranks_every_negative_by_a_bin() -> None:
    positive = 1 - 2 * STEP  # on a bin centre, so it lies in one bin only
    negatives = torch.tensor([positive - STEP, positive - 1.5 * STEP, 0.5, -0.3])  # each a bin or more below
    scores = torch.cat([torch.tensor([positive]), negatives])[None]
    labels = torch.zeros_like(scores)
    labels[0, 0] = 1
    assert float(1 - quantised_ap(scores, labels, BINS)[0]) == pytest.approx(0, abs=1e-6)


def test_ap_loss_equals_one_minus_ap_on_a_hand_computed_ranking() -> None:
    # Scores on bin centres, so each falls in exactly one bin. Ranking: neg, pos, neg, pos, neg.
    # Precision at the positives: 1/2 and 2/4, so AP = (1/2 + 2/4) / 2 = 0.5.
    centres = [1 - k * STEP for k in (1, 3, 5, 7, 9)]
    scores = torch.tensor([centres])
    labels = torch.tensor([[0.0, 1, 0, 1, 0]])
    assert float(quantised_ap(scores, labels, BINS)[0]) == pytest.approx(0.5, abs=1e-6)
    # A single positive behind two negatives: AP = 1/3.
    scores = torch.tensor([[centres[0], centres[1], centres[2]]])
    assert float(quantised_ap(scores, torch.tensor([[0.0, 0, 1]]), BINS)[0]) == pytest.approx(1 / 3, abs=1e-6)


def test_end_bins_are_open_ended() -> None:
    # Cosines below 0 and at 1 land entirely in the last and first bins.
    scores = torch.tensor([[1.0, -0.7]])
    assert float(quantised_ap(scores, torch.tensor([[1.0, 0]]), BINS)[0]) == pytest.approx(1.0)
    assert float(quantised_ap(scores, torch.tensor([[0.0, 1]]), BINS)[0]) == pytest.approx(0.5)


def test_hardest_negatives_come_from_other_crops_only() -> None:
    # Two crops of two points; crop 0's second point is a near-duplicate of its first, which must not count.
    anchors = F.normalize(torch.tensor([[1.0, 0, 0], [0.99, 0.1, 0], [0, 1.0, 0], [0, 0, 1.0]]), dim=1)
    positives = anchors.clone()
    groups = torch.tensor([0, 0, 1, 1])
    terms = hardest_negative_ap_loss(anchors, positives, groups, APConfig(negatives=2))
    # Every positive has cosine 1 and every other-crop negative at most 0.1: perfect ranking.
    assert float(terms["loss"]) == pytest.approx(0, abs=1e-6)
    assert float(terms["positive_rank1"]) == 1.0
    # Treating the same crop's points as negatives would have broken the ranking of anchor 0 (cosine 0.995).
    all_negative = hardest_negative_ap_loss(anchors, positives, torch.arange(4), APConfig(negatives=2))
    assert float(all_negative["loss"]) > 0.1


def test_local_negatives_join_the_hardest_and_missing_ones_are_ignored() -> None:
    anchors = F.normalize(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), dim=1)
    positives = F.normalize(torch.tensor([[0.9, 0.3, 0], [0, 1.0, 0]]), dim=1)  # anchor 0's positive: cosine 0.95
    groups = torch.tensor([0, 1])
    config = APConfig(negatives=2, local_negatives=2)
    # A point beside anchor 0's positive that looks more like the anchor than the positive does: AP drops.
    near = torch.tensor([[[1.0, 0, 0], [0, 0, 0]], [[0, 0, 1.0], [0, 0, 0]]])
    assert float(hardest_negative_ap_loss(anchors, positives, groups, config, near)["positive_rank1"]) == 0.5
    # All-zero rows (points outside the crop) are no candidates: the ranking is that without local negatives.
    missing = torch.zeros(2, 2, 3)
    with_missing = hardest_negative_ap_loss(anchors, positives, groups, config, missing)["loss"]
    assert float(with_missing) == pytest.approx(
        float(hardest_negative_ap_loss(anchors, positives, groups, config)["loss"])
    )


def test_ap_loss_decreases_when_positives_move_closer() -> None:
    torch.manual_seed(0)
    anchors = F.normalize(torch.randn(32, 16), dim=1)
    groups = torch.arange(32) // 8
    noisy = F.normalize(anchors + 0.8 * torch.randn(32, 16), dim=1)
    close = F.normalize(anchors + 0.1 * torch.randn(32, 16), dim=1)
    assert float(hardest_negative_ap_loss(anchors, close, groups)["loss"]) < float(
        hardest_negative_ap_loss(anchors, noisy, groups)["loss"]
    )


def test_ratio_loss_matches_its_closed_form() -> None:
    # Anchor bag of 2 in 2-D; s = (1 + cos) / 2, soft match = sigmoid(beta (s - 0.8)), max over the other bag.
    config = RatioConfig()
    beta = math.log(99) / 0.2
    anchor = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    positive = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    negative = torch.tensor([[-1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    sig = lambda cos: 1 / (1 + math.exp(-beta * ((1 + cos) / 2 - 0.8)))  # noqa: E731
    s_plus = sig(1.0) + sig(0.8)  # anchor 0 best with (1, 0); anchor 1 best with (0.6, 0.8)
    s_minus = sig(0.8) + sig(1.0)  # anchor 0 best with (0.8, 0.6); anchor 1 best with (0, 1)
    expected = (1 + s_minus) / (1 + s_plus)
    mask_p, mask_n = torch.ones(2, dtype=torch.bool), torch.ones(3, dtype=torch.bool)
    loss = bag_ratio_loss(anchor, positive, mask_p, negative, mask_n, config)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert sig(1.0) == pytest.approx(0.99)  # the slope maps s = 1 to 0.99
    # Masked rows never match: hiding (0, 1) leaves anchor 1 with its best valid negative, (0.8, 0.6).
    mask_n = torch.tensor([True, True, False])
    score = bag_match_score(anchor, negative, mask_n, config)
    assert float(score) == pytest.approx(sig(0.8) + sig(0.6), rel=1e-6)


def test_hardest_patches_picks_the_most_similar_valid_negative() -> None:
    anchor = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    negatives = torch.tensor([[1.0, 0.0], [0.9, 0.44], [0.0, 1.0]])
    mask = torch.tensor([False, True, True])
    assert hardest_patches(anchor, negatives, mask).tolist() == [1, 2]


def test_local_negatives_lie_on_the_ring_and_outside_points_are_zero() -> None:
    # A map whose descriptor is the (x, y) pixel position, so a sample tells where it was taken.
    stride = 4
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    fine = torch.stack([xs * stride + 1.5, ys * stride + 1.5, torch.full_like(xs, 100.0)])[None]  # (1, 3, 16, 16)
    points = torch.tensor([[[32.0, 32.0], [1.0, 1.0]]])  # one central point, one by the corner
    config = APConfig(local_negatives=64, local_min_radius=4.0, local_max_radius=10.0)
    torch.manual_seed(0)
    local = local_negatives(fine, points, config)  # (1, 2, 64, 3), unit rows
    assert local.shape == (1, 2, 64, 3)
    centre = local[0, 0]
    positions = centre[:, :2] / centre[:, 2:] * 100.0  # undo the normalisation through the constant channel
    distances = (positions - points[0, 0]).norm(dim=1)
    assert bool(((distances > 4.0 - 1e-3) & (distances < 10.0 + 1e-3)).all())
    corner = local[0, 1]
    outside = corner.abs().sum(-1) == 0
    assert 0 < int(outside.sum()) < 64  # about three quarters of a ring around (1, 1) leave the crop

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

"""Descriptor losses of HNDesc (quantised AP, in-batch hardest negatives) and Markuš et al. (bag ratio).

Equations: HNDesc (Melekhov et al., 3DV 2021; AP, after R2D2's differentiable AP) and Markuš et al. (IEEE TIP
2019) (smoothed keypoint-correspondence
ratio). Descriptors are unit vectors throughout, so similarities are cosines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def quantised_ap(scores: torch.Tensor, labels: torch.Tensor, bins: int = 20) -> torch.Tensor:
    """Differentiable average precision of each row's ranking, with ``bins`` triangular bins on [0, 1].

    Args:
        scores: ``(M, L)`` similarities of each list.
        labels: ``(M, L)`` 1 for positives, 0 for negatives.
        bins: Number of bins; centres are evenly spaced from 1 down to 0, and the end bins are open-ended.

    Returns:
        ``(M,)`` AP per list.
    """
    centres = torch.linspace(1, 0, bins, device=scores.device, dtype=scores.dtype)
    weights = (1 - (bins - 1) * (scores[:, None, :] - centres[None, :, None]).abs()).clamp_min(0)  # (M, Q, L)
    top = torch.where(scores >= 1, torch.ones_like(scores), weights[:, 0])
    bottom = torch.where(scores <= 0, torch.ones_like(scores), weights[:, -1])
    weights = torch.cat([top[:, None], weights[:, 1:-1], bottom[:, None]], dim=1)
    labels = labels.to(scores.dtype)
    counts = weights.sum(-1)  # n_q
    positives = (weights * labels[:, None, :]).sum(-1)  # n+_q
    precision = positives.cumsum(-1) / counts.cumsum(-1).clamp_min(1e-8)
    recall = positives / positives.sum(-1, keepdim=True).clamp_min(1e-8)
    return (precision * recall).sum(-1)


@dataclass(frozen=True)
class APConfig:
    """HNDesc's AP loss: ``negatives`` hardest in-batch negatives per anchor, ``bins`` AP bins.

    ``local_negatives`` > 0 adds, as further candidates for the hardest negatives, that many points of the
    positive's own crop at ``local_min_radius`` to ``local_max_radius`` pixels from the positive: a deviation
    from HNDesc, whose negatives all come from other crops (docs/models/hndesc.md).
    """

    negatives: int = 20
    bins: int = 20
    local_negatives: int = 0
    local_min_radius: float = 4.0
    local_max_radius: float = 10.0


def hardest_negative_ap_loss(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    groups: torch.Tensor,
    config: APConfig = APConfig(),
    local: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``mean(1 - AP)`` of each anchor's positive against its hardest negatives from other crops of the batch.

    Args:
        anchors: ``(M, D)`` unit descriptors of keypoints in the A crops.
        positives: ``(M, D)`` unit descriptors of the same points in the B crops (row ``k`` pairs with anchor ``k``).
        groups: ``(M,)`` crop index of each row; rows of the same crop are never negatives of each other.
        local: optional ``(M, L, D)`` further negative candidates of each anchor (``config.local_negatives``);
            all-zero rows mark candidates that do not exist.

    Returns:
        ``"loss"`` and diagnostics ``"ap"`` (mean AP) and ``"positive_rank1"`` (fraction of anchors whose
        positive beats every mined negative).
    """
    similarity = anchors @ positives.T  # (M, M)
    positive = similarity.diagonal()
    other_crop = groups[:, None] != groups[None, :]
    negatives = similarity.masked_fill(~other_crop, -2.0)
    if local is not None:
        local_similarity = torch.einsum("md,mld->ml", anchors, local)
        negatives = torch.cat([negatives, local_similarity.masked_fill(local.abs().sum(-1) == 0, -2.0)], dim=1)
    k = min(config.negatives, negatives.shape[1])
    hardest = negatives.topk(k, dim=1).values
    # Pad with the smallest kept negative when fewer other-crop points exist; -2 marks "none" here.
    smallest = torch.where(hardest > -2, hardest, hardest.new_tensor(3.0)).min(dim=1, keepdim=True).values
    hardest = torch.where(hardest > -2, hardest, smallest.clamp_max(1.0))
    if k < config.negatives:
        hardest = torch.cat([hardest, smallest.clamp_max(1.0).expand(-1, config.negatives - k)], dim=1)
    scores = torch.cat([positive[:, None], hardest], dim=1)
    labels = torch.zeros_like(scores)
    labels[:, 0] = 1
    ap = quantised_ap(scores, labels, config.bins)
    return {
        "loss": (1 - ap).mean(),
        "ap": ap.mean().detach(),
        "positive_rank1": (positive[:, None] > hardest).all(dim=1).float().mean().detach(),
    }


@dataclass(frozen=True)
class RatioConfig:
    """The smoothed ratio loss: similarity ``s = (1 + cos) / 2`` matches above ``threshold``.

    ``slope`` defaults to the reference's (s = 1 maps to 0.99). ``random_negative_steps``: for that many first
    steps the negatives are one other bag, not the hardest patches of all other bags (the paper's earlier
    version). The committed run uses neither option: training/configs/orb_patch.yaml says what it uses instead.
    """

    threshold: float = 0.8
    slope: float = math.log(99) / 0.2
    random_negative_steps: int = 0


def bag_match_score(
    anchor: torch.Tensor, other: torch.Tensor, other_mask: torch.Tensor, config: RatioConfig
) -> torch.Tensor:
    """``Σ_i max_j σ(β (s_ij - τ))``: the smoothed count of anchor keypoints that find a match in ``other``.

    Args:
        anchor: ``(N, D)`` unit descriptors of the anchor bag's valid keypoints.
        other: ``(P, D)`` unit descriptors of another bag.
        other_mask: ``(P,)`` bool, the valid rows of ``other``.
    """
    if len(anchor) == 0 or not bool(other_mask.any()):
        return (anchor.sum() + other.sum()) * 0  # no keypoint can match; keeps the graph connected
    similarity = (1 + anchor @ other.T) / 2
    soft = torch.sigmoid(config.slope * (similarity - config.threshold))
    soft = soft.masked_fill(~other_mask[None, :], 0.0)
    return soft.max(dim=1).values.sum()


def bag_ratio_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    positive_mask: torch.Tensor,
    negative: torch.Tensor,
    negative_mask: torch.Tensor,
    config: RatioConfig = RatioConfig(),
) -> torch.Tensor:
    """``(1 + S(K, K-)) / (1 + S(K, K+))`` of one triplet (the reference code's form)."""
    return (1 + bag_match_score(anchor, negative, negative_mask, config)) / (
        1 + bag_match_score(anchor, positive, positive_mask, config)
    )


@torch.no_grad()
def hardest_patches(anchor: torch.Tensor, negatives: torch.Tensor, negatives_mask: torch.Tensor) -> torch.Tensor:
    """Index into ``negatives`` of the most similar valid negative of each anchor row (mined without gradients)."""
    similarity = (anchor @ negatives.T).masked_fill(~negatives_mask[None, :], -2.0)
    return similarity.argmax(dim=1)

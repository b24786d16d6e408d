"""SCFeat's two training signals (SCFeat: Sun et al., arXiv 2212.07047): the line-to-window epipolar descriptor
loss and the
DISK-style policy gradient of the detector, whose reward is scaled by a fundamental-matrix consistency factor.

Pixel convention as in `training.losses`. Deviations from the reference code, each on purpose:

- Line to window: the window is a fixed ``k x k`` grid of half-width ``window`` (normalised units) instead of
  ``floor(r * W_f)`` samples, which collapses on small training images; the loss is divided by the image's
  longer side so one learning rate and gradient clip serve every image size (as our CAPS loss).
- Detector reward: the consistency factor ``phi`` comes from F estimated by the Hartley-normalised eight-point
  algorithm on genuinely random draws (one seeded generator) of the *matches* (mutual nearest neighbours of the
  matching distribution that pass the epipolar test, among accepted keypoints), and compares it with the true F
  by a geometric distance in pixels (`fundamental_distance`), not entry-wise; degenerate draws (coplanar points)
  are skipped. ``phi`` is per image pair, not summed over the batch. The reward term leaves out ``log P``:
  P is detached, so that term carries no gradient (PoSFeat#16).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .fundamental import clip_lines, eight_point, fundamental_distance, homogeneous, random_eight_point_draws
from .geometry import epipolar_distance
from .losses import match_in_window, sample_map, spread_weights, window_offsets


@dataclass(frozen=True)
class WindowLossConfig:
    """The line-to-window loss: points per cell, temperature, line samples, window and masks."""

    cell: int = 16  # one random query pixel per cell x cell block of image 1 (and of image 2: symmetric)
    temperature: float = 60.0
    line_samples: int = 100
    window: float = 0.1  # half-width r of the window, normalised units (1 = half the image side)
    window_samples: int = 9
    jitter: float = 0.707  # x r: uniform offset of the window centre from the line's best point
    threshold: float = 0.1  # x shorter side: errors beyond it are masked out


@dataclass(frozen=True)
class DetectorRewardConfig:
    """The detector's policy gradient: cells, matching temperature, epipolar test, F-consistency factor."""

    cell: int = 8
    temperature: float = 60.0
    epipolar_threshold: float = 2.0  # pixels, both directions
    draws: int = 100  # random eight-point draws per image pair
    phi_scale: float = 4.0  # pixels: phi = tanh(best F distance / phi_scale)
    fallback_reward: tuple[float, float] = (1.0, -0.25)  # PoSFeat's (good, bad) when F cannot be estimated
    # x phi x sum of accepted log-probabilities. Scores are non-negative, so acceptance never drops below 1/2
    # whatever this weight (a property of the reference design).
    penalty: float = 0.001


@dataclass(frozen=True)
class SCFeatConfig:
    """Which SCFeat stage a run trains and the settings of both losses."""

    # "distil" (backbone from a teacher's descriptor maps), "descriptor" (backbone, line-to-window loss),
    # "detector" (policy gradient) or "fine" (only the fine head, from the teacher's descriptor map)
    stage: str = "descriptor"
    teacher: str = ""  # the card of the SCFeat checkpoint whose maps the "distil" and "fine" stages reproduce
    fine_head: bool = False  # the network has the fine head (stride-4 descriptors; stage "fine" trains it)
    image_prior: str = "peakiness"  # the detector's image prior in training (featureserve.models.scfeat.IMAGE_PRIORS)
    window: WindowLossConfig = WindowLossConfig()
    reward: DetectorRewardConfig = DetectorRewardConfig()


def cell_points(batch: int, size: tuple[int, int], cell: int, generator: torch.Generator) -> torch.Tensor:
    """``(B, N, 2)`` one uniformly random pixel ``(x, y)`` in each ``cell x cell`` block of a ``(W, H)`` image."""
    width, height = size
    ys, xs = torch.meshgrid(torch.arange(0, height, cell), torch.arange(0, width, cell), indexing="ij")
    corners = torch.stack([xs, ys], dim=-1).reshape(1, -1, 2).float()
    offsets = torch.floor(torch.rand(batch, corners.shape[1], 2, generator=generator) * cell)
    return torch.minimum(corners + offsets, torch.tensor([width - 1.0, height - 1.0]))


def line_to_window_terms(
    maps1: torch.Tensor,
    maps2: torch.Tensor,
    points1: torch.Tensor,
    fundamental: torch.Tensor,
    size: tuple[int, int],
    config: WindowLossConfig,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """One direction of the line-to-window loss: image-1 points searched along their epipolar lines in image 2.

    Args:
        maps1: ``(B, D, h, w)`` coupling-bridge maps of image 1 (stride ``W / w``).
        maps2: The same for image 2.
        points1: ``(B, N, 2)`` query pixels in image 1.
        fundamental: ``(B, 3, 3)`` image 1 -> image 2.
        size: ``(W, H)`` of both images.
        config: Loss settings.
        generator: CPU generator of the window jitter.

    Returns:
        ``"loss"`` (weighted mean epipolar error / longer side), ``"median_error_px"`` and ``"valid"``.
    """
    width, height = size
    stride = width // maps1.shape[-1]
    unit1, unit2 = F.normalize(maps1, dim=1), F.normalize(maps2, dim=1)
    queries = F.normalize(sample_map(unit1, points1, stride), dim=-1)
    lines = homogeneous(points1) @ fundamental.transpose(1, 2)
    start, end, valid = clip_lines(lines.detach(), size)
    valid &= (end - start).norm(dim=-1) > 1.0  # a line that only grazes a corner has nothing to search
    half = torch.tensor([config.window * width / 2, config.window * height / 2], device=points1.device)
    with torch.no_grad():  # the best point on the line: a window centre, not a target
        steps = torch.linspace(0, 1, config.line_samples, device=points1.device)
        line = start.unsqueeze(2) + steps[None, None, :, None] * (end - start).unsqueeze(2)  # (B, N, L, 2)
        b, n, length, _ = line.shape
        samples = F.normalize(sample_map(unit2, line.reshape(b, n * length, 2), stride), dim=-1)
        similarity = torch.einsum("bnd,bnld->bnl", queries, samples.reshape(b, n, length, -1))
        best = line.gather(2, similarity.argmax(-1)[..., None, None].expand(-1, -1, 1, 2)).squeeze(2)
        jitter = (torch.rand(b, n, 2, generator=generator) * 2 - 1).to(points1.device) * config.jitter * half
        centres = best + jitter
        valid &= (centres >= 0).all(-1) & (centres[..., 0] <= width - 1) & (centres[..., 1] <= height - 1)
        # Invalid points get the image centre, so every window has samples inside and the loss stays finite.
        centres = torch.where(valid[..., None], centres, centres.new_tensor([width / 2, height / 2]))
    offsets = window_offsets(config.window_samples, (float(half[0]), float(half[1])), points1.device)
    found = match_in_window(queries, unit2, stride, centres, offsets, size, config.temperature)
    error = epipolar_distance(points1, found.location, fundamental)
    mask = (valid & (error < config.threshold * min(width, height))).float()
    return {
        "loss": (spread_weights(found.spread, mask) * error).mean() / max(width, height),
        "median_error_px": error.detach()[valid].median() if valid.any() else error.new_tensor(float("nan")),
        "valid": valid.float().mean(),
    }


def sample_cells(
    scores: torch.Tensor, cell: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DISK-style keypoint proposals: one pixel per ``cell x cell`` block, then an accept decision.

    The proposal is drawn from ``Categorical(logits = the block's scores)`` and accepted with probability
    ``sigmoid(score)``.

    Args:
        scores: ``(B, 1, H, W)`` detector scores; H and W multiples of ``cell``.
        cell: Block side in pixels.
        generator: CPU generator (proposals are drawn on the CPU, so runs on any device draw the same).

    Returns:
        ``(B, M, 2)`` proposal pixels ``(x, y)``, ``(B, M)`` log-probability of proposal and decision (with
        gradient), ``(B, M)`` bool accepted.
    """
    batch, width = scores.shape[0], scores.shape[-1]
    blocks = F.pixel_unshuffle(scores, cell).flatten(2).transpose(1, 2)  # (B, M, cell^2), row-major blocks
    log_p = blocks.log_softmax(dim=-1)
    probabilities = log_p.detach().exp().flatten(0, 1).float().cpu()
    proposal = torch.multinomial(probabilities, 1, generator=generator).view(batch, -1, 1).to(scores.device)
    logit = blocks.gather(2, proposal).squeeze(2)
    accepted = torch.rand(logit.shape, generator=generator).to(scores.device) < torch.sigmoid(logit.detach())
    log_prob = log_p.gather(2, proposal).squeeze(2) + torch.where(accepted, F.logsigmoid(logit), F.logsigmoid(-logit))
    columns = width // cell
    index = torch.arange(blocks.shape[1], device=scores.device)
    offset = proposal.squeeze(2)
    xs = (index % columns) * cell + offset % cell
    ys = (index // columns) * cell + offset // cell
    return torch.stack([xs, ys], dim=-1).float(), log_prob, accepted


def dual_softmax(descriptors1: torch.Tensor, descriptors2: torch.Tensor, temperature: float) -> torch.Tensor:
    """``(B, M1, M2)`` matching probabilities ``softmax_j(T cos) * softmax_i(T cos)`` of unit descriptors."""
    logits = temperature * descriptors1 @ descriptors2.transpose(1, 2)
    return logits.softmax(dim=2) * logits.softmax(dim=1)


def symmetric_epipolar_test(
    points1: torch.Tensor, points2: torch.Tensor, fundamental: torch.Tensor, threshold: float
) -> torch.Tensor:
    """``(B, M1, M2)`` bool: point ``j`` of image 2 is within ``threshold`` px of the line of point ``i``, and back."""
    x1, x2 = homogeneous(points1), homogeneous(points2)
    lines2 = x1 @ fundamental.transpose(1, 2)  # epipolar lines in image 2 of the image-1 points
    lines1 = x2 @ fundamental  # and in image 1 of the image-2 points
    algebraic = (lines2 @ x2.transpose(1, 2)).abs()  # |x2_j^T F x1_i|
    forward = algebraic / lines2[..., :2].norm(dim=-1, keepdim=True).clamp_min(1e-12)
    backward = algebraic / lines1[..., :2].norm(dim=-1).unsqueeze(1).clamp_min(1e-12)
    return (forward < threshold) & (backward < threshold)


def consistency_factor(
    points1: torch.Tensor,
    points2: torch.Tensor,
    fundamental: torch.Tensor,
    size: tuple[int, int],
    config: DetectorRewardConfig,
    generator: torch.Generator,
) -> float | None:
    """``phi = tanh(d / phi_scale)``: ``d`` the best `fundamental_distance` over random eight-point draws.

    ``None`` when fewer than eight matches exist or every draw is degenerate (the caller falls back).

    Args:
        points1: ``(K, 2)`` matched pixels in image 1.
        points2: ``(K, 2)`` their matches in image 2.
        fundamental: ``(3, 3)`` true F, image 1 -> image 2.
        size: ``(W, H)``.
        config: Reward settings.
        generator: CPU generator of the draws.
    """
    if len(points1) < 8:
        return None
    draws = random_eight_point_draws(len(points1), config.draws, generator).to(points1.device)
    estimates, degenerate = eight_point(points1[draws], points2[draws])
    distances = fundamental_distance(estimates, fundamental, size)
    distances = distances.masked_fill(degenerate, float("inf"))
    best = float(distances.min())
    return math.tanh(best / config.phi_scale) if math.isfinite(best) else None


def match_rewards(
    points1: torch.Tensor,
    points2: torch.Tensor,
    good: torch.Tensor,
    probabilities: torch.Tensor,
    both: torch.Tensor,
    fundamental: torch.Tensor,
    size: tuple[int, int],
    config: DetectorRewardConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, M1, M2)`` rewards of every proposal pair, the ``(B,)`` factor ``phi`` (1 where it fell back) and
    the ``(B,)`` bool fall-back flags.

    A ``good`` pair (it passes the symmetric epipolar test) earns ``1 - phi``, any other pair ``-phi``; without a
    usable F estimate the constant rewards ``fallback_reward`` apply. F is estimated from the good pairs that are
    mutual best matches under ``probabilities`` among the pairs of accepted proposals (``both``, ``(B, M1, M2)``).
    """
    among_accepted = probabilities * both  # a rejected proposal cannot take an accepted one's best match
    mutual = torch.zeros_like(good).scatter_(2, among_accepted.argmax(dim=2, keepdim=True), True)
    mutual &= torch.zeros_like(good).scatter_(1, among_accepted.argmax(dim=1, keepdim=True), True)
    matches = good & mutual & both
    rewards: list[torch.Tensor] = []
    phis: list[float | None] = []
    for b in range(points1.shape[0]):
        i, j = torch.nonzero(matches[b], as_tuple=True)
        phi = consistency_factor(points1[b, i], points2[b, j], fundamental[b], size, config, generator)
        good_reward, bad_reward = config.fallback_reward if phi is None else (1.0 - phi, -phi)
        phis.append(phi)
        rewards.append(torch.where(good[b], good_reward, bad_reward).float())
    phi = torch.tensor([1.0 if p is None else p for p in phis], device=points1.device)
    return torch.stack(rewards), phi, torch.tensor([p is None for p in phis], device=points1.device)


def policy_gradient_terms(
    scores1: torch.Tensor,
    scores2: torch.Tensor,
    maps1: torch.Tensor,
    maps2: torch.Tensor,
    fundamental: torch.Tensor,
    config: DetectorRewardConfig,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """The detector loss of a batch of pairs: ``-sum R P (l_i + l_j) + penalty * phi * sum l`` over accepted.

    Args:
        scores1: ``(B, 1, H, W)`` detector scores of image 1.
        scores2: The same for image 2.
        maps1: ``(B, D, H/s, W/s)`` detached coupling-bridge maps of image 1 (stride ``s``).
        maps2: The same for image 2.
        fundamental: ``(B, 3, 3)`` image 1 -> image 2.
        config: Reward settings.
        generator: CPU generator of the proposals, decisions and eight-point draws.
    """
    height, width = scores1.shape[-2:]
    stride = width // maps1.shape[-1]
    points1, log_prob1, accepted1 = sample_cells(scores1, config.cell, generator)
    points2, log_prob2, accepted2 = sample_cells(scores2, config.cell, generator)
    with torch.no_grad():
        descriptors1 = F.normalize(sample_map(maps1, points1, stride), dim=-1)
        descriptors2 = F.normalize(sample_map(maps2, points2, stride), dim=-1)
        probabilities = dual_softmax(descriptors1, descriptors2, config.temperature)
        both = accepted1.unsqueeze(2) & accepted2.unsqueeze(1)  # (B, M1, M2): pairs of accepted proposals
        good = symmetric_epipolar_test(points1, points2, fundamental, config.epipolar_threshold)
        size = (width, height)
        rewards, phi, fell_back = match_rewards(
            points1, points2, good, probabilities, both, fundamental, size, config, generator
        )
        weights = rewards * probabilities * both  # (B, M1, M2)
    gain = (weights.sum(dim=2) * log_prob1).sum() + (weights.sum(dim=1) * log_prob2).sum()
    penalty = (phi[:, None] * (log_prob1 * accepted1).sum(1, keepdim=True)).sum()
    penalty = penalty + (phi[:, None] * (log_prob2 * accepted2).sum(1, keepdim=True)).sum()
    batch = scores1.shape[0]
    expected_matches = (probabilities * both).sum((1, 2))
    correct = (probabilities * (good & both)).sum((1, 2))
    return {
        "loss": (-gain + config.penalty * penalty) / batch,
        "accepted": 0.5 * (accepted1.float().mean() + accepted2.float().mean()),
        "phi": phi.mean(),  # fall-backs count as 1, the penalty's scale
        "fallback": fell_back.float().mean(),
        "match_precision": (correct / expected_matches.clamp_min(1e-9)).mean(),
        "expected_matches": expected_matches.mean(),
    }

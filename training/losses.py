"""The CAPS loss: differentiable coarse-to-fine soft-argmax, epipolar and cycle losses (CAPS: Wang et al., ECCV 2020).

Everything is in pixels with the pixel-centre convention of `featureserve.models.dense` (cell ``j`` of a
stride-``s`` map is centred on pixel ``(j + 0.5) * s - 0.5``). Deviations from the reference code: the
correlation is cosine similarity times a fixed temperature (as SCFeat, T = 60 there) instead of a raw dot
product, since the served descriptors are matched by cosine; the fine window is a fixed ``k x k`` grid (the
reference's ``floor(r * W_f)`` collapses at small images); window samples outside image 2 are masked out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from featureserve.models.dense import keypoints_to_grid

from .geometry import epipolar_distance


def cell_centres(map_size: tuple[int, int], stride: int, device: torch.device | None = None) -> torch.Tensor:
    """``(h * w, 2)`` pixel ``(x, y)`` centres of the cells of a stride-``stride`` map, row-major."""
    h, w = map_size
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([xs, ys], dim=-1).reshape(-1, 2).float().add(0.5).mul(stride).sub(0.5)


def soft_argmax(logits: torch.Tensor, coordinates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected location and spread of ``softmax(logits)`` over candidate coordinates.

    Args:
        logits: ``(B, N, M)`` scores of M candidates per query (``-inf`` excludes a candidate).
        coordinates: ``(B, N, M, 2)`` or broadcastable ``(M, 2)`` candidate pixel coordinates.

    Returns:
        ``(B, N, 2)`` expectation and ``(B, N)`` spread: the sum of the two per-axis standard deviations, pixels.
    """
    p = logits.softmax(dim=-1).unsqueeze(-1)
    mean = (p * coordinates).sum(dim=-2)
    variance = (p * coordinates.square()).sum(dim=-2) - mean.square()
    return mean, variance.clamp_min(1e-10).sqrt().sum(dim=-1)


def sample_map(feature_map: torch.Tensor, points: torch.Tensor, stride: int) -> torch.Tensor:
    """``(B, N, D)`` bilinear samples of a ``(B, D, h, w)`` map at ``(B, N, 2)`` pixels (zeros outside)."""
    grid = keypoints_to_grid(points, stride, feature_map.shape[-2:])
    samples = F.grid_sample(feature_map, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return samples[..., 0].transpose(1, 2)


def window_offsets(samples: int, half_size: tuple[float, float], device: torch.device | None = None) -> torch.Tensor:
    """``(samples^2, 2)`` regular grid of pixel offsets spanning ``[-hx, hx] x [-hy, hy]``."""
    xs = torch.linspace(-half_size[0], half_size[0], samples, device=device)
    ys = torch.linspace(-half_size[1], half_size[1], samples, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1).reshape(-1, 2)


@dataclass
class Correspondence:
    """A soft-argmax prediction: expected pixel ``(B, N, 2)``, spread ``(B, N)`` and arg-max pixel ``(B, N, 2)``."""

    location: torch.Tensor
    spread: torch.Tensor
    argmax: torch.Tensor


def match_globally(queries: torch.Tensor, target_map: torch.Tensor, stride: int, temperature: float) -> Correspondence:
    """Soft-argmax of ``(B, N, D)`` unit query descriptors over every cell of a unit ``(B, D, h, w)`` map."""
    coordinates = cell_centres(target_map.shape[-2:], stride, target_map.device)
    logits = temperature * torch.einsum("bnd,bdm->bnm", queries, target_map.flatten(2))
    location, spread = soft_argmax(logits, coordinates)
    return Correspondence(location, spread, coordinates[logits.argmax(dim=-1)])


def match_in_window(
    queries: torch.Tensor,
    target_map: torch.Tensor,
    stride: int,
    centres: torch.Tensor,
    offsets: torch.Tensor,
    image_size: tuple[int, int],
    temperature: float,
) -> Correspondence:
    """Soft-argmax of query descriptors over a window of ``offsets`` around ``(B, N, 2)`` pixel ``centres``."""
    width, height = image_size
    coordinates = centres.unsqueeze(2) + offsets  # (B, N, K, 2)
    b, n, k, _ = coordinates.shape
    samples = sample_map(target_map, coordinates.reshape(b, n * k, 2), stride).reshape(b, n, k, -1)
    logits = temperature * torch.einsum("bnd,bnkd->bnk", queries, samples)
    inside = (coordinates >= 0).all(-1) & (coordinates[..., 0] <= width - 1) & (coordinates[..., 1] <= height - 1)
    # The window centre is a cell centre or an expectation inside the image, so some sample is always inside.
    logits = logits.masked_fill(~inside, float("-inf"))
    location, spread = soft_argmax(logits, coordinates)
    index = logits.argmax(dim=-1, keepdim=True).unsqueeze(-1).expand(-1, -1, 1, 2)
    return Correspondence(location, spread, coordinates.gather(2, index).squeeze(2))


def spread_weights(spread: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Detached inverse-spread weights, mean-normalised over the valid entries: ``w = (1/s) m / mean((1/s) m)``."""
    inverse = 1 / spread.detach().clamp_min(1e-6)
    weights = inverse / inverse.mean() * mask
    return weights / (weights.mean() + 1e-8)


@dataclass(frozen=True)
class LossConfig:
    """CAPS loss settings; lengths are fractions of the image's shorter (S) or longer (L) side."""

    temperature: float = 60.0
    window: float = 0.125  # half-width of the fine window in normalised units (1 = half the image side)
    window_samples: int = 9
    epipolar_threshold: float = 0.5  # x S, mask of the epipolar losses
    cycle_threshold: float = 0.025  # x S, mask of the cycle losses
    cycle_cap: float = 0.0625  # x L, cycle errors beyond it count 0 (40 px at 640)
    cycle_weight: float = 0.1
    coarse_weight: float = 1.0
    fine_weight: float = 1.0


class CAPSLoss(nn.Module):
    """Epipolar (coarse + fine) and cycle-consistency losses of a batch of image pairs."""

    def __init__(self, config: LossConfig = LossConfig(), strides: tuple[int, int] = (16, 4)) -> None:
        super().__init__()
        self.config = config
        self.coarse_stride, self.fine_stride = strides

    def forward(
        self, outputs1: dict[str, torch.Tensor], outputs2: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Loss terms and diagnostics; ``"loss"`` is the weighted total.

        Args:
            outputs1: Network outputs of image 1 (raw ``"coarse"`` and ``"fine"`` maps).
            outputs2: Network outputs of image 2.
            batch: ``"image1"`` ``(B, 1, H, W)``, ``"queries"`` ``(B, N, 2)`` pixels, ``"fundamental"`` ``(B, 3, 3)``.
        """
        c = self.config
        height, width = batch["image1"].shape[-2:]
        short, long = min(height, width), max(height, width)
        size = (width, height)
        x1, fundamental = batch["queries"], batch["fundamental"]
        coarse1, coarse2 = (F.normalize(o["coarse"].float(), dim=1) for o in (outputs1, outputs2))
        fine1, fine2 = (F.normalize(o["fine"].float(), dim=1) for o in (outputs1, outputs2))
        offsets = window_offsets(c.window_samples, (c.window * width / 2, c.window * height / 2), x1.device)

        # Forward: coarse over the whole image, fine in a window centred on the coarse arg-max (not differentiable).
        query_coarse = F.normalize(sample_map(coarse1, x1, self.coarse_stride), dim=-1)
        coarse = match_globally(query_coarse, coarse2, self.coarse_stride, c.temperature)
        query_fine = F.normalize(sample_map(fine1, x1, self.fine_stride), dim=-1)
        fine = match_in_window(query_fine, fine2, self.fine_stride, coarse.argmax, offsets, size, c.temperature)
        # Backward (cycle): coarse from the arg-max cell; fine from the fine expectation, around the true x1.
        back_coarse_query = F.normalize(sample_map(coarse2, coarse.argmax, self.coarse_stride), dim=-1)
        back_coarse = match_globally(back_coarse_query, coarse1, self.coarse_stride, c.temperature)
        back_fine_query = F.normalize(sample_map(fine2, fine.location, self.fine_stride), dim=-1)
        back_fine = match_in_window(back_fine_query, fine1, self.fine_stride, x1, offsets, size, c.temperature)

        error_coarse = epipolar_distance(x1, coarse.location, fundamental)
        error_fine = epipolar_distance(x1, fine.location, fundamental)
        cycle_coarse = (back_coarse.location - x1).norm(dim=-1)
        cycle_fine = (back_fine.location - x1).norm(dim=-1)
        in_window = (error_coarse < c.window * short).float()
        mask_coarse = (error_coarse < c.epipolar_threshold * short).float()
        mask_fine = (error_fine < c.epipolar_threshold * short).float() * in_window
        mask_cycle_coarse = (error_coarse < c.cycle_threshold * short).float()
        mask_cycle_fine = (error_fine < c.cycle_threshold * short).float()
        cap = c.cycle_cap * long

        def weighted(error: torch.Tensor, spread: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return (spread_weights(spread, mask) * error).mean() / long

        terms = {
            "epipolar_coarse": weighted(error_coarse, coarse.spread, mask_coarse),
            "epipolar_fine": weighted(error_fine, fine.spread, mask_fine),
            "cycle_coarse": weighted(
                cycle_coarse * (cycle_coarse < cap), coarse.spread * back_coarse.spread, mask_cycle_coarse
            ),
            "cycle_fine": weighted(cycle_fine * (cycle_fine < cap), fine.spread * back_fine.spread, mask_cycle_fine),
        }
        terms["loss"] = (
            c.coarse_weight * terms["epipolar_coarse"]
            + c.fine_weight * terms["epipolar_fine"]
            + c.cycle_weight * (terms["cycle_coarse"] + terms["cycle_fine"])
        )
        # Diagnostics in pixels (not optimised): median epipolar errors and, for synthetic pairs, true errors.
        terms["median_error_coarse_px"] = error_coarse.detach().median()
        terms["median_error_fine_px"] = error_fine.detach().median()
        targets = batch.get("targets")
        if targets is not None and torch.isfinite(targets).all():
            terms["median_true_error_px"] = (fine.location.detach() - targets).norm(dim=-1).median()
        return terms

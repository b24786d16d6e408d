"""HNDesc (Melekhov et al., 3DV 2021): homographic crop pairs with appearance changes, AP loss with in-batch hard
negatives.

The network is a `CAPSNetwork` of which only the fine (stride 4) map is trained and served, as in the
released model, whose backbone is the CAPS ResUNet returning its fine map.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from featureserve.models.caps import CAPSNetwork
from featureserve.models.dense import sample_descriptors

from ..data.homographic import CropPairs
from ..descriptor_losses import APConfig, hardest_negative_ap_loss
from .base import Method
from .caps import VALIDATION_SEED_OFFSET, dense_card_fields

FINE_STRIDE = CAPSNetwork.strides[1]


def crop_pair_terms(network: nn.Module, batch: dict[str, torch.Tensor], config: APConfig) -> dict[str, torch.Tensor]:
    """AP loss terms of a batch of crop pairs (both crops of every pair in one forward pass)."""
    n = batch["image1"].shape[0]
    fine = network(torch.cat([batch["image1"], batch["image2"]]))["fine"].float()
    anchors = sample_descriptors(fine[:n], batch["points1"], FINE_STRIDE)
    positives = sample_descriptors(fine[n:], batch["points2"], FINE_STRIDE)
    mask = batch["mask"]
    groups = torch.arange(n, device=mask.device)[:, None].expand_as(mask)
    local = local_negatives(fine[n:], batch["points2"], config)[mask] if config.local_negatives else None
    return hardest_negative_ap_loss(anchors[mask], positives[mask], groups[mask], config, local)


def local_negatives(fine: torch.Tensor, points: torch.Tensor, config: APConfig) -> torch.Tensor:
    """``(B, N, L, D)`` descriptors at ``L`` random points around each of ``(B, N, 2)`` points of the B crops.

    Each point is ``local_min_radius`` to ``local_max_radius`` pixels away in a random direction; one that falls
    outside the crop gets an all-zero row, which the loss reads as "no candidate".
    """
    b, n, _ = points.shape
    count = config.local_negatives
    radius = torch.empty((b, n, count), device=points.device).uniform_(config.local_min_radius, config.local_max_radius)
    angle = torch.empty((b, n, count), device=points.device).uniform_(0, 2 * math.pi)
    around = points[:, :, None] + torch.stack([radius * angle.cos(), radius * angle.sin()], dim=-1)
    around = around.reshape(b, n * count, 2)
    descriptors = sample_descriptors(fine, around, FINE_STRIDE)
    height, width = fine.shape[-2] * FINE_STRIDE, fine.shape[-1] * FINE_STRIDE
    x, y = around.unbind(-1)
    inside = (x >= 0) & (y >= 0) & (x <= width - 1) & (y <= height - 1)
    return (descriptors * inside[..., None]).reshape(b, n, count, -1)


class HNDescMethod(Method):
    """HNDesc on crops of ``data.textures`` photos."""

    def network(self) -> nn.Module:
        """A `CAPSNetwork` of the configured size (its coarse head is unused)."""
        return CAPSNetwork(self.config.size)

    def training_set(self) -> Dataset:
        """Augmented crop pairs."""
        data = self.config.data
        return CropPairs(self.photos(), 2**62, data.seed, data.crops, data.photometric)

    def validation_sets(self) -> dict[str, Dataset]:
        """Held-out crop pairs, with the appearance change but no photometric jitter."""
        data, count = self.config.data, self.config.validation.synthetic_pairs
        return {"crops": CropPairs(self.photos(), count, data.seed + VALIDATION_SEED_OFFSET, data.crops, None)}

    def loss_terms(self, network: nn.Module, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """``1 - AP`` against the hardest in-batch negatives."""
        return crop_pair_terms(network, batch, self.config.ap_loss)

    def card(self, network: nn.Module) -> dict[str, Any]:
        """HNDesc card fields."""
        data = self.config.data
        return {
            "name": "hndesc",
            "method": (
                "HNDesc: self-supervised descriptors with in-batch hard negatives (Melekhov, Laskar, Li, Wang, "
                "Kannala, 'Digging Into Self-Supervised Learning of Feature Descriptors', 3DV 2021), re-implemented; "
                "quantised AP loss, 20 bins, 20 hardest negatives"
            ),
            "description": "Self-supervised dense descriptors (fine map, 128-D, stride 4) at SIFT keypoints.",
            "licence": "MIT (this re-implementation)",
            **dense_card_fields(self.config.size, network),
            "descriptor": {
                "dim": 128,
                "dtype": "float32",
                "layout": "fine map (stride 4) sampled bilinearly",
                "normalisation": "L2",
                "matcher": "mutual nearest neighbour on cosine similarity",
            },
            "data": {
                "generator": "homographic crop pairs of photos, appearance changes (training/data/homographic.py)",
                "seed": data.seed,
                "photos": list(data.textures),
                "crop": data.crops.size,
                "keypoints_per_pair": data.crops.keypoints,
            },
        }

"""HNDesc (METHODS.md §3): homographic crop pairs with appearance changes, AP loss with in-batch hard negatives.

The network is a `CAPSNetwork` of which only the fine (stride 4) map is trained and served, as in the
released model, whose backbone is the CAPS ResUNet returning its fine map (§3.1).
"""

from __future__ import annotations

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
    return hardest_negative_ap_loss(anchors[mask], positives[mask], groups[mask], config)


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

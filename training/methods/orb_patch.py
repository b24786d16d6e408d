"""The keypoint-correspondence patch descriptor (Markuš et al., IEEE TIP 2019): bag triplets, smoothed ratio loss,
hard negatives.

A batch holds B matching bag pairs (two views of one photo each). Triplet ``b`` is (anchor bag ``b``, positive
bag ``b``, the union of the bags of the other photos in the batch): ``2 (B - 1)`` negative bags, 14 at B = 8
against the reference's 12. Hard negatives follow the reference code: with gradients off, each anchor keypoint
picks its most similar negative patch, and only those patches enter the loss, which equals using the
whole union because of the loss's max. Every patch is described once per step, with gradients, so the
negative bags cost no extra forward pass.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from featureserve.models.orb_patch import MAX_SAMPLE_SPACING, PATCH_SIZE, SIDE_PER_SIZE, PatchNetwork

from ..data.homographic import PhotoBagPairs
from ..descriptor_losses import RatioConfig, bag_ratio_loss, hardest_patches
from .base import Method
from .caps import VALIDATION_SEED_OFFSET

MIN_BAG = 8  # fewest valid patches a bag needs to enter the loss
CENTRING_INDEX, CENTRING_PAIRS = 2**61, 8  # the training pairs whose patches centre the untrained network


def triplet_terms(
    network: nn.Module, batch: dict[str, torch.Tensor], config: RatioConfig, hardest: bool = True
) -> dict[str, torch.Tensor]:
    """Mean ratio loss of the batch's triplets: hardest-patch negatives mined without gradients, or with
    ``hardest=False`` the bags of the next other photo of the batch."""
    pairs, bag = batch["anchor"].shape[:2]
    patches = torch.cat([batch["anchor"], batch["positive"]]).flatten(0, 1)  # (2 B N, 3, 32, 32) uint8
    descriptors = network(patches.float() / 255.0).reshape(2, pairs, bag, -1)
    masks = torch.stack([batch["anchor_mask"], batch["positive_mask"]])  # (2, B, N)
    labels = batch["label"]
    cos_threshold = 2 * config.threshold - 1  # s = (1 + cos) / 2 > threshold  <=>  cos > 2 threshold - 1
    losses, positive_hits, negative_hits = [], [], []
    for b in range(pairs):
        anchor = descriptors[0, b][masks[0, b]]
        positive, positive_mask = descriptors[1, b], masks[1, b]
        others = (labels != labels[b]).nonzero().flatten()
        if not hardest and len(others):
            others = others[(others > b).long().argmax() if (others > b).any() else 0].reshape(1)
        pool = descriptors[:, others].reshape(-1, descriptors.shape[-1])
        pool_mask = masks[:, others].reshape(-1)
        if len(anchor) < MIN_BAG or int(positive_mask.sum()) < MIN_BAG or not bool(pool_mask.any()):
            continue  # a bag of a few corners says little about its photo (the reference drops bags under 16)
        if hardest:
            picked = hardest_patches(anchor.detach(), pool.detach(), pool_mask)
            negative, negative_mask = pool[picked], pool_mask[picked]
        else:
            negative, negative_mask = pool, pool_mask
        losses.append(bag_ratio_loss(anchor, positive, positive_mask, negative, negative_mask, config))
        with torch.no_grad():  # diagnostics: hard-threshold matches per anchor keypoint
            positive_cos = (anchor @ positive.T).masked_fill(~positive_mask[None], -2)
            positive_hits.append((positive_cos.max(1).values > cos_threshold).float().mean())
            negative_cos = (anchor @ negative.T).masked_fill(~negative_mask[None], -2)
            negative_hits.append((negative_cos.max(1).values > cos_threshold).float().mean())
    if not losses:  # no usable triplet: a zero loss that still reaches every parameter
        zero = descriptors.sum() * 0
        return {"loss": zero, "positive_match_fraction": zero.detach(), "negative_match_fraction": zero.detach()}
    return {
        "loss": torch.stack(losses).mean(),
        "positive_match_fraction": torch.stack(positive_hits).mean(),
        "negative_match_fraction": torch.stack(negative_hits).mean(),
    }


class OrbPatchMethod(Method):
    """The patch descriptor on ORB-keypoint bags from views of ``data.textures`` photos."""

    def network(self) -> nn.Module:
        """The 3x32x32 -> 128 `PatchNetwork`, channels-last (a third faster on the CPU)."""
        return PatchNetwork().to(memory_format=torch.channels_last)

    def initialise(self, network: nn.Module) -> None:
        """Centre the untrained network on training data.

        Its ReLUs give every untrained descriptor a large shared component (mean cosine 0.77 between patches of
        different photos), where the ratio loss is flat; ``conv5``'s bias starts at minus the mean output over
        a batch of training patches, which brings that cosine to about 0.
        """
        samples = self.training_set()
        batch = default_collate([samples[CENTRING_INDEX + i] for i in range(CENTRING_PAIRS)])
        patches = torch.cat([batch["anchor"], batch["positive"]]).flatten(0, 1).float() / 255.0
        with torch.no_grad():
            network.conv5.bias -= network.embed(patches).mean(dim=0)

    def training_set(self) -> Dataset:
        """Matching bag pairs with photometric jitter."""
        data = self.config.data
        return PhotoBagPairs(self.photos(), 2**62, data.seed, data.bags, data.photometric)

    def validation_sets(self) -> dict[str, Dataset]:
        """Held-out bag pairs of two views each, without jitter."""
        data, count = self.config.data, self.config.validation.synthetic_pairs
        bags = replace(data.bags, same_view=0.0)  # every held-out pair is two different views
        return {"bags": PhotoBagPairs(self.photos(), count, data.seed + VALIDATION_SEED_OFFSET, bags, None)}

    def loss_terms(self, network: nn.Module, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """The smoothed ratio loss and match-fraction diagnostics."""
        config = self.config.ratio_loss
        return triplet_terms(network, batch, config, hardest=step >= config.random_negative_steps)

    def card(self, network: nn.Module) -> dict[str, Any]:
        """Patch-descriptor card fields."""
        data = self.config.data
        return {
            "name": "orb-patch",
            "method": (
                "Keypoint-correspondence patch descriptor learned from image-level weak labels (Markuš, Pandžić, "
                "Ahlberg, IEEE TIP 2019), re-implemented; smoothed ratio loss, hardest-patch negatives"
            ),
            "description": "ORB keypoints with a learned 128-D descriptor of 32x32 oriented patches.",
            "licence": "MIT (this re-implementation)",
            "architecture": {
                "layers": "conv3x3 32, conv4x4/2 64, conv3x3 128 + maxpool2, conv1x1 32, conv6x6 128; ReLU after the "
                "first two; L2 normalisation (Markuš et al., IEEE TIP 2019)",
                "parameters": sum(p.numel() for p in network.parameters()),
            },
            "input": {
                "patch": f"{PATCH_SIZE}x{PATCH_SIZE} RGB, side {SIDE_PER_SIZE} x keypoint size, turned by its angle",
                "scale": "uint8 / 255, no mean subtraction",
                "sampling": (
                    "bilinear grid_sample, zeros outside the image, from the finest half-octave pyramid level "
                    f"(area averaging) with samples at most {MAX_SAMPLE_SPACING} px apart"
                ),
            },
            "descriptor": {
                "dim": 128,
                "dtype": "float32",
                "normalisation": "L2",
                "matcher": "mutual nearest neighbour on cosine similarity",
            },
            "keypoints": {
                "source": "orb",
                "description": "OpenCV ORB (scale factor 1.2, 8 levels, FAST threshold 20), top-k by response",
                "params": {"scale_factor": 1.2, "n_levels": 8, "fast_threshold": 20},
            },
            "data": {
                "generator": "bags of ORB patches from homographic views of single photos; two views of one photo "
                "are the matching pair (training/data/homographic.py)",
                "seed": data.seed,
                "photos": list(data.textures),
                "keypoints_per_bag": data.bags.keypoints,
                "negative_bags": "the other photos' bags of the batch: 2 (B - 1)",
            },
        }

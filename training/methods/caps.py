"""CAPS (Wang et al., ECCV 2020): posed pairs, epipolar + cycle losses, coarse + fine maps at SIFT keypoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from featureserve.models.backbones import GREY_MEAN, GREY_STD, SIZES
from featureserve.models.caps import CAPSNetwork

from ..data.pairs import RealPairs, SyntheticPairs
from ..data.posed import load_kapture, load_megadepth, load_strecha, nearby_pairs
from ..data.synthetic import GENERATOR_VERSION, SceneGenerator, texture_paths
from ..losses import CAPSLoss
from .base import Method

VALIDATION_SEED_OFFSET = 1_000_003  # validation samples come from a stream the training stream never reaches
PIXEL_CONVENTION = (
    "pixel centres at integer coordinates; pixel u sits at map coordinate (u + 0.5) / s - 0.5 on a stride-s map; "
    "bilinear grid_sample with align_corners=False"
)
SIFT_KEYPOINTS = {
    "source": "sift",
    "description": "OpenCV SIFT (contrastThreshold 0.04, edgeThreshold 10), top-k by response",
    "params": {"contrast_threshold": 0.04, "edge_threshold": 10.0},
}


def dense_card_fields(size: str, network: nn.Module) -> dict[str, Any]:
    """Architecture, input and keypoint fields of the methods on the CAPS backbone (scfeat overrides some)."""
    return {
        "architecture": {
            "size": size,
            "layers": SIZES[size],
            "parameters": sum(p.numel() for p in network.parameters()),
            "normalisation_layers": "GroupNorm (not BatchNorm: CPU batches hold a few images)",
            "strides": {"coarse": CAPSNetwork.strides[0], "fine": CAPSNetwork.strides[1]},
        },
        "input": {
            "colour": "grey (OpenCV RGB->grey)",
            "scale": "uint8 / 255",
            "normalisation": {"mean": GREY_MEAN, "std": GREY_STD},
            "padding": (
                "the last row and column repeated at the bottom and right up to a multiple of 64 pixels (size buckets)"
            ),
        },
        "pixel_convention": PIXEL_CONVENTION,
        "keypoints": SIFT_KEYPOINTS,
    }


def forward_pair(network: nn.Module, loss: CAPSLoss, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CAPS loss terms of a batch: both images go through the network in one forward pass."""
    outputs = network(torch.cat([batch["image1"], batch["image2"]]))
    n = batch["image1"].shape[0]
    outputs1 = {k: outputs[k][:n] for k in ("coarse", "fine")}
    outputs2 = {k: outputs[k][n:] for k in ("coarse", "fine")}
    return loss(outputs1, outputs2, batch)


class CAPSMethod(Method):
    """CAPS on synthetic posed pairs (or MegaDepth), validated on synthetic and real posed pairs."""

    def network(self) -> nn.Module:
        """A `CAPSNetwork` of the configured size."""
        return CAPSNetwork(self.config.size)

    def training_set(self) -> Dataset:
        """Synthetic pairs, or MegaDepth pairs when ``data.megadepth_root`` is set."""
        data = self.config.data
        if data.megadepth_root:
            images, pairs = load_megadepth(data.megadepth_root)
            size = (data.scene.width, data.scene.height)
            return RealPairs(images, pairs * 1000, size, data.seed, data.queries, data.photometric)
        generator = SceneGenerator(texture_paths(list(data.textures)), data.scene)
        return SyntheticPairs(generator, 2**62, data.seed, data.queries, data.photometric)

    def validation_sets(self) -> dict[str, Dataset]:
        """Held-out synthetic pairs (no augmentation) and each configured real posed set, at the training size."""
        data, validation = self.config.data, self.config.validation
        size = (data.scene.width, data.scene.height)
        sets: dict[str, Dataset] = {}
        if validation.synthetic_pairs:
            generator = SceneGenerator(texture_paths(list(data.textures)), data.scene)
            sets["synthetic"] = SyntheticPairs(
                generator, validation.synthetic_pairs, data.seed + VALIDATION_SEED_OFFSET, data.queries, None
            )
        loaders = {"strecha": load_strecha, "kapture": load_kapture}
        for real in validation.real:
            if real.format == "megadepth":
                images, pairs = load_megadepth(real.path)
            else:
                images = loaders[real.format](real.path)
                pairs = nearby_pairs(len(images), real.gaps)
            sets[Path(real.path).name] = RealPairs(images, pairs, size, data.seed, data.queries)
        return sets

    def loss_terms(self, network: nn.Module, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """Epipolar and cycle terms (`CAPSLoss`)."""
        return forward_pair(network, CAPSLoss(self.config.loss, CAPSNetwork.strides), batch)

    def card(self, network: nn.Module) -> dict[str, Any]:
        """CAPS card fields."""
        data = self.config.data
        return {
            "name": "caps",
            "method": (
                "CAPS: descriptors learned from camera-pose supervision (Wang, Zhou, Hariharan, Snavely, ECCV 2020, "
                "arXiv 2004.13324), re-implemented; epipolar + cycle losses, coarse-to-fine soft-argmax"
            ),
            "description": "Pose-supervised dense descriptors (coarse + fine, 256-D) at SIFT keypoints.",
            "licence": "MIT (this re-implementation; the CAPS reference code qianqianwang68/caps is MIT)",
            **dense_card_fields(self.config.size, network),
            "descriptor": {
                "dim": 256,
                "dtype": "float32",
                "layout": "coarse 128-D (stride 16) then fine 128-D (stride 4)",
                "normalisation": "each half L2-normalised, concatenated, L2-normalised again",
                "matcher": "mutual nearest neighbour on cosine similarity",
            },
            "data": {
                "generator": f"synthetic piecewise-planar posed pairs, version {GENERATOR_VERSION}",
                "seed": data.seed,
                "textures": [*data.textures, "procedural"],
                "resolution": [data.scene.width, data.scene.height],
            },
        }

"""`caps`: CAPS descriptors (Wang, Zhou, Hariharan, Snavely, ECCV 2020, arXiv 2004.13324) on SIFT keypoints.

An encoder-decoder gives a coarse descriptor map at stride 16 and a fine one at stride 4; the served
descriptor is both maps sampled bilinearly at the keypoint, each L2-normalised, concatenated and normalised
again (the released extractor concatenates without normalising; we normalise for cosine matching).
Keypoints come from OpenCV SIFT, as in the paper's HPatches extractor. Unlike the paper, each keypoint is
described on an image pyramid, blended from the two levels where its SIFT size is nearest ``reference_size``
pixels, so that a zoom changes the level rather than the descriptor (docs/MODELS.md has the measurements).
Deviations from the reference code (CAPS: Wang et al., ECCV 2020; the CPU sizes are ours): GroupNorm instead of
BatchNorm, no ImageNet
initialisation, grey input, and a small "lite" trunk for CPU training; the ResNet trunk stays selectable.
Pixel convention: that of `dense.py`.

Example:
    >>> from featureserve.models import load_model, KeypointOptions
    >>> from skimage import data
    >>> model = load_model("caps")
    >>> [features] = model.extract([data.astronaut()], [KeypointOptions(max_keypoints=500)])
    >>> features.descriptors.shape[1]
    256
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import normalise_rows
from .cards import CHECKPOINT_DIR, ModelCard, load_network
from .classical import SIFT
from .dense import DenseFeatureModel, pyramid_levels, within_max_pixels
from .features import DescriptorInfo, Features, KeypointOptions

DEFAULT_CARD = CHECKPOINT_DIR / "caps-lite.json"

# Named network sizes. "lite" is the CPU configuration of our CPU configuration (four stride-2 stages of 3x3
# convolutions, 1.19 M parameters); "resnet18" / "resnet34" are the CAPS design on a ResNet trunk (GroupNorm,
# from scratch, 3.6 M / 8.9 M parameters with this decoder).
SIZES: dict[str, dict[str, Any]] = {
    "lite": {"trunk": "lite", "channels": (32, 64, 128, 128), "decoder": (128, 64), "coarse_dim": 128, "fine_dim": 128},
    # SCFeat's CPU-speed trunk without a decoder: few channels where the resolution is high, as in XFeat (Potje et
    # al., CVPR 2024); its heads work at stride 8 (`scfeat.py`).
    "fast": {"trunk": "lite", "channels": (8, 24, 64, 128), "decoder": None},
    "resnet18": {
        "trunk": "resnet",
        "blocks": (2, 2, 2),
        "channels": (64, 64, 128, 256),
        "decoder": (128, 64),
        "coarse_dim": 128,
        "fine_dim": 128,
    },
    "resnet34": {
        "trunk": "resnet",
        "blocks": (3, 4, 6),
        "channels": (64, 64, 128, 256),
        "decoder": (128, 64),
        "coarse_dim": 128,
        "fine_dim": 128,
    },
}
# Grey input is the mean of ImageNet's RGB statistics, so one normalisation serves grey and RGB-trained trunks.
GREY_MEAN, GREY_STD = 0.449, 0.226


def conv_block(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv -> GroupNorm -> ELU; GroupNorm because CPU batches hold only a few image pairs."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.GroupNorm(min(32, c_out // 4), c_out),
        nn.ELU(inplace=True),
    )


class LiteTrunk(nn.Module):
    """Four stride-2 stages of 3x3 conv blocks: features at strides 4, 8 and 16.

    The first stage has one block, the others two: the second full-resolution-ish block cost 18 % of a CPU
    training step and its output is never sampled.
    """

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        c_in = 1
        self.stages = nn.ModuleList()
        for i, c in enumerate(channels):
            blocks = [conv_block(c_in, c, stride=2)] + ([conv_block(c, c)] if i > 0 else [])
            self.stages.append(nn.Sequential(*blocks))
            c_in = c
        self.out_channels = tuple(channels[1:])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features at strides 4, 8, 16."""
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs[1:]


class BasicBlock(nn.Module):
    """ResNet basic block with GroupNorm."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.GroupNorm(min(32, c_out // 4), c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.GroupNorm(min(32, c_out // 4), c_out),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.GroupNorm(min(32, c_out // 4), c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual output."""
        return F.relu(self.body(x) + self.skip(x))


class ResNetTrunk(nn.Module):
    """ResNet stem + layer1..layer3 (CAPS drops layer4): features at strides 4, 8, 16."""

    def __init__(self, channels: Sequence[int], blocks: Sequence[int]) -> None:
        super().__init__()
        stem, *widths = channels
        self.stem = nn.Sequential(
            nn.Conv2d(1, stem, 7, 2, 3, bias=False),
            nn.GroupNorm(min(32, stem // 4), stem),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        self.layers = nn.ModuleList()
        c_in = stem
        for i, (c, n) in enumerate(zip(widths, blocks, strict=True)):
            stride = 1 if i == 0 else 2
            self.layers.append(
                nn.Sequential(*[BasicBlock(c_in if j == 0 else c, c, stride if j == 0 else 1) for j in range(n)])
            )
            c_in = c
        self.out_channels = tuple(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features at strides 4, 8, 16."""
        x = self.stem(x)
        outputs = []
        for layer in self.layers:
            x = layer(x)
            outputs.append(x)
        return outputs


class UNetBackbone(nn.Module):
    """The CAPS encoder-decoder without heads: a trunk (strides 4, 8, 16) and a U-Net decoder (strides 8, 4).

    CAPS and HNDesc put 1x1 heads on it (`CAPSNetwork`); SCFeat fuses its three levels (`scfeat.py`). The
    attribute names are the checkpoint keys, so a backbone trained by one method can start another.
    """

    def __init__(self, size: str = "lite") -> None:
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"unknown backbone size {size!r}; known: {sorted(SIZES)}")
        conf = SIZES[size]
        self.size = size
        if conf["trunk"] == "lite":
            self.trunk: nn.Module = LiteTrunk(conf["channels"])
        else:
            self.trunk = ResNetTrunk(conf["channels"], conf["blocks"])
        c4, c8, c16 = self.trunk.out_channels
        self.decoder = conf["decoder"] is not None
        if self.decoder:
            d8, d4 = conf["decoder"]
            # U-Net decoder as in CAPS: upsample, 3x3 conv, concatenate the skip, 3x3 conv; at strides 8 and 4.
            self.up8, self.merge8 = conv_block(c16, d8), conv_block(d8 + c8, d8)
            self.up4, self.merge4 = conv_block(d8, d4), conv_block(d4 + c4, d4)

    def levels(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Trunk features ``"trunk4"``, ``"trunk8"``, ``"trunk16"`` and decoder maps ``"decoder8"``, ``"decoder4"``
        (sizes without a decoder give the trunk's only)."""
        if images.shape[1] != 1:
            raise ValueError(f"{type(self).__name__} takes grey images (B, 1, H, W), got {tuple(images.shape)}")
        x4, x8, x16 = self.trunk((images - GREY_MEAN) / GREY_STD)
        levels = {"trunk4": x4, "trunk8": x8, "trunk16": x16}
        if self.decoder:
            y8 = self.merge8(torch.cat([self.up8(resize_like(x16, x8)), x8], dim=1))
            y4 = self.merge4(torch.cat([self.up4(resize_like(y8, x4)), x4], dim=1))
            levels |= {"decoder8": y8, "decoder4": y4}
        return levels


class CAPSNetwork(UNetBackbone):
    """Grey ``(B, 1, H, W)`` in [0, 1] -> coarse ``(B, Dc, H/16, W/16)`` and fine ``(B, Df, H/4, W/4)`` maps.

    ``forward`` returns the raw maps under ``"coarse"`` and ``"fine"`` (training normalises them itself) and,
    for `DenseFeatureModel`, the L2-normalised maps under ``"descriptors"``. H and W must be multiples of 16.
    """

    strides: ClassVar[tuple[int, int]] = (16, 4)

    def __init__(self, size: str = "lite") -> None:
        super().__init__(size)
        conf = SIZES[size]
        self.coarse_head = nn.Conv2d(self.trunk.out_channels[2], conf["coarse_dim"], 1)
        self.fine_head = nn.Conv2d(conf["decoder"][1], conf["fine_dim"], 1)
        # Registration order is parameter order, on which a resumed run's optimiser state depends: keep the order
        # of runs written before the backbone was shared (trunk, coarse head, decoder, fine head).
        order = ("trunk", "coarse_head", "up8", "merge8", "up4", "merge4", "fine_head")
        self._modules = {name: self._modules[name] for name in order}

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        """Raw ``"coarse"`` and ``"fine"`` maps and their normalised ``"descriptors"`` list."""
        levels = self.levels(images)
        coarse = self.coarse_head(levels["trunk16"])
        fine = self.fine_head(levels["decoder4"])
        return {"coarse": coarse, "fine": fine, "descriptors": [F.normalize(coarse, dim=1), F.normalize(fine, dim=1)]}


def resize_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to the spatial size of ``like``."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def load_checkpoint(card_path: str | Path, device: str | torch.device = "cpu") -> tuple[CAPSNetwork, dict[str, Any]]:
    """The network and the JSON card of a checkpoint: ``card_path`` names the card, the card the weights file."""
    return load_network(card_path, lambda card: CAPSNetwork(card["architecture"]["size"]), device)


class CAPS(DenseFeatureModel):
    """CAPS descriptors (coarse + fine, 256-D) at SIFT keypoints, batched as padded tensors."""

    name = "caps"
    descriptor = DescriptorInfo("float", 256, "cosine")
    descriptor_strides: ClassVar[tuple[int, ...]] = CAPSNetwork.strides
    default_conf: ClassVar[dict[str, Any]] = {
        "device": "cpu",
        "pad_multiple": 64,
        "grey": True,
        # see DenseFeatureModel
        **{key: DenseFeatureModel.default_conf[key] for key in ("upright", "max_pixels", "batch_pixels")},
        "card": str(DEFAULT_CARD),
        "sift_contrast_threshold": 0.04,
        "sift_edge_threshold": 10.0,
        # Scale pyramid: each SIFT keypoint is described on the levels (``scale_step`` octaves apart) where its
        # diameter is ``reference_size`` pixels; 1 level describes every keypoint at full resolution. Six
        # levels (down to 1/5.7) raised Oxford MMA@3 from 0.619 to 0.644 for caps (docs/MODELS.md).
        "scale_levels": 6,
        "scale_step": 0.5,
        "reference_size": 2.5,
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        self._check_pyramid_conf()
        self.network, self._card = load_checkpoint(self.conf["card"], self.device)
        self._sift = SIFT(
            contrast_threshold=self.conf["sift_contrast_threshold"], edge_threshold=self.conf["sift_edge_threshold"]
        )

    @property
    def card(self) -> ModelCard:
        """The model card: the JSON card of the checkpoint, served conf included."""
        return ModelCard.from_checkpoint(self.name, self.descriptor, self._card, self.conf)

    @within_max_pixels
    def extract(self, images: Sequence[np.ndarray], options: Sequence[KeypointOptions]) -> list[Features]:
        """SIFT keypoints (OpenCV, threaded) with CAPS descriptors from one tensor batch per size bucket."""
        detections = self._sift.detect(images, options)
        return self._describe_on_pyramid(images, detections)

    @within_max_pixels
    def detect(self, images: Sequence[np.ndarray], options: Sequence[KeypointOptions]) -> list[Features]:
        """SIFT keypoints and responses only: detection needs no network pass."""
        return self._sift.detect(images, options)

    def _describe_on_pyramid(self, images: Sequence[np.ndarray], detections: Sequence[Features]) -> list[Features]:
        """The detections with descriptors blended from the two pyramid levels that bracket each keypoint's size."""
        step, reference = float(self.conf["scale_step"]), float(self.conf["reference_size"])
        weights = []
        for image, d in zip(images, detections, strict=True):
            # A keypoint without a size (none detected, or a detector that gives none) stays at full resolution.
            levels = self._usable_levels(image)
            sizes = d.extras.get("sizes", np.zeros(len(d)))
            lower, upper, upper_weight = pyramid_levels(sizes, reference, step, levels)
            rows = np.arange(levels)[:, None]
            weights.append(np.where(rows == lower, 1 - upper_weight, 0) + np.where(rows == upper, upper_weight, 0))
        sums = self._pyramid_descriptor_sums(images, [d.keypoints for d in detections], weights)
        return [
            Features(d.keypoints, d.scores, normalise_rows(total), d.image_size, self.descriptor, dict(d.extras))
            for d, total in zip(detections, sums, strict=True)
        ]

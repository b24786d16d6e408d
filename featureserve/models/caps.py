"""`caps`: CAPS descriptors (Wang, Zhou, Hariharan, Snavely, ECCV 2020, arXiv 2004.13324) on SIFT keypoints.

An encoder-decoder gives a coarse descriptor map at stride 16 and a fine one at stride 4; the served
descriptor is both maps sampled bilinearly at the keypoint, each L2-normalised, concatenated and normalised
again (the released extractor concatenates without normalising; we normalise for cosine matching).
Keypoints come from OpenCV SIFT, as in the paper's HPatches extractor. Unlike the paper, each keypoint is
described on an image pyramid, blended from the two levels where its SIFT size is nearest ``reference_size``
pixels, so that a zoom changes the level rather than the descriptor (docs/models/caps.md has the measurements).
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

from .backbones import SIZES, UNetBackbone
from .base import normalise_rows
from .cards import CHECKPOINT_DIR, ModelCard, load_network
from .classical import SIFT
from .dense import DenseFeatureModel, pyramid_levels, within_max_pixels
from .features import DescriptorInfo, Features, KeypointOptions

DEFAULT_CARD = CHECKPOINT_DIR / "caps-lite.json"


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
        **{key: DenseFeatureModel.default_conf[key] for key in ("upright", "max_pixels", "batch_pixels", "dtype")},
        "card": str(DEFAULT_CARD),
        "sift_contrast_threshold": 0.04,
        "sift_edge_threshold": 10.0,
        # One SIFT keypoint per location: the descriptor ignores SIFT's orientation, so the copies SIFT makes
        # for a location's other orientations would be equal rows that only take up the keypoint budget.
        "unique_locations": False,
        # Scale pyramid: each SIFT keypoint is described on the levels (``scale_step`` octaves apart) where its
        # diameter is ``reference_size`` pixels; 1 level describes every keypoint at full resolution. Six
        # levels (down to 1/5.7) describe zoomed keypoints better (docs/models/caps.md has the comparison).
        "scale_levels": 6,
        "scale_step": 0.5,
        "reference_size": 2.5,
        # Levels finer than the image (each upsampled ``scale_step`` octaves more), for the keypoints smaller than
        # ``reference_size``, which a zoomed-out partner needs. The network then also sees the image upsampled, past
        # ``max_pixels``: time and memory grow with it (docs/models/caps.md).
        "finer_levels": 0,
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        self._check_pyramid_conf()
        if int(self.conf["finer_levels"]) < 0:
            raise ValueError(f"{self.name}: finer_levels must be >= 0, got {self.conf['finer_levels']}")
        self.network, self._card = load_checkpoint(self.conf["card"], self.device)
        self._sift = SIFT(
            contrast_threshold=self.conf["sift_contrast_threshold"],
            edge_threshold=self.conf["sift_edge_threshold"],
            unique_locations=self.conf["unique_locations"],
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
        finer = int(self.conf["finer_levels"])
        weights = []
        for image, d in zip(images, detections, strict=True):
            # A keypoint without a size (none detected, or a detector that gives none) goes to the finest level.
            levels = finer + self._usable_levels(image)
            sizes = np.zeros(len(d)) if d.sizes is None else d.sizes
            lower, upper, upper_weight = pyramid_levels(sizes, reference, step, levels, finer)
            rows = np.arange(levels)[:, None]
            weights.append(np.where(rows == lower, 1 - upper_weight, 0) + np.where(rows == upper, upper_weight, 0))
        sums = self._pyramid_descriptor_sums(images, [d.keypoints for d in detections], weights, finer)
        return [
            Features(d.keypoints, d.scores, normalise_rows(total), d.image_size, self.descriptor, d.sizes, d.angles)
            for d, total in zip(detections, sums, strict=True)
        ]

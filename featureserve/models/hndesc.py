"""`hndesc`: HNDesc descriptors (Melekhov et al., 3DV 2021) at SIFT keypoints.

The network is the CAPS encoder-decoder of `caps.py`, of which only the fine map (128-D, stride 4) is trained
and served, as in the released HNDesc model whose backbone is the CAPS ResUNet (HNDesc: Melekhov et al., 3DV 2021).
Descriptors are bilinear samples of that map, L2-normalised, on the scale pyramid of `caps` (each keypoint where
its SIFT size is ``reference_size``). Keypoints come from OpenCV SIFT, chosen by measurement against scfeat's
detector (docs/models/hndesc.md records both).

Example:
    >>> from featureserve.models import load_model, KeypointOptions
    >>> from skimage import data
    >>> model = load_model("hndesc")
    >>> [features] = model.extract([data.astronaut()], [KeypointOptions(max_keypoints=500)])
    >>> features.descriptors.shape[1]
    128
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .caps import CAPS, CAPSNetwork
from .cards import CHECKPOINT_DIR
from .dense import sample_descriptors
from .features import DescriptorInfo

DEFAULT_CARD = CHECKPOINT_DIR / "hndesc-lite.json"


class HNDesc(CAPS):
    """HNDesc descriptors (the fine map only, 128-D) at SIFT keypoints, batched as padded tensors."""

    name = "hndesc"
    descriptor = DescriptorInfo("float", 128, "cosine")
    descriptor_strides: ClassVar[tuple[int, ...]] = (CAPSNetwork.strides[1],)
    default_conf: ClassVar[dict[str, Any]] = {**CAPS.default_conf, "card": str(DEFAULT_CARD)}

    def _describe_at(self, outputs: dict[str, Any], keypoints: torch.Tensor) -> torch.Tensor:
        """``(B, N, 128)`` unit descriptors sampled from the fine map."""
        fine = outputs["descriptors"][1]
        return sample_descriptors(fine, keypoints, self.descriptor_strides[0])

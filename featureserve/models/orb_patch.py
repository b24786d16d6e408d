"""`orb-patch`: ORB keypoints with the learned 32x32 patch descriptor of Markuš, Pandžić and Ahlberg.

The network is the "3x32x32 -> 128" model of the reference code (Markuš et al., IEEE TIP 2019): five convolutions,
no padding and no normalisation layers, 259 296 parameters, an L2-normalised 128-D output. Patches are
cut at OpenCV ORB keypoints as in the paper's training data: a square of side ``1.5 x keypoint size``,
rotated by the keypoint angle and resampled to 32x32 (bilinear here, bicubic in the reference), RGB in
``[0, 1]`` (grey images are replicated to three channels). Unlike the reference, large patches are sampled
from a coarser level of a half-octave pyramid so that they do not alias. The patches of an image are cut
with one ``grid_sample`` call per pyramid level and described in one forward pass.

Registered as ``orb-patch`` with the committed checkpoint (docs/models/orb-patch.md); another exported run
loads with ``OrbPatch(card="path/to/orb-patch.json")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import check_image, image_size, rescale_points, resize_image, to_grey
from .cards import CHECKPOINT_DIR, ModelCard, load_network
from .classical import ORB
from .features import DescriptorInfo, Features, KeypointOptions
from .keypoints import candidate_count

DEFAULT_CARD = CHECKPOINT_DIR / "orb-patch.json"
PATCH_SIZE = 32
SIDE_PER_SIZE = 1.5  # patch side in pixels = 1.5 x the keypoint's size (Markuš et al., IEEE TIP 2019)
# A patch is sampled from the finest half-octave pyramid level on which its samples lie at most this many level
# pixels apart: finer spacing scored better on Oxford and on the posed sets (docs/models/orb-patch.md).
MAX_SAMPLE_SPACING = 0.5


class PatchNetwork(nn.Module):
    """``(B, 3, 32, 32)`` patches in [0, 1] -> ``(B, 128)`` unit descriptors (the exact reference layers).

    One deviation, in front of the layers: each patch is standardised (zero mean, unit standard deviation over
    its pixels and channels), as L2-Net and HardNet do, where the reference only divides by 255. Without it an
    untrained network's descriptors follow patch brightness, and the ratio loss collapses them onto one
    direction before it learns anything (docs/models/orb-patch.md).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 4, stride=2)
        self.conv3 = nn.Conv2d(64, 128, 3)
        self.conv4 = nn.Conv2d(128, 32, 1)
        self.conv5 = nn.Conv2d(32, 128, 6)

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        """``(B, 128)`` outputs of the last layer, before the L2 normalisation."""
        x = standardise_patches(patches)
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(self.conv3(x), 2)
        return self.conv5(self.conv4(x)).flatten(1)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Unit-length descriptors, one row per patch."""
        return F.normalize(self.embed(patches), dim=1)


def standardise_patches(patches: torch.Tensor, min_std: float = 0.01) -> torch.Tensor:
    """Each ``(3, 32, 32)`` patch shifted to zero mean and scaled to unit standard deviation (flat patches:
    scaled by ``1 / min_std`` at most)."""
    mean = patches.mean(dim=(1, 2, 3), keepdim=True)
    std = patches.std(dim=(1, 2, 3), keepdim=True)
    return (patches - mean) / (std + min_std)


def extract_patches(image: np.ndarray, keypoints: np.ndarray) -> torch.Tensor:
    """``(N, 3, 32, 32)`` float patches in [0, 1], rotated and scaled by each keypoint, anti-aliased.

    Args:
        image: ``(H, W)`` or ``(H, W, 3)`` uint8.
        keypoints: ``(N, 4)`` rows ``(x, y, size, angle)``: pixel centre, OpenCV keypoint size in pixels and
            angle in degrees (OpenCV's convention: image axes, y down).

    Patch pixel ``(i, j)`` samples the image at ``centre + R(angle) @ (offset_j, offset_i)`` where the offsets
    span the side ``1.5 x size`` symmetrically; samples outside the image are 0. Each patch is sampled from the
    finest level of a half-octave pyramid (area averaging) on which its samples lie at most
    ``MAX_SAMPLE_SPACING`` pixels apart: sampling the full image would alias.
    """
    check_image(image)
    keypoints = np.asarray(keypoints, np.float32).reshape(-1, 4)
    patches = torch.zeros((len(keypoints), 3, PATCH_SIZE, PATCH_SIZE))
    spacing = SIDE_PER_SIZE * keypoints[:, 2] / PATCH_SIZE  # image pixels between neighbouring samples
    levels = np.ceil(2 * np.log2(np.maximum(spacing / MAX_SAMPLE_SPACING, 1.0))).astype(np.int64)
    for level in np.unique(levels):
        level_image = resize_image(image, 2.0 ** (-level / 2))
        chosen = np.flatnonzero(levels == level)
        rows = keypoints[chosen].copy()
        rows[:, :2] = rescale_points(rows[:, :2], image_size(image), image_size(level_image))
        rows[:, 2] *= level_image.shape[1] / image.shape[1]
        patches[torch.from_numpy(chosen)] = _sample_patches(level_image, rows)
    return patches


def _sample_patches(image: np.ndarray, keypoints: np.ndarray) -> torch.Tensor:
    """``(N, 3, 32, 32)`` bilinear patches of ``image`` at ``(N, 4)`` keypoint rows, in one ``grid_sample`` call."""
    rgb = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image
    height, width = rgb.shape[:2]
    source = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255.0)[None]
    kp = torch.from_numpy(keypoints)
    steps = (torch.arange(PATCH_SIZE, dtype=torch.float32) + 0.5) / PATCH_SIZE - 0.5  # offsets in units of the side
    side = SIDE_PER_SIZE * kp[:, 2]
    theta = torch.deg2rad(kp[:, 3])
    cos, sin = torch.cos(theta), torch.sin(theta)
    u = steps[None, None, :] * side[:, None, None]  # (N, 1, 32): along the patch's x axis
    v = steps[None, :, None] * side[:, None, None]  # (N, 32, 1): along the patch's y axis
    x = kp[:, 0, None, None] + cos[:, None, None] * u - sin[:, None, None] * v
    y = kp[:, 1, None, None] + sin[:, None, None] * u + cos[:, None, None] * v
    # Pixel centres at integer coordinates, grid_sample(align_corners=False): x_norm = (2x + 1) / W - 1.
    grid = torch.stack([(2 * x + 1) / width - 1, (2 * y + 1) / height - 1], dim=-1)  # (N, 32, 32, 2)
    patches = F.grid_sample(
        source, grid.reshape(1, -1, PATCH_SIZE, 2), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return patches.reshape(3, len(kp), PATCH_SIZE, PATCH_SIZE).transpose(0, 1)


def cv_keypoint_rows(cv_keypoints: Sequence[cv2.KeyPoint]) -> np.ndarray:
    """``(N, 4)`` float32 rows ``(x, y, size, angle)`` of OpenCV keypoints (angle -1, "none", becomes 0)."""
    rows = [(k.pt[0], k.pt[1], k.size, max(k.angle, 0.0)) for k in cv_keypoints]
    return np.array(rows, np.float32).reshape(-1, 4)


def load_checkpoint(card_path: str | Path, device: str | torch.device = "cpu") -> tuple[PatchNetwork, dict[str, Any]]:
    """The network and the JSON card of a checkpoint: ``card_path`` names the card, the card the weights file."""
    network, card = load_network(card_path, lambda _: PatchNetwork(), device)
    # Channels-last halves the CPU time of this small-kernel network (docs/models/orb-patch.md).
    return network.to(memory_format=torch.channels_last), card


class OrbPatch(ORB):
    """ORB keypoints (OpenCV, threaded per image) described by the learned patch network."""

    name = "orb-patch"
    descriptor = DescriptorInfo("float", 128, "cosine")
    default_conf: ClassVar[dict[str, Any]] = {
        **ORB.default_conf,
        "card": str(DEFAULT_CARD),
        "device": "cpu",
        # Patches per forward pass: on a CPU, 128 keeps the activations in cache (docs/models/orb-patch.md); a
        # GPU wants all of them at once.
        "patch_batch": 128,
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        self.network, self._card = load_checkpoint(self.conf["card"], self.conf["device"])

    @property
    def grey_input(self) -> bool:
        """The patches are cut from the RGB image."""
        return False

    @property
    def card(self) -> ModelCard:
        """The model card: the JSON card of the checkpoint, served conf included."""
        return ModelCard.from_checkpoint(self.name, self.descriptor, self._card, self.conf)

    def _extract_one(self, image: np.ndarray, options: KeypointOptions) -> Features:
        check_image(image)
        cv_keypoints = self._select(image, self._create(candidate_count(options)).detect(to_grey(image), None), options)
        features = self._describe_rows(image, cv_keypoint_rows(cv_keypoints), [k.response for k in cv_keypoints])
        features.angles = np.array([k.angle for k in cv_keypoints], np.float32)  # -1 stays "none" here
        return features

    def _describe_one(self, image: np.ndarray, keypoints: np.ndarray) -> Features:
        check_image(image)
        points = np.asarray(keypoints, np.float32).reshape(-1, 2)
        rows = np.concatenate([points, np.full((len(points), 1), self.conf["describe_size"], np.float32)], axis=1)
        rows = np.concatenate([rows, np.zeros((len(points), 1), np.float32)], axis=1)  # upright
        return self._describe_rows(image, rows, np.zeros(len(points), np.float32))

    @torch.inference_mode()
    def _describe_rows(self, image: np.ndarray, rows: np.ndarray, scores: Sequence[float]) -> Features:
        if len(rows) == 0:
            return Features.empty(image_size(image), self.descriptor)
        patches = extract_patches(image, rows).to(self.conf["device"])
        chunks = patches.split(int(self.conf["patch_batch"]))
        descriptors = torch.cat([self.network(chunk) for chunk in chunks]).float().cpu().numpy()
        return Features(
            rows[:, :2].copy(),
            np.asarray(scores, np.float32),
            descriptors,
            image_size(image),
            self.descriptor,
            sizes=rows[:, 2].copy(),
            angles=rows[:, 3].copy(),
        )

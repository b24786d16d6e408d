"""`scfeat`: SCFeat keypoints and descriptors (Sun et al., "Shared Coupling-bridge for Weakly Supervised Local
Feature Learning", 2022, arXiv 2212.07047), re-implemented.

The served "fast" network (`HEADS`) is a light trunk (8, 24, 64 and 128 channels at strides 2 to 16, as XFeat
spends few channels where the resolution is high; Potje et al., CVPR 2024) whose three levels are fused at stride
8 (F2R: the 1/4 map pixel-unshuffled, the 1/8 map and the 1/16 map, each projected to 128 channels, then a 1x1
conv): that map ``D`` is the served descriptor. The shared coupling-bridge normalisation blends a position-wise
and a channel-wise normalisation of ``D`` with learnable weights; its output feeds the descriptor loss and,
detached, the detector. The detector turns a peakiness prior on the features, a prior on the image (the Hessian
blob response here, peakiness in the reference) and a small head into a full-resolution, non-negative score map;
the head predicts the 64 pixels of each 8x8 cell from the cell's features and pixels (pixel shuffle, as in
SuperPoint and XFeat), so nothing is convolved at full resolution. The earlier "lite" network (a CAPS
encoder-decoder fused at stride 4, full-resolution detector) loads from its card, ``scfeat-lite.json``.
Inference: on each of three half-octave pyramid levels (one level, a single pass, is an option), 3x3 NMS, score
threshold and sub-pixel refinement; the strongest keypoints of all levels (top-k or uniform selection), each
described on its level and its neighbours, summed. The served card (``scfeat-fast-fine.json``) adds a fine head:
at each keypoint, ``D`` upsampled to stride 4 plus a small MLP of it and the trunk's 1/4 features there, computed
at the keypoints only (``scfeat-fast.json`` is the network without it, ``D`` sampled bilinearly).
Deviations from the reference code (docs/models/scfeat.md): grey input, a backbone distilled from our earlier checkpoint
instead of ImageNet initialisation, the light trunk and descriptors at stride 8, the cell detector, the Hessian
blob response as the image prior of the score map, and peakiness inputs divided by their largest magnitude rather
than their maximum (normalised grey can be negative everywhere).

Example:
    >>> from featureserve.models import load_model, KeypointOptions
    >>> from skimage import data
    >>> model = load_model("scfeat")
    >>> [features] = model.extract([data.astronaut()], [KeypointOptions(max_keypoints=500)])
    >>> features.descriptors.shape[1]
    128
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import GREY_MEAN, GREY_STD, SIZES, UNetBackbone, conv_block, resize_like
from .base import image_size, normalise_rows, rescale_points, resize_image
from .cards import CHECKPOINT_DIR, ModelCard, load_network
from .dense import DenseFeatureModel, sample_map, within_max_pixels
from .features import DescriptorInfo, Features, KeypointOptions
from .keypoints import candidate_count, select_keypoints
from .orientation import central_gradients, gaussian_blur

DEFAULT_CARD = CHECKPOINT_DIR / "scfeat-fast-fine.json"
DESCRIPTOR_DIM = 128
FINE_WIDTH = 128  # hidden width of the optional fine head (`FineHead`)
# Per backbone size: the stride of the fused descriptor map ``D`` and the detector (`Detector` at full resolution
# with its (feature, image, joint) widths, or `CellDetector`, whose cells are ``D``'s, with its width). At stride 4
# ``D`` fuses the decoder's 1/4 and 1/8 maps and the trunk's 1/16 map, as the reference fuses its backbone's levels;
# at stride 8 (no decoder) it fuses the trunk's 1/4 (unshuffled to 1/8), 1/8 and 1/16 maps. The reference's
# full-resolution detector widths (192, 64, 128) cost seconds per 640x480 image on a CPU.
HEADS: dict[str, dict[str, Any]] = {
    "fast": {"stride": 8, "detector": "cells", "detector_widths": (32,)},
    "lite": {"stride": 4, "detector": "full", "detector_widths": (32, 16, 16)},
    "resnet18": {"stride": 4, "detector": "full", "detector_widths": (192, 64, 128)},
}
HEADS["resnet34"] = HEADS["resnet18"]


def peakiness(x: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` ASLFeat-style peakiness of ``(B, C, H, W)``: spatial times channel peakiness, max over C.

    Each sample is divided by its largest magnitude first, so the prior does not depend on the feature scale.
    """
    x = x / x.abs().flatten(1).amax(dim=1).clamp_min(1e-6).view(-1, 1, 1, 1)
    spatial = F.softplus(x - box_mean3(x))
    if x.shape[1] == 1:  # a grey image: the channel term is softplus(0) everywhere
        return spatial * math.log(2)
    channel = F.softplus(x - x.mean(dim=1, keepdim=True))
    return (spatial * channel).amax(dim=1, keepdim=True)


def box_mean3(x: torch.Tensor) -> torch.Tensor:
    """The 3x3 mean of every pixel of ``(B, C, H, W)``, borders reflected; as ``avg_pool2d`` but separable (faster)."""
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    rows = padded[..., :-2] + padded[..., 1:-1] + padded[..., 2:]
    return (rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]) / 9


def divided_by_max(response: torch.Tensor) -> torch.Tensor:
    """A non-negative ``(B, 1, H, W)`` response with each sample divided by its own maximum (zero stays zero)."""
    return response / response.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)


def cornerness(image: torch.Tensor, derivative_sigma: float = 1.0, window_sigma: float = 1.5) -> torch.Tensor:
    """``(B, 1, H, W)`` Shi-Tomasi cornerness of a grey ``(B, 1, H, W)`` image, each sample divided by its maximum.

    The smaller eigenvalue of the structure tensor (Shi and Tomasi, "Good features to track", CVPR 1994): large
    only where the intensity varies in two directions, near zero on edges and in flat areas. The window is 1.5
    times the derivative scale, close to the 1/0.7 of Harris-Laplace (Mikolajczyk and Schmid, IJCV 2004); a
    window of 2 px put the peak further from the corner (docs/models/scfeat.md).
    """
    gx, gy = central_gradients(gaussian_blur(image, derivative_sigma))
    xx, xy, yy = gaussian_blur(torch.cat([gx * gx, gx * gy, gy * gy], dim=1), window_sigma).unbind(dim=1)
    response = ((xx + yy) / 2 - (((xx - yy) / 2) ** 2 + xy**2).sqrt()).clamp_min(0).unsqueeze(1)
    return divided_by_max(response)


HESSIAN_SIGMA = 1.6  # SIFT's and A-KAZE's base scale; the detectors are trained with it


def hessian_blobness(image: torch.Tensor, sigma: float = HESSIAN_SIGMA) -> torch.Tensor:
    """``(B, 1, H, W)`` determinant of the Hessian of a grey ``(B, 1, H, W)`` image where positive, per sample / max.

    The determinant of the Hessian of the image smoothed at ``sigma`` (Lindeberg, IJCV 1998; the SURF and A-KAZE
    detectors) is positive at the centres of bright and dark blobs, negative at saddles and near zero on edges and
    flat areas; saddles are set to zero. Blob centres stay put under blur and change of scale, where corners of
    the structure tensor move (docs/models/scfeat.md compares the two). ``sigma`` is the base scale of SIFT and
    A-KAZE.
    """
    gx, gy = central_gradients(gaussian_blur(image, sigma))
    gxx, gxy = central_gradients(gx)
    gyy = central_gradients(gy)[1]
    response = (gxx * gyy - gxy**2).clamp_min(0)
    return divided_by_max(response)


class CouplingBridgeNorm(nn.Module):
    """Learnable blend of position-wise and channel-wise normalisation of a ``(B, C, h, w)`` map (SCFeat: Sun et
    al., arXiv 2212.07047).

    Position-wise: normalise across channels at every pixel, then an affine map whose scale and shift are 7x7
    convolutions of the per-pixel channel mean. Channel-wise: instance normalisation without affine or running
    statistics. The blend weights start at 0.7 and 0.3 as in the reference; the affine convolutions start as the
    identity (scale 1, shift 0) so that training starts from the plain normalisation.
    """

    def __init__(self, kernel: int = 7) -> None:
        super().__init__()
        self.scale = nn.Conv2d(1, 1, kernel, padding=kernel // 2)
        self.shift = nn.Conv2d(1, 1, kernel, padding=kernel // 2)
        for conv, bias in ((self.scale, 1.0), (self.shift, 0.0)):
            nn.init.zeros_(conv.weight)
            nn.init.constant_(conv.bias, bias)
        self.weights = nn.Parameter(torch.tensor([0.7, 0.3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised map, same shape as ``x``."""
        mean = x.mean(dim=1, keepdim=True)
        centred = x - mean
        # The unbiased variance across channels, as ``x.var(dim=1)`` gives it, whose CPU kernel is ten times slower.
        variance = centred.square().mean(dim=1, keepdim=True) * (x.shape[1] / (x.shape[1] - 1))
        position = centred / (variance + 1e-5).sqrt() * self.scale(mean) + self.shift(mean)
        channel = F.instance_norm(x, eps=1e-5)
        w_position, w_channel = self.weights
        return (w_position * position + w_channel * channel) / (w_position + w_channel)


# Served; "peakiness" is the reference's, and what the shipped detector was trained with.
DEFAULT_IMAGE_PRIOR = "hessian"
IMAGE_PRIORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    DEFAULT_IMAGE_PRIOR: hessian_blobness,
    "cornerness": cornerness,
    "peakiness": peakiness,
}


def _check_prior(image_prior: str) -> str:
    if image_prior not in IMAGE_PRIORS:
        raise ValueError(f"image_prior must be one of {sorted(IMAGE_PRIORS)}, got {image_prior!r}")
    return image_prior


def combine_scores(
    feature_prior: torch.Tensor,
    image: torch.Tensor,
    image_peakiness: torch.Tensor,
    head: torch.Tensor,
    prior: str,
    hessian_sigma: float = HESSIAN_SIGMA,
) -> torch.Tensor:
    """``S = up(P(X)) * Q(I) * o``: the coarse feature prior, the image prior ``Q`` and the head's ``o``, all >= 0."""
    size = image.shape[-2:]
    if prior == "peakiness":  # already at hand for the image branch
        image_prior = image_peakiness
    elif prior == "hessian":
        # Second derivatives of a smoothed image are small differences: in half precision they lose the peaks.
        image_prior = hessian_blobness(image.float(), hessian_sigma).to(image.dtype)
    else:
        image_prior = IMAGE_PRIORS[prior](image)
    return F.interpolate(feature_prior, size=size, mode="bilinear", align_corners=False) * image_prior * head


class Detector(nn.Module):
    """Full-resolution keypoint scores from detached features at stride 4 and the image (SCFeat: Sun et al., arXiv
    2212.07047).

    ``S = up(P(X)) * Q(I) * o`` where ``P`` is `peakiness`, ``X`` the features, ``I`` the normalised image and
    ``o`` a small convolutional head on both (its image branch sees ``P(I) * I``, as in the reference); every
    factor is non-negative. The image prior ``Q`` is `hessian_blobness` by default, `cornerness` or, as in the
    reference, `peakiness`: on a grey image the channel term of ``P(I)`` is constant, so ``P(I)`` only says
    "brighter than the 3x3 mean" (docs/models/scfeat.md compares the three).
    """

    def __init__(
        self,
        feature_channels: int,
        widths: tuple[int, ...],
        image_prior: str = DEFAULT_IMAGE_PRIOR,
        hessian_sigma: float = HESSIAN_SIGMA,
    ) -> None:
        super().__init__()
        self.image_prior = _check_prior(image_prior)
        self.hessian_sigma = hessian_sigma
        features, image, joint = widths
        self.feature_conv = nn.Conv2d(feature_channels, features, 3, padding=1)
        self.image_conv = nn.Conv2d(1, image, 3, padding=1)
        self.joint_conv = nn.Conv2d(features + image, joint, 3, padding=1)
        self.out_conv = nn.Conv2d(joint, 1, 1)
        self.activation = nn.PReLU()  # one slope shared by the three branches, as in the reference

    def forward(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` non-negative scores for ``(B, C, H/4, W/4)`` features and a ``(B, 1, H, W)`` image."""
        feature_prior, image_peakiness = peakiness(features), peakiness(image)
        h = self.activation(F.instance_norm(self.feature_conv(feature_prior * features)))
        h = F.interpolate(h, size=image.shape[-2:], mode="bilinear", align_corners=False)
        g = self.activation(F.instance_norm(self.image_conv(image_peakiness * image)))
        z = self.activation(F.instance_norm(self.joint_conv(torch.cat([h, g], dim=1))))
        o = F.softplus(F.instance_norm(self.out_conv(z)))
        return combine_scores(feature_prior, image, image_peakiness, o, self.image_prior, self.hessian_sigma)


class CellDetector(nn.Module):
    """`Detector`'s score map with its head on cells: one logit per pixel of each ``cell`` x ``cell`` cell, unfolded.

    The head sees ``P(X) * X`` and the cell's pixels of ``P(I) * I`` (pixel unshuffle), runs a 1x1 and a 3x3
    convolution at the cells' stride and predicts ``cell ** 2`` logits per cell, which pixel shuffle lays out at
    full resolution (as SuperPoint and XFeat do), smoothed by a Gaussian of a quarter cell. Nothing is convolved at
    full resolution; ``S = up(P(X)) * Q(I) * o`` as in `Detector`: ``o`` says which parts of a cell hold keypoints,
    ``Q(I)``, at full resolution, places their peaks.
    """

    def __init__(
        self,
        feature_channels: int,
        widths: tuple[int, ...],
        image_prior: str = DEFAULT_IMAGE_PRIOR,
        cell: int = 8,
        hessian_sigma: float = HESSIAN_SIGMA,
    ) -> None:
        super().__init__()
        self.image_prior = _check_prior(image_prior)
        self.hessian_sigma = hessian_sigma
        self.cell = cell
        # Pixels of one cell come from separate logits; unsmoothed, their noise moves the image prior's peaks.
        self.smoothing = cell / 4
        (width,) = widths
        self.reduce = nn.Conv2d(feature_channels + self.cell**2, width, 1)
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.out_conv = nn.Conv2d(width, self.cell**2, 1)
        self.activation = nn.PReLU()

    def forward(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` non-negative scores for ``(B, C, H/cell, W/cell)`` features and a ``(B, 1, H, W)`` image."""
        feature_prior, image_peakiness = peakiness(features), peakiness(image)
        cells = F.pixel_unshuffle(image_peakiness * image, self.cell)
        h = self.activation(F.instance_norm(self.reduce(torch.cat([feature_prior * features, cells], dim=1))))
        h = self.activation(F.instance_norm(self.conv(h)))
        logits = gaussian_blur(F.pixel_shuffle(self.out_conv(h), self.cell), self.smoothing)
        o = F.softplus(F.instance_norm(logits))
        return combine_scores(feature_prior, image, image_peakiness, o, self.image_prior, self.hessian_sigma)


def sample_upsampled(feature_map: torch.Tensor, keypoints: torch.Tensor, stride: int) -> torch.Tensor:
    """``(B, N, C)`` bilinear samples at ``(B, N, 2)`` pixel keypoints of ``feature_map`` (stride ``stride``) upsampled
    twice by `resize_like`, computed from the four cells of the upsampled map around each keypoint without that map.

    A value of the upsampled map is a bilinear sample of ``feature_map`` at that cell's centre, so each keypoint's
    sample is a bilinear blend of four samples of ``feature_map``. Sampling ``feature_map`` at the keypoint itself
    is not the same: between two cells of the upsampled map that straddle a cell boundary of ``feature_map``, the
    upsampled map blends across the boundary (docs/models/scfeat.md measures the difference).
    """
    fine = stride // 2
    limit = keypoints.new_tensor([2 * feature_map.shape[-1] - 1, 2 * feature_map.shape[-2] - 1])
    cells = ((keypoints + 0.5) / fine - 0.5).clamp_min(0).minimum(limit)  # grid_sample's "border" padding
    low = cells.floor().minimum(limit - 1).clamp_min(0)
    frac = cells - low
    offsets = ((0, 0), (1, 0), (0, 1), (1, 1))
    # Each corner cell's centre in pixels: the feature map's sample there is the upsampled map's value.
    centres = torch.cat([((low + low.new_tensor(o)).minimum(limit) + 0.5) * fine - 0.5 for o in offsets], dim=1)
    corners = sample_map(feature_map, centres, stride).chunk(4, dim=1)
    fx, fy = frac[..., :1], frac[..., 1:]
    return (corners[0] * (1 - fx) + corners[1] * fx) * (1 - fy) + (corners[2] * (1 - fx) + corners[3] * fx) * fy


class FineHead(nn.Module):
    """A stride-4 descriptor from ``D`` upsampled and the trunk's 1/4 level, one point at a time.

    ``u + w * mlp([u, t])`` where ``u`` is ``D`` (upsampled to stride 4) normalised at the point, ``t`` the trunk's
    1/4 features there and ``mlp`` two linear layers with an ELU between them, the last one starting at zero (the
    head then adds nothing). Nothing in it looks beyond the point, so the service runs it on samples at the
    keypoints only, and training on whole maps (`dense`); between cell centres the service's head sees
    interpolated inputs where sampling `dense` would interpolate its outputs.
    """

    def __init__(self, trunk_channels: int, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = weight  # of the head's term: 0 serves the upsampled D, 1 the head as trained
        self.mlp = nn.Sequential(
            nn.Linear(DESCRIPTOR_DIM + trunk_channels, FINE_WIDTH), nn.ELU(), nn.Linear(FINE_WIDTH, DESCRIPTOR_DIM)
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, upsampled: torch.Tensor, trunk: torch.Tensor) -> torch.Tensor:
        """``(..., 128)`` descriptors (not unit) from ``(..., 128)`` samples of ``D`` upsampled and ``(..., C)`` of
        the trunk's 1/4 level at the same points."""
        unit = F.normalize(upsampled, dim=-1)
        return unit + self.weight * self.mlp(torch.cat([unit, trunk], dim=-1))

    def dense(self, raw: torch.Tensor, trunk4: torch.Tensor) -> torch.Tensor:
        """The ``(B, 128, H/4, W/4)`` map of `forward` at every cell of ``trunk4``, ``raw`` being ``D``."""
        upsampled = resize_like(raw, trunk4)
        return self(upsampled.movedim(1, -1), trunk4.movedim(1, -1)).movedim(-1, 1)


class SCFeatNetwork(UNetBackbone):
    """Grey ``(B, 1, H, W)`` in [0, 1] -> descriptor map ``D`` (128-D, at `stride`) and a full-resolution score map.

    `descriptor_maps` is what the descriptor stage trains (``"raw"`` ``D`` and its coupling-bridge
    normalisation ``"normalised"``); ``forward`` adds the detector's ``"scores"`` and, for `DenseFeatureModel`,
    ``"descriptors"``: ``[D / |D|]``, or the normalised ``"fine"`` map with the fine head. H and W must be
    multiples of 16.
    """

    def __init__(
        self,
        size: str = "fast",
        image_prior: str = DEFAULT_IMAGE_PRIOR,
        hessian_sigma: float = HESSIAN_SIGMA,
        fine_head: bool = False,
        fine_weight: float = 1.0,
    ) -> None:
        super().__init__(size)
        c4, c8, c16 = self.trunk.out_channels
        heads = HEADS[size]
        self.stride: int = heads["stride"]
        # The fine head, so that keypoints sharing a cell of ``D`` get descriptors of their own, at the stride
        # `descriptor_stride` then reports.
        self.fine: FineHead | None = None
        if fine_head:
            if self.stride != 8:
                raise ValueError(f"fine_head refines a stride-8 descriptor map; size {size!r} has stride {self.stride}")
            self.fine = FineHead(c4, fine_weight)
        if self.stride == 4:
            d8, d4 = SIZES[size]["decoder"]
            self.fuse4 = conv_block(d4, DESCRIPTOR_DIM, kernel=1)
            self.fuse8 = conv_block(d8, DESCRIPTOR_DIM)
        else:
            self.fuse4 = conv_block(4 * c4, DESCRIPTOR_DIM, kernel=1)
            self.fuse8 = conv_block(c8, DESCRIPTOR_DIM)
        self.fuse16 = conv_block(c16, DESCRIPTOR_DIM)
        self.fuse = nn.Conv2d(3 * DESCRIPTOR_DIM, DESCRIPTOR_DIM, 1)
        self.bridge = CouplingBridgeNorm()
        detector_channels = DESCRIPTOR_DIM + (c4 if self.stride == 4 else c8)
        widths = heads["detector_widths"]
        self.detector: nn.Module = (
            Detector(detector_channels, widths, image_prior, hessian_sigma)
            if heads["detector"] == "full"
            else CellDetector(detector_channels, widths, image_prior, cell=self.stride, hessian_sigma=hessian_sigma)
        )

    @property
    def descriptor_stride(self) -> int:
        """The stride of the served descriptor map: ``"fine"`` (4) with the fine head, else ``"raw"``'s."""
        return self.stride if self.fine is None else self.stride // 2

    def descriptor_maps(self, images: torch.Tensor, fine_map: bool = True) -> dict[str, torch.Tensor]:
        """``"raw"`` map ``D``, its ``"normalised"`` coupling-bridge map and the detector's ``"detector_input"``; with
        the fine head also the trunk's ``"trunk4"`` level and, when ``fine_map``, the ``"fine"`` map at stride 4."""
        levels = self.levels(images)
        if self.stride == 4:  # the reference's F2R: every level convolved at stride 4
            base = levels["decoder4"]
            inputs = (base, resize_like(levels["decoder8"], base), resize_like(levels["trunk16"], base))
            skip = levels["trunk4"]
        else:  # each level convolved at its own stride
            base = skip = levels["trunk8"]
            inputs = (F.pixel_unshuffle(levels["trunk4"], 2), base, levels["trunk16"])
        # The 1x1 fusion of the concatenated levels, split by level: each part is projected before it is resized,
        # which gives the same map (both are linear) for a quarter of the work on the coarser level.
        weights = self.fuse.weight.split(DESCRIPTOR_DIM, dim=1)
        parts = (self.fuse4(inputs[0]), self.fuse8(inputs[1]), self.fuse16(inputs[2]))
        raw = self.fuse.bias.view(1, -1, 1, 1) + sum(
            resize_like(F.conv2d(part, weight), base) for part, weight in zip(parts, weights, strict=True)
        )
        normalised = self.bridge(raw)
        # Detached: the detector stage must not move the descriptor (the "bridge" shares, it does not couple).
        detector_input = torch.cat([normalised, skip], dim=1).detach()
        maps = {"raw": raw, "normalised": normalised, "detector_input": detector_input}
        if self.fine is not None:
            maps["trunk4"] = levels["trunk4"]
            if fine_map:
                maps["fine"] = self.fine.dense(raw, levels["trunk4"])
        return maps

    def scores(self, images: torch.Tensor, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, 1, H, W)`` detector scores of ``images`` given their `descriptor_maps`."""
        return self.detector(maps["detector_input"], (images - GREY_MEAN) / GREY_STD)

    def forward(self, images: torch.Tensor, detect: bool = True) -> dict[str, Any]:
        """The descriptor maps, the unit ``"descriptors"`` list and, when ``detect``, the ``"scores"``."""
        maps: dict[str, Any] = self.descriptor_maps(images)
        maps["descriptors"] = [F.normalize(maps["fine" if self.fine is not None else "raw"], dim=1)]
        return maps | {"scores": self.scores(images, maps)} if detect else maps


def load_checkpoint(
    card_path: str | Path,
    device: str | torch.device = "cpu",
    image_prior: str = DEFAULT_IMAGE_PRIOR,
    hessian_sigma: float = HESSIAN_SIGMA,
    fine_weight: float = 1.0,
) -> tuple[SCFeatNetwork, dict[str, Any]]:
    """The network (its detector using ``image_prior``, its fine head, if any, weighted by ``fine_weight``) and the
    JSON card of an SCFeat checkpoint."""

    def build(card: dict[str, Any]) -> SCFeatNetwork:
        architecture = card["architecture"]
        fine_head = architecture.get("fine_head", False)
        return SCFeatNetwork(architecture["size"], image_prior, hessian_sigma, fine_head, fine_weight)

    return load_network(card_path, build, device)


class SCFeat(DenseFeatureModel):
    """SCFeat keypoints (its own detector) and 128-D descriptors, batched as padded tensors."""

    name = "scfeat"
    descriptor = DescriptorInfo("float", DESCRIPTOR_DIM, "cosine")
    default_conf: ClassVar[dict[str, Any]] = {
        **DenseFeatureModel.default_conf,
        "nms_radius": 1,  # 3x3 NMS as in the reference extractor
        # The network's own multiple: the pyramid's smaller levels would otherwise be padded by up to a quarter.
        "pad_multiple": 16,
        "subpixel": True,
        # Keypoints come from the score maps of ``scale_levels`` pyramid levels ``scale_step`` octaves apart (fewer
        # where a level's shorter side would fall under 32 px), the strongest over all levels kept; 1 level (the
        # reference's single-scale detector) is one network pass per image, for about 40 % of the pyramid's time
        # and less tolerance of scale and rotation (docs/models/scfeat.md has both).
        "scale_levels": 3,
        "scale_step": 0.5,
        # True: each keypoint's descriptor is the normalised sum of its unit descriptors on the level that found it
        # and the next coarser one (one more pass after the last level).
        "coarser_descriptor": True,
        # True: keypoints found on a level below the first also add their unit descriptor on the next finer level,
        # whose pass has run anyway (no extra pass): three scales per descriptor, centred on the keypoint's own.
        "finer_descriptor": True,
        # True: on a CPU with two or more torch threads, the levels' passes run in two threads, about half the
        # pixels each, and so does the description of the kept keypoints (the same features up to float
        # rounding; docs/models/scfeat.md has the speed).
        "parallel_levels": True,
        # The image factor of the score map: "hessian" (blob response), "cornerness" (Shi-Tomasi) or the
        # reference's grey "peakiness".
        "image_prior": DEFAULT_IMAGE_PRIOR,
        # The Hessian prior's smoothing, px: larger than the 1.6 the detector was trained with, its peaks stay put
        # under image noise and blur (docs/models/scfeat.md has the measurements).
        "hessian_sigma": 2.5,
        # The weight of the fine head's term, for cards with the head: 0 gives the stride-8 map upsampled, 1 the
        # head as trained; half of it, as WiSE-FT blends a fine-tuned model with its start (docs/models/scfeat.md
        # has both measured).
        "fine_weight": 0.5,
        "card": str(DEFAULT_CARD),
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        self._check_pyramid_conf()
        if not float(self.conf["hessian_sigma"]) > 0:
            raise ValueError(f"scfeat: hessian_sigma must be positive, got {self.conf['hessian_sigma']}")
        if not 0 <= float(self.conf["fine_weight"]) <= 1:
            raise ValueError(f"scfeat: fine_weight must be within [0, 1], got {self.conf['fine_weight']}")
        self.network, self._card = load_checkpoint(
            self.conf["card"],
            self.device,
            self.conf["image_prior"],
            float(self.conf["hessian_sigma"]),
            float(self.conf["fine_weight"]),
        )
        # With the fine head, the outputs' "descriptors" are ``D`` and the trunk's 1/4 level (`_forward`).
        strides = (self.network.stride, self.network.descriptor_stride)
        self.descriptor_strides = strides[:1] if self.network.fine is None else strides
        self._level_thread = ThreadPoolExecutor(1, thread_name_prefix="scfeat-levels")

    @property
    def card(self) -> ModelCard:
        """The model card: the JSON card of the checkpoint, served conf included."""
        return ModelCard.from_checkpoint(self.name, self.descriptor, self._card, self.conf)

    @within_max_pixels
    def extract(self, images: Sequence[np.ndarray], options: Sequence[KeypointOptions]) -> list[Features]:
        """Keypoints from every pyramid level's score map, described on their level and its neighbours (conf)."""
        return self._on_levels(images, options, describe=True)

    @within_max_pixels
    def detect(self, images: Sequence[np.ndarray], options: Sequence[KeypointOptions]) -> list[Features]:
        """Keypoints and scores only: the detection levels, nothing sampled from the descriptor maps."""
        return self._on_levels(images, options, describe=False)

    @within_max_pixels
    def describe(self, images: Sequence[np.ndarray], keypoints: Sequence[np.ndarray]) -> list[Features]:
        """Descriptors at the given keypoints, taken as found on the full-resolution level (as in `extract`)."""
        features = super().describe(images, keypoints)
        if not self.conf["coarser_descriptor"]:
            return features
        weights = []
        for image, f in zip(images, features, strict=True):
            w = np.ones((self._usable_levels(image, 2), len(f)), np.float32)
            w[0] = 0.0  # level 0 is already in ``features``
            weights.append(w)
        sums = self._pyramid_descriptor_sums(images, [f.keypoints for f in features], weights)
        for f, total in zip(features, sums, strict=True):
            f.descriptors = normalise_rows(f.descriptors + total)
        return features

    def _forward(self, batch: torch.Tensor, detect: bool) -> dict[str, Any]:
        if self.network.fine is None:
            return self.network(batch, detect=detect)
        # With the fine head, `_describe_at` samples ``D`` and the trunk's 1/4 level and runs the head at the
        # keypoints only: no map at stride 4.
        maps: dict[str, Any] = self.network.descriptor_maps(batch, fine_map=False)
        # Channels-last: ``grid_sample`` then reads each of a keypoint's four cells as one row, not 128 strided values.
        maps["descriptors"] = [maps["raw"].contiguous(memory_format=torch.channels_last), maps["trunk4"]]
        return maps | {"scores": self.network.scores(batch, maps)} if detect else maps

    def _describe_at(self, outputs: dict[str, Any], keypoints: torch.Tensor) -> torch.Tensor:
        """``(B, N, D)`` unit descriptors; with the fine head, the head's output at the keypoints, normalised."""
        if self.network.fine is None:
            return super()._describe_at(outputs, keypoints)
        (raw, trunk4), (stride, fine_stride) = outputs["descriptors"], self.descriptor_strides
        upsampled = sample_upsampled(raw, keypoints, stride).to(self.dtype)  # the head runs in the network's dtype
        trunk = sample_map(trunk4, keypoints, fine_stride).to(self.dtype)
        return F.normalize(self.network.fine(upsampled, trunk).float(), dim=-1)

    @torch.inference_mode()
    def _on_levels(
        self, images: Sequence[np.ndarray], options: Sequence[KeypointOptions], describe: bool
    ) -> list[Features]:
        """Per image, the strongest keypoints over all levels' candidates; one network pass per level.

        Level ``l`` is the image scaled by ``2 ** (-l * scale_step)``. When ``describe``, each kept keypoint is
        described on the level that found it, with ``coarser_descriptor`` also on the next level's map (one extra
        pass after the last), and with ``finer_descriptor`` also on the previous level's; only the kept keypoints
        are sampled, after the selection.
        """
        detection_levels = int(self.conf["scale_levels"])
        levels = range(detection_levels + int(describe and bool(self.conf["coarser_descriptor"])))
        usable = [self._usable_levels(im, detection_levels + 1) for im in images]
        chosen = [[i for i in range(len(images)) if level < usable[i]] for level in levels]
        step = float(self.conf["scale_step"])
        scaled = [[resize_image(images[i], 2.0 ** (-level * step)) for i in chosen[level]] for level in levels]

        def run(level: int) -> list[tuple[int, dict[str, Any], int, Features | None]]:
            """The level's network pass and, where the level detects, its candidates (not described)."""
            passes = []
            for j, outputs, b in self._bucket_outputs(scaled[level], level < detection_levels, describe):
                candidates = None
                if level < self._usable_levels(images[chosen[level][j]]):
                    kept = KeypointOptions(max_keypoints=candidate_count(options[chosen[level][j]]))
                    candidates = self._extract_one(scaled[level][j], kept, outputs, b, describe=False)
                passes.append((j, outputs, b, candidates))
            return passes

        found: list[list[Features]] = [[] for _ in images]
        level_maps: list[dict[int, tuple[dict[str, Any], int, tuple[int, int]]]] = [{} for _ in images]
        pixels = [sum(im.shape[0] * im.shape[1] for im in level) for level in scaled]
        for level, passes in enumerate(self._run_levels(run, pixels)):
            for j, outputs, b, candidates in passes:
                i, size = chosen[level][j], image_size(scaled[level][j])
                level_maps[i][level] = (outputs, b, size)
                if candidates is not None:
                    candidates.keypoints = rescale_points(candidates.keypoints, size, image_size(images[i]))
                    candidates.sizes = candidates.sizes * (images[i].shape[1] / scaled[level][j].shape[1])
                    candidates.image_size = image_size(images[i])
                    found[i].append(candidates)
        results = []
        for image, option, candidates, maps in zip(images, options, found, level_maps, strict=True):
            features, origin = self._strongest(image, option, candidates)
            if describe:
                features.descriptors = self._describe_on_levels(features, origin, maps)
            results.append(features)
        return results

    def _describe_on_levels(
        self,
        features: Features,
        origin: np.ndarray,
        maps: dict[int, tuple[dict[str, Any], int, tuple[int, int]]],
    ) -> np.ndarray:
        """``(N, D)`` descriptors of keypoints found on pyramid levels ``origin``: the normalised sum of their unit
        descriptors on that level and, per conf, the next coarser and finer ones. ``maps[level]`` holds a level's
        outputs, the image's row in them and the level's (width, height)."""
        levels = sorted(maps)
        coarser, finer = bool(self.conf["coarser_descriptor"]), bool(self.conf["finer_descriptor"])
        # One sample per map: the keypoints found on it, on the next finer level and on the next coarser one.
        rows = [
            (origin == level) | (coarser & (origin == level - 1)) | (finer & (origin == level + 1)) for level in levels
        ]

        def describe(k: int) -> np.ndarray | None:
            """The unit descriptors of ``rows[k]`` on level ``levels[k]``."""
            if not rows[k].any():
                return None
            outputs, b, size = maps[levels[k]]
            points = self._points(rescale_points(features.keypoints[rows[k]], features.image_size, size))
            return self._sample(outputs, b, points).float().cpu().numpy()

        total = np.zeros((len(features), self.descriptor.dim), np.float32)
        # In level order whichever thread sampled them: the same sums as one thread makes.
        for chosen, descriptors in zip(rows, self._run_levels(describe, [int(r.sum()) for r in rows]), strict=True):
            if descriptors is not None:
                total[chosen] += descriptors
        return normalise_rows(total)

    def _run_levels(self, run: Callable[[int], Any], work: Sequence[int]) -> list[Any]:
        """``run(level)`` for every level, in order, in inference mode; on a CPU with two or more torch threads, in
        two threads.

        ``work[level]`` is the level's cost (the pixels of its pass, or the keypoints sampled on it). The pyramid's
        small passes use two cores poorly one after another; side by side, each group of levels (about half the
        work each: the first level holds about half the pixels) keeps a core busy.
        """
        order = range(len(work))
        parallel = self.conf["parallel_levels"] and self.device.type == "cpu" and torch.get_num_threads() > 1
        if not parallel or len(work) < 2:
            return [run(level) for level in order]
        groups: tuple[list[int], list[int]] = ([], [])
        totals = [0, 0]
        for level in sorted(order, key=lambda level: -work[level]):
            k = int(totals[1] < totals[0])
            groups[k].append(level)
            totals[k] += work[level]
        other = self._level_thread.submit(self._in_inference_mode, lambda: [run(level) for level in groups[1]])
        done = dict(zip(groups[0], [run(level) for level in groups[0]], strict=True))
        done |= dict(zip(groups[1], other.result(), strict=True))
        return [done[level] for level in order]

    @staticmethod
    @torch.inference_mode()  # thread-local: the level thread needs its own, as the caller has
    def _in_inference_mode(function: Callable[[], Any]) -> Any:
        return function()

    def _strongest(
        self, image: np.ndarray, options: KeypointOptions, levels: list[Features]
    ) -> tuple[Features, np.ndarray]:
        """The keypoints that ``options`` selects among every level's candidates (not described), and the level
        each one comes from."""
        merged = Features(
            keypoints=np.concatenate([f.keypoints for f in levels]),
            scores=np.concatenate([f.scores for f in levels]),
            descriptors=None,
            image_size=image_size(image),
            descriptor=self.descriptor,
            sizes=np.concatenate([f.sizes for f in levels]),
            angles=np.concatenate([f.angles for f in levels]),
        )
        origin = np.concatenate([np.full(len(f), level) for level, f in enumerate(levels)])
        keep = select_keypoints(merged.keypoints, merged.scores, merged.image_size, options)
        return merged.subset(keep), origin[keep]

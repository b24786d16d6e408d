"""SCFeat (METHODS.md §2): two stages on CAPS's posed pairs, then one network that detects and describes.

Stage ``descriptor`` trains the backbone, fusion and coupling bridge with the line-to-window epipolar loss;
stage ``detector`` freezes them and trains the detector by policy gradient. The detector run starts from the
descriptor run (``init_from``), and a descriptor run may start its backbone from another method's checkpoint
(our CAPS-lite run stands in for the reference's ImageNet initialisation, which we do not have).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from featureserve.models.scfeat import DETECTOR_WIDTHS, SCFeatNetwork

from ..data.synthetic import GENERATOR_VERSION
from ..scfeat_losses import cell_points, line_to_window_terms, policy_gradient_terms
from .caps import PIXEL_CONVENTION, VALIDATION_SEED_OFFSET, CAPSMethod, dense_card_fields

STAGES = ("descriptor", "detector")


class SCFeatMethod(CAPSMethod):
    """SCFeat on the data of `CAPSMethod` (synthetic piecewise-planar pairs with at least two planes)."""

    def network(self) -> nn.Module:
        """An `SCFeatNetwork`; in the detector stage everything but the detector is frozen."""
        stage = self.config.scfeat.stage
        if stage not in STAGES:
            raise ValueError(f"unknown SCFeat stage {stage!r}; known: {STAGES}")
        network = SCFeatNetwork(self.config.size, self.config.scfeat.image_prior)
        # Each stage trains its own part; the other is frozen (and unused parameters would stop DDP).
        network.requires_grad_(stage == "descriptor")
        network.detector.requires_grad_(stage == "detector")
        return network

    def _generator(self, step: int, training: bool) -> torch.Generator:
        # One generator per step: query points, jitter, proposals and eight-point draws are reproducible, and
        # validation draws the same ones at every step so that its figures compare across steps.
        seed = self.config.seed * 1_000_003 + (step if training else VALIDATION_SEED_OFFSET)
        return torch.Generator().manual_seed(seed)

    def loss_terms(self, network: nn.Module, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """Line-to-window terms in both directions, or the detector's policy-gradient terms."""
        images = torch.cat([batch["image1"], batch["image2"]])
        n = batch["image1"].shape[0]
        height, width = images.shape[-2:]
        fundamental = batch["fundamental"]
        generator = self._generator(step, network.training)
        settings = self.config.scfeat
        if settings.stage == "descriptor":
            maps = network(images, detect=False)["normalised"].float()
            maps1, maps2 = maps[:n], maps[n:]
            terms: dict[str, torch.Tensor] = {}
            for name, (a, b, f) in {
                "forward": (maps1, maps2, fundamental),
                "backward": (maps2, maps1, fundamental.transpose(1, 2)),
            }.items():
                points = cell_points(n, (width, height), settings.window.cell, generator).to(images.device)
                found = line_to_window_terms(a, b, points, f, (width, height), settings.window, generator)
                terms |= {f"{name}_{k}": v for k, v in found.items()}
            terms["loss"] = terms["forward_loss"] + terms["backward_loss"]
            return terms
        outputs = network(images)
        scores, maps = outputs["scores"].float(), outputs["normalised"].detach().float()
        return policy_gradient_terms(
            scores[:n], scores[n:], maps[:n], maps[n:], fundamental, settings.reward, generator
        )

    def card(self, network: nn.Module) -> dict[str, Any]:
        """SCFeat card fields."""
        data, size = self.config.data, self.config.size
        fields = dense_card_fields(size, network)
        fields["architecture"] |= {
            "strides": {"descriptor": SCFeatNetwork.stride, "scores": 1},
            "fusion": "F2R: decoder 1/4 (1x1), decoder 1/8 and trunk 1/16 (3x3, resized), concatenated, 1x1 -> 128",
            "normalisation": "shared coupling bridge (position-wise + channel-wise, learnable blend)",
            "detector_widths": DETECTOR_WIDTHS[size],
            "trained_image_prior": self.config.scfeat.image_prior,  # the served one is conf image_prior
            "detector_parameters": sum(p.numel() for p in network.detector.parameters()),
        }
        return {
            "name": "scfeat",
            "method": (
                "SCFeat: shared coupling-bridge for weakly supervised local feature learning (Sun et al., 2022, "
                "arXiv 2212.07047), re-implemented; line-to-window epipolar descriptor loss, then a DISK-style "
                "policy-gradient detector with a fundamental-matrix consistency reward"
            ),
            "description": "Pose-supervised detector and 128-D descriptors (its own keypoints, sub-pixel).",
            "licence": "MIT (this re-implementation)",
            **fields,
            "pixel_convention": PIXEL_CONVENTION,
            "keypoints": {
                "source": "scfeat",
                "description": "SCFeat detector (image prior per conf image_prior) on each pyramid level: 3x3 NMS, "
                "score threshold, sub-pixel vertex of the 3x3 quadratic; top-k by score over all levels",
                "params": {"nms_radius": 1, "subpixel": True},
            },
            "descriptor": {
                "dim": 128,
                "dtype": "float32",
                "layout": "fused map D (stride 4), bilinear at the keypoint on its pyramid level and the next "
                "coarser one, summed",
                "normalisation": "L2",
                "matcher": "mutual nearest neighbour on cosine similarity",
            },
            "stage": self.config.scfeat.stage,
            "data": {
                "generator": f"synthetic piecewise-planar posed pairs (2-7 planes and a back wall), "
                f"version {GENERATOR_VERSION}",
                "seed": data.seed,
                "textures": [*data.textures, "procedural"],
                "resolution": [data.scene.width, data.scene.height],
            },
        }

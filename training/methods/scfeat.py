"""SCFeat (Sun et al., arXiv 2212.07047): two stages on CAPS's posed pairs, then one network that detects and describes.

Stage ``descriptor`` trains the backbone, fusion and coupling bridge with the line-to-window epipolar loss;
stage ``detector`` freezes them and trains the detector by policy gradient. The detector run starts from the
descriptor run (``init_from``). The reference starts its backbone from ImageNet weights, which we do not have: a
descriptor run starts from another checkpoint instead, either one of the same shape (``init_from``) or, for a new
architecture, a run of stage ``distil``, which trains the backbone to reproduce the descriptor maps of an earlier
SCFeat checkpoint (``teacher``) on the same pairs (knowledge distillation, Hinton et al., 2015).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featureserve.models.scfeat import HEADS, SCFeatNetwork, load_checkpoint

from ..data.synthetic import GENERATOR_VERSION
from ..scfeat_losses import cell_points, line_to_window_terms, policy_gradient_terms
from .caps import PIXEL_CONVENTION, VALIDATION_SEED_OFFSET, CAPSMethod, dense_card_fields

STAGES = ("distil", "descriptor", "detector", "fine")


def centred_units(maps: torch.Tensor) -> torch.Tensor:
    """``(B, D, h, w)`` unit descriptors minus each image's mean unit descriptor, normalised again.

    The unit descriptors of one image share a large common direction (a mean cosine above 0.9 for scfeat-lite), so
    reproducing them is easy and says little about matching; what tells cells apart is the rest.
    """
    units = F.normalize(maps, dim=1)
    return F.normalize(units - units.mean(dim=(2, 3), keepdim=True), dim=1)


class SCFeatMethod(CAPSMethod):
    """SCFeat on the data of `CAPSMethod` (synthetic piecewise-planar pairs with at least two planes)."""

    _teacher: nn.Module | None = None  # stage "distil": loaded on the first batch, on that batch's device

    def network(self) -> nn.Module:
        """An `SCFeatNetwork`; in the detector stage everything but the detector is frozen."""
        stage = self.config.scfeat.stage
        if stage not in STAGES:
            raise ValueError(f"unknown SCFeat stage {stage!r}; known: {STAGES}")
        fine_head = self.config.scfeat.fine_head
        if stage == "fine" and not fine_head:
            raise ValueError("scfeat stage 'fine' trains the fine head: set scfeat.fine_head: true")
        network = SCFeatNetwork(self.config.size, self.config.scfeat.image_prior, fine_head=fine_head)
        # Each stage trains its own part; the rest is frozen (and unused parameters would stop DDP).
        network.requires_grad_(stage in ("distil", "descriptor"))
        network.detector.requires_grad_(stage == "detector")
        if stage == "fine":
            network.fine.requires_grad_(True)
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
        if settings.stage in ("distil", "fine"):
            return self._distillation_terms(network, images)
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

    def _distillation_terms(self, network: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean ``1 - cos`` between the network's centred ``"raw"`` and ``"normalised"`` maps and the teacher's;
        in stage ``"fine"``, between the network's ``"fine"`` map and the teacher's ``"raw"``."""
        if self._teacher is None:
            if not self.config.scfeat.teacher:
                raise ValueError("scfeat stage 'distil' needs scfeat.teacher: the card of the checkpoint to reproduce")
            self._teacher = load_checkpoint(self.config.scfeat.teacher, images.device)[0].requires_grad_(False)
        student = network(images, detect=False)
        with torch.no_grad():
            teacher = self._teacher.descriptor_maps(images)
        pairs = {"fine": "raw"} if self.config.scfeat.stage == "fine" else {"raw": "raw", "normalised": "normalised"}
        terms = {}
        for key, teacher_key in pairs.items():
            # Bilinear at the student's cell centres: a 2x2 mean where the teacher's stride is half the student's.
            target = F.interpolate(teacher[teacher_key].float(), size=student[key].shape[-2:], mode="bilinear")
            cosine = (centred_units(student[key].float()) * centred_units(target)).sum(dim=1)
            terms[f"{key}_loss"] = (1 - cosine).mean()
        terms["loss"] = sum(terms.values())
        return terms

    def card(self, network: nn.Module) -> dict[str, Any]:
        """SCFeat card fields."""
        data, size = self.config.data, self.config.size
        fields = dense_card_fields(size, network)
        heads = HEADS[size]
        fusion = {
            4: "F2R at stride 4: decoder 1/4 (1x1), decoder 1/8 and trunk 1/16 (3x3, resized), concatenated, "
            "1x1 -> 128",
            8: "F2R at stride 8: trunk 1/4 (pixel-unshuffled, 1x1), trunk 1/8 and 1/16 (3x3 at their own stride), "
            "concatenated (1/16 resized), 1x1 -> 128",
        }
        fields["architecture"] |= {
            "strides": {"descriptor": network.descriptor_stride, "scores": 1},
            "fine_head": network.fine is not None,
            "fusion": fusion[heads["stride"]],
            "normalisation": "shared coupling bridge (position-wise + channel-wise, learnable blend)",
            "detector": {
                "full": "full resolution",
                "cells": f"per {heads['stride']}x{heads['stride']} cell, pixel-shuffled",
            }[heads["detector"]],
            "detector_widths": heads["detector_widths"],
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
                "description": "SCFeat detector (image prior per conf image_prior), on each pyramid level when there "
                "are several: 3x3 NMS, score threshold, sub-pixel vertex of the 3x3 quadratic; top-k by score",
                "params": {"nms_radius": 1, "subpixel": True},
            },
            "descriptor": {
                "dim": 128,
                "dtype": "float32",
                "layout": f"fused map D (stride {heads['stride']})"
                + (
                    ", upsampled to stride 4, and the trunk's 1/4 level, bilinear at the keypoint; the fine head's "
                    "residual (a two-layer MLP of both) added"
                    if network.fine
                    else ", bilinear at the keypoint"
                )
                + " on its pyramid level and (conf coarser_descriptor, finer_descriptor) the next coarser and finer "
                "ones, summed",
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

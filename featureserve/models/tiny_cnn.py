"""`tiny-cnn`: an untrained convolutional model that exercises the tensor-batching path.

It exists so that the worker pool, padding buckets and benchmarks have a real torch workload before the
learned models land. Its weights are drawn from a fixed seed, so its outputs are reproducible, but they
carry no learned meaning: do not use it for matching quality.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from .cards import ModelCard
from .dense import DenseFeatureModel
from .features import DescriptorInfo


class TinyCNNNetwork(nn.Module):
    """Grey ``(B, 1, H, W)`` -> full-resolution scores and a stride-4 descriptor map."""

    def __init__(self, channels: int = 16, descriptor_dim: int = 64) -> None:
        super().__init__()
        c = channels
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU())
        self.down = nn.Sequential(
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.score_head = nn.Conv2d(c, 1, 1)
        self.descriptor_head = nn.Conv2d(4 * c, descriptor_dim, 1)

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        """Score map ``(B, 1, H, W)`` in (0, 1) and descriptors ``[(B, D, H/4, W/4)]``."""
        stem = self.stem(images)
        return {
            "scores": torch.sigmoid(self.score_head(stem)),
            "descriptors": [self.descriptor_head(self.down(stem))],
        }


class TinyCNN(DenseFeatureModel):
    """Untrained test model with real tensor batching (see the module docstring)."""

    name = "tiny-cnn"
    descriptor = DescriptorInfo("float", 64, "cosine")
    descriptor_strides: ClassVar[tuple[int, ...]] = (4,)
    default_conf: ClassVar[dict[str, Any]] = {**DenseFeatureModel.default_conf, "seed": 0}

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.conf["seed"]))
            self.network = TinyCNNNetwork(descriptor_dim=self.descriptor.dim)
        self.network.eval().to(self.device)

    @property
    def card(self) -> ModelCard:
        """The model card."""
        return ModelCard(
            name=self.name,
            version="0",
            method="untrained 4-layer CNN (test workload, not a published method)",
            descriptor=self.descriptor,
            keypoints="NMS peaks of the untrained score map",
            licence="MIT",
            description="Test model for the tensor-batching path; its features carry no learned meaning.",
            details={"conf": dict(self.conf)},
        )

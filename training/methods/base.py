"""The `Method` interface of the trainer and the exporter."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..config import TrainConfig
from ..data.homographic import PhotoSource
from ..data.synthetic import texture_paths


class Method(ABC):
    """A trainable method: its network, its training and validation data, its loss and its card fields."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    @abstractmethod
    def network(self) -> nn.Module:
        """A freshly initialised network (the trainer seeds torch first)."""

    def initialise(self, network: nn.Module) -> None:
        """Data-dependent start of a fresh run, after `network` (not when a run resumes or starts ``init_from``).

        Most methods need none: their `network` initialisation is the whole start.
        """
        return None

    @abstractmethod
    def training_set(self) -> Dataset:
        """The training stream; sample ``i`` is a pure function of ``(data.seed, i)``."""

    @abstractmethod
    def validation_sets(self) -> dict[str, Dataset]:
        """Held-out sets by name; the trainer logs each one's mean loss terms."""

    @abstractmethod
    def loss_terms(self, network: nn.Module, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """Loss terms of a batch at optimiser ``step``; ``"loss"`` is what is optimised, the rest are diagnostics."""

    @abstractmethod
    def card(self, network: nn.Module) -> dict[str, Any]:
        """Model-card fields that depend on the method: name, method, description, licence, architecture,
        input, descriptor and keypoints."""

    def photos(self) -> PhotoSource:
        """The single-image sources (``data.textures``) of the self-supervised methods."""
        return PhotoSource(texture_paths([Path(t) for t in self.config.data.textures]))

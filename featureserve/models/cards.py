"""Model cards: what a served model is, where it comes from and how good it is."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file
from torch import nn

from .features import DescriptorInfo

NetworkT = TypeVar("NetworkT", bound=nn.Module)
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"  # committed weights and their JSON cards


@dataclass(frozen=True)
class ModelCard:
    """Metadata shown by ``GET /v1/models`` and written next to every learned checkpoint.

    Attributes:
        name: Registry name (``"sift"``); the same word in REST, gRPC, Python and docs.
        version: Version of the model (a checkpoint's version for learned models).
        method: The method, with a citation.
        descriptor: Kind, dimension and metric of the descriptors.
        keypoints: Where the keypoints come from, with the detector's settings.
        licence: Licence of the implementation or reference code.
        description: One sentence for users choosing a model.
        details: Everything else (configuration, training run, evaluation figures).
    """

    name: str
    version: str
    method: str
    descriptor: DescriptorInfo
    keypoints: str
    licence: str
    description: str
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_checkpoint(
        cls, name: str, descriptor: DescriptorInfo, card: dict[str, Any], conf: dict[str, Any]
    ) -> ModelCard:
        """The card of a learned model: its checkpoint's JSON card, with the served ``conf`` in ``details``.

        The checkpoint appears by its file name: a card is shown to clients, who have no use for host paths.
        """
        shown = {k: Path(v).name if k == "card" else v for k, v in conf.items()}
        return cls(
            name=name,
            version=card["version"],
            method=card["method"],
            descriptor=descriptor,
            keypoints=card["keypoints"]["description"],
            licence=card["licence"],
            description=card["description"],
            details={**card, "conf": shown},
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return asdict(self)


def read_checkpoint(card_path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The float32 weights and the JSON card of a checkpoint: ``card_path`` names the card, the card the weights."""
    card_path = Path(card_path)
    card = json.loads(card_path.read_text())
    # Weights may be stored in fp16; every network here computes in float32.
    state = {k: v.float() for k, v in load_file(str(card_path.parent / card["weights"])).items()}
    return state, card


def load_network(
    card_path: str | Path, build: Callable[[dict[str, Any]], NetworkT], device: str | torch.device = "cpu"
) -> tuple[NetworkT, dict[str, Any]]:
    """The network ``build(card)`` with the checkpoint's weights, in eval mode on ``device``, and the card."""
    state, card = read_checkpoint(card_path)
    network = build(card)
    network.load_state_dict(state)
    return network.eval().to(device), card

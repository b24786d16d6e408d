"""Model cards: what a served model is, where it comes from and how good it is."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .features import DescriptorSpec


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
    descriptor: DescriptorSpec
    keypoints: str
    licence: str
    description: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return asdict(self)

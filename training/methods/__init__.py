"""Training methods: what the trainer needs from each of them (network, data, loss terms, card fields)."""

from __future__ import annotations

from ..config import TrainConfig
from .base import Method
from .caps import CAPSMethod
from .hndesc import HNDescMethod
from .orb_patch import OrbPatchMethod
from .scfeat import SCFeatMethod

METHODS: dict[str, type[Method]] = {
    "caps": CAPSMethod,
    "hndesc": HNDescMethod,
    "orb-patch": OrbPatchMethod,
    "scfeat": SCFeatMethod,
}


def method_for(config: TrainConfig) -> Method:
    """The `Method` named by ``config.method``."""
    try:
        return METHODS[config.method](config)
    except KeyError:
        raise ValueError(f"unknown method {config.method!r}; known: {sorted(METHODS)}") from None


__all__ = ["METHODS", "CAPSMethod", "HNDescMethod", "Method", "OrbPatchMethod", "SCFeatMethod", "method_for"]

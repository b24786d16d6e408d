"""The model registry: name -> feature model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import FeatureModel
from .caps import CAPS
from .classical import AKAZE, ORB, SIFT
from .hndesc import HNDesc
from .orb_patch import OrbPatch
from .scfeat import SCFeat
from .tiny_cnn import TinyCNN

MODELS: dict[str, type[FeatureModel]] = {
    "orb": ORB,
    "sift": SIFT,
    "akaze": AKAZE,
    "caps": CAPS,
    "hndesc": HNDesc,
    "orb-patch": OrbPatch,
    "scfeat": SCFeat,
    "tiny-cnn": TinyCNN,
}


def available_models() -> list[str]:
    """Names that `load_model` accepts."""
    return sorted(MODELS)


def default_conf(name: str) -> dict[str, Any]:
    """The ``default_conf`` of the model registered as ``name``."""
    return dict(_factory(name).default_conf)


def _factory(name: str) -> type[FeatureModel]:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(available_models())}") from None


def load_model(name: str, **conf: Any) -> FeatureModel:
    """Build the model registered as ``name`` with ``conf`` merged over its ``default_conf``."""
    return _factory(name)(**conf)


def load_model_with_knobs(name: str, conf: Mapping[str, Any] | None = None, **knobs: Any) -> FeatureModel:
    """`load_model` with ``conf`` and only those ``knobs`` that the model's ``default_conf`` has (``device``,
    ``num_threads``); ``conf`` wins where both set an option."""
    known = default_conf(name)
    return load_model(name, **({k: v for k, v in knobs.items() if k in known} | dict(conf or {})))

"""Typed training configuration: a YAML file read into nested dataclasses; code holds the defaults."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data.homographic import BagConfig, CropConfig
from .data.pairs import QueryConfig
from .data.photometric import PhotometricConfig
from .data.synthetic import SceneConfig
from .descriptor_losses import APConfig, RatioConfig
from .losses import LossConfig
from .scfeat_losses import SCFeatConfig


@dataclass(frozen=True)
class RealSet:
    """A real posed image set: ``format`` is ``strecha``, ``kapture`` or ``megadepth``; pairs by index gap."""

    format: str
    path: str
    gaps: tuple[int, ...] = (1, 2)


@dataclass(frozen=True)
class DataConfig:
    """Training data: CAPS uses synthetic scenes (or the MegaDepth layout, ``megadepth_root``); HNDesc
    (``crops``) and the patch descriptor (``bags``) use single photos from ``textures``."""

    textures: tuple[str, ...] = ("../shared/data/bsds500/images", "../shared/data/urban100/images")
    megadepth_root: str | None = None
    seed: int = 0
    workers: int = 1
    scene: SceneConfig = field(default_factory=SceneConfig)
    photometric: PhotometricConfig = field(default_factory=PhotometricConfig)
    queries: QueryConfig = field(default_factory=QueryConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    bags: BagConfig = field(default_factory=BagConfig)


@dataclass(frozen=True)
class ValidationConfig:
    """Validation every ``every`` steps on held-out synthetic pairs and real posed pairs (rank 0 only)."""

    every: int = 250
    synthetic_pairs: int = 16
    real: tuple[RealSet, ...] = (RealSet("strecha", "../shared/data/strecha_mvs/castle-P19", (1,)),)


@dataclass(frozen=True)
class OptimConfig:
    """Adam with a cosine schedule from ``lr`` to ``final_lr`` after ``warmup`` linear steps.

    With ``max_minutes`` the schedule follows whichever of steps and wall time is further along, and the run
    ends when either is used up, so a run on a shared CPU still anneals and ends on time.
    """

    steps: int = 3000
    max_minutes: float | None = None
    batch_size: int = 4
    lr: float = 1e-3
    final_lr: float = 1e-5
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """A whole run; ``name`` becomes the run folder and the exported checkpoint's name."""

    name: str = "caps-lite"
    method: str = "caps"  # caps, hndesc, orb-patch or scfeat (training/methods)
    size: str = "lite"  # network size of the dense methods (caps, hndesc, scfeat)
    init_from: str | None = None  # a run's last.pt or a card: its weights that match by name and shape start the run
    seed: int = 0
    device: str = "auto"  # "auto": CUDA when available
    amp: bool = True  # mixed precision on CUDA only
    threads: int = 0  # torch CPU threads per process; 0 keeps torch's default
    checkpoint_every: int = 250
    log_every: int = 10
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)  # CAPS
    ap_loss: APConfig = field(default_factory=APConfig)  # HNDesc
    ratio_loss: RatioConfig = field(default_factory=RatioConfig)  # patch descriptor
    scfeat: SCFeatConfig = field(default_factory=SCFeatConfig)  # SCFeat stages and losses
    optim: OptimConfig = field(default_factory=OptimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-ready dictionary."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def build(cls: type, values: dict[str, Any] | None) -> Any:
    """An instance of dataclass ``cls`` from a nested dict; unknown keys raise ``ValueError``."""
    values = values or {}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}; known: {sorted(names)}")
    return cls(**{k: _convert(hints[k], v) for k, v in values.items()})


def _convert(hint: Any, value: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _convert(next(a for a in args if a is not type(None)), value)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        return tuple(_convert(a, v) for a, v in zip(args, value, strict=True))
    if hint is float and isinstance(value, int | float):
        return float(value)
    return value


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config; ``overrides`` (nested dict) replaces keys of the file."""
    values = yaml.safe_load(Path(path).read_text()) or {}
    return build(TrainConfig, _merge(values, overrides or {}))


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged.get(key) or {}, value) if isinstance(value, dict) else value
    return merged

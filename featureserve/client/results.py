"""What every client returns, whatever the transport: numpy arrays in small dataclasses.

`GrpcClient`, `RestClient` (and their asyncio twins) and the CLI's in-process `LocalClient` build these
from their own wire formats, so code written against one works with the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Encoded bytes (JPEG, PNG, ...), a path to such a file, or a uint8 array: grey (H, W) or RGB (H, W, 3).
ImageInput = bytes | str | Path | np.ndarray


@dataclass
class DescriptorInfo:
    """What a model's descriptors are: ``kind`` (float | binary), ``dim`` (values or bits), ``metric``."""

    kind: str
    dim: int
    metric: str


@dataclass
class ModelCard:
    """A served model's card, as ``GET /v1/models`` and ``ListModels`` give it."""

    name: str
    version: str
    method: str
    descriptor: DescriptorInfo
    keypoints: str
    licence: str
    description: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelList:
    """The loaded models and the one used when a request names none."""

    default_model: str
    models: list[ModelCard]


@dataclass
class FeatureSet:
    """Features of one image: keypoints ``(N, 2)`` (x, y) pixels, scores ``(N,)``, descriptors ``(N, D)``.

    Keypoints are float32 with pixel centres at integer coordinates; descriptors are float32 (or float16
    when asked for) rows, or packed-bit uint8 rows for binary models; ``None`` without descriptors.
    ``descriptor`` is ``{"kind", "dim", "metric"}`` and ``image_size`` is ``(width, height)``. ``sizes`` and
    ``angles`` ``(N,)`` are OpenCV's ``KeyPoint.size`` (diameter, pixels) and ``KeyPoint.angle`` (degrees in
    ``[0, 360)``, -1 for none), ``None`` where the model gives none.
    """

    keypoints: np.ndarray
    scores: np.ndarray
    descriptors: np.ndarray | None
    descriptor: dict[str, Any]
    image_size: tuple[int, int]
    model: str = ""
    sizes: np.ndarray | None = None
    angles: np.ndarray | None = None

    def wire_descriptors(self) -> tuple[np.ndarray, str]:
        """The descriptors and their wire dtype (``uint8``, ``float16`` or ``float32``), to send for matching."""
        if self.descriptors is None:
            raise ValueError("a feature set needs descriptors to be matched: extract it with include_descriptors")
        kind = self.descriptors.dtype
        return self.descriptors, "uint8" if kind == np.uint8 else "float16" if kind == np.float16 else "float32"


# What `match` and `match_pairs` take for each side: an image, or features from `extract` (not extracted again).
MatchInput = ImageInput | FeatureSet


@dataclass
class GeometryResult:
    """The fitted model: ``matrix`` (3, 3) or None, and for essential matrices ``rotation`` and ``translation``."""

    geometry: str
    matrix: np.ndarray | None
    num_inliers: int
    inlier_ratio: float
    rotation: np.ndarray | None
    translation: np.ndarray | None
    message: str


@dataclass
class MatchResult:
    """Matches ``(M, 2)`` (index in image 0, index in image 1), their points and distances, and verification.

    ``points0``/``points1`` are ``(M, 2)`` float32 pixels, ``distances`` ``(M,)`` float32 in the metric's
    units, ``inliers`` an ``(M,)`` bool mask (None when no geometry was asked for). ``drawing`` holds the
    PNG picture of the matches when ``draw=True`` was asked of a client that draws (REST, local).
    """

    model: str
    matches: np.ndarray
    points0: np.ndarray
    points1: np.ndarray
    distances: np.ndarray
    inliers: np.ndarray | None
    geometry: GeometryResult | None
    features0: FeatureSet | None
    features1: FeatureSet | None
    num_keypoints0: int = 0
    num_keypoints1: int = 0
    drawing: bytes | None = None


@dataclass
class Frame:
    """A camera frame for `GrpcClient.stream_frames`; ``intrinsics`` is ``(fx, fy, cx, cy)``."""

    image: ImageInput
    sequence: int
    timestamp: float = 0.0
    intrinsics: Sequence[float] | None = None
    keyframe: bool = False


@dataclass
class FrameMatches:
    """Matches of a frame (index 0) to an earlier frame ``sequence`` (index 1)."""

    sequence: int
    matches: np.ndarray
    inliers: np.ndarray | None
    geometry: GeometryResult | None


@dataclass
class FrameResult:
    """The answer to one frame: ``status`` is ``"ok"``, ``"dropped"`` or ``"failed"`` (then ``error`` says why)."""

    sequence: int
    timestamp: float
    status: str
    error: str | None
    features: FeatureSet | None
    to_previous: FrameMatches | None
    to_keyframe: FrameMatches | None
    keyframe: bool
    latency_ms: float


def inlier_ratio(num_inliers: int, num_matches: int) -> float:
    """Inliers per match, as the service computes it (0 without matches)."""
    return num_inliers / max(num_matches, 1)

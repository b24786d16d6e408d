"""Typed containers for what feature models return: `Features`, `DescriptorInfo`, `KeypointOptions`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

DescriptorKind = Literal["float", "binary"]
Metric = Literal["l2", "cosine", "hamming"]
UniformSelection = Literal["none", "grid", "anms"]


@dataclass(frozen=True)
class DescriptorInfo:
    """What a model's descriptors are.

    Attributes:
        kind: ``"float"`` (float32 rows) or ``"binary"`` (bits packed into uint8 rows).
        dim: Descriptor length in values for float descriptors, in bits for binary ones.
        metric: The distance the descriptors are meant to be compared with.
    """

    kind: DescriptorKind
    dim: int
    metric: Metric

    @property
    def dtype(self) -> np.dtype:
        """Numpy dtype of one descriptor row."""
        return np.dtype(np.uint8 if self.kind == "binary" else np.float32)

    @property
    def row_length(self) -> int:
        """Number of array elements per descriptor row (bytes for binary, values for float)."""
        return (self.dim + 7) // 8 if self.kind == "binary" else self.dim


@dataclass(frozen=True)
class KeypointOptions:
    """How keypoints are selected from a detector's candidates (one set per image).

    Attributes:
        max_keypoints: Keep at most this many keypoints (highest score first, or spread, see ``uniform``).
        uniform: ``"none"`` keeps the top-k by score; ``"grid"`` gives each cell of a grid an equal quota;
            ``"anms"`` runs adaptive non-maximal suppression so the kept keypoints are spread out.
        border_margin: Drop keypoints closer than this many pixels to the image border.
    """

    max_keypoints: int = 2048
    uniform: UniformSelection = "none"
    border_margin: int = 0

    def __post_init__(self) -> None:
        if self.max_keypoints < 0:
            raise ValueError(f"max_keypoints must be >= 0, got {self.max_keypoints}")
        if self.border_margin < 0:
            raise ValueError(f"border_margin must be >= 0, got {self.border_margin}")
        if self.uniform not in ("none", "grid", "anms"):
            raise ValueError(f"uniform must be one of none, grid, anms; got {self.uniform!r}")


@dataclass
class Features:
    """Local features of one image.

    Attributes:
        keypoints: ``(N, 2)`` float32, ``(x, y)`` in pixels of the image as sent; pixel centres are at
            integer coordinates (the OpenCV convention), so the top-left pixel's centre is ``(0, 0)``.
        scores: ``(N,)`` float32 detector response; larger is stronger.
        descriptors: ``(N, D)`` float32, or ``(N, D/8)`` uint8 for binary descriptors; ``None`` when only
            detection was asked for.
        image_size: ``(width, height)`` of the image in pixels.
        descriptor: What the descriptors are (kind, dimension, metric).
        sizes: ``(N,)`` float32 diameter of each keypoint's neighbourhood in pixels (OpenCV's ``KeyPoint.size``),
            or ``None`` where the model gives none (descriptors at given keypoints of a dense model).
        angles: ``(N,)`` float32 orientation in degrees, OpenCV's ``KeyPoint.angle``: in ``[0, 360)``, measured
            from the +x axis towards +y (clockwise on screen, as y points down); ``-1`` for a keypoint without
            one (upright detectors); ``None`` as for ``sizes``.

    Example:
        >>> f = Features.empty((640, 480), DescriptorInfo("float", 128, "l2"))
        >>> len(f), f.keypoints.shape, f.descriptors.shape
        (0, (0, 2), (0, 128))
    """

    keypoints: np.ndarray
    scores: np.ndarray
    descriptors: np.ndarray | None
    image_size: tuple[int, int]
    descriptor: DescriptorInfo
    sizes: np.ndarray | None = None
    angles: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    @classmethod
    def empty(cls, image_size: tuple[int, int], descriptor: DescriptorInfo) -> Features:
        """Features with zero keypoints (and zero descriptor rows of the right width)."""
        return cls(
            keypoints=np.zeros((0, 2), np.float32),
            scores=np.zeros((0,), np.float32),
            descriptors=np.zeros((0, descriptor.row_length), descriptor.dtype),
            image_size=image_size,
            descriptor=descriptor,
            sizes=np.zeros((0,), np.float32),
            angles=np.zeros((0,), np.float32),
        )

    def subset(self, index: np.ndarray) -> Features:
        """The features at ``index`` (an integer index array or a boolean mask)."""
        return Features(
            keypoints=self.keypoints[index],
            scores=self.scores[index],
            descriptors=None if self.descriptors is None else self.descriptors[index],
            image_size=self.image_size,
            descriptor=self.descriptor,
            sizes=None if self.sizes is None else self.sizes[index],
            angles=None if self.angles is None else self.angles[index],
        )

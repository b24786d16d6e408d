"""The `FeatureModel` base class: one protocol for every model, working on batches of images."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, ClassVar

import cv2
import numpy as np

from .cards import ModelCard
from .features import DescriptorInfo, Features, KeypointOptions

MIN_IMAGE_SIDE = 2  # OpenCV's ORB and A-KAZE pyramids fail on a side of one pixel


def check_image(image: np.ndarray) -> None:
    """Raise ``ValueError`` unless ``image`` is a uint8 ``(H, W)`` grey or ``(H, W, 3)`` RGB array of at least
    `MIN_IMAGE_SIDE` pixels a side."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"image must have shape (H, W) or (H, W, 3), got {image.shape}")
    if min(image.shape[:2]) < MIN_IMAGE_SIDE:
        height, width = image.shape[:2]
        raise ValueError(f"image is {width}x{height} pixels; each side must be at least {MIN_IMAGE_SIDE}")


def to_grey(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8 grey view of a grey or RGB image."""
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def image_size(image: np.ndarray) -> tuple[int, int]:
    """``(width, height)`` of an image array."""
    return int(image.shape[1]), int(image.shape[0])


def resize_image(image: np.ndarray, factor: float) -> np.ndarray:
    """``image`` scaled by ``factor`` (area averaging when shrinking, OpenCV's near-bilinear ``INTER_AREA`` when
    enlarging), unchanged at 1."""
    if factor == 1.0:
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def normalise_rows(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def rescale_points(points: np.ndarray, size: tuple[int, int], new_size: tuple[int, int]) -> np.ndarray:
    """Pixel ``(x, y)`` in an image of ``size`` -> the same places in it resized to ``new_size`` (both ``(w, h)``)."""
    factors = np.asarray(new_size, np.float32) / np.asarray(size, np.float32)
    return ((points + 0.5) * factors - 0.5).astype(np.float32)


def check_options(name: str, known: Mapping[str, Any], conf: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the options of ``conf`` that model ``name``'s ``known`` default conf lacks."""
    unknown = sorted(set(conf) - set(known))
    if unknown:
        raise ValueError(f"unknown options for {name}: {unknown}; known: {sorted(known)}")


class FeatureModel(ABC):
    """A named feature model: ``extract`` = ``detect`` + ``describe``, on a batch of images.

    Subclasses set ``name``, ``descriptor`` and ``default_conf`` and write the three methods. Images are
    uint8 numpy arrays, ``(H, W)`` grey or ``(H, W, 3)`` RGB; every output is in pixels of the image as
    sent (see `Features`).

    Example:
        >>> from featureserve.models import load_model, KeypointOptions
        >>> import numpy as np
        >>> model = load_model("orb")
        >>> image = (np.random.default_rng(0).random((240, 320)) * 255).astype(np.uint8)
        >>> [features] = model.extract([image], [KeypointOptions(max_keypoints=100)])
        >>> features.descriptors.dtype, len(features) <= 100
        (dtype('uint8'), True)
    """

    name: ClassVar[str]
    descriptor: ClassVar[DescriptorInfo]
    default_conf: ClassVar[dict[str, Any]] = {}

    def __init__(self, **conf: Any) -> None:
        check_options(self.name, self.default_conf, conf)
        self.conf: dict[str, Any] = {**self.default_conf, **conf}

    @property
    @abstractmethod
    def card(self) -> ModelCard:
        """The model card."""

    @property
    def grey_input(self) -> bool:
        """Whether the model reads only the grey values of an image: the service then decodes colour JPEGs to their
        luma alone, which saves decoding time (the luma can differ from an RGB image's grey conversion by a few
        levels at some pixels)."""
        return False

    def bucket_key(self, image: np.ndarray) -> Hashable:
        """Images with equal keys may share one batch; the default lets every image share."""
        return None

    @abstractmethod
    def extract(self, images: Sequence[np.ndarray], options: Sequence[KeypointOptions]) -> list[Features]:
        """Detect and describe keypoints in each image; ``options[i]`` selects keypoints of ``images[i]``."""

    def detect(self, images: Sequence[np.ndarray], options: Sequence[KeypointOptions]) -> list[Features]:
        """Keypoints and scores only (``descriptors`` is ``None``)."""
        features = self.extract(images, options)
        for f in features:
            f.descriptors = None
        return features

    @abstractmethod
    def describe(self, images: Sequence[np.ndarray], keypoints: Sequence[np.ndarray]) -> list[Features]:
        """Descriptors at given ``(N, 2)`` keypoints; keypoints the descriptor cannot use are left out."""

    def warmup(self) -> None:
        """Run once on a synthetic image so the first request does not pay for lazy initialisation."""
        rng = np.random.default_rng(0)
        image = cv2.GaussianBlur((rng.random((240, 320)) * 255).astype(np.uint8), (5, 5), 1.5)
        self.extract([image], [KeypointOptions(max_keypoints=64)])

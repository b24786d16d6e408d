"""Training samples: a posed pair, photometric augmentation and query points, as tensors.

Query points follow CAPS (Wang et al., ECCV 2020): candidates are SIFT detections plus about 10 % uniform random
pixels in image 1, pruned by visibility (the exact mask for synthetic pairs; for real pairs, the epipolar line
must cross image 2), then ``num_queries`` are drawn with one explicitly seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..geometry import fundamental_matrix
from .photometric import PhotometricConfig, augment
from .posed import PosedImage, posed_pair
from .synthetic import PosedPair, SceneGenerator, project


@dataclass(frozen=True)
class QueryConfig:
    """How many query points per pair and how they are drawn."""

    num_queries: int = 128
    random_fraction: float = 0.1
    candidates_per_query: int = 4


def sift_points(grey: np.ndarray, count: int) -> np.ndarray:
    """``(M, 2)`` float64 SIFT keypoint positions (OpenCV, strongest ``count``)."""
    keypoints = cv2.SIFT_create(nfeatures=max(count, 1)).detect(grey, None)
    return np.array([k.pt for k in keypoints], np.float64).reshape(-1, 2)


def epipolar_line_crosses(points: np.ndarray, fundamental: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(M,)`` bool: the epipolar line ``F x`` of each image-1 point passes through the ``(W, H)`` image 2."""
    width, height = size
    lines = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ fundamental.T
    corners = np.array([[0, 0, 1], [width - 1, 0, 1], [0, height - 1, 1], [width - 1, height - 1, 1]], np.float64)
    sides = np.sign(lines @ corners.T)
    return sides.min(axis=1) != sides.max(axis=1)


def query_points(
    rng: np.random.Generator, grey1: np.ndarray, keep: Callable[[np.ndarray], np.ndarray], config: QueryConfig
) -> np.ndarray:
    """``(num_queries, 2)`` float32 points in image 1: SIFT + random candidates that ``keep`` accepts."""
    height, width = grey1.shape
    total = config.num_queries * config.candidates_per_query
    random_count = max(round(total * config.random_fraction), 1)
    candidates = np.concatenate(
        [sift_points(grey1, total - random_count), rng.uniform((0, 0), (width - 1, height - 1), (random_count, 2))]
    )
    candidates = candidates[keep(candidates)]
    if len(candidates) == 0:  # nothing usable: random pixels keep the batch shape; the loss masks handle them
        candidates = rng.uniform((0, 0), (width - 1, height - 1), (config.num_queries, 2))
    replace = len(candidates) < config.num_queries
    return candidates[rng.choice(len(candidates), config.num_queries, replace=replace)].astype(np.float32)


def _to_tensor(grey: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(grey).float().div(255).unsqueeze(0)


def pair_sample(
    pair: PosedPair, rng: np.random.Generator, queries: QueryConfig, photometric: PhotometricConfig | None
) -> dict[str, torch.Tensor]:
    """Tensors of one training sample.

    Returns:
        ``image1``, ``image2``: ``(1, H, W)`` grey in [0, 1]; ``fundamental``: ``(3, 3)`` image 1 -> image 2;
        ``queries``: ``(N, 2)`` pixels in image 1; ``targets``: ``(N, 2)`` true image-2 pixels (NaN for real
        pairs, which have no depth).
    """
    if photometric is None:
        grey1, grey2 = (cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in (pair.image1, pair.image2))
    else:
        grey1, grey2 = augment(rng, pair.image1, photometric), augment(rng, pair.image2, photometric)
    fundamental = fundamental_matrix(pair.k1, pair.k2, pair.rotation, pair.translation)
    size2 = (grey2.shape[1], grey2.shape[0])
    if pair.visible1 is not None:
        visible = pair.visible1

        def keep(points: np.ndarray) -> np.ndarray:
            xs, ys = np.round(points).astype(np.int64).T
            return visible[ys, xs]
    else:

        def keep(points: np.ndarray) -> np.ndarray:
            return epipolar_line_crosses(points, fundamental, size2)

    points = query_points(rng, grey1, keep, queries)
    targets = np.full_like(points, np.nan)
    if pair.depth1 is not None:
        projected, _ = project(pair.depth1, pair.k1, pair.k2, pair.rotation, pair.translation)
        xs, ys = np.round(points).astype(np.int64).T
        # The projection of the nearest pixel: within a pixel of the exact target, enough for validation.
        targets = projected[ys, xs].astype(np.float32)
    return {
        "image1": _to_tensor(grey1),
        "image2": _to_tensor(grey2),
        "fundamental": torch.from_numpy(fundamental).float(),
        "queries": torch.from_numpy(points),
        "targets": torch.from_numpy(targets),
    }


class SyntheticPairs(Dataset):
    """``length`` synthetic samples; sample ``i`` is a pure function of ``(seed, i)``."""

    def __init__(
        self,
        generator: SceneGenerator,
        length: int,
        seed: int,
        queries: QueryConfig,
        photometric: PhotometricConfig | None,
    ) -> None:
        self.generator, self.length, self.seed = generator, length, seed
        self.queries, self.photometric = queries, photometric

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        return pair_sample(self.generator.pair(rng), rng, self.queries, self.photometric)


class RealPairs(Dataset):
    """Pairs of real posed images resized to ``size = (W, H)``, for validation (no augmentation)."""

    def __init__(
        self,
        images: Sequence[PosedImage],
        pairs: Sequence[tuple[int, int]],
        size: tuple[int, int],
        seed: int,
        queries: QueryConfig,
        photometric: PhotometricConfig | None = None,
    ) -> None:
        self.images, self.pairs, self.size, self.seed = list(images), list(pairs), size, seed
        self.queries, self.photometric = queries, photometric

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i, j = self.pairs[index]
        rng = np.random.default_rng([self.seed, index])
        return pair_sample(posed_pair(self.images[i], self.images[j], self.size), rng, self.queries, self.photometric)

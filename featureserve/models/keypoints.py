"""Keypoint selection shared by every model: border margin, top-k, grid quotas and ANMS."""

from __future__ import annotations

import math

import numpy as np
import torch

from .features import KeypointOptions

# Cells per grid are chosen so that each cell's quota is about this many keypoints.
GRID_KEYPOINTS_PER_CELL = 8


def candidate_count(options: KeypointOptions) -> int:
    """How many detector candidates to ask for so that ``options`` can still choose among them."""
    if options.uniform == "none":
        return options.max_keypoints
    return 4 * options.max_keypoints


def select_keypoints(
    keypoints: np.ndarray, scores: np.ndarray, image_size: tuple[int, int], options: KeypointOptions
) -> np.ndarray:
    """Indices of the keypoints to keep, strongest first.

    Args:
        keypoints: ``(N, 2)`` ``(x, y)`` pixel coordinates.
        scores: ``(N,)`` detector responses.
        image_size: ``(width, height)`` of the image.
        options: ``max_keypoints``, ``uniform`` and ``border_margin``.

    Returns:
        ``(K,)`` int64 indices into ``keypoints`` with ``K <= options.max_keypoints``.
    """
    width, height = image_size
    index = np.arange(len(keypoints))
    if options.border_margin > 0 and len(index):
        m = options.border_margin
        x, y = keypoints[:, 0], keypoints[:, 1]
        inside = (x >= m) & (y >= m) & (x <= width - 1 - m) & (y <= height - 1 - m)
        index = index[inside]
    order = index[np.argsort(-scores[index], kind="stable")]
    k = options.max_keypoints
    if len(order) <= k or options.uniform == "none":
        return order[:k]
    if options.uniform == "grid":
        return _grid_select(keypoints[order], image_size, k, order)
    return _anms_select(keypoints[order], k, order)


def _grid_select(keypoints: np.ndarray, image_size: tuple[int, int], k: int, order: np.ndarray) -> np.ndarray:
    """Equal quota per grid cell (keypoints sorted strongest first); unused quota goes to the strongest rest."""
    width, height = image_size
    cells = max(1, k // GRID_KEYPOINTS_PER_CELL)
    cols = max(1, round(math.sqrt(cells * width / max(height, 1))))
    rows = max(1, math.ceil(cells / cols))
    quota = math.ceil(k / (rows * cols))
    cx = np.clip((keypoints[:, 0] * cols / width).astype(np.int64), 0, cols - 1)
    cy = np.clip((keypoints[:, 1] * rows / height).astype(np.int64), 0, rows - 1)
    cell = cy * cols + cx
    # Rank of each keypoint inside its cell; keypoints arrive strongest first, so rank 0 is the best.
    by_cell = np.argsort(cell, kind="stable")
    starts = np.searchsorted(cell[by_cell], np.arange(rows * cols))
    rank = np.empty(len(cell), np.int64)
    rank[by_cell] = np.arange(len(cell)) - starts[cell[by_cell]]
    first = np.flatnonzero(rank < quota)
    rest = np.flatnonzero(rank >= quota)
    chosen = np.concatenate([first, rest])[:k]
    return order[np.sort(chosen)]


def _anms_select(keypoints: np.ndarray, k: int, order: np.ndarray) -> np.ndarray:
    """Keep the ``k`` keypoints with the largest suppression radius (keypoints sorted strongest first)."""
    # Suppression radius = distance to the nearest stronger point (Brown, Szeliski, Winder, CVPR 2005).
    # Their robustness factor (suppress only by points 10 % stronger) would give every point within 10 %
    # of the strongest an infinite radius, which crowds strong clusters, so every earlier point counts.
    points = torch.from_numpy(np.ascontiguousarray(keypoints, np.float32))
    n = len(points)
    radius = torch.full((n,), float("inf"))
    chunk = 2048
    index = torch.arange(n)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        d2 = torch.cdist(points[start:stop], points[:stop]).square_()
        d2.masked_fill_(index[None, :stop] >= index[start:stop, None], float("inf"))
        radius[start:stop] = d2.min(dim=1).values
    keep = torch.argsort(-radius, stable=True)[:k].numpy()
    return order[np.sort(keep)]

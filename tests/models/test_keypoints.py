"""Keypoint selection: top-k, border margin, and uniform spreading (grid quotas, ANMS)."""

import numpy as np
import pytest

from featureserve.models import KeypointOptions, select_keypoints


def _clustered(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Strong keypoints crowded in one corner, weak ones spread over a 640x480 image."""
    crowd = rng.uniform(0, 80, (400, 2))
    spread = rng.uniform(0, [640, 480], (400, 2))
    scores = np.concatenate([rng.uniform(10, 20, 400), rng.uniform(1, 5, 400)])
    return np.concatenate([crowd, spread]).astype(np.float32), scores.astype(np.float32)


def _occupied_cells(points: np.ndarray, cell: int = 80) -> int:
    return len({(int(x) // cell, int(y) // cell) for x, y in points})


def test_top_k_keeps_the_strongest() -> None:
    keypoints, scores = _clustered(np.random.default_rng(0))
    keep = select_keypoints(keypoints, scores, (640, 480), KeypointOptions(max_keypoints=100))
    assert len(keep) == 100
    assert scores[keep].min() >= np.sort(scores)[-100]


@pytest.mark.parametrize("uniform", ["grid", "anms"])
def test_uniform_selection_spreads_keypoints(uniform: str) -> None:
    keypoints, scores = _clustered(np.random.default_rng(1))
    top = select_keypoints(keypoints, scores, (640, 480), KeypointOptions(max_keypoints=100))
    spread = select_keypoints(keypoints, scores, (640, 480), KeypointOptions(max_keypoints=100, uniform=uniform))
    assert len(spread) == 100 and len(set(spread.tolist())) == 100
    assert _occupied_cells(keypoints[top]) <= 2
    assert _occupied_cells(keypoints[spread]) >= 20


def test_border_margin_drops_keypoints_near_the_border() -> None:
    keypoints = np.array([[0, 0], [5, 100], [100, 100], [634, 200], [635, 200]], np.float32)
    keep = select_keypoints(keypoints, np.ones(5, np.float32), (640, 480), KeypointOptions(border_margin=5))
    assert sorted(keep.tolist()) == [1, 2, 3]


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="max_keypoints"):
        KeypointOptions(max_keypoints=-1)
    with pytest.raises(ValueError, match="uniform"):
        KeypointOptions(uniform="poisson")  # type: ignore[arg-type]

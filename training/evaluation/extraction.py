"""How the evaluation loops get features and matches: a model's extractor, a keypoint cap, plain mutual NN."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from featureserve.models import FeatureModel, Features, KeypointOptions, match_descriptors

ExtractFn = Callable[[np.ndarray], Features]


def model_extractor(model: FeatureModel, max_keypoints: int) -> ExtractFn:
    """An ``extract_fn`` that runs ``model`` in process on one image with a keypoint budget."""
    options = [KeypointOptions(max_keypoints=max_keypoints)]
    return lambda image: model.extract([image], options)[0]


def extract_capped(extract_fn: ExtractFn, image: np.ndarray, max_keypoints: int | None) -> tuple[Features, float]:
    """Features of ``image`` capped at ``max_keypoints`` (strongest first) and the seconds they took."""
    start = time.perf_counter()
    features = extract_fn(image)
    seconds = time.perf_counter() - start
    if features.descriptors is None:
        raise ValueError("extract_fn returned features without descriptors")
    # The cap holds whatever the extractor does, so remote or learned models compete at the same budget.
    if max_keypoints is not None and len(features) > max_keypoints:
        features = features.subset(np.argsort(-features.scores, kind="stable")[:max_keypoints])
    return features, seconds


def mutual_matches(features0: Features, features1: Features) -> tuple[np.ndarray, np.ndarray]:
    """``(points0, points1)``: the keypoints of the plain mutual nearest-neighbour matches, ``(M, 2)`` each."""
    metric = features0.descriptor.metric
    if features1.descriptor.metric != metric:
        raise ValueError(f"descriptor metrics differ: {metric} vs {features1.descriptor.metric}")
    matches = match_descriptors(features0.descriptors, features1.descriptors, metric=metric, matcher="mnn")
    return features0.keypoints[matches.indices[:, 0]], features1.keypoints[matches.indices[:, 1]]

"""`match_pair`: descriptor matching plus geometric verification of one image pair."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .features import Features
from .geometry import GeometryKind, GeometryResult, verify
from .matching import Matcher, Matches, match_descriptors


@dataclass(frozen=True)
class PairOptions:
    """How a pair is matched and verified (see `match_descriptors` and `verify`)."""

    matcher: Matcher = "mnn"
    ratio: float | None = None
    max_distance: float | None = None
    geometry: GeometryKind | None = None
    ransac_threshold: float = 3.0
    ransac_confidence: float = 0.9999
    ransac_max_iterations: int = 10000
    intrinsics0: np.ndarray | None = None
    intrinsics1: np.ndarray | None = None


@dataclass
class PairResult:
    """Matches of a pair and, when geometry was asked for, their verification."""

    matches: Matches
    points0: np.ndarray
    points1: np.ndarray
    geometry: GeometryResult | None


def match_pair(features0: Features, features1: Features, options: PairOptions) -> PairResult:
    """Match ``features0`` to ``features1`` and verify the matches; raises ``ValueError`` on a mismatch."""
    if features0.descriptors is None or features1.descriptors is None:
        raise ValueError("both feature sets need descriptors to be matched")
    spec0, spec1 = features0.descriptor, features1.descriptor
    if spec0.kind != spec1.kind or features0.descriptors.shape[1] != features1.descriptors.shape[1]:
        raise ValueError(
            f"feature sets are not comparable: {spec0.kind} {features0.descriptors.shape[1]}-wide vs "
            f"{spec1.kind} {features1.descriptors.shape[1]}-wide descriptors"
        )
    matches = match_descriptors(
        features0.descriptors, features1.descriptors, spec0.metric, options.matcher, options.ratio, options.max_distance
    )
    points0 = features0.keypoints[matches.indices[:, 0]]
    points1 = features1.keypoints[matches.indices[:, 1]]
    geometry = None
    if options.geometry is not None:
        geometry = verify(
            points0,
            points1,
            options.geometry,
            options.ransac_threshold,
            options.ransac_confidence,
            options.ransac_max_iterations,
            options.intrinsics0,
            options.intrinsics1,
        )
    return PairResult(matches, points0, points1, geometry)

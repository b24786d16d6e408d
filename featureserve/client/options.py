"""Keyword options of the clients: one vocabulary (the gRPC contract's field names) for every transport."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..v1 import features_pb2 as pb

# The option names are the fields of the contract's option messages, which are also the REST names.
EXTRACT_OPTIONS = frozenset(pb.ExtractOptions.DESCRIPTOR.fields_by_name)
MATCH_OPTIONS = frozenset(pb.MatchOptions.DESCRIPTOR.fields_by_name)
# Options only some transports have: REST and the in-process client draw pictures of matches; gRPC does not.
DRAW_OPTION = "draw"
DRAWING_OPTIONS = frozenset({"draw_max_lines", "draw_outliers"})  # how the picture is drawn


def check_options(options: dict[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    """The options that are set (not None); raises ``TypeError`` naming unknown ones."""
    unknown = set(options) - allowed
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}; known: {sorted(allowed)}")
    return {k: v for k, v in options.items() if v is not None}


def intrinsics_tuple(value: Sequence[float] | np.ndarray) -> tuple[float, float, float, float]:
    """``(fx, fy, cx, cy)`` from that 4-sequence or from a 3x3 calibration matrix."""
    array = np.asarray(value, np.float64)
    if array.shape == (3, 3):
        return float(array[0, 0]), float(array[1, 1]), float(array[0, 2]), float(array[1, 2])
    if array.shape != (4,):
        raise ValueError(f"intrinsics must be [fx, fy, cx, cy] or a 3x3 matrix, got shape {array.shape}")
    fx, fy, cx, cy = (float(v) for v in array)
    return fx, fy, cx, cy

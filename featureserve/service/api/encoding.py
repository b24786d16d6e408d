"""Wire encoding of features: numpy arrays to JSON-ready dicts and uploaded feature sets back to arrays."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import orjson
from fastapi.responses import JSONResponse

from ...arrays import WIRE_DTYPES
from ...models import DescriptorSpec, Features
from ..errors import InvalidInput
from .schemas import FeatureSet

# The metrics that make sense for each descriptor kind.
METRICS = {"float": ("l2", "cosine"), "binary": ("hamming",)}


class FastJSONResponse(JSONResponse):
    """JSON response rendered by orjson, which writes numpy arrays directly."""

    def render(self, content: Any) -> bytes:
        """Serialise ``content`` (numpy arrays allowed)."""
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_descriptors(descriptors: np.ndarray, encoding: str, dtype: str) -> dict[str, Any]:
    """``(N, D)`` descriptors -> ``{"encoding", "dtype", "shape", "data"}`` (binary ones stay uint8)."""
    wire = "uint8" if descriptors.dtype == np.uint8 else dtype
    array = np.ascontiguousarray(descriptors, WIRE_DTYPES[wire])
    data: Any = base64.b64encode(array.tobytes()).decode("ascii") if encoding == "base64" else array
    return {"encoding": encoding, "dtype": wire, "shape": list(array.shape), "data": data}


def encode_features(features: Features, include_descriptors: bool, encoding: str, dtype: str) -> dict[str, Any]:
    """A `Features` as the ``FeatureSet`` JSON shape."""
    spec = features.descriptor
    width, height = features.image_size
    return {
        "keypoints": features.keypoints,
        "scores": features.scores,
        "descriptors": (
            encode_descriptors(features.descriptors, encoding, dtype)
            if include_descriptors and features.descriptors is not None
            else None
        ),
        "descriptor": {"kind": spec.kind, "dim": spec.dim, "metric": spec.metric},
        "image_size": {"width": width, "height": height},
    }


def decode_feature_set(feature_set: FeatureSet, name: str) -> Features:
    """An uploaded ``FeatureSet`` as `Features`; raises `InvalidInput` naming ``name`` when inconsistent."""
    keypoints = np.asarray(feature_set.keypoints, np.float32).reshape(-1, 2)
    payload = feature_set.descriptors
    if payload is None:
        raise InvalidInput(f"{name}.descriptors is required for matching")
    rows, cols = payload.shape
    wire = WIRE_DTYPES[payload.dtype]
    if payload.encoding == "base64":
        if not isinstance(payload.data, str):
            raise InvalidInput(f"{name}.descriptors.data must be a base64 string for encoding base64")
        try:
            raw = base64.b64decode(payload.data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"{name}.descriptors.data is not valid base64") from None
        if len(raw) != rows * cols * wire.itemsize:
            raise InvalidInput(
                f"{name}.descriptors.data holds {len(raw)} bytes; shape {rows}x{cols} of {payload.dtype} "
                f"needs {rows * cols * wire.itemsize}"
            )
        descriptors = np.frombuffer(raw, wire).reshape(rows, cols)
    else:
        if isinstance(payload.data, str):
            raise InvalidInput(f"{name}.descriptors.data must be nested arrays for encoding json")
        if any(len(row) != cols for row in payload.data) or len(payload.data) != rows:
            raise InvalidInput(f"{name}.descriptors.data does not have shape {rows}x{cols}")
        descriptors = np.asarray(payload.data, np.float64).reshape(rows, cols)
        if payload.dtype == "uint8" and (np.any(descriptors < 0) or np.any(descriptors > 255)):
            raise InvalidInput(f"{name}.descriptors.data has values outside 0..255 for dtype uint8")
        descriptors = descriptors.astype(wire)
    info = feature_set.descriptor
    size = feature_set.image_size
    return features_from_arrays(
        name,
        keypoints,
        None if feature_set.scores is None else np.asarray(feature_set.scores, np.float32),
        descriptors,
        None if info is None else DescriptorSpec(info.kind, info.dim, info.metric),
        (size.width, size.height) if size is not None else (0, 0),
    )


def features_from_arrays(
    name: str,
    keypoints: np.ndarray,
    scores: np.ndarray | None,
    descriptors: np.ndarray,
    spec: DescriptorSpec | None,
    image_size: tuple[int, int],
) -> Features:
    """Check an uploaded feature set (any transport) and build `Features`; raises `InvalidInput` naming ``name``.

    ``descriptors`` are uint8 for binary descriptors and a float dtype otherwise; ``spec`` is inferred from
    them when absent.
    """
    if not np.all(np.isfinite(keypoints)):
        raise InvalidInput(f"{name}.keypoints contains non-finite values")
    rows, cols = descriptors.shape
    if rows != len(keypoints):
        raise InvalidInput(f"{name}.descriptors has {rows} rows but there are {len(keypoints)} keypoints")
    binary = descriptors.dtype == np.uint8
    if not binary:
        descriptors = descriptors.astype(np.float32)
        if not np.all(np.isfinite(descriptors)):
            raise InvalidInput(f"{name}.descriptors contains non-finite values")
    if spec is None:
        spec = DescriptorSpec("binary", 8 * cols, "hamming") if binary else DescriptorSpec("float", cols, "l2")
    if spec.metric not in METRICS.get(spec.kind, ()):
        raise InvalidInput(f"{name}.descriptor: kind {spec.kind!r} with metric {spec.metric!r} is not supported")
    if (spec.kind == "binary") != binary or spec.row_length != cols:
        dtype = "uint8" if binary else "float"
        raise InvalidInput(f"{name}.descriptor says {spec.kind} {spec.dim}, but descriptors are {dtype} x {cols}")
    if scores is not None and len(scores) != rows:
        raise InvalidInput(f"{name}.scores has {len(scores)} values but there are {rows} keypoints")
    return Features(
        keypoints=np.ascontiguousarray(keypoints, np.float32),
        scores=np.ones(rows, np.float32) if scores is None else np.ascontiguousarray(scores, np.float32),
        descriptors=np.ascontiguousarray(descriptors),
        image_size=image_size,
        descriptor=spec,
    )

"""JSON encoding: numpy arrays to JSON-ready dicts, uploaded feature sets back to arrays, and the error shape."""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import numpy as np
import orjson
from fastapi.responses import JSONResponse

from ....arrays import WIRE_DTYPES
from ....models import DescriptorInfo, Features
from ...contract import features_from_arrays
from ...errors import FeatureServeError, InvalidInput, Overloaded
from .schemas import FeatureSet


class FastJSONResponse(JSONResponse):
    """JSON response rendered by orjson, which writes numpy arrays directly."""

    def render(self, content: Any) -> bytes:
        """Serialise ``content`` (numpy arrays allowed)."""
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error_response(error: FeatureServeError) -> JSONResponse:
    """The one error shape, with ``Retry-After`` on 429."""
    headers = {"Retry-After": str(math.ceil(error.retry_after_s))} if isinstance(error, Overloaded) else None
    return JSONResponse(error.to_dict(), status_code=error.http_status, headers=headers)


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
        "sizes": features.sizes,
        "angles": features.angles,
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
        None if info is None else DescriptorInfo(info.kind, info.dim, info.metric),
        (size.width, size.height) if size is not None else (0, 0),
        sizes=None if feature_set.sizes is None else np.asarray(feature_set.sizes, np.float32),
        angles=None if feature_set.angles is None else np.asarray(feature_set.angles, np.float32),
    )

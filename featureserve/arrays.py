"""numpy arrays <-> ``featureserve.v1.Array`` messages (packed little-endian bytes), for server and client."""

from __future__ import annotations

import math

import numpy as np

from .v1 import features_pb2 as pb

WIRE_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "float64": np.dtype("<f8"),
    "int32": np.dtype("<i4"),
    "uint8": np.dtype("u1"),
}


def to_array(values: np.ndarray, dtype: str) -> pb.Array:
    """Pack ``values`` as ``dtype`` (a key of `WIRE_DTYPES`) into an ``Array`` message."""
    packed = np.ascontiguousarray(values, WIRE_DTYPES[dtype])
    return pb.Array(dtype=dtype, shape=packed.shape, data=packed.tobytes())


def from_array(message: pb.Array, name: str, dtypes: tuple[str, ...], shape: tuple[int | None, ...]) -> np.ndarray:
    """Unpack ``message``; raises ``ValueError`` naming ``name`` unless dtype, shape and byte length fit.

    Args:
        message: The packed array.
        name: Field name for error messages (``"keypoints"``).
        dtypes: Accepted dtype names.
        shape: Expected shape; ``None`` entries accept any size.
    """
    if message.dtype not in dtypes:
        raise ValueError(f"{name}.dtype is {message.dtype!r}; expected {' or '.join(dtypes)}")
    dims = tuple(message.shape)
    if len(dims) != len(shape) or any(e is not None and d != e for d, e in zip(dims, shape, strict=False)):
        expected = ", ".join("*" if e is None else str(e) for e in shape)
        raise ValueError(f"{name}.shape is {list(dims)}; expected [{expected}] (* = any size)")
    if any(d < 0 for d in dims):
        raise ValueError(f"{name}.shape has a negative dimension: {list(dims)}")
    dtype = WIRE_DTYPES[message.dtype]
    expected_bytes = math.prod(dims) * dtype.itemsize
    if len(message.data) != expected_bytes:
        raise ValueError(
            f"{name}.data holds {len(message.data)} bytes; shape {list(dims)} of {message.dtype} needs {expected_bytes}"
        )
    return np.frombuffer(message.data, dtype).reshape(dims)


def unpack(message: pb.Array) -> np.ndarray:
    """Unpack an ``Array`` from a trusted peer (the server) without checking its shape."""
    return np.frombuffer(message.data, WIRE_DTYPES[message.dtype]).reshape(tuple(message.shape))

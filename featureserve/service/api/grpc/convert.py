"""Protobuf messages <-> the service's options and features; validation is the shared contract's."""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import orjson
from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel

from ....arrays import from_array, to_array
from ....models import DescriptorInfo, Features, GeometryResult, ModelCard
from ....v1 import features_pb2 as pb
from ...contract import features_from_arrays, validate_options
from ...errors import InvalidInput, PayloadTooLarge
from ...settings import Settings

OptionsT = TypeVar("OptionsT", bound=BaseModel)
DESCRIPTOR_DTYPES = ("float32", "float16", "uint8")


def message_fields(message: Message | None) -> dict[str, Any]:
    """The fields a client set, by name; ``Intrinsics`` become ``[fx, fy, cx, cy]``."""
    if message is None:
        return {}
    fields: dict[str, Any] = {}
    for field, value in message.ListFields():
        if isinstance(value, pb.Intrinsics):
            value = [value.fx, value.fy, value.cx, value.cy]
        fields[field.name] = value
    return fields


def parse_options(schema: type[OptionsT], *messages: Message | None) -> OptionsT:
    """Validate the set fields of ``messages`` with the shared ``schema``; raises `InvalidOption`."""
    fields: dict[str, Any] = {}
    for message in messages:
        fields.update(message_fields(message))
    return validate_options(schema, fields)


def image_input(image: pb.Image, name: str, settings: Settings) -> bytes | np.ndarray:
    """Encoded bytes, or raw pixels checked for dtype, shape and byte length; raises `InvalidInput`."""
    source = image.WhichOneof("source")
    if source is None:
        raise InvalidInput(f"missing {name}: set {name}.encoded or {name}.pixels")
    if source == "encoded":
        return image.encoded
    shape = tuple(image.pixels.shape)
    expected = (None, None) if len(shape) == 2 else (None, None, 3)
    try:
        pixels = from_array(image.pixels, f"{name}.pixels", ("uint8",), expected)
    except ValueError as error:
        raise InvalidInput(str(error)) from None
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise InvalidInput(f"{name}.pixels is empty: shape {list(shape)}")
    if pixels.shape[0] * pixels.shape[1] > settings.max_image_pixels:
        raise PayloadTooLarge(
            f"{name}.pixels has {pixels.shape[0] * pixels.shape[1]} pixels; the limit is {settings.max_image_pixels}"
        )
    # A writable copy: the unpacked view of the message is read-only, and torch warns on such arrays.
    return pixels.copy()


def feature_set_message(features: Features, include_descriptors: bool = True, dtype: str = "float32") -> pb.FeatureSet:
    """A `Features` as a ``FeatureSet`` message (binary descriptors stay uint8)."""
    spec = features.descriptor
    message = pb.FeatureSet(
        keypoints=to_array(features.keypoints, "float32"),
        scores=to_array(features.scores, "float32"),
        descriptor=pb.DescriptorInfo(kind=spec.kind, dim=spec.dim, metric=spec.metric),
        image_size=pb.ImageSize(width=features.image_size[0], height=features.image_size[1]),
    )
    if include_descriptors and features.descriptors is not None:
        wire = "uint8" if features.descriptors.dtype == np.uint8 else dtype
        message.descriptors.CopyFrom(to_array(features.descriptors, wire))
    if features.sizes is not None:
        message.sizes.CopyFrom(to_array(features.sizes, "float32"))
    if features.angles is not None:
        message.angles.CopyFrom(to_array(features.angles, "float32"))
    return message


def features_from_message(message: pb.FeatureSet, name: str) -> Features:
    """An uploaded ``FeatureSet`` as `Features`; raises `InvalidInput` naming ``name`` when inconsistent."""
    if not message.HasField("descriptors"):
        raise InvalidInput(f"{name}.descriptors is required for matching")
    try:
        keypoints = from_array(message.keypoints, f"{name}.keypoints", ("float32",), (None, 2))
        count = len(keypoints)
        scores = (
            from_array(message.scores, f"{name}.scores", ("float32",), (count,)) if message.HasField("scores") else None
        )
        descriptors = from_array(message.descriptors, f"{name}.descriptors", DESCRIPTOR_DTYPES, (count, None))
        sizes, angles = (
            from_array(getattr(message, field), f"{name}.{field}", ("float32",), (count,))
            if message.HasField(field)
            else None
            for field in ("sizes", "angles")
        )
    except ValueError as error:
        raise InvalidInput(str(error)) from None
    info = message.descriptor if message.HasField("descriptor") else None
    size = message.image_size
    return features_from_arrays(
        name,
        keypoints,
        scores,
        descriptors,
        None if info is None else DescriptorInfo(info.kind, info.dim, info.metric),
        (size.width, size.height),
        sizes=sizes,
        angles=angles,
    )


def geometry_message(verification: GeometryResult) -> pb.GeometryResult:
    """The fitted model and its support."""
    message = pb.GeometryResult(
        geometry=verification.geometry,
        num_inliers=verification.num_inliers,
        inlier_ratio=verification.inlier_ratio,
        message=verification.message or "",
    )
    for field, value in (
        ("matrix", verification.matrix),
        ("rotation", verification.rotation),
        ("translation", verification.translation),
    ):
        if value is not None:
            getattr(message, field).CopyFrom(to_array(value, "float64"))
    return message


def model_card_message(card: ModelCard) -> pb.ModelCard:
    """A model card; ``details`` becomes a ``Struct`` (numbers as doubles)."""
    spec = card.descriptor
    message = pb.ModelCard(
        name=card.name,
        version=card.version,
        method=card.method,
        descriptor=pb.DescriptorInfo(kind=spec.kind, dim=spec.dim, metric=spec.metric),
        keypoints=card.keypoints,
        licence=card.licence,
        description=card.description,
    )
    # orjson turns numpy values and tuples into plain JSON first.
    json_format.ParseDict(orjson.loads(orjson.dumps(card.details, option=orjson.OPT_SERIALIZE_NUMPY)), message.details)
    return message

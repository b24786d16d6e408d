"""The wire contract both transports share: request options, their validation, and uploaded feature sets.

REST fields, gRPC option messages and the clients' keyword options all carry these names; both
transports validate with these schemas, so a bad option gets the same message whichever way it came.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import numpy as np
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..draw import DEFAULT_MAX_LINES
from ..models import DescriptorInfo, Features, KeypointOptions, PairOptions, intrinsics_matrix
from .errors import InvalidInput, InvalidOption

OptionsT = TypeVar("OptionsT", bound=BaseModel)
# The metrics that make sense for each descriptor kind.
METRICS = {"float": ("l2", "cosine"), "binary": ("hamming",)}
Intrinsics = list[float] | list[list[float]]


class ExtractOptions(BaseModel):
    """Options of ``/v1/extract`` and ``/v1/extract/batch``."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Model name; the service's default model when absent.")
    max_keypoints: int | None = Field(
        None, ge=1, description="Keep at most this many keypoints (service default when absent)."
    )
    uniform: Literal["none", "grid", "anms"] = Field(
        "none", description="Spread keypoints: none = top-k by score, grid = per-cell quotas, anms = ANMS."
    )
    border_margin: int = Field(0, ge=0, le=10000, description="Drop keypoints closer than this to the border, px.")
    include_descriptors: bool = Field(True, description="Return descriptors (false: keypoints and scores only).")
    descriptor_encoding: Literal["json", "base64"] = Field(
        "json", description="json: nested arrays; base64: packed little-endian bytes of `descriptor_dtype`."
    )
    descriptor_dtype: Literal["float32", "float16"] = Field(
        "float32", description="Precision of float descriptors; binary descriptors are always uint8."
    )
    priority: Literal["bulk", "realtime"] = Field(
        "bulk",
        description="realtime: ahead of bulk work in the model's queue, as stream frames are (bulk work still gets "
        "a batch of its own after two that passed it over).",
    )

    def keypoint_options(self, default_max: int) -> KeypointOptions:
        """The model-side keypoint selection these options ask for."""
        return KeypointOptions(
            max_keypoints=self.max_keypoints or default_max, uniform=self.uniform, border_margin=self.border_margin
        )


class MatchOptions(ExtractOptions):
    """Options of ``/v1/match``: extraction options plus matching and verification."""

    matcher: Literal["mnn", "nn"] = Field("mnn", description="mnn = mutual nearest neighbours; nn = nearest.")
    ratio: float | None = Field(None, gt=0, le=1, description="Lowe's ratio test threshold; off when absent.")
    max_distance: float | None = Field(None, ge=0, description="Drop matches farther than this descriptor distance.")
    geometry: Literal["none", "homography", "fundamental", "essential"] = Field(
        "none", description="Model fitted with MAGSAC++ to verify the matches."
    )
    intrinsics0: Intrinsics | None = Field(None, description="[fx, fy, cx, cy] or 3x3 K of image 0 (essential).")
    intrinsics1: Intrinsics | None = Field(None, description="[fx, fy, cx, cy] or 3x3 K of image 1 (essential).")
    ransac_threshold: float = Field(3.0, gt=0, le=100, description="Inlier threshold in pixels.")
    ransac_confidence: float = Field(0.9999, gt=0, lt=1, description="RANSAC confidence.")
    ransac_max_iterations: int = Field(10000, ge=1, le=1_000_000, description="RANSAC iteration cap.")
    include_features: bool = Field(False, description="Also return both images' full feature sets.")
    draw: bool = Field(
        False,
        description="Also return `drawing`: a PNG (base64) of both images side by side with the matches drawn, "
        "inliers green, outliers red (blue when not verified). Needs image0 and image1. "
        "Or send `Accept: image/png` to get the PNG alone.",
    )
    draw_max_lines: int = Field(
        DEFAULT_MAX_LINES, ge=0, le=100_000, description="Draw at most this many matches (inliers first, spread out)."
    )
    draw_outliers: bool = Field(True, description="Also draw the outliers (red); false draws inliers only.")

    @field_validator("intrinsics0", "intrinsics1", mode="before")
    @classmethod
    def _intrinsics_in_words(cls, value: Any) -> Any:
        """A form field may hold comma-separated numbers; anything else that is not a list is refused in words."""
        if isinstance(value, str):
            try:
                return [float(v) for v in value.replace(",", " ").split()]
            except ValueError:
                pass
        if value is None or isinstance(value, list):
            return value
        raise ValueError(
            f"expected [fx, fy, cx, cy] in pixels (a JSON list, or comma-separated numbers in a form field) or a "
            f"3x3 matrix, got {value!r}"
        )

    def pair_options(self) -> PairOptions:
        """The worker-side matching options; raises `InvalidOption` for unusable intrinsics."""
        intrinsics = []
        for side, value in enumerate((self.intrinsics0, self.intrinsics1)):
            try:
                intrinsics.append(None if value is None else intrinsics_matrix(value))
            except ValueError as error:
                raise InvalidOption(f"intrinsics{side}: {error}") from None
        # Not `None in intrinsics`: that compares the matrices with None element-wise and raises.
        if self.geometry == "essential" and any(k is None for k in intrinsics):
            raise InvalidOption("geometry essential needs intrinsics0 and intrinsics1 ([fx, fy, cx, cy] or 3x3)")
        return PairOptions(
            matcher=self.matcher,
            ratio=self.ratio,
            max_distance=self.max_distance,
            geometry=None if self.geometry == "none" else self.geometry,
            ransac_threshold=self.ransac_threshold,
            ransac_confidence=self.ransac_confidence,
            ransac_max_iterations=self.ransac_max_iterations,
            intrinsics0=intrinsics[0],
            intrinsics1=intrinsics[1],
        )


def validate_options(schema: type[OptionsT], fields: dict[str, Any]) -> OptionsT:
    """``fields`` validated as ``schema``; raises `InvalidOption` naming each bad field."""
    try:
        return schema.model_validate(fields)
    except ValidationError as error:
        raise InvalidOption(describe_validation_error(error), {"errors": _error_list(error)}) from None


def describe_validation_error(error: ValidationError | RequestValidationError) -> str:
    """One line per problem: ``field: message``."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors())


def _error_list(error: ValidationError) -> list[dict[str, Any]]:
    return [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in error.errors()]


def features_from_arrays(
    name: str,
    keypoints: np.ndarray,
    scores: np.ndarray | None,
    descriptors: np.ndarray,
    spec: DescriptorInfo | None,
    image_size: tuple[int, int],
    sizes: np.ndarray | None = None,
    angles: np.ndarray | None = None,
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
        spec = DescriptorInfo("binary", 8 * cols, "hamming") if binary else DescriptorInfo("float", cols, "l2")
    if spec.metric not in METRICS.get(spec.kind, ()):
        raise InvalidInput(f"{name}.descriptor: kind {spec.kind!r} with metric {spec.metric!r} is not supported")
    if (spec.kind == "binary") != binary or spec.row_length != cols:
        dtype = "uint8" if binary else "float"
        raise InvalidInput(f"{name}.descriptor says {spec.kind} {spec.dim}, but descriptors are {dtype} x {cols}")
    for field, values in (("scores", scores), ("sizes", sizes), ("angles", angles)):
        if values is not None and len(values) != rows:
            raise InvalidInput(f"{name}.{field} has {len(values)} values but there are {rows} keypoints")
    return Features(
        keypoints=np.ascontiguousarray(keypoints, np.float32),
        scores=np.ones(rows, np.float32) if scores is None else np.ascontiguousarray(scores, np.float32),
        descriptors=np.ascontiguousarray(descriptors),
        image_size=image_size,
        descriptor=spec,
        sizes=None if sizes is None else np.ascontiguousarray(sizes, np.float32),
        angles=None if angles is None else np.ascontiguousarray(angles, np.float32),
    )

"""Request options and response shapes of the REST API (also the vocabulary of the gRPC API)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ...models import KeypointOptions, intrinsics_matrix
from ..errors import InvalidOption
from ..workers import MatchOptions as PairOptions

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


class ImageSize(BaseModel):
    """Image size in pixels."""

    width: int = Field(ge=1)
    height: int = Field(ge=1)


class DescriptorInfo(BaseModel):
    """What a model's descriptors are."""

    kind: Literal["float", "binary"]
    dim: int = Field(ge=1, description="Values (float) or bits (binary) per descriptor.")
    metric: Literal["l2", "cosine", "hamming"]


class DescriptorArray(BaseModel):
    """An ``(N, D)`` descriptor array: nested JSON rows, or base64 of packed little-endian bytes."""

    encoding: Literal["json", "base64"]
    dtype: Literal["float32", "float16", "uint8"]
    shape: tuple[int, int]
    data: list[list[float]] | str


class FeatureSet(BaseModel):
    """Features of one image, as returned by ``/v1/extract`` and accepted by ``/v1/match``."""

    keypoints: list[tuple[float, float]] = Field(description="(x, y) pixels; pixel centres at integers.")
    scores: list[float] | None = None
    descriptors: DescriptorArray | None = None
    descriptor: DescriptorInfo | None = Field(None, description="Descriptor kind/dim/metric (inferred if absent).")
    image_size: ImageSize | None = None


class ExtractResponse(FeatureSet):
    """``/v1/extract`` answer: the model and its features."""

    model: str
    num_keypoints: int


class ExtractBatchResponse(BaseModel):
    """``/v1/extract/batch`` answer: one result per image, in request order."""

    results: list[ExtractResponse]


class GeometryResult(BaseModel):
    """The fitted model and its support."""

    geometry: Literal["homography", "fundamental", "essential"]
    matrix: list[list[float]] | None = Field(description="3x3; null when no model could be fitted.")
    num_inliers: int
    inlier_ratio: float
    rotation: list[list[float]] | None = None
    translation: list[float] | None = None
    message: str | None = None


class MatchResponse(BaseModel):
    """``/v1/match`` answer."""

    model: str | None = Field(description="Model that extracted the features; null for uploaded features.")
    num_keypoints0: int
    num_keypoints1: int
    num_matches: int
    matches: list[tuple[int, int]] = Field(description="(index in image 0, index in image 1) pairs.")
    points0: list[tuple[float, float]]
    points1: list[tuple[float, float]]
    distances: list[float]
    inliers: list[bool] | None = Field(description="Per match; null when geometry is none.")
    num_inliers: int | None
    geometry: GeometryResult | None
    features0: FeatureSet | None = None
    features1: FeatureSet | None = None
    drawing: str | None = Field(None, description="With draw: base64 of the PNG picture of the matches.")


class ErrorBody(BaseModel):
    """The one error shape."""

    code: str
    message: str
    details: dict = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    """``{"error": {"code", "message", "details"}}``."""

    error: ErrorBody

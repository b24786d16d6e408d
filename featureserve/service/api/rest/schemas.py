"""Response shapes of the REST API (the request options are the shared contract: `service.contract`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


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
    sizes: list[float] | None = Field(
        None, description="Diameter of each keypoint's neighbourhood in pixels (OpenCV's KeyPoint.size)."
    )
    angles: list[float] | None = Field(
        None,
        description="Orientation in degrees, OpenCV's KeyPoint.angle: [0, 360) from +x towards +y (clockwise on "
        "screen); -1 where the detector gives none.",
    )
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
    matrix: list[list[float]] | None = Field(
        description="3x3, null when no model could be fitted. homography: x1 ~ H x0 (image-0 pixels to image-1 "
        "pixels), H[2][2] = 1; fundamental: x1^T F x0 = 0 in pixels; essential: the same in normalised coordinates "
        "K^-1 x, scaled as OpenCV returns it (E[2][2] = 1). Pixel centres are at integer coordinates."
    )
    num_inliers: int
    inlier_ratio: float
    rotation: list[list[float]] | None = Field(
        None, description="essential only: R moving points from camera 0's frame to camera 1's, X1 = R X0 + t."
    )
    translation: list[float] | None = Field(None, description="essential only: t of X1 = R X0 + t, unit length.")
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


class MatchBatchResponse(BaseModel):
    """``/v1/match/batch`` answer: one ``/v1/match`` answer per pair, in the order given."""

    model: str | None = Field(description="Model that extracted the images; null for uploaded features.")
    pairs: list[MatchResponse]
    features: list[FeatureSet | None] | None = Field(
        None, description="With include_features: each side's features (null for sides no pair names)."
    )


class ErrorBody(BaseModel):
    """The one error shape."""

    code: str
    message: str
    details: dict = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    """``{"error": {"code", "message", "details"}}``."""

    error: ErrorBody

"""``POST /v1/match``: two images (or two feature sets) in, verified matches out."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from ...models import Features
from ..errors import InvalidInput
from ..workers import PairResult, WorkerPool
from .dependencies import get_pool
from .encoding import FastJSONResponse, decode_feature_set, encode_features
from .examples import EXAMPLE_IMAGE, request_body
from .extract import ERRORS
from .payload import Payload, deadline_ms, describe_validation_error, read_payload
from .schemas import FeatureSet, MatchOptions, MatchResponse

router = APIRouter(prefix="/v1", tags=["matching"])
SIDES = ("0", "1")


def uploaded_features(payload: Payload, side: str) -> Features | None:
    """The feature set sent as ``features<side>``, if any."""
    value = payload.fields.get(f"features{side}")
    if value is None:
        return None
    try:
        feature_set = FeatureSet.model_validate(value)
    except ValidationError as error:
        raise InvalidInput(f"features{side}: {describe_validation_error(error)}") from None
    return decode_feature_set(feature_set, f"features{side}")


def match_response(model: str | None, features: list[Features], result: PairResult, options: MatchOptions) -> dict:
    """The ``MatchResponse`` JSON."""
    verification = result.verification
    geometry: dict[str, Any] | None = None
    if verification is not None:
        geometry = {
            "geometry": verification.geometry,
            "matrix": verification.matrix,
            "num_inliers": verification.num_inliers,
            "inlier_ratio": verification.num_inliers / max(len(result.matches), 1),
            "rotation": verification.rotation,
            "translation": verification.translation,
            "message": verification.message,
        }
    body = {
        "model": model,
        "num_keypoints0": len(features[0]),
        "num_keypoints1": len(features[1]),
        "num_matches": len(result.matches),
        "matches": result.matches.indices,
        "points0": result.points0,
        "points1": result.points1,
        "distances": result.matches.distances,
        "inliers": None if verification is None else verification.inliers,
        "num_inliers": None if verification is None else verification.num_inliers,
        "geometry": geometry,
    }
    if options.include_features:
        for side, f in zip(SIDES, features, strict=True):
            body[f"features{side}"] = encode_features(f, True, options.descriptor_encoding, options.descriptor_dtype)
    return body


@router.post(
    "/match",
    response_model=MatchResponse,
    responses=ERRORS,
    summary="Match two images (or two feature sets) and verify the matches",
    openapi_extra=request_body(
        MatchOptions,
        {
            "image0": "First image (or send features0: a feature set from /v1/extract).",
            "image1": "Second image (or send features1).",
        },
        {"image0": EXAMPLE_IMAGE, "image1": EXAMPLE_IMAGE, "model": "sift", "geometry": "homography"},
    ),
)
async def match(request: Request, pool: WorkerPool = Depends(get_pool)) -> FastJSONResponse:
    """Mutual-NN (or NN, ratio, distance) matches, their pixel coordinates, and MAGSAC++ verification."""
    payload = await read_payload(request, pool.settings)
    options = payload.options(MatchOptions, exclude={"image0", "image1", "features0", "features1"})
    pool.check_max_keypoints(options.max_keypoints)
    worker_options = options.pair_options()
    deadline = pool.deadline_from(deadline_ms(request))
    keypoint_options = options.keypoint_options(pool.settings.default_max_keypoints)
    uploaded = {side: uploaded_features(payload, side) for side in SIDES}
    model: str | None = None
    if any(f is None for f in uploaded.values()):
        model = pool.worker(options.model).model.name
        request.state.model = model

    async def side_features(side: str) -> Features:
        features = uploaded[side]
        if features is not None:
            return features
        return await pool.extract(model, payload.image(f"image{side}"), keypoint_options, deadline)

    features = list(await asyncio.gather(*(side_features(side) for side in SIDES)))
    result = await pool.match(model, features[0], features[1], worker_options)
    return FastJSONResponse(match_response(model, features, result, options))

"""``POST /v1/match``: two images (or two feature sets) in, verified matches out."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from pydantic import ValidationError

from ....models import Features, PairResult
from ...contract import MatchOptions, describe_validation_error
from ...errors import InvalidInput, InvalidOption
from ...operations import ImageInput, Matched, Operations
from .dependencies import get_operations
from .encoding import FastJSONResponse, decode_feature_set, encode_features
from .examples import EXAMPLE_IMAGE, request_body
from .extract import ERRORS
from .payload import Payload, deadline_ms, read_payload
from .schemas import FeatureSet, MatchBatchResponse, MatchResponse

router = APIRouter(prefix="/v1", tags=["matching"])
SIDES = ("0", "1")
PNG_RESPONSE = {
    200: {
        "content": {"image/png": {}},
        "description": "JSON; or, for `Accept: image/png`, the picture alone (counts in X-Num-Matches, X-Num-Inliers).",
    }
}


def feature_set(value: Any, name: str) -> Features:
    """An uploaded feature set (JSON) as `Features`; raises `InvalidInput` naming ``name``."""
    try:
        feature_set = FeatureSet.model_validate(value)
    except ValidationError as error:
        raise InvalidInput(f"{name}: {describe_validation_error(error)}") from None
    return decode_feature_set(feature_set, name)


def uploaded_features(payload: Payload, side: str) -> Features | None:
    """The feature set sent as ``features<side>``, if any."""
    value = payload.fields.get(f"features{side}")
    return None if value is None else feature_set(value, f"features{side}")


def pair_response(model: str | None, features: tuple[Features, Features], result: PairResult) -> dict:
    """The ``MatchResponse`` JSON of one pair, without feature sets."""
    verification = result.geometry
    geometry: dict[str, Any] | None = None
    if verification is not None:
        geometry = {
            "geometry": verification.geometry,
            "matrix": verification.matrix,
            "num_inliers": verification.num_inliers,
            "inlier_ratio": verification.inlier_ratio,
            "rotation": verification.rotation,
            "translation": verification.translation,
            "message": verification.message,
        }
    return {
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


def match_response(model: str | None, matched: Matched, options: MatchOptions) -> dict:
    """The ``MatchResponse`` JSON."""
    body = pair_response(model, matched.features, matched.result)
    if options.include_features:
        for side, f in zip(SIDES, matched.features, strict=True):
            body[f"features{side}"] = encode_features(f, True, options.descriptor_encoding, options.descriptor_dtype)
    return body


def accepts_png(request: Request) -> bool:
    """Whether the client asked for the picture alone (``Accept: image/png`` without JSON)."""
    types = {part.split(";")[0].strip().lower() for part in request.headers.get("accept", "").split(",")}
    return "image/png" in types and "application/json" not in types


def server_timing(phases: dict[str, float]) -> str:
    """A ``Server-Timing`` header value: each phase's duration in milliseconds."""
    return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in phases.items())


@router.post(
    "/match",
    response_model=MatchResponse,
    responses={**ERRORS, **PNG_RESPONSE},
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
async def match(request: Request, ops: Operations = Depends(get_operations)) -> Response:
    """Mutual-NN (or NN, ratio, distance) matches, their pixel coordinates, and MAGSAC++ verification.

    With ``draw`` (or ``Accept: image/png``) also a PNG of the matches. ``Server-Timing`` gives the
    milliseconds of each phase (extract, including decoding and queueing; match; draw).
    """
    started = time.perf_counter()
    payload = await read_payload(request, ops.settings)
    options = payload.options(MatchOptions, exclude={"image0", "image1", "features0", "features1"})
    png_only = accepts_png(request)
    draw = options.draw or png_only
    uploaded = {side: uploaded_features(payload, side) for side in SIDES}
    plan = ops.plan_match(options, extract=any(f is None for f in uploaded.values()))
    request.state.model = plan.model or "none"
    deadline = ops.deadline(deadline_ms(request))

    images: dict[str, np.ndarray] = {}
    if draw:
        missing = [f"image{side}" for side in SIDES if not payload.images(f"image{side}")]
        if missing:
            raise InvalidInput(f"draw needs both images (features are matched, images drawn); missing {missing}")
        # Decoded in colour for the picture; the model decodes its own copy as it reads it (grey JPEG decoding for
        # grey models), so that drawing never changes the matches.
        decoded = await asyncio.gather(*(ops.decode(payload.image(f"image{side}"), f"image{side}") for side in SIDES))
        images = dict(zip(SIDES, decoded, strict=True))

    def side(name: str) -> ImageInput | Features:
        features = uploaded[name]
        return payload.image(f"image{name}") if features is None else features

    matched = await ops.match(plan, side("0"), side("1"), deadline)
    # The extract phase runs from the request's arrival: reading, decoding and queueing included.
    phases = {"extract": time.perf_counter() - started - matched.match_s, "match": matched.match_s}
    body = match_response(plan.model, matched, options)
    if not draw:
        return FastJSONResponse(body, headers={"Server-Timing": server_timing(phases)})
    drawing_started = time.perf_counter()
    png = await ops.draw(images["0"], images["1"], matched, plan.model or "", options)
    phases["draw"] = time.perf_counter() - drawing_started
    headers = {"Server-Timing": server_timing(phases)}
    if png_only:
        counts = {"X-Num-Matches": str(body["num_matches"])}
        if body["num_inliers"] is not None:
            counts["X-Num-Inliers"] = str(body["num_inliers"])
        return Response(png, media_type="image/png", headers={**headers, **counts})
    body["drawing"] = base64.b64encode(png).decode("ascii")
    return FastJSONResponse(body, headers=headers)


def batch_sides(payload: Payload) -> list[ImageInput | Features]:
    """The ``images`` of a batch, or its ``features`` (a list of feature sets); one of the two."""
    images = payload.images("images")
    features = payload.fields.get("features")
    if images and features is not None:
        raise InvalidInput("send either images or features, not both")
    if features is None:
        return list(images)
    if not isinstance(features, list):
        raise InvalidInput("features must be a list of feature sets (as /v1/extract returns them)")
    return [feature_set(value, f"features[{i}]") for i, value in enumerate(features)]


def batch_pairs(payload: Payload) -> list[list[int]]:
    """The ``pairs`` field: a JSON list of index pairs."""
    pairs = payload.fields.get("pairs")
    if not isinstance(pairs, list) or not all(isinstance(pair, list) for pair in pairs):
        raise InvalidInput("pairs must be a JSON list of index pairs into images, e.g. [[0, 1], [0, 2]]")
    return pairs


@router.post(
    "/match/batch",
    response_model=MatchBatchResponse,
    responses=ERRORS,
    summary="Match many pairs of images (or feature sets), each image extracted once",
    openapi_extra=request_body(
        MatchOptions,
        {
            "images": "The images (repeat the part / give a JSON list); or send features: a JSON list of feature sets.",
            "pairs": "JSON list of index pairs into images, [[i, j], ...]: image i is image 0 of the pair.",
        },
        {"images": [EXAMPLE_IMAGE, EXAMPLE_IMAGE, EXAMPLE_IMAGE], "pairs": [[0, 1], [0, 2]], "model": "orb"},
    ),
)
async def match_batch(request: Request, ops: Operations = Depends(get_operations)) -> Response:
    """One ``/v1/match`` answer per pair, in the order given (hloc's pairs semantics). Every image is extracted once.

    ``include_features`` returns each side's features once, under ``features``; ``draw`` is not available here.
    """
    payload = await read_payload(request, ops.settings)
    options = payload.options(MatchOptions, exclude={"images", "features", "pairs"})
    if options.draw:
        raise InvalidOption("draw: not available for /v1/match/batch; draw a pair with /v1/match")
    sides = batch_sides(payload)
    plan = ops.plan_match(options, extract=not all(isinstance(side, Features) for side in sides))
    request.state.model = plan.model or "none"
    matched = await ops.match_pairs(plan, sides, batch_pairs(payload), ops.deadline(deadline_ms(request)))
    pairs = [pair_response(plan.model, matched.sides(k), result) for k, result in enumerate(matched.results)]
    body: dict[str, Any] = {"model": plan.model, "pairs": pairs}
    if options.include_features:
        body["features"] = [
            None if f is None else encode_features(f, True, options.descriptor_encoding, options.descriptor_dtype)
            for f in matched.features
        ]
    return FastJSONResponse(body)

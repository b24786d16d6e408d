"""``POST /v1/extract`` and ``POST /v1/extract/batch``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ....models import Features
from ...contract import ExtractOptions
from ...operations import ExtractPlan, Operations
from .dependencies import get_operations
from .encoding import FastJSONResponse, encode_features
from .examples import EXAMPLE_IMAGE, request_body
from .payload import Payload, deadline_ms, read_payload
from .schemas import ErrorResponse, ExtractBatchResponse, ExtractResponse

router = APIRouter(prefix="/v1", tags=["features"])
ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 413, 415, 422, 429, 503, 504)}


def extract_response(model: str, features: Features, options: ExtractOptions) -> dict:
    """The ``ExtractResponse`` JSON of one image."""
    body = encode_features(features, options.include_descriptors, options.descriptor_encoding, options.descriptor_dtype)
    return {"model": model, "num_keypoints": len(features), **body}


async def read_extract_request(
    request: Request, ops: Operations, image_field: str
) -> tuple[Payload, ExtractOptions, ExtractPlan, float]:
    """Parse an extract request: payload, options, the checked plan and the deadline."""
    payload = await read_payload(request, ops.settings)
    options = payload.options(ExtractOptions, exclude={image_field})
    plan = ops.plan_extract(options)
    request.state.model = plan.model
    return payload, options, plan, ops.deadline(deadline_ms(request))


@router.post(
    "/extract",
    response_model=ExtractResponse,
    responses=ERRORS,
    summary="Detect and describe keypoints in one image",
    openapi_extra=request_body(
        ExtractOptions,
        {"image": "The image: JPEG, PNG, WebP, TIFF, BMP or PPM."},
        {"image": EXAMPLE_IMAGE, "model": "sift", "max_keypoints": 100},
    ),
)
async def extract(request: Request, ops: Operations = Depends(get_operations)) -> FastJSONResponse:
    """Keypoints (x, y pixels), scores and descriptors of one image. Deadline: header ``X-Deadline-Ms``."""
    payload, options, plan, deadline = await read_extract_request(request, ops, "image")
    features = await ops.extract(plan, payload.image("image"), deadline, "image")
    return FastJSONResponse(extract_response(plan.model, features, options))


@router.post(
    "/extract/batch",
    response_model=ExtractBatchResponse,
    responses=ERRORS,
    summary="Detect and describe keypoints in several images",
    openapi_extra=request_body(
        ExtractOptions,
        {"images": "The images (repeat the part / give a JSON list)."},
        {"images": [EXAMPLE_IMAGE, EXAMPLE_IMAGE], "model": "orb", "max_keypoints": 100},
    ),
)
async def extract_batch(request: Request, ops: Operations = Depends(get_operations)) -> FastJSONResponse:
    """One result per image, in request order; all images share the same options and may share a batch."""
    payload, options, plan, deadline = await read_extract_request(request, ops, "images")
    results = await ops.extract_batch(plan, payload.images("images"), deadline)
    return FastJSONResponse({"results": [extract_response(plan.model, f, options) for f in results]})

"""``POST /v1/extract`` and ``POST /v1/extract/batch``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, Request

from ...models import Features
from ..errors import FeatureServeError, InvalidInput, PayloadTooLarge
from ..workers import WorkerPool
from .dependencies import get_pool
from .encoding import FastJSONResponse, encode_features
from .examples import EXAMPLE_IMAGE, request_body
from .payload import Payload, deadline_ms, read_payload
from .schemas import ErrorResponse, ExtractBatchResponse, ExtractOptions, ExtractResponse

router = APIRouter(prefix="/v1", tags=["features"])
ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 413, 415, 422, 429, 503, 504)}


def extract_response(model: str, features: Features, options: ExtractOptions) -> dict:
    """The ``ExtractResponse`` JSON of one image."""
    body = encode_features(features, options.include_descriptors, options.descriptor_encoding, options.descriptor_dtype)
    return {"model": model, "num_keypoints": len(features), **body}


async def read_extract_request(
    request: Request, pool: WorkerPool, image_field: str
) -> tuple[Payload, ExtractOptions, str, Callable[[bytes], Awaitable[Features]]]:
    """Parse an extract request: payload, options, model name, and the call that extracts one image."""
    payload = await read_payload(request, pool.settings)
    options = payload.options(ExtractOptions, exclude={image_field})
    model = pool.worker(options.model).model.name
    request.state.model = model
    pool.check_max_keypoints(options.max_keypoints)
    deadline = pool.deadline_from(deadline_ms(request))
    keypoint_options = options.keypoint_options(pool.settings.default_max_keypoints)
    # Without descriptors only detection runs, which is cheaper for every model.
    run = pool.extract if options.include_descriptors else pool.detect

    def extract_image(image: bytes) -> Awaitable[Features]:
        return run(model, image, keypoint_options, deadline)

    return payload, options, model, extract_image


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
async def extract(request: Request, pool: WorkerPool = Depends(get_pool)) -> FastJSONResponse:
    """Keypoints (x, y pixels), scores and descriptors of one image. Deadline: header ``X-Deadline-Ms``."""
    payload, options, model, extract_image = await read_extract_request(request, pool, "image")
    features = await extract_image(payload.image("image"))
    return FastJSONResponse(extract_response(model, features, options))


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
async def extract_batch(request: Request, pool: WorkerPool = Depends(get_pool)) -> FastJSONResponse:
    """One result per image, in request order; all images share the same options and may share a batch."""
    payload, options, model, extract_image = await read_extract_request(request, pool, "images")
    images = payload.images("images")
    if not images:
        raise InvalidInput("missing images: send at least one as 'images'")
    if len(images) > pool.settings.max_request_images:
        raise PayloadTooLarge(f"{len(images)} images in one request; the limit is {pool.settings.max_request_images}")
    results = await asyncio.gather(*(extract_image(image) for image in images), return_exceptions=True)
    for i, result in enumerate(results):
        if isinstance(result, FeatureServeError):
            result.message = f"images[{i}]: {result.message}"
            raise result
        if isinstance(result, BaseException):
            raise result
    return FastJSONResponse({"results": [extract_response(model, f, options) for f in results]})

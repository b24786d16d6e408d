"""`FeatureServicer`: the gRPC FeatureService over the shared worker pool (same options and errors as REST)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np

from ....arrays import from_array, to_array
from ....models import Features
from ....v1 import features_pb2 as pb
from ....v1 import service_pb2 as service
from ....v1.service_pb2_grpc import FeatureServiceServicer
from ...errors import FeatureServeError, InvalidInput, Overloaded, PayloadTooLarge
from ...workers import PairResult, WorkerPool
from ..schemas import ExtractOptions, MatchOptions
from .convert import (
    feature_set_message,
    features_from_message,
    geometry_message,
    image_input,
    model_card_message,
    parse_options,
)
from .streams import FrameQueue, run_session

logger = logging.getLogger(__name__)
RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
SERVICE_NAME = service.DESCRIPTOR.services_by_name["FeatureService"].full_name


async def abort_with(context: grpc.aio.ServicerContext, error: FeatureServeError) -> None:
    """End the call with ``error``'s gRPC status and message (``retry-after-s`` metadata on overload)."""
    metadata = (("retry-after-s", f"{error.retry_after_s:.3f}"),) if isinstance(error, Overloaded) else ()
    await context.abort(grpc.StatusCode[error.grpc_code], error.message, metadata)


def rpc(
    method: Callable[[FeatureServicer, RequestT, grpc.aio.ServicerContext], Awaitable[ResponseT]],
) -> Callable[[FeatureServicer, RequestT, grpc.aio.ServicerContext], Awaitable[ResponseT]]:
    """Wrap an RPC: readiness check, error mapping, and request metrics by method, model and status."""
    endpoint = f"grpc:{method.__name__}"

    @functools.wraps(method)
    async def handler(self: FeatureServicer, request: RequestT, context: grpc.aio.ServicerContext) -> ResponseT:
        start = time.perf_counter()
        status, model = "OK", "none"
        in_flight = self.pool.metrics.in_flight.labels(endpoint)
        in_flight.inc()
        try:
            self.pool.require_started()
            response = await method(self, request, context)
            model = getattr(response, "model", "") or "none"
            return response
        except FeatureServeError as error:
            status = error.grpc_code
            await abort_with(context, error)
            raise  # abort raises; this line is never reached
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            # A bug, never the client's fault: log it, answer INTERNAL without leaking internals.
            logger.exception("%s failed", endpoint)
            status = "INTERNAL"
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}")
            raise
        finally:
            in_flight.dec()
            metrics = self.pool.metrics
            metrics.requests.labels(endpoint, model, status).inc()
            metrics.request_latency.labels(endpoint, model, status).observe(time.perf_counter() - start)

    return handler


class FeatureServicer(FeatureServiceServicer):
    """ListModels, Extract, ExtractBatch, Describe, Match and StreamFrames on one `WorkerPool`."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.sessions: set[FrameQueue] = set()

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self.pool.deadline_from(None if remaining is None else remaining * 1000.0)

    def _extract_options(self, options: pb.ExtractOptions) -> tuple[ExtractOptions, str]:
        parsed = parse_options(ExtractOptions, options)
        self.pool.check_max_keypoints(parsed.max_keypoints)
        return parsed, self.pool.worker(parsed.model).model.name

    def _extract_call(
        self, options: ExtractOptions, model: str, context: grpc.aio.ServicerContext
    ) -> Callable[[bytes | Any], Awaitable[Features]]:
        run = self.pool.extract if options.include_descriptors else self.pool.detect
        keypoint_options = options.keypoint_options(self.pool.settings.default_max_keypoints)
        deadline = self._deadline(context)
        return lambda image: run(model, image, keypoint_options, deadline)

    def _extract_response(self, model: str, features: Features, options: ExtractOptions) -> service.ExtractResponse:
        return service.ExtractResponse(
            model=model,
            num_keypoints=len(features),
            features=feature_set_message(features, options.include_descriptors, options.descriptor_dtype),
        )

    @rpc
    async def ListModels(
        self, request: service.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> service.ListModelsResponse:
        """The loaded models and their cards."""
        return service.ListModelsResponse(
            default_model=self.pool.settings.default_model,
            models=[model_card_message(card) for card in self.pool.cards()],
        )

    @rpc
    async def Extract(
        self, request: service.ExtractRequest, context: grpc.aio.ServicerContext
    ) -> service.ExtractResponse:
        """Keypoints, scores and descriptors of one image."""
        options, model = self._extract_options(request.options)
        image = image_input(request.image, "image", self.pool.settings)
        features = await self._extract_call(options, model, context)(image)
        return self._extract_response(model, features, options)

    @rpc
    async def ExtractBatch(
        self, request: service.ExtractBatchRequest, context: grpc.aio.ServicerContext
    ) -> service.ExtractBatchResponse:
        """One result per image, in request order; the images may share a batch."""
        options, model = self._extract_options(request.options)
        if not request.images:
            raise InvalidInput("missing images: send at least one")
        limit = self.pool.settings.max_request_images
        if len(request.images) > limit:
            raise PayloadTooLarge(f"{len(request.images)} images in one request; the limit is {limit}")
        images = [image_input(image, f"images[{i}]", self.pool.settings) for i, image in enumerate(request.images)]
        extract = self._extract_call(options, model, context)
        results = await asyncio.gather(*(extract(image) for image in images), return_exceptions=True)
        for i, result in enumerate(results):
            if isinstance(result, FeatureServeError):
                result.message = f"images[{i}]: {result.message}"
            if isinstance(result, BaseException):
                raise result
        return service.ExtractBatchResponse(results=[self._extract_response(model, f, options) for f in results])

    @rpc
    async def Describe(
        self, request: service.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> service.DescribeResponse:
        """Descriptors of one image at the given keypoints."""
        options, model = self._extract_options(request.options)
        image = image_input(request.image, "image", self.pool.settings)
        try:
            keypoints = from_array(request.keypoints, "keypoints", ("float32",), (None, 2))
        except ValueError as error:
            raise InvalidInput(str(error)) from None
        if not np.all(np.isfinite(keypoints)):
            raise InvalidInput("keypoints contains non-finite values")
        self.pool.check_max_keypoints(len(keypoints))
        features = await self.pool.describe(model, image, keypoints.copy(), self._deadline(context))
        return service.DescribeResponse(
            model=model, features=feature_set_message(features, True, options.descriptor_dtype)
        )

    @rpc
    async def Match(self, request: service.MatchRequest, context: grpc.aio.ServicerContext) -> service.MatchResponse:
        """Matches of two images (or feature sets) and their MAGSAC++ verification."""
        options = parse_options(MatchOptions, request.options, request.match_options)
        self.pool.check_max_keypoints(options.max_keypoints)
        pair_options = options.pair_options()
        sides: list[Features | bytes | Any] = []
        for side in ("0", "1"):
            if request.HasField(f"features{side}"):
                sides.append(features_from_message(getattr(request, f"features{side}"), f"features{side}"))
            else:
                sides.append(image_input(getattr(request, f"image{side}"), f"image{side}", self.pool.settings))
        model = ""
        if not all(isinstance(side, Features) for side in sides):
            model = self.pool.worker(options.model).model.name
        keypoint_options = options.keypoint_options(self.pool.settings.default_max_keypoints)
        deadline = self._deadline(context)

        async def side_features(side: Features | Any) -> Features:
            if isinstance(side, Features):
                return side
            return await self.pool.extract(model, side, keypoint_options, deadline)

        features = list(await asyncio.gather(*(side_features(side) for side in sides)))
        result = await self.pool.match(model or None, features[0], features[1], pair_options)
        response = match_response(model, features, result)
        if options.include_features:
            for side, f in zip(("0", "1"), features, strict=True):
                getattr(response, f"features{side}").CopyFrom(
                    feature_set_message(f, options.include_descriptors, options.descriptor_dtype)
                )
        return response

    @rpc
    async def StreamFrames(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        """A camera session (see `run_session`); it reads with ``context.read``, not the iterator."""
        await run_session(self.pool, context, self.sessions)

    def begin_drain(self) -> None:
        """End every open stream once its received frames are answered."""
        for queue in list(self.sessions):
            queue.drain()


def match_response(model: str, features: list[Features], result: PairResult) -> service.MatchResponse:
    """The ``MatchResponse`` of a matched (and maybe verified) pair, without feature sets."""
    response = service.MatchResponse(
        model=model,
        num_keypoints0=len(features[0]),
        num_keypoints1=len(features[1]),
        num_matches=len(result.matches),
        matches=to_array(result.matches.indices, "int32"),
        points0=to_array(result.points0, "float32"),
        points1=to_array(result.points1, "float32"),
        distances=to_array(result.matches.distances, "float32"),
    )
    if result.verification is not None:
        response.inliers.CopyFrom(to_array(result.verification.inliers, "uint8"))
        response.num_inliers = result.verification.num_inliers
        response.geometry.CopyFrom(geometry_message(result.verification, len(result.matches)))
    return response

"""`FeatureServicer`: the gRPC FeatureService over the operations layer (same options and errors as REST)."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from ....arrays import from_array, to_array
from ....models import Features, PairResult
from ....v1 import features_pb2 as pb
from ....v1 import service_pb2 as service
from ....v1.service_pb2_grpc import FeatureServiceServicer
from ...contract import ExtractOptions, MatchOptions
from ...errors import FeatureServeError, InvalidInput, Overloaded
from ...operations import ImageInput, Operations
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


def retry_pushback_ms(retry_after_s: float, time_remaining_s: float | None) -> str:
    """``grpc-retry-pushback-ms`` of an overloaded call: the wait, spread by up to a fifth so that calls refused
    together do not come back together; -1 (do not retry, gRFC A6) when the call's deadline comes first."""
    if time_remaining_s is not None and retry_after_s >= time_remaining_s:
        return "-1"
    return str(round(retry_after_s * random.uniform(1.0, 1.2) * 1000))


async def abort_with(context: grpc.aio.ServicerContext, error: FeatureServeError) -> None:
    """End the call with ``error``'s gRPC status and message; on overload, when to retry as ``retry-after-s`` and
    as ``grpc-retry-pushback-ms``, which gRPC's own retry policy reads."""
    metadata: tuple[tuple[str, str], ...] = ()
    if isinstance(error, Overloaded):
        pushback = retry_pushback_ms(error.retry_after_s, context.time_remaining())
        metadata = (("retry-after-s", f"{error.retry_after_s:.3f}"), ("grpc-retry-pushback-ms", pushback))
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
    """ListModels, Extract, ExtractBatch, Describe, Match and StreamFrames on one `Operations` layer."""

    def __init__(self, ops: Operations) -> None:
        self.ops = ops
        self.pool = ops.pool
        self.sessions: set[FrameQueue] = set()

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self.ops.deadline(None if remaining is None else remaining * 1000.0)

    def _image(self, image: Any, name: str) -> ImageInput:
        return image_input(image, name, self.ops.settings)

    @staticmethod
    def _extract_response(model: str, features: Features, options: ExtractOptions) -> service.ExtractResponse:
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
            default_model=self.ops.settings.default_model,
            models=[model_card_message(card) for card in self.pool.cards()],
        )

    @rpc
    async def Extract(
        self, request: service.ExtractRequest, context: grpc.aio.ServicerContext
    ) -> service.ExtractResponse:
        """Keypoints, scores and descriptors of one image."""
        options = parse_options(ExtractOptions, request.options)
        plan = self.ops.plan_extract(options)
        features = await self.ops.extract(plan, self._image(request.image, "image"), self._deadline(context), "image")
        return self._extract_response(plan.model, features, options)

    @rpc
    async def ExtractBatch(
        self, request: service.ExtractBatchRequest, context: grpc.aio.ServicerContext
    ) -> service.ExtractBatchResponse:
        """One result per image, in request order; the images may share a batch."""
        options = parse_options(ExtractOptions, request.options)
        plan = self.ops.plan_extract(options)
        images = [self._image(image, f"images[{i}]") for i, image in enumerate(request.images)]
        results = await self.ops.extract_batch(plan, images, self._deadline(context))
        return service.ExtractBatchResponse(results=[self._extract_response(plan.model, f, options) for f in results])

    @rpc
    async def Describe(
        self, request: service.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> service.DescribeResponse:
        """Descriptors of one image at the given keypoints."""
        options = parse_options(ExtractOptions, request.options)
        plan = self.ops.plan_extract(options, descriptors=True)
        image = self._image(request.image, "image")
        try:
            keypoints = from_array(request.keypoints, "keypoints", ("float32",), (None, 2))
        except ValueError as error:
            raise InvalidInput(str(error)) from None
        features = await self.ops.describe(plan, image, keypoints, self._deadline(context))
        return service.DescribeResponse(
            model=plan.model, features=feature_set_message(features, True, options.descriptor_dtype)
        )

    @rpc
    async def Match(self, request: service.MatchRequest, context: grpc.aio.ServicerContext) -> service.MatchResponse:
        """Matches of two images (or feature sets) and their MAGSAC++ verification."""
        options = parse_options(MatchOptions, request.options, request.match_options)
        sides: list[ImageInput | Features] = []
        for side in ("0", "1"):
            if request.HasField(f"features{side}"):
                sides.append(features_from_message(getattr(request, f"features{side}"), f"features{side}"))
            else:
                sides.append(self._image(getattr(request, f"image{side}"), f"image{side}"))
        plan = self.ops.plan_match(options, extract=not all(isinstance(side, Features) for side in sides))
        matched = await self.ops.match(plan, sides[0], sides[1], self._deadline(context))
        response = match_response(plan.model or "", matched.features, matched.result)
        if options.include_features:
            for side, f in zip(("0", "1"), matched.features, strict=True):
                getattr(response, f"features{side}").CopyFrom(
                    feature_set_message(f, options.include_descriptors, options.descriptor_dtype)
                )
        return response

    @rpc
    async def MatchBatch(
        self, request: service.MatchBatchRequest, context: grpc.aio.ServicerContext
    ) -> service.MatchBatchResponse:
        """Matches of many index pairs of images (or feature sets), each image extracted once."""
        options = parse_options(MatchOptions, request.options, request.match_options)
        if request.images and request.features:
            raise InvalidInput("send either images or features, not both")
        sides: list[ImageInput | Features] = [
            features_from_message(message, f"features[{i}]") for i, message in enumerate(request.features)
        ] or [self._image(image, f"images[{i}]") for i, image in enumerate(request.images)]
        try:
            pairs = from_array(request.pairs, "pairs", ("int32", "int64"), (None, 2)).tolist()
        except ValueError as error:
            raise InvalidInput(str(error)) from None
        plan = self.ops.plan_match(options, extract=not request.features)
        matched = await self.ops.match_pairs(plan, sides, pairs, self._deadline(context))
        response = service.MatchBatchResponse(
            model=plan.model or "",
            pairs=[
                match_response(plan.model or "", matched.sides(k), result) for k, result in enumerate(matched.results)
            ],
        )
        if options.include_features:
            response.features.extend(
                pb.FeatureSet()
                if f is None
                else feature_set_message(f, options.include_descriptors, options.descriptor_dtype)
                for f in matched.features
            )
        return response

    @rpc
    async def StreamFrames(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        """A camera session (see `run_session`); it reads with ``context.read``, not the iterator."""
        await run_session(self.ops, context, self.sessions)

    def begin_drain(self) -> None:
        """End every open stream once its received frames are answered."""
        for queue in list(self.sessions):
            queue.drain()


def match_response(model: str, features: tuple[Features, Features], result: PairResult) -> service.MatchResponse:
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
    if result.geometry is not None:
        response.inliers.CopyFrom(to_array(result.geometry.inliers, "uint8"))
        response.num_inliers = result.geometry.num_inliers
        response.geometry.CopyFrom(geometry_message(result.geometry))
    return response

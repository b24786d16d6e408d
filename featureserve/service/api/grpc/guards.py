"""`GuardInterceptor`: the gRPC checks made before a FeatureService method runs: API key, decodable request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ...metrics import ServiceMetrics
from ...security import API_KEY_HEADER, MISSING_KEY_MESSAGE, OPEN_GRPC_SERVICES, ApiKeys, presented_key


class Undecodable:
    """What a unary request that is not a valid protobuf message deserialises to (instead of raising)."""

    def __init__(self, type_name: str, error: Exception) -> None:
        self.message = f"the request is not a valid {type_name} message: {error}"


def _tolerant(deserializer: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any] | None:
    # grpcio answers a deserialiser's exception with UNKNOWN, as if the server had a bug; the client sent it.
    if deserializer is None:
        return None
    type_name = method.rsplit("/", 1)[-1] + "Request"

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as error:
            return Undecodable(type_name, error)

    return deserialize


def _unary_guard(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behavior(request, context)

    return guarded


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that ends every call with ``code``."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield  # never reached; makes this an async generator, as streaming handlers are

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    streaming = handler.response_streaming
    return kinds[(handler.request_streaming, streaming)](
        refuse_stream if streaming else refuse,
        request_deserializer=None,  # the request is never looked at
        response_serializer=handler.response_serializer,
    )


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """API keys (metadata ``authorization: Bearer <key>`` or ``x-api-key``; health and reflection need none)
    answered with UNAUTHENTICATED, and requests that are not valid protobuf answered with INVALID_ARGUMENT.

    ``StreamFrames`` reads its messages itself and answers undecodable ones there (`streams.read_message`).
    """

    def __init__(self, keys: ApiKeys, metrics: ServiceMetrics) -> None:
        self.keys = keys
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """The method's handler, wrapped; or one that refuses the call."""
        handler = await continuation(details)
        method = details.method or ""
        service = method.lstrip("/").split("/", 1)[0]
        if handler is None or service in OPEN_GRPC_SERVICES:
            return handler
        if self.keys.enabled:
            metadata = dict(details.invocation_metadata or ())
            if not self.keys.verify(presented_key(metadata.get("authorization"), metadata.get(API_KEY_HEADER))):
                self.metrics.auth_failures.labels("grpc").inc()
                return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, MISSING_KEY_MESSAGE)
        if handler.request_streaming or handler.unary_unary is None:
            return handler
        return handler._replace(
            request_deserializer=_tolerant(handler.request_deserializer, method),
            unary_unary=_unary_guard(handler.unary_unary),
        )

"""gRPC clients, sync (`GrpcClient`) and asyncio (`AsyncGrpcClient`), with the same methods and results.

Example:
    >>> with GrpcClient("127.0.0.1:50051") as client:
    ...     features = client.extract("image.jpg", model="orb", max_keypoints=1000)
    ...     features.keypoints.shape  # (N, 2) float32
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format

from ..arrays import to_array, unpack
from ..v1 import features_pb2 as pb
from ..v1 import service_pb2 as service
from ..v1.service_pb2_grpc import FeatureServiceStub
from .options import DRAW_OPTION, EXTRACT_OPTIONS, MATCH_OPTIONS, check_options, intrinsics_tuple
from .results import (
    DescriptorInfo,
    FeatureSet,
    Frame,
    FrameMatches,
    FrameResult,
    GeometryResult,
    ImageInput,
    MatchInput,
    MatchResult,
    ModelCard,
    ModelList,
    inlier_ratio,
)
from .retries import DEFAULT_MAX_RETRIES, grpc_service_config

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
RETRY_BUFFER_HEADROOM_BYTES = 64 * 1024  # metadata of a call, on top of its message
GRPC_OPTIONS = EXTRACT_OPTIONS | MATCH_OPTIONS
_SERVICE = service.DESCRIPTOR.services_by_name["FeatureService"]
# (service, method) of the calls a retry policy covers: all but the stream, whose frames are answered one by one.
UNARY_METHODS = [
    (_SERVICE.full_name, method.name)
    for method in _SERVICE.methods
    if not (method.client_streaming or method.server_streaming)
]


def image_message(image: ImageInput) -> pb.Image:
    """Encoded bytes, a file path, or a uint8 array (grey ``(H, W)`` or RGB ``(H, W, 3)``) as an ``Image``."""
    if isinstance(image, np.ndarray):
        return pb.Image(pixels=to_array(image, "uint8"))
    if isinstance(image, str | Path):
        image = Path(image).read_bytes()
    return pb.Image(encoded=bytes(image))


def _intrinsics(value: Sequence[float] | np.ndarray) -> pb.Intrinsics:
    fx, fy, cx, cy = intrinsics_tuple(value)
    return pb.Intrinsics(fx=fx, fy=fy, cx=cx, cy=cy)


def split_options(options: dict[str, Any]) -> tuple[pb.ExtractOptions, pb.MatchOptions]:
    """Keyword options -> the two option messages; raises ``TypeError`` on an unknown name."""
    if options.get(DRAW_OPTION):
        raise TypeError("draw is not part of the gRPC API; use RestClient or featureserve.draw.draw_matches")
    options = check_options({k: v for k, v in options.items() if k != DRAW_OPTION}, GRPC_OPTIONS)
    extract = {k: v for k, v in options.items() if k in EXTRACT_OPTIONS}
    match = {k: v for k, v in options.items() if k in MATCH_OPTIONS}
    for name in ("intrinsics0", "intrinsics1"):
        if name in match:
            match[name] = _intrinsics(match[name])
    return pb.ExtractOptions(**extract), pb.MatchOptions(**match)


def feature_set(message: pb.FeatureSet, model: str = "") -> FeatureSet:
    """A ``FeatureSet`` message as numpy arrays."""
    info = message.descriptor
    return FeatureSet(
        keypoints=unpack(message.keypoints),
        scores=unpack(message.scores),
        descriptors=unpack(message.descriptors) if message.HasField("descriptors") else None,
        descriptor={"kind": info.kind, "dim": info.dim, "metric": info.metric},
        image_size=(message.image_size.width, message.image_size.height),
        model=model,
        sizes=unpack(message.sizes) if message.HasField("sizes") else None,
        angles=unpack(message.angles) if message.HasField("angles") else None,
    )


def _optional(message: Any, field: str) -> np.ndarray | None:
    return unpack(getattr(message, field)) if message.HasField(field) else None


def geometry(message: Any, num_matches: int) -> GeometryResult | None:
    """The ``geometry`` field of a match message, if set.

    The inlier ratio is recomputed from the counts, as the service computes it: the message carries it
    as float32, REST as float64, and both clients give the same value.
    """
    if not message.HasField("geometry"):
        return None
    g = message.geometry
    return GeometryResult(
        g.geometry,
        _optional(g, "matrix"),
        g.num_inliers,
        inlier_ratio(g.num_inliers, num_matches),
        _optional(g, "rotation"),
        _optional(g, "translation"),
        g.message,
    )


def match_result(response: service.MatchResponse) -> MatchResult:
    """A ``MatchResponse`` as numpy arrays."""
    inliers = _optional(response, "inliers")
    model = response.model
    return MatchResult(
        model=model,
        matches=unpack(response.matches),
        points0=unpack(response.points0),
        points1=unpack(response.points1),
        distances=unpack(response.distances),
        inliers=None if inliers is None else inliers.astype(bool),
        geometry=geometry(response, response.num_matches),
        features0=feature_set(response.features0, model) if response.HasField("features0") else None,
        features1=feature_set(response.features1, model) if response.HasField("features1") else None,
        num_keypoints0=response.num_keypoints0,
        num_keypoints1=response.num_keypoints1,
    )


def frame_matches(message: service.FrameMatches) -> FrameMatches:
    """A ``FrameMatches`` message as numpy arrays."""
    inliers = _optional(message, "inliers")
    matches = unpack(message.matches)
    return FrameMatches(
        message.sequence, matches, None if inliers is None else inliers.astype(bool), geometry(message, len(matches))
    )


def frame_result(message: service.FrameResult) -> FrameResult:
    """A ``FrameResult`` message as numpy arrays."""
    status = service.FrameStatus.Name(message.status).removeprefix("FRAME_STATUS_").lower()
    error = message.error
    return FrameResult(
        sequence=message.sequence,
        timestamp=message.timestamp,
        status=status,
        error=f"{error.status}: {error.message}" if message.HasField("error") else None,
        features=feature_set(message.features, message.model) if message.HasField("features") else None,
        to_previous=frame_matches(message.to_previous) if message.HasField("to_previous") else None,
        to_keyframe=frame_matches(message.to_keyframe) if message.HasField("to_keyframe") else None,
        keyframe=message.keyframe,
        latency_ms=message.latency_ms,
    )


def stream_requests(frames: Iterable[Frame], session: dict[str, Any]) -> Iterator[service.StreamFramesRequest]:
    """The session message, then one request per frame."""
    yield service.StreamFramesRequest(session=session_message(session))
    for frame in frames:
        yield frame_request(frame)


def session_message(session: dict[str, Any]) -> service.SessionOptions:
    """Session keyword options (extract and match options, ``backpressure``, ``frame_deadline_ms``)."""
    own = {k: session[k] for k in ("backpressure", "frame_deadline_ms") if session.get(k) is not None}
    extract, match = split_options({k: v for k, v in session.items() if k not in own})
    return service.SessionOptions(options=extract, match_options=match, **own)


def frame_request(frame: Frame) -> service.StreamFramesRequest:
    """One frame as a stream message."""
    message = service.Frame(
        sequence=frame.sequence, timestamp=frame.timestamp, image=image_message(frame.image), keyframe=frame.keyframe
    )
    if frame.intrinsics is not None:
        message.intrinsics.CopyFrom(_intrinsics(frame.intrinsics))
    return service.StreamFramesRequest(frame=message)


def extract_request(image: ImageInput, options: dict[str, Any]) -> service.ExtractRequest:
    """An ``ExtractRequest``."""
    return service.ExtractRequest(image=image_message(image), options=split_options(options)[0])


def extract_batch_request(images: Sequence[ImageInput], options: dict[str, Any]) -> service.ExtractBatchRequest:
    """An ``ExtractBatchRequest``."""
    return service.ExtractBatchRequest(images=[image_message(i) for i in images], options=split_options(options)[0])


def describe_request(image: ImageInput, keypoints: np.ndarray, options: dict[str, Any]) -> service.DescribeRequest:
    """A ``DescribeRequest``."""
    return service.DescribeRequest(
        image=image_message(image), keypoints=to_array(keypoints, "float32"), options=split_options(options)[0]
    )


def feature_set_message(features: FeatureSet) -> pb.FeatureSet:
    """A `FeatureSet` as the ``FeatureSet`` message the service accepts."""
    descriptors, dtype = features.wire_descriptors()
    width, height = features.image_size
    info = features.descriptor
    message = pb.FeatureSet(
        keypoints=to_array(np.asarray(features.keypoints).reshape(-1, 2), "float32"),
        scores=to_array(np.asarray(features.scores).reshape(-1), "float32"),
        descriptors=to_array(descriptors, dtype),
        descriptor=pb.DescriptorInfo(kind=info["kind"], dim=info["dim"], metric=info["metric"]),
        image_size=pb.ImageSize(width=width, height=height),
    )
    for field, values in (("sizes", features.sizes), ("angles", features.angles)):
        if values is not None:
            getattr(message, field).CopyFrom(to_array(np.asarray(values).reshape(-1), "float32"))
    return message


def match_request(image0: MatchInput, image1: MatchInput, options: dict[str, Any]) -> service.MatchRequest:
    """A ``MatchRequest`` of two images or feature sets."""
    extract, match = split_options(options)
    request = service.MatchRequest(options=extract, match_options=match)
    for side, value in (("0", image0), ("1", image1)):
        if isinstance(value, FeatureSet):
            getattr(request, f"features{side}").CopyFrom(feature_set_message(value))
        else:
            getattr(request, f"image{side}").CopyFrom(image_message(value))
    return request


def match_pairs_request(
    inputs: Sequence[MatchInput], pairs: Sequence[Sequence[int]], options: dict[str, Any]
) -> service.MatchBatchRequest:
    """A ``MatchBatchRequest``: all images, or all feature sets, and the index pairs."""
    extract, match = split_options(options)
    request = service.MatchBatchRequest(
        pairs=to_array(np.asarray(pairs, np.int32).reshape(-1, 2), "int32"), options=extract, match_options=match
    )
    if all(isinstance(value, FeatureSet) for value in inputs):
        request.features.extend(feature_set_message(value) for value in inputs)  # type: ignore[arg-type]
    elif any(isinstance(value, FeatureSet) for value in inputs):
        raise ValueError("match_pairs takes images or feature sets, not a mix of both")
    else:
        request.images.extend(image_message(value) for value in inputs)  # type: ignore[arg-type]
    return request


def model_list(response: service.ListModelsResponse) -> ModelList:
    """A ``ListModelsResponse`` as `ModelList` (``details`` as a dict; its numbers are floats)."""
    cards = [
        ModelCard(
            name=card.name,
            version=card.version,
            method=card.method,
            descriptor=DescriptorInfo(card.descriptor.kind, card.descriptor.dim, card.descriptor.metric),
            keypoints=card.keypoints,
            licence=card.licence,
            description=card.description,
            details=json_format.MessageToDict(card.details),
        )
        for card in response.models
    ]
    return ModelList(response.default_model, cards)


def call_metadata(api_key: str | None) -> tuple[tuple[str, str], ...] | None:
    """The metadata every call carries: the API key, when the server needs one."""
    return None if api_key is None else (("authorization", f"Bearer {api_key}"),)


def credentials(tls: bool, root_certificates: bytes | None) -> grpc.ChannelCredentials | None:
    """TLS credentials (``root_certificates``: PEM CA bundle; None: the system's), or None for plaintext."""
    if not tls and root_certificates is None:
        return None
    return grpc.ssl_channel_credentials(root_certificates=root_certificates)


def channel_options(max_message_bytes: int, max_retries: int) -> list[tuple[str, int | str]]:
    """Client channel arguments: message limits matching the server's default, and the retry policy of the
    unary calls (`featureserve.client.retries`), whose buffer holds a request of the largest size and its metadata
    (a call that outgrows it is not retried)."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.service_config", grpc_service_config(UNARY_METHODS, max_retries)),
        ("grpc.per_rpc_retry_buffer_size", max_message_bytes + RETRY_BUFFER_HEADROOM_BYTES),
    ]


def open_channel(
    module: Any, target: str, max_message_bytes: int, max_retries: int, tls: bool, root_certificates: bytes | None
) -> Any:
    """A channel from ``module`` (``grpc`` for blocking, ``grpc.aio`` for asyncio), TLS when asked for."""
    options = channel_options(max_message_bytes, max_retries)
    secure = credentials(tls, root_certificates)
    if secure is None:
        return module.insecure_channel(target, options=options)
    return module.secure_channel(target, secure, options=options)


class GrpcClient:
    """Blocking client. Options are keyword arguments named as in REST (``model``, ``max_keypoints``, ...).

    ``api_key`` is sent as ``authorization: Bearer <key>`` metadata; ``tls=True`` (or ``root_certificates``,
    PEM bytes of the CA that signed the server's certificate) opens a TLS channel. ``max_retries`` bounds the
    resends of a unary call refused with RESOURCE_EXHAUSTED (0: none; gRPC allows at most 4).
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        self.channel = open_channel(grpc, target, max_message_bytes, max_retries, tls, root_certificates)
        self.stub = FeatureServiceStub(self.channel)
        self.metadata = call_metadata(api_key)

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def list_models(self, timeout: float | None = None) -> ModelList:
        """The loaded models and their cards."""
        return model_list(self.stub.ListModels(service.ListModelsRequest(), timeout=timeout, metadata=self.metadata))

    def extract(self, image: ImageInput, timeout: float | None = None, **options: Any) -> FeatureSet:
        """Features of one image."""
        response = self.stub.Extract(extract_request(image, options), timeout=timeout, metadata=self.metadata)
        return feature_set(response.features, response.model)

    def extract_batch(
        self, images: Sequence[ImageInput], timeout: float | None = None, **options: Any
    ) -> list[FeatureSet]:
        """Features of several images, in order."""
        response = self.stub.ExtractBatch(
            extract_batch_request(images, options), timeout=timeout, metadata=self.metadata
        )
        return [feature_set(r.features, r.model) for r in response.results]

    def describe(
        self, image: ImageInput, keypoints: np.ndarray, timeout: float | None = None, **options: Any
    ) -> FeatureSet:
        """Descriptors of one image at ``(N, 2)`` pixel keypoints."""
        response = self.stub.Describe(
            describe_request(image, keypoints, options), timeout=timeout, metadata=self.metadata
        )
        return feature_set(response.features, response.model)

    def match(
        self, image0: MatchInput, image1: MatchInput, timeout: float | None = None, **options: Any
    ) -> MatchResult:
        """Matches of two images (or feature sets from `extract`) and, with ``geometry=...``, their verification."""
        return match_result(
            self.stub.Match(match_request(image0, image1, options), timeout=timeout, metadata=self.metadata)
        )

    def match_pairs(
        self, inputs: Sequence[MatchInput], pairs: Sequence[Sequence[int]], timeout: float | None = None, **options: Any
    ) -> list[MatchResult]:
        """One `MatchResult` per index pair ``(i, j)`` of ``inputs`` (images or feature sets), each extracted once."""
        request = match_pairs_request(inputs, pairs, options)
        response = self.stub.MatchBatch(request, timeout=timeout, metadata=self.metadata)
        return [match_result(pair) for pair in response.pairs]

    def stream_frames(self, frames: Iterable[Frame], **session: Any) -> Iterator[FrameResult]:
        """One result per frame, in order; ``session`` takes extract/match options, ``backpressure``, ..."""
        for message in self.stub.StreamFrames(stream_requests(frames, session), metadata=self.metadata):
            yield frame_result(message)


class AsyncGrpcClient:
    """asyncio client with the same methods and constructor as `GrpcClient`, as coroutines."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        self.channel = open_channel(grpc.aio, target, max_message_bytes, max_retries, tls, root_certificates)
        self.stub = FeatureServiceStub(self.channel)
        self.metadata = call_metadata(api_key)

    async def __aenter__(self) -> AsyncGrpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()

    async def list_models(self, timeout: float | None = None) -> ModelList:
        """The loaded models and their cards."""
        return model_list(
            await self.stub.ListModels(service.ListModelsRequest(), timeout=timeout, metadata=self.metadata)
        )

    async def extract(self, image: ImageInput, timeout: float | None = None, **options: Any) -> FeatureSet:
        """Features of one image."""
        response = await self.stub.Extract(extract_request(image, options), timeout=timeout, metadata=self.metadata)
        return feature_set(response.features, response.model)

    async def extract_batch(
        self, images: Sequence[ImageInput], timeout: float | None = None, **options: Any
    ) -> list[FeatureSet]:
        """Features of several images, in order."""
        response = await self.stub.ExtractBatch(
            extract_batch_request(images, options), timeout=timeout, metadata=self.metadata
        )
        return [feature_set(r.features, r.model) for r in response.results]

    async def describe(
        self, image: ImageInput, keypoints: np.ndarray, timeout: float | None = None, **options: Any
    ) -> FeatureSet:
        """Descriptors of one image at ``(N, 2)`` pixel keypoints."""
        response = await self.stub.Describe(
            describe_request(image, keypoints, options), timeout=timeout, metadata=self.metadata
        )
        return feature_set(response.features, response.model)

    async def match(
        self, image0: MatchInput, image1: MatchInput, timeout: float | None = None, **options: Any
    ) -> MatchResult:
        """Matches of two images (or feature sets from `extract`) and, with ``geometry=...``, their verification."""
        return match_result(
            await self.stub.Match(match_request(image0, image1, options), timeout=timeout, metadata=self.metadata)
        )

    async def match_pairs(
        self, inputs: Sequence[MatchInput], pairs: Sequence[Sequence[int]], timeout: float | None = None, **options: Any
    ) -> list[MatchResult]:
        """One `MatchResult` per index pair ``(i, j)`` of ``inputs`` (images or feature sets), each extracted once."""
        request = match_pairs_request(inputs, pairs, options)
        response = await self.stub.MatchBatch(request, timeout=timeout, metadata=self.metadata)
        return [match_result(pair) for pair in response.pairs]

    async def stream_frames(
        self, frames: Iterable[Frame] | AsyncIterable[Frame], **session: Any
    ) -> AsyncIterator[FrameResult]:
        """One result per frame, in order (``frames`` may be an async iterable)."""

        async def requests() -> AsyncIterator[service.StreamFramesRequest]:
            yield service.StreamFramesRequest(session=session_message(session))
            if isinstance(frames, AsyncIterable):
                async for frame in frames:
                    yield frame_request(frame)
            else:
                for frame in frames:
                    yield frame_request(frame)

        async for message in self.stub.StreamFrames(requests(), metadata=self.metadata):
            yield frame_result(message)

"""Python clients of featureserve, REST and gRPC, sync and asyncio; results come back as numpy arrays.

`RestClient` and `GrpcClient` (and `AsyncRestClient`, `AsyncGrpcClient`) share their methods
(``list_models``, ``extract``, ``extract_batch``, ``match``, ``match_pairs``), keyword options and result types, so
switching transports is changing the constructor. gRPC adds ``describe`` and ``stream_frames``; REST adds
``draw=True`` on ``match``. ``featureserve.local.LocalClient`` runs the models in process.
"""

from .grpc_client import AsyncGrpcClient, GrpcClient
from .rest_client import AsyncRestClient, RestClient, RestError
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
)

__all__ = [
    "AsyncGrpcClient",
    "AsyncRestClient",
    "DescriptorInfo",
    "FeatureSet",
    "Frame",
    "FrameMatches",
    "FrameResult",
    "GeometryResult",
    "GrpcClient",
    "ImageInput",
    "MatchInput",
    "MatchResult",
    "ModelCard",
    "ModelList",
    "RestClient",
    "RestError",
]

"""Python clients of featureserve; results come back as numpy arrays."""

from .grpc_client import (
    AsyncGrpcClient,
    FeatureSet,
    Frame,
    FrameMatches,
    FrameResult,
    Geometry,
    GrpcClient,
    MatchResult,
)

__all__ = [
    "AsyncGrpcClient",
    "FeatureSet",
    "Frame",
    "FrameMatches",
    "FrameResult",
    "Geometry",
    "GrpcClient",
    "MatchResult",
]

"""The worker pool: decoding, bounded queues, dynamic batching, admission control, drain."""

from .batcher import BatchPolicy, Job, ModelWorker
from .decoding import DecodeLimits, decode_image
from .pairing import MatchOptions, PairResult, match_pair
from .pool import WorkerPool

__all__ = [
    "BatchPolicy",
    "DecodeLimits",
    "Job",
    "MatchOptions",
    "ModelWorker",
    "PairResult",
    "WorkerPool",
    "decode_image",
    "match_pair",
]

"""The worker pool: decoding, bounded queues, dynamic batching, admission control, drain."""

from .batcher import BatchPolicy, Job, ModelWorker
from .decoding import DecodeLimits, decode_image
from .pool import WorkerPool

__all__ = ["BatchPolicy", "DecodeLimits", "Job", "ModelWorker", "WorkerPool", "decode_image"]

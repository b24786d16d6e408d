"""Shared state handed to the routers through FastAPI dependencies."""

from __future__ import annotations

from fastapi import Request

from ..errors import InvalidOption, Unavailable
from ..workers import WorkerPool


def get_pool(request: Request) -> WorkerPool:
    """The app's worker pool; 503 until it is ready to take work."""
    pool: WorkerPool = request.app.state.pool
    if not pool.workers:
        raise Unavailable("the service is still loading its models")
    return pool


def check_max_keypoints(pool: WorkerPool, max_keypoints: int | None) -> None:
    """Refuse a ``max_keypoints`` above the configured limit."""
    limit = pool.settings.max_keypoints_limit
    if max_keypoints is not None and max_keypoints > limit:
        raise InvalidOption(f"max_keypoints: must be at most {limit}, got {max_keypoints}")

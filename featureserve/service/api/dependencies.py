"""Shared state handed to the routers through FastAPI dependencies."""

from __future__ import annotations

from fastapi import Request

from ..workers import WorkerPool


def get_pool(request: Request) -> WorkerPool:
    """The app's worker pool; 503 until it is ready to take work."""
    pool: WorkerPool = request.app.state.pool
    pool.require_started()
    return pool

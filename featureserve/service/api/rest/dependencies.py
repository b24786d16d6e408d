"""Shared state handed to the routers through FastAPI dependencies.

They are coroutines although they never wait: FastAPI runs a plain function dependency in its thread pool, a
hand-off to another thread and back for every request.
"""

from __future__ import annotations

from fastapi import Request

from ...operations import Operations
from ...workers import WorkerPool


async def get_pool(request: Request) -> WorkerPool:
    """The app's worker pool; 503 until it is ready to take work."""
    pool: WorkerPool = request.app.state.pool
    pool.require_started()
    return pool


async def get_operations(request: Request) -> Operations:
    """The app's operations layer; 503 until its pool is ready to take work."""
    operations: Operations = request.app.state.operations
    operations.pool.require_started()
    return operations

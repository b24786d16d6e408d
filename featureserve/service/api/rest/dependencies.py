"""Shared state handed to the routers through FastAPI dependencies."""

from __future__ import annotations

from fastapi import Request

from ...operations import Operations
from ...workers import WorkerPool


def get_pool(request: Request) -> WorkerPool:
    """The app's worker pool; 503 until it is ready to take work."""
    pool: WorkerPool = request.app.state.pool
    pool.require_started()
    return pool


def get_operations(request: Request) -> Operations:
    """The app's operations layer; 503 until its pool is ready to take work."""
    operations: Operations = request.app.state.operations
    operations.pool.require_started()
    return operations

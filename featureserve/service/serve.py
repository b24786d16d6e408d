"""The ``serve`` entry point: one process, the worker pool and the REST server, drained on SIGTERM."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import signal
import sys
from types import FrameType

import uvicorn

from .api import create_app
from .metrics import ServiceMetrics
from .settings import Settings
from .workers import WorkerPool


class DrainingServer(uvicorn.Server):
    """Uvicorn server that turns readiness off on SIGTERM/SIGINT, finishes in-flight work and exits 0."""

    def __init__(self, config: uvicorn.Config, pool: WorkerPool) -> None:
        super().__init__(config)
        self.pool = pool

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Begin the drain; uvicorn then stops accepting and waits for in-flight requests."""
        self.pool.begin_drain()
        # Uvicorn's own handler would re-raise the signal after shutdown; a finished drain exits 0.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


# glibc mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8


def keep_freed_memory() -> None:
    """Make glibc reuse freed memory instead of returning it to the OS (Linux only; no-op elsewhere).

    By default glibc serves large allocations with a fresh mmap and unmaps them on free, so every tensor
    batch pays page faults for its activations: on the 2-core CPU here tiny-cnn's in-process batch of 8 ran
    at 5.7 images/s with the defaults and 18.9 images/s with the same thresholds set through
    MALLOC_ARENA_MAX / MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ (benchmarks/results/throughput*.md).
    """
    if not sys.platform.startswith("linux"):
        return
    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    if hasattr(libc, "mallopt"):
        # One arena: a thread's own arena grows in 64 MiB heaps and mmaps anything larger whatever the
        # threshold, and the models run on worker threads.
        libc.mallopt(M_ARENA_MAX, 1)
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)


def serve(settings: Settings) -> None:
    """Load the models, serve REST until SIGTERM, then drain."""
    keep_freed_memory()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pool = WorkerPool(settings, ServiceMetrics())
    config = uvicorn.Config(
        create_app(pool),
        host=settings.host,
        port=settings.rest_port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
        lifespan="on",
        access_log=False,
    )
    asyncio.run(DrainingServer(config, pool).serve())

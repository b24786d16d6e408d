"""The ``serve`` entry point: one process, the worker pool and the REST server, drained on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
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


# glibc malloc settings for the serving process: one arena, no mmap for large blocks, no trimming, so
# tensor batches reuse freed memory instead of paying page faults on every call. On the 2-core CPU here
# tiny-cnn's REST throughput at concurrency 16 went from 6.8 to 16.8 images/s with them
# (benchmarks/results/throughput*.md). `featureserve serve` sets any that are unset and restarts itself.
MALLOC_ENVIRONMENT = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 31),
}


def restart_with_malloc_environment(arguments: list[str]) -> None:
    """Exec ``python *arguments`` (same PID) with any unset `MALLOC_ENVIRONMENT` entry set; Linux only.

    glibc reads these only at process start. Returns without restarting when all are already set.
    """
    missing = {k: v for k, v in MALLOC_ENVIRONMENT.items() if k not in os.environ}
    if missing and sys.platform.startswith("linux"):
        os.environ.update(missing)
        os.execv(sys.executable, [sys.executable, *arguments])


def serve(settings: Settings) -> None:
    """Load the models, serve REST until SIGTERM, then drain."""
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

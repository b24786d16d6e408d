"""The ``serve`` entry point: one process, one worker pool, the REST and gRPC servers, drained on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType

import uvicorn

from .api.grpc import start_grpc_server
from .api.rest import create_app
from .metrics import ServiceMetrics
from .settings import Settings
from .workers import WorkerPool

logger = logging.getLogger(__name__)


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
# tensor batches reuse freed memory instead of paying page faults on every call (docs/benchmarks.md measures
# the difference). `featureserve serve` sets any that are unset and restarts itself.
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


async def serve_async(settings: Settings) -> int:
    """Serve REST (and gRPC) on one worker pool until SIGTERM, then drain both; the exit code."""
    pool = WorkerPool(settings, ServiceMetrics())
    config = uvicorn.Config(
        create_app(pool),
        host=settings.host,
        port=settings.rest_port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
        # The pool starts here, not in the app's lifespan: it outlives the REST server while gRPC drains.
        lifespan="off",
        access_log=False,
        # HTTPS when a certificate is configured (the same one gRPC uses).
        ssl_certfile=settings.tls_cert_file,
        ssl_keyfile=settings.tls_key_file,
    )
    rest = DrainingServer(config, pool)
    grpc_server = await start_grpc_server(pool) if settings.grpc_enabled else None
    if grpc_server is not None:
        transport = "TLS" if settings.tls_enabled else "plaintext"
        logger.info("gRPC listening on %s:%d (%s)", settings.host, settings.grpc_port, transport)
    if settings.all_api_keys():
        logger.info("API keys required (REST and gRPC; health, readiness, metrics and API descriptions open)")
    rest_task = asyncio.create_task(rest.serve())
    start_task = asyncio.create_task(pool.start())

    def stop_if_start_failed(task: asyncio.Task[None]) -> None:
        # A model that cannot load ends the process (exit code 1) instead of leaving it never ready.
        if not task.cancelled() and task.exception() is not None:
            rest.should_exit = True

    start_task.add_done_callback(stop_if_start_failed)
    await rest_task
    if grpc_server is not None:
        # New calls are refused at once; calls in flight get the drain timeout, and streams end after
        # answering the frames they sent (UNAVAILABLE tells their clients to reconnect).
        await grpc_server.stop(settings.drain_timeout_s)
    if not start_task.done():
        start_task.cancel()
    failed = not start_task.cancelled() and start_task.exception() is not None
    if failed:
        logger.error("start-up failed", exc_info=start_task.exception())
    await pool.stop()
    log_final_counts(pool.metrics)
    return 1 if failed or not rest.started else 0


def log_final_counts(metrics: ServiceMetrics) -> None:
    """One line at exit: requests answered over the process's life, and any still in flight (0 after a drain).

    Tests and ``benchmarks/reliability/overload.py`` compare it with what their clients received, which shows that a
    call a client saw cancelled during shutdown never reached the service.
    """
    answered = {"rest": 0, "grpc": 0}
    for family in metrics.requests.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                endpoint = sample.labels["endpoint"]
                if endpoint.startswith("grpc:"):
                    answered["grpc"] += int(sample.value)
                elif endpoint.startswith("/v1/"):
                    answered["rest"] += int(sample.value)
    in_flight = sum(int(sample.value) for family in metrics.in_flight.collect() for sample in family.samples)
    logger.info(
        "stopped: answered %d REST /v1 requests and %d gRPC calls; %d still in flight",
        answered["rest"],
        answered["grpc"],
        in_flight,
    )


def serve(settings: Settings) -> int:
    """Load the models, serve REST and gRPC until SIGTERM, then drain; the exit code."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # uvloop when it is installed (a dependency on Linux and macOS), as `uvicorn.run` would choose it: `asyncio.run`
    # alone keeps the standard loop, whose thread wake-ups and socket I/O cost more per request.
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(serve_async(settings))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop

"""The FastAPI application: routers, the error table, request metrics, and the pool's lifespan."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .... import __version__
from ...contract import describe_validation_error
from ...errors import FeatureServeError
from ...metrics import ServiceMetrics
from ...operations import Operations
from ...workers import WorkerPool
from . import catalog, extract, health, match, web
from .docs import add_docs
from .encoding import error_response
from .guards import RequestGuard

HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _service_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, FeatureServeError)
    return error_response(error)


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    message = describe_validation_error(error)
    return JSONResponse({"error": {"code": "invalid_option", "message": message, "details": {}}}, status_code=422)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    code = HTTP_ERROR_CODES.get(error.status_code, "http_error")
    body = {"error": {"code": code, "message": str(error.detail), "details": {"path": request.url.path}}}
    return JSONResponse(body, status_code=error.status_code, headers=getattr(error, "headers", None))


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    # A bug, never the client's fault: answer in the error shape without leaking internals.
    body = {"error": {"code": "internal", "message": f"internal error: {type(error).__name__}", "details": {}}}
    return JSONResponse(body, status_code=500)


class RequestMetrics:
    """ASGI middleware counting requests and latency by endpoint, model and status."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time the request and record it under its route template."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        path = scope["path"]
        endpoint = "/v1/models/{name}" if path.startswith("/v1/models/") else path
        in_flight = self.metrics.in_flight.labels(endpoint if path.startswith("/v1/") else "other")

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        in_flight.inc()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            in_flight.dec()
            if not path.startswith(("/v1/", "/healthz", "/readyz", "/metrics")):
                endpoint = "other"
            model = scope.get("state", {}).get("model", "none")
            self.metrics.requests.labels(endpoint, model, str(status)).inc()
            self.metrics.request_latency.labels(endpoint, model, str(status)).observe(time.perf_counter() - start)


def create_app(pool: WorkerPool) -> FastAPI:
    """The REST application around ``pool``; the pool starts and stops with the app's lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not pool.workers:
            await pool.start()
        yield
        await pool.stop()

    app = FastAPI(
        title="featureserve",
        version=__version__,
        summary="Local features and verified matches: keypoints, descriptors, matching, MAGSAC++ verification.",
        description=(
            "Keypoints are (x, y) pixels of the image as sent, pixel centres at integers. Errors share one shape: "
            '`{"error": {"code", "message", "details"}}`. A request deadline may be set with the '
            "`X-Deadline-Ms` header (milliseconds)."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    add_docs(app)
    app.state.pool = pool
    app.state.operations = Operations(pool)
    app.state.metrics = pool.metrics
    for router in (extract.router, match.router, catalog.router, health.router, web.router):
        app.include_router(router)
    app.add_exception_handler(FeatureServeError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    # Added first, so it runs inside RequestMetrics: refused requests are counted too.
    app.add_middleware(RequestGuard, settings=pool.settings, metrics=pool.metrics)
    app.add_middleware(RequestMetrics, metrics=pool.metrics)
    return app

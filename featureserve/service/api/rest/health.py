"""``/healthz`` (alive), ``/readyz`` (ready for traffic) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    """Always ``{"status": "ok"}`` while the process serves HTTP."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: models loaded and warmed up, not draining")
async def readyz(request: Request) -> JSONResponse:
    """200 when ready; 503 while warming up or draining."""
    pool = request.app.state.pool
    if pool.ready:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "draining" if pool.draining else "warming_up"}, status_code=503)


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    """Metrics in the Prometheus text format."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

"""``GET /v1/models`` and ``GET /v1/models/{name}``: the loaded models and their cards."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from ...workers import WorkerPool
from .dependencies import get_pool

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", summary="List the loaded models with their model cards")
async def list_models(pool: WorkerPool = Depends(get_pool)) -> dict[str, Any]:
    """Every loaded model's card, and which one is the default."""
    return {"default_model": pool.settings.default_model, "models": [card.to_dict() for card in pool.cards()]}


@router.get("/models/{name}", summary="One model's card")
async def get_model(name: str, pool: WorkerPool = Depends(get_pool)) -> dict[str, Any]:
    """The card of model ``name``; 404 when it is not loaded."""
    return pool.worker(name).model.card.to_dict()

"""``GET /``: a small web page to try matching: drop two images, pick a model and geometry, see the matches."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["web page"])
PAGE = Path(__file__).parent / "static" / "index.html"


@cache
def page() -> str:
    """The page: one static HTML file with its CSS and JS inline (no CDN, no build step)."""
    return PAGE.read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    """The matching page; it calls ``GET /v1/models`` and ``POST /v1/match`` with ``draw``."""
    return HTMLResponse(page())

"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) from assets installed with the package, so both render offline.

FastAPI's own pages load their JavaScript and CSS from a CDN, which leaves them blank on a closed network. The
assets here come from the ``fastapi-offline`` wheel (Swagger UI 5, Apache-2.0; ReDoc 2, MIT).
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PATH = "/docs-assets"
ASSETS = files("fastapi_offline") / "static"
# The pages may fetch only from this server: ReDoc's bundle links its footer logo from a CDN, which a closed
# network cannot reach and an open one need not be told about.
SAME_ORIGIN = {"Content-Security-Policy": "img-src 'self' data:; connect-src 'self'; font-src 'self' data:"}


def _same_origin(page: HTMLResponse) -> HTMLResponse:
    page.headers.update(SAME_ORIGIN)
    return page


def add_docs(app: FastAPI) -> None:
    """Serve the assets under `ASSETS_PATH` and the two pages; ``app`` must be built with ``docs_url=None``."""
    app.mount(ASSETS_PATH, StaticFiles(directory=str(ASSETS)), name="docs-assets")
    title = f"{app.title} {app.version}"
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return _same_origin(
            get_swagger_ui_html(
                openapi_url=openapi_url,
                title=title,
                swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
                swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
                swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
                oauth2_redirect_url="/docs/oauth2-redirect",
            )
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return _same_origin(
            get_redoc_html(
                openapi_url=openapi_url,
                title=title,
                redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
                redoc_favicon_url=f"{ASSETS_PATH}/favicon.png",
                with_google_fonts=False,
            )
        )

"""The REST API (FastAPI): thin routers over the operations layer."""

from .app import create_app

__all__ = ["create_app"]

"""The REST API (FastAPI): thin routers over the worker pool."""

from .app import create_app

__all__ = ["create_app"]

"""`RequestGuard`: the REST checks made before any route runs: API key, requests at once, body size."""

from __future__ import annotations

from starlette.formparsers import MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...errors import FeatureServeError, Overloaded, PayloadTooLarge, Unauthenticated
from ...metrics import ServiceMetrics
from ...security import API_KEY_HEADER, MISSING_KEY_MESSAGE, OPEN_REST_PATHS, OPEN_REST_PREFIXES, ApiKeys, presented_key
from ...settings import Settings
from .encoding import error_response

# Probes and scrapers must get through while the service is saturated, or it would be restarted for it.
OPERATIONS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class RequestGuard:
    """ASGI middleware in front of every route (inside the request metrics, so refusals are counted).

    1. API key, when keys are configured: 401 ``unauthenticated`` unless the request carries one
       (`presented_key`); the paths in `OPEN_REST_PATHS` (and under `OPEN_REST_PREFIXES`) need none. Nothing
       of the body is read first.
    2. At most ``max_in_flight_requests`` requests at once (operations paths excepted): 429 ``overloaded``.
       This bounds the request bodies held in memory, which the per-model queues cannot: a body is read
       before its model is known.
    3. At most ``max_request_bytes`` of body: a larger ``Content-Length`` is refused with 413 at once, and a
       body without one (chunked) fails with 413 as soon as it has sent more.

    It also keeps multipart uploads in memory: Starlette spools a file part over 1 MiB to a temporary file,
    and the routes read every part into memory anyway, so no request data is ever written to disk.
    """

    def __init__(self, app: ASGIApp, settings: Settings, metrics: ServiceMetrics) -> None:
        MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, settings.max_request_bytes + 1)
        self.app = app
        self.keys = ApiKeys.from_settings(settings)
        self.metrics = metrics
        self.max_in_flight = settings.max_in_flight_requests
        self.max_body = settings.max_request_bytes
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse the request, or pass it on with its body counted."""
        if scope["type"] != "http" or scope["path"] in OPERATIONS_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        path = scope["path"]
        if self.keys.enabled and path not in OPEN_REST_PATHS and not path.startswith(OPEN_REST_PREFIXES):
            key = presented_key(headers.get(b"authorization"), headers.get(API_KEY_HEADER.encode()))
            if not self.keys.verify(key):
                self.metrics.auth_failures.labels("rest").inc()
                await _respond(Unauthenticated(MISSING_KEY_MESSAGE), scope, receive, send)
                return
        if self.in_flight >= self.max_in_flight:
            error = Overloaded(
                f"{self.in_flight} requests are in progress (the limit is {self.max_in_flight})", retry_after_s=1.0
            )
            await _respond(error, scope, receive, send)
            return
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            await _respond(self._too_large(int(length)), scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, self._counted(receive), send)
        finally:
            self.in_flight -= 1

    def _too_large(self, size: int | None) -> PayloadTooLarge:
        told = f"is {size} bytes" if size is not None else "is larger"
        return PayloadTooLarge(
            f"request body {told}; the limit is {self.max_body} (FEATURESERVE_MAX_REQUEST_BYTES)",
            {"max_request_bytes": self.max_body},
        )

    def _counted(self, receive: Receive) -> Receive:
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    # Raised inside the route's body read, so the app answers it as any other 413.
                    raise self._too_large(None)
            return message

        return counted


async def _respond(error: FeatureServeError, scope: Scope, receive: Receive, send: Send) -> None:
    response = error_response(error)
    if isinstance(error, Unauthenticated):
        response.headers["WWW-Authenticate"] = "Bearer"
    await response(scope, receive, send)

"""The service's exception hierarchy; each class maps to one HTTP status and one gRPC code."""

from __future__ import annotations

from typing import Any


class FeatureServeError(Exception):
    """Base error: ``code`` is the stable machine-readable name sent to clients."""

    http_status = 500
    grpc_code = "INTERNAL"
    code = "internal"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        """The one error shape: ``{"error": {"code", "message", "details"}}``."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class InvalidInput(FeatureServeError):
    """The request's content cannot be used (not an image, truncated, malformed arrays)."""

    http_status, grpc_code, code = 400, "INVALID_ARGUMENT", "invalid_input"


class InvalidOption(FeatureServeError):
    """An option is out of range or of the wrong type."""

    http_status, grpc_code, code = 422, "INVALID_ARGUMENT", "invalid_option"


class PayloadTooLarge(FeatureServeError):
    """Too many bytes, pixels or images."""

    http_status, grpc_code, code = 413, "INVALID_ARGUMENT", "payload_too_large"


class UnsupportedMediaType(FeatureServeError):
    """The content type is neither JSON nor multipart form data."""

    http_status, grpc_code, code = 415, "INVALID_ARGUMENT", "unsupported_media_type"


class ModelNotFound(FeatureServeError):
    """No loaded model has that name."""

    http_status, grpc_code, code = 404, "NOT_FOUND", "model_not_found"


class Overloaded(FeatureServeError):
    """The model's queue is full or cannot finish before the deadline; retry after ``retry_after_s``."""

    http_status, grpc_code, code = 429, "RESOURCE_EXHAUSTED", "overloaded"

    def __init__(self, message: str, retry_after_s: float, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, {**(details or {}), "retry_after_s": retry_after_s})
        self.retry_after_s = retry_after_s


class DeadlineExceeded(FeatureServeError):
    """The request's deadline passed before its work was done."""

    http_status, grpc_code, code = 504, "DEADLINE_EXCEEDED", "deadline_exceeded"


class Unavailable(FeatureServeError):
    """The service is warming up or draining, or the model's worker failed while running the request."""

    http_status, grpc_code, code = 503, "UNAVAILABLE", "unavailable"


class Unauthenticated(FeatureServeError):
    """API keys are configured and the request carries none of them."""

    http_status, grpc_code, code = 401, "UNAUTHENTICATED", "unauthenticated"

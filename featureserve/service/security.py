"""API keys, shared by REST and gRPC: where a request carries its key and how it is compared."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from .settings import Settings

# Requests to these answer without a key: probes and scrapers carry none, and the API's description is
# public (it is the repository's proto/ and the OpenAPI schema), so hiding it protects nothing.
OPEN_REST_PATHS = frozenset(
    {"/", "/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
# ... and everything under these (the /docs pages' scripts and styles).
OPEN_REST_PREFIXES = ("/docs-assets/",)
OPEN_GRPC_SERVICES = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"})
API_KEY_HEADER = "x-api-key"
MISSING_KEY_MESSAGE = (
    "this server requires an API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>' "
    "(gRPC: metadata 'authorization: Bearer <key>' or 'x-api-key: <key>')"
)


def _bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(_bytes(key)).digest()


class ApiKeys:
    """The accepted keys, kept as SHA-256 digests and compared in constant time.

    Every configured key is compared (no early exit), each comparison is `hmac.compare_digest` on two
    32-byte digests, so neither the time taken nor its variation with the presented key's length says
    which key, or how much of one, matched.

    Example:
        >>> keys = ApiKeys(["0123456789abcdef"])
        >>> keys.verify("0123456789abcdef"), keys.verify("0123456789abcdeX"), keys.verify(None)
        (True, False, False)
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [_digest(key) for key in keys]

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        """The keys of ``FEATURESERVE_API_KEYS`` and ``FEATURESERVE_API_KEYS_FILE``."""
        return cls(settings.all_api_keys())

    @property
    def enabled(self) -> bool:
        """Whether any key is configured (no keys: every request is let in)."""
        return bool(self._digests)

    def verify(self, presented: str | bytes | None) -> bool:
        """Whether ``presented`` is one of the keys."""
        if presented is None:
            return False
        digest = _digest(presented)
        matched = False
        for accepted in self._digests:
            matched |= hmac.compare_digest(digest, accepted)
        return matched


def presented_key(authorization: str | bytes | None, api_key: str | bytes | None) -> bytes | None:
    """The key a request carries: ``Authorization: Bearer <key>`` first, else ``X-API-Key: <key>``."""
    if authorization is not None:
        scheme, _, token = _bytes(authorization).strip().partition(b" ")
        if scheme.lower() == b"bearer" and token.strip():
            return token.strip()
    if api_key is not None:
        return _bytes(api_key).strip()
    return None

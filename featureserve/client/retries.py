"""When the Python clients retry: only answers in which the service says "not now, later".

That is 429 over REST and RESOURCE_EXHAUSTED over gRPC: the model's queue was full, or its backlog could not
finish in time, so the request was refused before any work began, and the answer says when to come back
(``Retry-After``; ``grpc-retry-pushback-ms``). Every featureserve call is a pure computation, so sending it again
is safe. A RESOURCE_EXHAUSTED raised by gRPC itself (a message over a channel's size limit) carries no pushback
and is resent after the backoff, in vain. 503 / UNAVAILABLE is not retried: a draining server or a request whose
worker died is better handled by a load balancer, or by the caller, than by a blind resend to the same address.
A call's ``timeout`` bounds all of its attempts together; a retry that could not start before it runs out is not
made. Without a ``timeout`` the attempts are bounded by ``max_retries`` only, and each wait by what the answer asks.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence

DEFAULT_MAX_RETRIES = 2
FIRST_BACKOFF_S = 0.5  # when the answer names no time: 0.5 s, then doubling
MAX_BACKOFF_S = 8.0
RETRIED_HTTP_STATUS = 429
RETRIED_GRPC_STATUS = "RESOURCE_EXHAUSTED"
# gRPC's retry policy counts attempts, the first included, and caps them at five (gRFC A6).
GRPC_MAX_ATTEMPTS = 5


def backoff_s(retry: int, retry_after_s: float | None) -> float:
    """Seconds before retry number ``retry`` (1, 2, ...): the server's ``Retry-After`` when it gave one, else
    0.5 s doubling up to 8 s; spread at random by a fifth so that clients refused together do not return together.
    """
    if retry_after_s is not None:
        return retry_after_s * random.uniform(1.0, 1.2)
    return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (retry - 1)) * random.uniform(0.8, 1.0)


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The seconds of a ``Retry-After`` header given in seconds (an HTTP date is not used by the service)."""
    value = headers.get("retry-after")
    return float(value) if value and value.replace(".", "", 1).isdigit() else None


def http_retry_wait_s(
    status: int, headers: Mapping[str, str], retry: int, max_retries: int, deadline: float | None
) -> float | None:
    """Seconds to wait before sending again a request answered ``status``, or None to keep the answer.

    ``retry`` is the number of the retry this would be (1 for the first); ``deadline`` the call's end on
    `time.monotonic` (None: no bound).
    """
    if status != RETRIED_HTTP_STATUS or retry > max_retries:
        return None
    wait = backoff_s(retry, retry_after_s(headers))
    if deadline is not None and time.monotonic() + wait >= deadline:
        return None
    return wait


def grpc_service_config(methods: Sequence[tuple[str, str]], max_retries: int) -> str:
    """The channel's service config: calls of ``methods`` (``(service, method)`` names) retried on
    RESOURCE_EXHAUSTED (gRFC A6). The server's ``grpc-retry-pushback-ms`` sets the wait (-1: no retry, which the
    service sends when the call's deadline comes first); without one, gRPC's exponential backoff from 0.5 s to 8 s."""
    if max_retries <= 0:
        return json.dumps({})
    policy = {
        "maxAttempts": min(max_retries + 1, GRPC_MAX_ATTEMPTS),
        "initialBackoff": f"{FIRST_BACKOFF_S}s",
        "maxBackoff": f"{MAX_BACKOFF_S}s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": [RETRIED_GRPC_STATUS],
    }
    names = [{"service": service, "method": method} for service, method in methods]
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy}]})

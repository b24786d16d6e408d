"""The clients resend a call the service refused for now (429 / RESOURCE_EXHAUSTED), within its timeout only."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx

from featureserve.client import AsyncGrpcClient, RestClient, RestError
from featureserve.client.retries import MAX_BACKOFF_S, backoff_s, http_retry_wait_s
from featureserve.service.api.grpc.servicer import retry_pushback_ms
from featureserve.v1 import features_pb2 as pb
from featureserve.v1 import service_pb2 as service
from tests.conftest import Server

# One running and three queued fit in small_queue_server; the other four of eight are refused at first.
FLOOD = 8


def test_only_429_is_retried_and_only_while_retries_and_time_are_left() -> None:
    headers = {"retry-after": "2"}
    assert 2.0 <= http_retry_wait_s(429, headers, 1, 2, None) <= 2.4  # type: ignore[operator]
    assert http_retry_wait_s(429, headers, 3, 2, None) is None  # the third retry of two allowed
    assert http_retry_wait_s(503, headers, 1, 2, None) is None
    assert http_retry_wait_s(500, {}, 1, 2, None) is None
    assert http_retry_wait_s(429, headers, 1, 2, time.monotonic() + 1.9) is None  # would wake past the deadline
    assert http_retry_wait_s(429, headers, 1, 2, time.monotonic() + 10) is not None


def test_backoff_is_spread_and_without_retry_after_doubles_up_to_its_cap() -> None:
    waits = [backoff_s(retry, None) for retry in (1, 2, 3, 10)]
    assert 0.4 <= waits[0] <= 0.5 and 0.8 <= waits[1] <= 1.0 and 1.6 <= waits[2] <= 2.0
    assert 0.8 * MAX_BACKOFF_S <= waits[3] <= MAX_BACKOFF_S
    spread = {backoff_s(1, 3.0) for _ in range(20)}
    assert len(spread) > 1 and all(3.0 <= wait <= 3.6 for wait in spread)


def test_grpc_pushback_is_spread_and_refuses_a_retry_after_the_deadline() -> None:
    pushbacks = {int(retry_pushback_ms(2.0, None)) for _ in range(20)}
    assert len(pushbacks) > 1 and all(2000 <= ms <= 2400 for ms in pushbacks)
    assert 1000 <= int(retry_pushback_ms(1.0, 5.0)) <= 1200
    assert retry_pushback_ms(2.0, 1.5) == "-1"


def _rest_flood(
    server: Server, png: bytes, max_retries: int = 2, timeout: float | None = None
) -> list[tuple[object, float]]:
    """Eight extractions at once from eight threads: each result (or the error it raised) and its seconds."""

    def one(_: int) -> tuple[object, float]:
        start = time.monotonic()
        with RestClient(server.url, max_retries=max_retries) as client:
            try:
                result: object = client.extract(png, timeout=timeout)
            except (RestError, httpx.TimeoutException) as error:
                result = error
        return result, time.monotonic() - start

    with ThreadPoolExecutor(FLOOD) as threads:
        return list(threads.map(one, range(FLOOD)))


def test_rest_client_retries_a_full_queue_after_retry_after(small_queue_server: Server, big_png: bytes) -> None:
    without = [result for result, _ in _rest_flood(small_queue_server, big_png, max_retries=0)]
    refused = [r for r in without if isinstance(r, RestError)]
    assert refused and all(e.status == 429 and e.retry_after_s >= 1 for e in refused)
    with_retries = [result for result, _ in _rest_flood(small_queue_server, big_png)]
    assert not [r for r in with_retries if isinstance(r, Exception)]
    assert all(len(features.keypoints) > 0 for features in with_retries)  # type: ignore[attr-defined]


def test_rest_client_does_not_wait_past_its_timeout(small_queue_server: Server, big_png: bytes) -> None:
    results = _rest_flood(small_queue_server, big_png, timeout=0.9)
    # Retry-After is at least 1 s, past every call's timeout: a refused call fails at once instead of sleeping.
    refused = [seconds for result, seconds in results if isinstance(result, RestError) and result.status == 429]
    assert refused and max(refused) < 0.9


def _grpc_flood(server: Server, png: bytes, max_retries: int = 2, timeout: float = 60) -> list[tuple[object, float]]:
    """Eight extractions at once on one channel: each response (or the error it raised) and its seconds."""

    async def one(client: AsyncGrpcClient, request: service.ExtractRequest) -> tuple[object, float]:
        start = time.monotonic()
        try:
            result: object = await client.stub.Extract(request, timeout=timeout)
        except grpc.RpcError as error:
            result = error
        return result, time.monotonic() - start

    async def flood() -> list[tuple[object, float]]:
        async with AsyncGrpcClient(server.grpc_target, max_retries=max_retries) as client:
            request = service.ExtractRequest(image=pb.Image(encoded=png))
            return await asyncio.gather(*(one(client, request) for _ in range(FLOOD)))

    return asyncio.run(flood())


def test_grpc_client_retries_resource_exhausted_after_the_pushback(small_queue_server: Server, big_png: bytes) -> None:
    without = [result for result, _ in _grpc_flood(small_queue_server, big_png, max_retries=0)]
    refused = [r for r in without if isinstance(r, grpc.RpcError)]
    assert refused and all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)
    metadata = dict(refused[0].trailing_metadata())
    assert int(metadata["grpc-retry-pushback-ms"]) >= 1000
    with_retries = [result for result, _ in _grpc_flood(small_queue_server, big_png)]
    assert not [r for r in with_retries if isinstance(r, BaseException)]
    assert all(response.num_keypoints > 0 for response in with_retries)  # type: ignore[attr-defined]


def test_grpc_client_is_refused_at_once_when_the_pushback_passes_its_deadline(
    small_queue_server: Server, big_png: bytes
) -> None:
    results = _grpc_flood(small_queue_server, big_png, timeout=0.9)
    # A pushback of at least 1 s ends after every call's deadline: the server sends -1 and the refusal comes back
    # at once, instead of a retry that would end in DEADLINE_EXCEEDED.
    refused = [
        seconds
        for result, seconds in results
        if isinstance(result, grpc.RpcError) and result.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    ]
    assert refused and max(refused) < 0.9

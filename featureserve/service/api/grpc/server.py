"""The gRPC server: FeatureService, grpc.health.v1, server reflection, message limits and keepalive."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ....v1.service_pb2_grpc import add_FeatureServiceServicer_to_server
from ...operations import Operations
from ...security import ApiKeys
from ...settings import Settings
from ...workers import WorkerPool
from .guards import GuardInterceptor
from .servicer import SERVICE_NAME, FeatureServicer

# The health service reports the whole server under "" and the API under its full name.
HEALTH_SERVICES = ("", SERVICE_NAME)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """grpcio channel arguments: message size limits and keepalive."""
    return [
        ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
        ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        ("grpc.keepalive_time_ms", int(settings.grpc_keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.grpc_keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", int(settings.grpc_min_ping_interval_s * 1000)),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from ``tls_cert_file`` and ``tls_key_file``, or ``None`` (plaintext)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    pair = (settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())
    return grpc.ssl_server_credentials([pair])


async def start_grpc_server(pool: WorkerPool) -> grpc.aio.Server:
    """Start a gRPC server for ``pool`` on ``settings.host:grpc_port`` (TLS when configured).

    Health is NOT_SERVING until the pool is ready and for good once its drain begins; open streams then
    answer the frames they already sent and end with UNAVAILABLE. API keys and undecodable requests are
    checked by `GuardInterceptor`; more than ``max_in_flight_requests`` calls at once get RESOURCE_EXHAUSTED
    from grpcio itself.
    """
    settings = pool.settings
    server = grpc.aio.server(
        options=server_options(settings),
        interceptors=[GuardInterceptor(ApiKeys.from_settings(settings), pool.metrics)],
        maximum_concurrent_rpcs=settings.max_in_flight_requests,
    )
    servicer = FeatureServicer(Operations(pool))
    add_FeatureServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    for name in HEALTH_SERVICES:
        await health_servicer.set(name, NOT_SERVING)
    updates: set[asyncio.Task[None]] = set()

    async def publish_state() -> None:
        if pool.draining:
            servicer.begin_drain()
            await health_servicer.enter_graceful_shutdown()
        elif pool.ready:
            for name in HEALTH_SERVICES:
                await health_servicer.set(name, SERVING)

    def on_state_change() -> None:
        task = asyncio.create_task(publish_state())
        updates.add(task)  # keep a reference until it finishes
        task.add_done_callback(updates.discard)

    pool.on_state_change(on_state_change)
    address = f"{settings.host}:{settings.grpc_port}"
    credentials = server_credentials(settings)
    port = server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"gRPC could not bind {address}")
    await server.start()
    return server

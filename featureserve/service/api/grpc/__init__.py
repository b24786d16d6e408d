"""The gRPC API (grpcio): a thin servicer over the operations layer, sharing REST's options, errors and batches."""

from .server import start_grpc_server

__all__ = ["start_grpc_server"]

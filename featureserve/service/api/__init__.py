"""The two transports over `featureserve.service.operations`: ``rest`` (FastAPI) and ``grpc`` (grpcio)."""

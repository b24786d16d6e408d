"""All service settings in one typed object, read from ``FEATURESERVE_*`` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..models import available_models


class Settings(BaseSettings):
    """Service configuration; every field is an environment variable ``FEATURESERVE_<NAME>``.

    List values are JSON (``FEATURESERVE_MODELS='["sift","orb"]'``). The README lists every knob.
    """

    model_config = SettingsConfigDict(env_prefix="FEATURESERVE_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address the REST server binds (0.0.0.0 in the Docker image).")
    rest_port: int = Field(8080, ge=0, le=65535, description="REST (HTTP) port.")
    grpc_enabled: bool = Field(True, description="Serve the gRPC API next to REST.")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port.")
    grpc_max_message_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest gRPC message either way, bytes (a 4K PNG fits)."
    )
    grpc_keepalive_time_s: float = Field(30.0, gt=0, description="Idle time before the server pings a client.")
    grpc_keepalive_timeout_s: float = Field(10.0, gt=0, description="How long a keepalive ping may go unanswered.")
    grpc_min_ping_interval_s: float = Field(
        10.0, gt=0, description="Shortest interval between client keepalive pings the server tolerates."
    )
    stream_queue_size: int = Field(
        4, ge=1, description="Frames a StreamFrames session buffers before it stops reading (queue policy)."
    )
    models: list[str] = Field(["sift", "orb", "akaze", "caps"], description="Models loaded at start-up.")
    default_model: str = Field("sift", description="Model used when a request names none.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where torch models run; auto picks cuda when available."
    )
    max_batch: int = Field(8, ge=1, le=256, description="Most images one model batch holds.")
    max_delay_ms: float = Field(
        5.0, ge=0, le=1000, description="Longest a batch waits for more images after its first one."
    )
    queue_size: int = Field(64, ge=1, description="Images waiting per model before new ones get 429.")
    default_deadline_ms: float = Field(
        30000, gt=0, description="Deadline of a request that sends no X-Deadline-Ms header."
    )
    reject_unmeetable_deadlines: bool = Field(
        True, description="Answer 429 at once when the queue ahead cannot finish before the deadline."
    )
    default_max_keypoints: int = Field(2048, ge=1, description="max_keypoints when a request sets none.")
    max_keypoints_limit: int = Field(16384, ge=1, description="Largest max_keypoints a request may ask for.")
    max_image_bytes: int = Field(32 * 1024 * 1024, ge=1, description="Largest encoded image accepted, bytes.")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Largest decoded image accepted, pixels.")
    max_request_images: int = Field(32, ge=1, description="Most images in one /v1/extract/batch request.")
    decode_threads: int = Field(2, ge=1, description="Threads that decode images off the event loop.")
    cpu_threads: int = Field(2, ge=1, description="Threads per OpenCV model, and for matching.")
    warmup: bool = Field(True, description="Run each model once before reporting ready.")
    drain_timeout_s: float = Field(30.0, gt=0, description="Longest a SIGTERM drain waits for in-flight work.")
    log_level: str = Field("info", description="Uvicorn log level.")

    @model_validator(mode="after")
    def _default_model_is_loaded(self) -> Settings:
        unknown = sorted(set(self.models) - set(available_models()))
        if unknown:
            raise ValueError(f"unknown models {unknown}; available: {available_models()}")
        if self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not in models {self.models}")
        if self.default_max_keypoints > self.max_keypoints_limit:
            raise ValueError("default_max_keypoints must not exceed max_keypoints_limit")
        return self

"""All service settings in one typed object, read from ``FEATURESERVE_*`` environment variables."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..models import available_models, check_options, default_conf

# API keys travel in HTTP headers and gRPC metadata: printable ASCII without spaces, long enough to guess badly.
API_KEY_PATTERN = re.compile(r"[\x21-\x7e]{16,}")


class Settings(BaseSettings):
    """Service configuration; every field is an environment variable ``FEATURESERVE_<NAME>``.

    List values are JSON (``FEATURESERVE_MODELS='["sift","orb"]'``). docs/configuration.md lists every knob.
    """

    # Errors never echo the input: it may hold API keys.
    model_config = SettingsConfigDict(env_prefix="FEATURESERVE_", extra="ignore", hide_input_in_errors=True)

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
    models: list[str] = Field(
        ["sift", "orb", "akaze", "caps", "scfeat", "hndesc", "orb-patch"],
        description="Models loaded at start-up: the classical ones and every trained one (not tiny-cnn).",
    )
    default_model: str = Field("sift", description="Model used when a request names none.")
    model_conf: dict[str, dict[str, Any]] = Field(
        {}, description='Options per model over its defaults, e.g. {"scfeat": {"upright": false}} (docs/models/).'
    )
    devices: list[str] = Field(
        [],
        description='Devices the torch models run on, e.g. ["cuda:0", "cuda:1"]; empty: every visible GPU, else '
        '["cpu"]. Classical (OpenCV) models run on the CPU.',
    )
    instances_per_device: int = Field(
        1,
        ge=1,
        le=64,
        description="Instances of every model per device, each with its own queue, batcher and thread; a request "
        "goes to the one that will answer it first.",
    )
    max_batch: int = Field(8, ge=1, le=256, description="Most images one model batch holds.")
    max_delay_ms: float = Field(
        5.0, ge=0, le=1000, description="Longest a batch waits for more images after its first one."
    )
    queue_size: int = Field(64, ge=1, description="Images waiting per model instance before new ones get 429.")
    default_deadline_ms: float = Field(
        30000, gt=0, description="Deadline of a request that sends no X-Deadline-Ms header."
    )
    max_queue_delay_ms: float | None = Field(
        None,
        ge=0,
        description="Longest expected wait before a new image's batch starts; more gets 429 (unset: no limit).",
    )
    reject_unmeetable_deadlines: bool = Field(
        True, description="Answer 429 at once when the queue ahead cannot finish before the deadline."
    )
    default_max_keypoints: int = Field(2048, ge=1, description="max_keypoints when a request sets none.")
    max_keypoints_limit: int = Field(16384, ge=1, description="Largest max_keypoints a request may ask for.")
    max_image_bytes: int = Field(32 * 1024 * 1024, ge=1, description="Largest encoded image accepted, bytes.")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Largest decoded image accepted, pixels.")
    max_request_images: int = Field(
        32, ge=1, description="Most images (or feature sets) in one /v1/extract/batch or /v1/match/batch request."
    )
    max_request_pairs: int = Field(1024, ge=1, description="Most pairs in one /v1/match/batch request.")
    decode_threads: int = Field(2, ge=1, description="Threads that decode images off the event loop.")
    cpu_threads: int = Field(2, ge=1, description="Threads per OpenCV model, and for matching.")
    warmup: bool = Field(True, description="Run each model once before reporting ready.")
    drain_timeout_s: float = Field(30.0, gt=0, description="Longest a SIGTERM drain waits for in-flight work.")
    log_level: str = Field("info", description="Uvicorn log level.")
    batch_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Longest one model batch may run; past it the worker counts as hung and is replaced.",
    )
    max_request_bytes: int = Field(
        128 * 1024 * 1024, ge=1024, description="Largest REST request body, bytes (checked while it is read)."
    )
    max_in_flight_requests: int = Field(
        256, ge=1, description="REST requests and gRPC calls handled at once (each); more get 429 / RESOURCE_EXHAUSTED."
    )
    api_keys: list[SecretStr] = Field(
        [], description="Accepted API keys (JSON list); empty with no keys file = no authentication."
    )
    api_keys_file: Path | None = Field(
        None, description="File with more API keys, one per line (blank lines and # comments ignored)."
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate chain; with tls_key_file, REST serves HTTPS and gRPC uses TLS."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    plugins: list[str] = Field(
        [], description="module:function entry points called at start-up, before models load (test-only models)."
    )

    @field_validator("plugins")
    @classmethod
    def _load_plugins(cls, plugins: list[str]) -> list[str]:
        # Runs before the model check below, so a plugin can register models that FEATURESERVE_MODELS names.
        for plugin in plugins:
            module_name, _, function_name = plugin.partition(":")
            if not module_name or not function_name:
                raise ValueError(f"plugin {plugin!r} must be written module:function")
            try:
                function = getattr(importlib.import_module(module_name), function_name)
            except (ImportError, AttributeError) as error:
                raise ValueError(f"plugin {plugin!r} cannot be loaded: {error}") from None
            function()
        return plugins

    def all_api_keys(self) -> list[str]:
        """The keys of ``api_keys`` and of ``api_keys_file``; raises ``ValueError`` for an unreadable file."""
        keys = [key.get_secret_value() for key in self.api_keys]
        if self.api_keys_file is not None:
            try:
                lines = self.api_keys_file.read_text().splitlines()
            except OSError as error:
                raise ValueError(f"api_keys_file {str(self.api_keys_file)!r} cannot be read: {error}") from None
            keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
            if not keys:
                raise ValueError(f"api_keys_file {str(self.api_keys_file)!r} holds no key")
        return keys

    @property
    def tls_enabled(self) -> bool:
        """Whether REST serves HTTPS and gRPC uses TLS."""
        return self.tls_cert_file is not None

    @model_validator(mode="after")
    def _default_model_is_loaded(self) -> Settings:
        unknown = sorted(set(self.models) - set(available_models()))
        if unknown:
            raise ValueError(f"unknown models {unknown}; available: {available_models()}")
        for name, conf in self.model_conf.items():
            if name not in available_models():
                raise ValueError(f"model_conf names unknown model {name!r}; available: {available_models()}")
            try:
                check_options(name, default_conf(name), conf)
            except ValueError as error:
                raise ValueError(f"model_conf: {error}") from None
        if self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not in models {self.models}")
        if self.default_max_keypoints > self.max_keypoints_limit:
            raise ValueError("default_max_keypoints must not exceed max_keypoints_limit")
        for index, key in enumerate(self.all_api_keys()):
            if not API_KEY_PATTERN.fullmatch(key):
                # The message never shows the key itself.
                raise ValueError(f"API key #{index + 1} must be at least 16 printable ASCII characters without spaces")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both tls_cert_file and tls_key_file, or neither")
        for path in (self.tls_cert_file, self.tls_key_file):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {str(path)!r} does not exist")
        return self

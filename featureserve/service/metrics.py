"""Prometheus metrics of one service instance (one registry per instance, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
COUNT_BUCKETS = (0, 1, 10, 50, 100, 250, 500, 1000, 2000, 4000, 8000, 16000)


# The series of one model instance: a model runs one worker per device and slot (FEATURESERVE_DEVICES,
# FEATURESERVE_INSTANCES_PER_DEVICE).
WORKER_LABELS = ["model", "device", "instance"]


class ServiceMetrics:
    """Request, queue, batch and feature-count metrics, all prefixed ``featureserve_``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "featureserve_requests", "Requests answered.", ["endpoint", "model", "status"], registry=r
        )
        self.request_latency = Histogram(
            "featureserve_request_latency_seconds",
            "Request latency, arrival to response.",
            ["endpoint", "model", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("featureserve_in_flight_requests", "Requests being handled.", ["endpoint"], registry=r)
        self.queue_depth = Gauge(
            "featureserve_queue_depth", "Images waiting in a model's queue.", WORKER_LABELS, registry=r
        )
        self.queue_wait = Histogram(
            "featureserve_queue_wait_seconds",
            "Time an image waits before its batch starts.",
            WORKER_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "featureserve_batch_size",
            "Images per model batch.",
            WORKER_LABELS,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.inference = Histogram(
            "featureserve_inference_seconds",
            "Model time per batch.",
            WORKER_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "featureserve_rejected", "Images refused or dropped by admission control.", ["model", "reason"], registry=r
        )
        self.keypoints = Histogram(
            "featureserve_keypoints_per_image",
            "Keypoints returned per image.",
            ["model"],
            buckets=COUNT_BUCKETS,
            registry=r,
        )
        self.matches = Histogram(
            "featureserve_matches_per_pair", "Matches per image pair.", ["model"], buckets=COUNT_BUCKETS, registry=r
        )
        self.inliers = Histogram(
            "featureserve_inliers_per_pair",
            "Geometric inliers per image pair.",
            ["model"],
            buckets=COUNT_BUCKETS,
            registry=r,
        )
        self.worker_replacements = Counter(
            "featureserve_worker_replacements",
            "Model worker threads replaced by the watchdog, by reason (crashed: the thread died; hung: a batch "
            "ran past FEATURESERVE_BATCH_TIMEOUT_S).",
            ["model", "reason"],
            registry=r,
        )
        self.abandoned_threads = Gauge(
            "featureserve_abandoned_worker_threads",
            "Hung worker threads given up on but still running (Python cannot kill a thread).",
            WORKER_LABELS,
            registry=r,
        )
        self.auth_failures = Counter(
            "featureserve_auth_failures",
            "Requests refused for a missing or wrong API key, by API (rest, grpc).",
            ["api"],
            registry=r,
        )
        self.stream_sessions = Gauge("featureserve_stream_sessions", "Open StreamFrames sessions.", registry=r)
        self.stream_frames = Counter(
            "featureserve_stream_frames",
            "StreamFrames frames answered, by status (ok, dropped, failed).",
            ["model", "status"],
            registry=r,
        )

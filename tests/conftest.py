"""Shared fixtures: test images from skimage, and real servers started on loopback ports."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from skimage import data

# A homography with rotation, scale, shear and perspective, mild enough for every classical model.
TEST_HOMOGRAPHY = np.array([[0.92, 0.12, 18.0], [-0.08, 0.95, 12.0], [1.2e-4, -6e-5, 1.0]])


def encode(image: np.ndarray, ext: str = ".png", params: list[int] | None = None) -> bytes:
    """Encode an RGB or grey uint8 image with OpenCV."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buffer = cv2.imencode(ext, bgr, params or [])
    assert ok
    return buffer.tobytes()


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` in Prometheus ``text`` whose labels include ``labels``.

    0 when no sample has those labels yet (a labelled counter exports none before its first count); an
    assertion error when no metric family could own ``name``, so a renamed metric fails the test.
    """
    families = list(text_string_to_metric_families(text))
    assert any(name == f.name or name.startswith(f"{f.name}_") for f in families), f"no metric {name} exported"
    return sum(
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def decode_features(body: dict) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints and descriptors of a REST extract answer, in either descriptor encoding."""
    descriptors = body["descriptors"]
    if descriptors["encoding"] == "base64":
        raw = base64.b64decode(descriptors["data"])
        array = np.frombuffer(raw, {"float32": "<f4", "float16": "<f2", "uint8": "u1"}[descriptors["dtype"]])
        return np.array(body["keypoints"]), array.reshape(descriptors["shape"])
    return np.array(body["keypoints"]), np.array(descriptors["data"])


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real 512x512 RGB photo shipped by scikit-image."""
    return data.astronaut()


@pytest.fixture(scope="session")
def warped_photo(photo: np.ndarray) -> np.ndarray:
    """``photo`` warped by `TEST_HOMOGRAPHY`."""
    return cv2.warpPerspective(photo, TEST_HOMOGRAPHY, (photo.shape[1], photo.shape[0]))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A featureserve process on loopback."""

    process: subprocess.Popen
    url: str
    grpc_target: str

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, wait, return the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_server(ca: str | None = None, **settings: str) -> Server:
    """Start ``python -m featureserve serve`` (REST and gRPC) with ``FEATURESERVE_*`` settings; wait until ready.

    ``ca``: a PEM file that signed the server's certificate (``tls_cert_file``); the server then speaks HTTPS.
    """
    port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "FEATURESERVE_HOST": "127.0.0.1",
        "FEATURESERVE_REST_PORT": str(port),
        "FEATURESERVE_GRPC_PORT": str(grpc_port),
    }
    env.update({f"FEATURESERVE_{k.upper()}": v for k, v in settings.items()})
    process = subprocess.Popen(
        [sys.executable, "-m", "featureserve", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    server = Server(process, f"{'https' if ca else 'http'}://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}")
    verify = ssl.create_default_context(cafile=ca) if ca else True
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1, verify=verify).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError("server did not become ready within 120 s")


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """One shared server with every model loaded (for tests that do not change settings)."""
    s = start_server(models='["sift","orb","akaze","tiny-cnn"]', default_model="sift", queue_size="256")
    yield s
    s.stop()


@pytest.fixture()
def client(server: Server) -> Iterator[httpx.Client]:
    """An HTTP client of the shared server."""
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def small_queue_server() -> Iterator[Server]:
    """sift alone with batches of one and a queue of three, deadlines never refused early (admission tests)."""
    s = start_server(
        models='["sift"]', max_batch="1", queue_size="3", cpu_threads="1", reject_unmeetable_deadlines="false"
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def big_png(photo: np.ndarray) -> bytes:
    """A 1024x1024 photo: slow enough for SIFT (a few hundred ms) to build a queue."""
    return encode(cv2.resize(photo, (1024, 1024)))

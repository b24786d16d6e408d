"""Shared fixtures: test images from skimage, and real servers started on loopback ports."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from skimage import data

from benchmarks.servers import ServerProcess as Server
from benchmarks.servers import launch

# A homography with rotation, scale, shear and perspective, mild enough for every classical model.
TEST_HOMOGRAPHY = np.array([[0.92, 0.12, 18.0], [-0.08, 0.95, 12.0], [1.2e-4, -6e-5, 1.0]])


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, signed by its own key (so it is its own CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "featureserve test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def fastest_seconds(call: Callable[[], object], runs: int = 2) -> float:
    """The fastest of ``runs`` timings of ``call()``: tests size their deadlines from this machine's own speed."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def encode(image: np.ndarray, ext: str = ".png", params: list[int] | None = None) -> bytes:
    """Encode an RGB or grey uint8 image with OpenCV."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buffer = cv2.imencode(ext, bgr, params or [])
    assert ok
    return buffer.tobytes()


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


def start_server(ca: str | None = None, **settings: str) -> Server:
    """Start ``python -m featureserve serve`` (REST and gRPC) with ``FEATURESERVE_*`` settings; wait until ready.

    ``ca``: a PEM file that signed the server's certificate (``tls_cert_file``); the server then speaks HTTPS.
    The benchmarks start their servers with the same launcher (`benchmarks.servers`).
    """
    return launch(settings, ca=ca)


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

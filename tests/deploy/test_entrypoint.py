"""The image's command as the Dockerfile writes it, run outside Docker (tests/deploy/conftest.py says how):
ready over REST and gRPC, healthy by the image's own HEALTHCHECK, drained by SIGTERM with exit code 0."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import cv2
import grpc
import httpx
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.servers import free_port, stop_during_request
from featureserve.client import GrpcClient
from featureserve.service.settings import Settings
from tests.conftest import encode, self_signed_certificate
from tests.deploy.conftest import Container, container_command, dockerfile_stages, exec_form, start_container


def test_command_is_the_console_script_in_exec_form() -> None:
    argv, env = container_command()
    # `featureserve serve` via the console script of pyproject.toml's [project.scripts], found on the PATH
    # that the Dockerfile's ENV builds (its virtual environment first).
    assert argv[:2] == ["featureserve", "serve"]
    assert env["PATH"].split(":")[0] == "/opt/featureserve/bin"
    assert env["FEATURESERVE_HOST"] == "0.0.0.0"


def test_ready_over_rest_and_grpc(container: Container) -> None:
    assert httpx.get(f"{container.url}/healthz").status_code == 200
    assert httpx.get(f"{container.url}/readyz").json() == {"status": "ready"}
    with grpc.insecure_channel(container.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "featureserve.v1.FeatureService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
    # No FEATURESERVE_MODELS in the image: it serves the service's default models.
    with GrpcClient(container.grpc_target) as client:
        assert sorted(m.name for m in client.list_models(timeout=10).models) == sorted(
            Settings.model_fields["models"].default
        )


def healthcheck(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """The Dockerfile's HEALTHCHECK command, run as written with ``env``, within its --timeout."""
    command = dockerfile_stages()[-1].last("HEALTHCHECK")
    argv = exec_form(command)
    assert argv[0] == "CMD"
    timeout = next(float(f.split("=")[1].rstrip("s")) for f in command.flags if f.startswith("--timeout="))
    executable = shutil.which(argv[1], path=env["PATH"])
    assert executable, f"{argv[1]} is not on the image's PATH"
    return subprocess.run([executable, *argv[2:]], env=env, cwd=cwd, capture_output=True, timeout=timeout)


def test_healthcheck_passes_when_ready_and_fails_when_nothing_answers(container: Container) -> None:
    assert healthcheck(container.env, container.cwd).returncode == 0
    nobody = {**container.env, "FEATURESERVE_REST_PORT": str(free_port())}
    assert healthcheck(nobody, container.cwd).returncode != 0


def test_healthcheck_asks_over_https_when_tls_is_on(tmp_path: Path) -> None:
    cert_file, key_file = self_signed_certificate(tmp_path)
    c = start_container(
        tmp_path, wait=False, FEATURESERVE_TLS_CERT_FILE=str(cert_file), FEATURESERVE_TLS_KEY_FILE=str(key_file)
    )
    try:
        deadline = time.monotonic() + 120
        while (check := healthcheck(c.env, c.cwd)).returncode != 0 and time.monotonic() < deadline:
            assert c.process.poll() is None, c.process.stderr.read().decode()[-2000:]
            time.sleep(0.5)
        assert check.returncode == 0, check.stderr.decode()[-2000:]
        # The server really speaks TLS only: plain HTTP on the same port gets no answer.
        plain = {**c.env, "FEATURESERVE_TLS_CERT_FILE": ""}
        assert healthcheck(plain, c.cwd).returncode != 0
    finally:
        c.stop()


def test_sigterm_answers_the_request_in_flight_and_exits_zero(photo: np.ndarray, tmp_path: Path) -> None:
    c = start_container(tmp_path)
    try:
        stopped = stop_during_request(c.url, encode(cv2.resize(photo, (1024, 1024))), c.stop)
        assert stopped.exit_code == 0, c.process.stderr.read().decode()[-2000:]
        answer = stopped.answer
        assert isinstance(answer, httpx.Response), answer
        assert answer.status_code == 200 and answer.json()["num_keypoints"] > 0
    finally:
        c.stop()

"""Check a running featureserve container from outside, with known answers (called by scripts/docker-check.sh).

Usage: PYTHONPATH=. python scripts/container_probe.py CONTAINER --rest URL --grpc HOST:PORT [--docker DOCKER] [--stop]

- REST /v1/match and gRPC Match of a photo and the same photo under a known homography: the fitted
  homography must map the image corners within 3 px of where the known one does, over both transports;
- REST and gRPC extraction of one image give the same keypoints;
- with --stop: `docker stop` (SIGTERM, Docker's default 10 s grace) while a request is in flight; the request
  must be answered 200 and the container must exit 0.

Prints one JSON line of what it measured; exits non-zero with the reason when a check fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import cv2
import httpx
import numpy as np
from skimage import data

from benchmarks.servers import stop_during_request
from featureserve.client import GrpcClient, RestClient

KNOWN_H = np.array([[0.92, -0.16, 60.0], [0.16, 0.92, -20.0], [0.0, 0.0, 1.0]])
CORNER_TOLERANCE_PX = 3.0


def known_pair() -> tuple[np.ndarray, np.ndarray]:
    """A 640x480 photo and its warp by KNOWN_H."""
    image = cv2.resize(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY), (640, 480))
    return image, cv2.warpPerspective(image, KNOWN_H, (640, 480))


def corner_error(matrix: np.ndarray | None) -> float:
    """Largest distance between the image corners mapped by ``matrix`` and by KNOWN_H, in pixels."""
    if matrix is None:
        return float("inf")
    corners = np.array([[[0, 0], [639, 0], [639, 479], [0, 479]]], np.float64)
    got = cv2.perspectiveTransform(corners, np.asarray(matrix, np.float64))
    return float(np.linalg.norm(got - cv2.perspectiveTransform(corners, KNOWN_H), axis=-1).max())


def check(condition: bool, message: str) -> None:
    if not condition:
        sys.exit(f"container_probe: {message}")


def probe_answers(rest_url: str, grpc_target: str) -> dict[str, float]:
    """The known-answer checks over REST and gRPC."""
    image0, image1 = known_pair()
    figures = {}
    with RestClient(rest_url) as rest, GrpcClient(grpc_target) as grpc_client:
        for name, client in (("rest", rest), ("grpc", grpc_client)):
            result = client.match(image0, image1, model="sift", geometry="homography", timeout=60)
            error = corner_error(result.geometry.matrix if result.geometry else None)
            check(error < CORNER_TOLERANCE_PX, f"{name} match: homography corners off by {error:.1f} px")
            figures[f"{name}_corner_error_px"] = round(error, 3)
            figures[f"{name}_inliers"] = result.geometry.num_inliers
        via_rest, via_grpc = rest.extract(image0, model="orb"), grpc_client.extract(image0, model="orb")
        check(
            np.array_equal(via_rest.keypoints, via_grpc.keypoints) and len(via_rest.keypoints) > 0,
            "REST and gRPC extraction of the same image differ",
        )
        figures["orb_keypoints"] = len(via_rest.keypoints)
    return figures


def stop_in_flight(container: str, rest_url: str, docker: str) -> dict[str, float]:
    """`docker stop` with a request in flight: the request is answered, the container exits 0."""

    def docker_stop() -> int:
        subprocess.run([docker, "stop", container], check=True, capture_output=True, timeout=60)
        inspect = [docker, "inspect", "-f", "{{.State.ExitCode}}", container]
        return int(subprocess.run(inspect, check=True, capture_output=True, text=True).stdout)

    image = cv2.imencode(".png", cv2.resize(known_pair()[0], (1600, 1200)))[1].tobytes()
    stopped = stop_during_request(rest_url, image, docker_stop)
    check(stopped.exit_code == 0, f"the container exited {stopped.exit_code} after docker stop, not 0")
    answer = stopped.answer
    check(
        isinstance(answer, httpx.Response) and answer.status_code == 200,
        f"the request in flight during docker stop got {answer!r}",
    )
    return {"stop_s": round(stopped.stop_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("container")
    parser.add_argument("--rest", required=True, help="REST base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--grpc", required=True, help="gRPC target, e.g. 127.0.0.1:50051")
    parser.add_argument("--docker", default="docker", help="the docker client to run `docker stop` with")
    parser.add_argument("--stop", action="store_true", help="also docker stop with a request in flight")
    arguments = parser.parse_args()
    figures = probe_answers(arguments.rest, arguments.grpc)
    if arguments.stop:
        figures |= stop_in_flight(arguments.container, arguments.rest, arguments.docker)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

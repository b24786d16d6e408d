"""The LitServe peer of benchmarks/performance/peers.py (module level, so LitServe's worker processes can load it)."""

from __future__ import annotations

from typing import Any

import cv2
import litserve

from .peer_servers import extract


class OpenCVFeatures(litserve.LitAPI):
    """OpenCV's ORB or SIFT as a LitServe API, one image per call."""

    def setup(self, device: str) -> None:
        """One OpenCV thread per worker: the server runs one worker per core."""
        cv2.setNumThreads(1)

    # Unannotated on purpose: LitServe reads the annotation of ``request`` and parses the body as multipart
    # only when it is missing or is starlette's Request (a string here, under __future__).
    def decode_request(self, request) -> tuple[bytes, str, int]:
        """The image bytes, model and keypoint budget of the parsed form."""
        return request["image"].file.read(), request.get("model", "orb"), int(request.get("max_keypoints", 2048))

    def predict(self, work: tuple[bytes, str, int]) -> dict[str, Any]:
        """Features of one image."""
        return extract(*work)

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        """The response as it is (LitServe renders it as JSON)."""
        return output


def serve_litserve(port: int) -> None:
    """LitServe with one OpenCV worker per core of this 2-core machine."""
    api = OpenCVFeatures(api_path="/v1/extract")
    server = litserve.LitServer(api, accelerator="cpu", workers_per_device=2, timeout=120)
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False)

"""`caps` through the REST API: its card under /v1/models, 256-D features, homography-verified matches."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from featureserve.models import homography_corner_error
from tests.conftest import TEST_HOMOGRAPHY, Server, encode, start_server


@pytest.fixture(scope="module")
def caps_server() -> Iterator[Server]:
    """A server with caps next to sift."""
    server = start_server(models='["sift","caps"]', default_model="sift")
    yield server
    server.stop()


@pytest.mark.slow
def test_caps_card_features_and_matches(caps_server: Server, photo: np.ndarray, warped_photo: np.ndarray) -> None:
    with httpx.Client(base_url=caps_server.url, timeout=120) as client:
        card = client.get("/v1/models/caps").json()
        assert card["descriptor"] == {"kind": "float", "dim": 256, "metric": "cosine"}
        assert card["details"]["training"]["steps"] > 0 and card["details"]["keypoints"]["source"] == "sift"
        files = {"image": ("a.png", encode(photo), "image/png")}
        body = client.post("/v1/extract", files=files, data={"model": "caps", "max_keypoints": "500"}).json()
        descriptors = np.array(body["descriptors"]["data"], np.float32)
        assert descriptors.shape == (len(body["keypoints"]), 256)
        assert np.allclose(np.linalg.norm(descriptors, axis=1), 1, atol=1e-3)
        pngs = [encode(photo), encode(warped_photo)]
        files = {"image0": ("a.png", pngs[0], "image/png"), "image1": ("b.png", pngs[1], "image/png")}
        data = {"model": "caps", "max_keypoints": "1000", "geometry": "homography"}
        match = client.post("/v1/match", files=files, data=data).json()
    assert homography_corner_error(np.array(match["geometry"]["matrix"]), TEST_HOMOGRAPHY, (512, 512)) < 3.0

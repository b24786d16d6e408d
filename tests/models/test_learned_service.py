"""Learned models through the REST API: cards under /v1/models, features, homography-verified matches, batching."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks.common import metric_value
from featureserve.models import homography_corner_error
from tests.conftest import TEST_HOMOGRAPHY, Server, decode_features, encode, start_server


@pytest.fixture(scope="module")
def learned_server() -> Iterator[Server]:
    """A server with the learned models next to sift."""
    server = start_server(models='["sift","caps","scfeat","hndesc","orb-patch"]', default_model="sift")
    yield server
    server.stop()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "dim", "keypoints"),
    [("caps", 256, "sift"), ("scfeat", 128, "scfeat"), ("hndesc", 128, "sift"), ("orb-patch", 128, "orb")],
)
def test_card_features_and_matches(
    learned_server: Server, photo: np.ndarray, warped_photo: np.ndarray, model: str, dim: int, keypoints: str
) -> None:
    with httpx.Client(base_url=learned_server.url, timeout=120) as client:
        listing = client.get(f"/v1/models/{model}")
        card = listing.json()
        # A card shows its checkpoint by file name, never a path on the server's host.
        assert str(Path.cwd()) not in listing.text and card["details"]["conf"]["card"].endswith(".json")
        assert "/" not in card["details"]["conf"]["card"]
        assert card["descriptor"] == {"kind": "float", "dim": dim, "metric": "cosine"}
        assert card["details"]["training"]["steps"] > 0 and card["details"]["keypoints"]["source"] == keypoints
        files = {"image": ("a.png", encode(photo), "image/png")}
        body = client.post("/v1/extract", files=files, data={"model": model, "max_keypoints": "500"}).json()
        descriptors = np.array(body["descriptors"]["data"], np.float32)
        assert descriptors.shape == (len(body["keypoints"]), dim)
        assert np.allclose(np.linalg.norm(descriptors, axis=1), 1, atol=1e-3)
        pngs = [encode(photo), encode(warped_photo)]
        files = {"image0": ("a.png", pngs[0], "image/png"), "image1": ("b.png", pngs[1], "image/png")}
        data = {"model": model, "max_keypoints": "1000", "geometry": "homography"}
        match = client.post("/v1/match", files=files, data=data).json()
    assert homography_corner_error(np.array(match["geometry"]["matrix"]), TEST_HOMOGRAPHY, (512, 512)) < 3.0


@pytest.mark.slow
def test_scfeat_batches_concurrent_images_without_mixing_them(learned_server: Server, photo: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    crops = [encode(photo[y : y + 256, x : x + 256]) for y, x in rng.integers(0, 250, (6, 2))]

    def request(png: bytes) -> dict:
        return {"files": {"image": ("x.png", png)}, "data": {"model": "scfeat", "descriptor_encoding": "base64"}}

    with httpx.Client(base_url=learned_server.url, timeout=120) as client:
        alone = [decode_features(client.post("/v1/extract", **request(png)).json()) for png in crops]

        async def concurrent() -> list[dict]:
            async with httpx.AsyncClient(base_url=learned_server.url, timeout=120) as session:
                responses = await asyncio.gather(*(session.post("/v1/extract", **request(png)) for png in crops))
            return [r.json() for r in responses]

        together = [decode_features(body) for body in asyncio.run(concurrent())]
        metrics = client.get("/metrics").text
    for (k0, d0), (k1, d1) in zip(alone, together, strict=True):
        # Convolutions of another batch size round differently: a sub-pixel vertex on a nearly flat peak moves by
        # about 1e-3 px, and two keypoints of near-equal score may swap places in the list or at the top-k cut.
        # A mixed-up image moves keypoints by pixels. So: each keypoint's nearest one in the other list.
        nearest = np.linalg.norm(k1[:, None] - k0[None], axis=2).argmin(axis=1)
        same = np.linalg.norm(k1 - k0[nearest], axis=1) < 1e-2
        assert len(k0) == len(k1) and same.mean() > 0.99 and len(np.unique(nearest[same])) == same.sum()
        np.testing.assert_allclose(d1[same], d0[nearest[same]], atol=1e-4)
    batches = metric_value(metrics, "featureserve_batch_size_count", model="scfeat")
    # Fewer batches than images: concurrent images shared tensor batches.
    assert 0 < batches < metric_value(metrics, "featureserve_batch_size_sum", model="scfeat")


@pytest.mark.slow
def test_model_conf_serves_steered_caps_that_match_across_a_quarter_turn(photo: np.ndarray) -> None:
    server = start_server(models='["sift","caps"]', model_conf='{"caps": {"upright": false}}')
    turned = np.ascontiguousarray(np.rot90(photo))
    width = photo.shape[1]
    quarter_turn = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, width - 1.0], [0.0, 0.0, 1.0]])  # (x, y) -> (y, W-1-x)
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            assert client.get("/v1/models/caps").json()["details"]["conf"]["upright"] is False
            files = {"image0": ("a.png", encode(photo), "image/png"), "image1": ("b.png", encode(turned), "image/png")}
            data = {"model": "caps", "max_keypoints": "1000", "geometry": "homography"}
            match = client.post("/v1/match", files=files, data=data).json()
    finally:
        server.stop()
    assert homography_corner_error(np.array(match["geometry"]["matrix"]), quarter_turn, photo.shape[1::-1]) < 1.0


@pytest.mark.slow
def test_model_conf_max_pixels_serves_a_large_image_in_its_own_pixels(
    photo: np.ndarray, warped_photo: np.ndarray
) -> None:
    # The 512x512 photos stand in for large ones: caps may put at most 256x256 pixels through its network.
    server = start_server(models='["sift","caps"]', model_conf='{"caps": {"max_pixels": 65536}}')
    pngs = [encode(photo), encode(warped_photo)]
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            assert client.get("/v1/models/caps").json()["details"]["conf"]["max_pixels"] == 65536
            files = {"image": ("a.png", pngs[0], "image/png")}
            keypoints, _ = decode_features(client.post("/v1/extract", files=files, data={"model": "caps"}).json())
            files = {"image0": ("a.png", pngs[0], "image/png"), "image1": ("b.png", pngs[1], "image/png")}
            data = {"model": "caps", "max_keypoints": "1000", "geometry": "homography"}
            match = client.post("/v1/match", files=files, data=data).json()
    finally:
        server.stop()
    assert keypoints[:, 0].max() > 400 and keypoints[:, 1].max() > 400, "keypoints in the photo's pixels"
    assert homography_corner_error(np.array(match["geometry"]["matrix"]), TEST_HOMOGRAPHY, (512, 512)) < 3.0

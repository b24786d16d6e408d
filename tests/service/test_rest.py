"""End to end through a real server on loopback: extraction, matching, batching, errors, metrics."""

import asyncio
import base64

import httpx
import numpy as np
import pytest

from benchmarks.common import metric_value
from featureserve.models import homography_corner_error
from tests.conftest import TEST_HOMOGRAPHY, Server, decode_features, encode


@pytest.mark.parametrize("model", ["sift", "orb"])
def test_match_recovers_a_known_homography(
    client: httpx.Client, photo: np.ndarray, warped_photo: np.ndarray, model: str
) -> None:
    files = {"image0": ("a.png", encode(photo)), "image1": ("b.jpg", encode(warped_photo, ".jpg"))}
    response = client.post("/v1/match", files=files, data={"model": model, "geometry": "homography"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == model and body["num_inliers"] >= 50
    assert len(body["matches"]) == len(body["points0"]) == len(body["inliers"]) == body["num_matches"]
    error = homography_corner_error(np.array(body["geometry"]["matrix"]), TEST_HOMOGRAPHY, (512, 512))
    assert error < 3.0


def test_extract_json_and_multipart_agree(client: httpx.Client, photo: np.ndarray) -> None:
    png = encode(photo)
    multipart = client.post("/v1/extract", files={"image": ("a.png", png)}, data={"max_keypoints": "200"}).json()
    as_json = client.post(
        "/v1/extract",
        json={"image": base64.b64encode(png).decode(), "max_keypoints": 200, "descriptor_encoding": "base64"},
    ).json()
    assert multipart["model"] == "sift" and multipart["num_keypoints"] == 200
    k0, d0 = decode_features(multipart)
    k1, d1 = decode_features(as_json)
    assert np.array_equal(k0, k1) and np.array_equal(d0, d1)
    assert multipart["descriptor"] == {"kind": "float", "dim": 128, "metric": "l2"}
    assert multipart["image_size"] == {"width": 512, "height": 512}


def test_extract_options(client: httpx.Client, photo: np.ndarray) -> None:
    png = encode(photo)
    body = client.post(
        "/v1/extract",
        files={"image": ("a.png", png)},
        data={"model": "orb", "max_keypoints": "300", "uniform": "grid", "border_margin": "40"},
    ).json()
    keypoints, descriptors = decode_features(body)
    assert len(keypoints) == 300 and descriptors.shape == (300, 32)
    assert keypoints.min() >= 40 and keypoints.max() <= 511 - 40
    half = client.post(
        "/v1/extract",
        files={"image": ("a.png", png)},
        data={"descriptor_encoding": "base64", "descriptor_dtype": "float16", "max_keypoints": "50"},
    ).json()
    assert half["descriptors"]["dtype"] == "float16" and len(base64.b64decode(half["descriptors"]["data"])) == 50 * 256
    bare = client.post("/v1/extract", files={"image": ("a.png", png)}, data={"include_descriptors": "false"}).json()
    assert bare["descriptors"] is None and len(bare["keypoints"]) == len(bare["scores"]) > 0
    full = client.post("/v1/extract", files={"image": ("a.png", png)}).json()
    assert bare["keypoints"] == full["keypoints"]  # detection alone finds the same keypoints
    # tiny-cnn detects by extracting: its detect jobs share the extract batch and drop the descriptors.
    tiny = {"model": "tiny-cnn", "max_keypoints": "50"}
    detected = client.post("/v1/extract", files={"image": ("a.png", png)}, data={**tiny, "include_descriptors": "0"})
    extracted = client.post("/v1/extract", files={"image": ("a.png", png)}, data=tiny)
    assert detected.json()["descriptors"] is None
    assert detected.json()["keypoints"] == extracted.json()["keypoints"]


def test_extract_batch_keeps_request_order(client: httpx.Client, photo: np.ndarray) -> None:
    images = [photo, photo[:256, :300], photo[100:, 50:]]
    files = [("images", (f"{i}.png", encode(image))) for i, image in enumerate(images)]
    body = client.post("/v1/extract/batch", files=files, data={"model": "tiny-cnn", "max_keypoints": "64"}).json()
    sizes = [(r["image_size"]["width"], r["image_size"]["height"]) for r in body["results"]]
    assert sizes == [(512, 512), (300, 256), (462, 412)]


def test_match_uploaded_feature_sets(client: httpx.Client, photo: np.ndarray, warped_photo: np.ndarray) -> None:
    f0 = client.post("/v1/extract", files={"image": ("a.png", encode(photo))}, data={"model": "akaze"}).json()
    f1 = client.post(
        "/v1/extract",
        files={"image": ("b.png", encode(warped_photo))},
        data={"model": "akaze", "descriptor_encoding": "base64"},
    ).json()
    body = client.post("/v1/match", json={"features0": f0, "features1": f1, "geometry": "homography"}).json()
    assert body["model"] is None and body["num_keypoints0"] == f0["num_keypoints"]
    assert homography_corner_error(np.array(body["geometry"]["matrix"]), TEST_HOMOGRAPHY, (512, 512)) < 3.0
    # Keypoints carry OpenCV's size (pixels) and angle (degrees); a feature set sent back is checked for them.
    assert len(f0["sizes"]) == len(f0["angles"]) == f0["num_keypoints"] and min(f0["sizes"]) > 0
    assert all(0 <= a < 360 for a in f0["angles"]) and len(set(f0["angles"])) > 10
    refused = client.post("/v1/match", json={"features0": f0 | {"angles": f0["angles"][:-1]}, "features1": f1})
    assert refused.status_code == 400 and "features0.angles" in refused.json()["error"]["message"]


def test_concurrent_requests_get_the_same_answers_as_sequential(
    server: Server, client: httpx.Client, photo: np.ndarray
) -> None:
    # 32 different images over two models, sent one by one and then all at once: batching must not mix them.
    rng = np.random.default_rng(0)
    crops = []
    for _ in range(16):
        y, x = rng.integers(0, 200, 2)
        crops.append(encode(photo[y : y + 300, x : x + 300]))
    jobs = [(model, png) for png in crops for model in ("tiny-cnn", "orb")]

    def request(model: str, png: bytes) -> dict:
        return {"files": {"image": ("x.png", png)}, "data": {"model": model, "descriptor_encoding": "base64"}}

    sequential = [client.post("/v1/extract", **request(m, p)).json() for m, p in jobs]

    async def concurrent() -> list[dict]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as session:
            responses = await asyncio.gather(*(session.post("/v1/extract", **request(m, p)) for m, p in jobs))
        return [r.json() for r in responses]

    together = asyncio.run(concurrent())
    for alone, batched in zip(sequential, together, strict=True):
        k0, d0 = decode_features(alone)
        k1, d1 = decode_features(batched)
        assert np.array_equal(k0, k1)
        assert np.allclose(d0.astype(float), d1.astype(float), atol=1e-5)
    metrics = client.get("/metrics").text
    batches = metric_value(metrics, "featureserve_batch_size_count", model="tiny-cnn")
    # Fewer batches than images proves that concurrent images shared batches.
    assert 0 < batches < metric_value(metrics, "featureserve_batch_size_sum", model="tiny-cnn")


def test_models_and_operations_endpoints(client: httpx.Client) -> None:
    listing = client.get("/v1/models").json()
    assert listing["default_model"] == "sift"
    names = [card["name"] for card in listing["models"]]
    assert names == ["sift", "orb", "akaze", "tiny-cnn"]
    card = client.get("/v1/models/orb").json()
    assert card["descriptor"] == {"kind": "binary", "dim": 256, "metric": "hamming"} and card["licence"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    metrics = client.get("/metrics").text
    for name in ("featureserve_requests_total", "featureserve_queue_wait_seconds", "featureserve_keypoints_per_image"):
        assert name in metrics
    assert "featureserve_request_latency_seconds_bucket" in metrics
    docs = client.get("/openapi.json").json()
    assert {"/v1/extract", "/v1/extract/batch", "/v1/match", "/v1/models"} <= set(docs["paths"])


def test_openapi_examples_work_when_pasted(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/extract", "/v1/extract/batch", "/v1/match"):
        example = paths[path]["post"]["requestBody"]["content"]["application/json"]["example"]
        response = client.post(path, json=example)
        assert response.status_code == 200, (path, response.text)

"""``POST /v1/match/batch`` and gRPC ``MatchBatch``: many pairs, each image extracted once, answers as pairwise."""

from __future__ import annotations

import itertools
import json

import grpc
import httpx
import numpy as np
import pytest

from benchmarks.common import metric_value
from featureserve.arrays import to_array
from featureserve.client import GrpcClient, RestClient
from featureserve.v1 import service_pb2 as service
from featureserve.v1.service_pb2_grpc import FeatureServiceStub
from tests.conftest import Server, encode

COUNT = 20


@pytest.fixture(scope="module")
def photos(photo: np.ndarray) -> list[bytes]:
    """Twenty overlapping 192x192 crops of one photo, as PNG."""
    offsets = [(17 * (i % 5), 23 * (i // 5)) for i in range(COUNT)]
    return [encode(np.ascontiguousarray(photo[y : y + 192, x : x + 192])) for x, y in offsets]


def extracted(client: httpx.Client, model: str) -> float:
    """Images the server has extracted with ``model`` so far."""
    return metric_value(client.get("/metrics").text, "featureserve_keypoints_per_image_count", model=model)


def test_twenty_images_in_all_190_pairs_each_extracted_once(client: httpx.Client, photos: list[bytes]) -> None:
    pairs = [list(pair) for pair in itertools.combinations(range(COUNT), 2)]
    before = extracted(client, "orb")
    files = [("images", (f"{i}.png", image, "image/png")) for i, image in enumerate(photos)]
    fields = {"model": "orb", "max_keypoints": "300", "geometry": "homography", "pairs": json.dumps(pairs)}
    response = client.post("/v1/match/batch", files=files, data=fields)
    assert response.status_code == 200, response.text
    body = response.json()
    assert extracted(client, "orb") - before == COUNT
    assert body["model"] == "orb" and len(body["pairs"]) == len(pairs) == 190
    # Every answer is the one /v1/match gives for that pair (a sample: pairwise calls cost two extractions each).
    for k in range(0, len(pairs), 19):
        i, j = pairs[k]
        pair_files = {"image0": ("a.png", photos[i], "image/png"), "image1": ("b.png", photos[j], "image/png")}
        single = client.post("/v1/match", files=pair_files, data={k: v for k, v in fields.items() if k != "pairs"})
        assert single.status_code == 200
        expected, got = single.json(), body["pairs"][k]
        assert got["matches"] == expected["matches"] and got["inliers"] == expected["inliers"], (i, j)
        assert np.allclose(got["geometry"]["matrix"], expected["geometry"]["matrix"])


def test_feature_sets_sent_once_match_as_images_do(client: httpx.Client, photos: list[bytes]) -> None:
    sets = [
        client.post("/v1/extract", files={"image": ("x.png", image, "image/png")}, data={"model": "sift"}).json()
        for image in photos[:3]
    ]
    pairs = [[0, 1], [2, 0]]
    from_features = client.post("/v1/match/batch", json={"features": sets, "pairs": pairs}).json()
    from_images = client.post(
        "/v1/match/batch",
        files=[("images", (f"{i}.png", image, "image/png")) for i, image in enumerate(photos[:3])],
        data={"model": "sift", "pairs": json.dumps(pairs), "include_features": "true"},
    ).json()
    assert from_features["model"] is None and from_images["model"] == "sift"
    for a, b in zip(from_features["pairs"], from_images["pairs"], strict=True):
        assert a["matches"] == b["matches"] and a["num_matches"] > 20
    assert [f["keypoints"] for f in from_images["features"]] == [s["keypoints"] for s in sets]


@pytest.mark.parametrize(
    ("fields", "status", "words"),
    [
        ({"pairs": "[[0, 5]]"}, 400, "pairs[0]"),
        ({"pairs": "[[1, 1]]"}, 400, "itself"),
        ({"pairs": "[]"}, 400, "missing pairs"),
        ({"pairs": "not json"}, 400, "pairs"),
        ({"pairs": "[[0, 1]]", "draw": "true"}, 422, "draw"),
        ({}, 400, "pairs"),
    ],
)
def test_bad_pairs_are_refused_naming_the_field(
    client: httpx.Client, photos: list[bytes], fields: dict, status: int, words: str
) -> None:
    files = [("images", (f"{i}.png", image, "image/png")) for i, image in enumerate(photos[:2])]
    response = client.post("/v1/match/batch", files=files, data={"model": "orb", **fields})
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]


def test_too_many_pairs_is_413(client: httpx.Client, photos: list[bytes]) -> None:
    files = [("images", (f"{i}.png", image, "image/png")) for i, image in enumerate(photos[:2])]
    response = client.post("/v1/match/batch", files=files, data={"model": "orb", "pairs": json.dumps([[0, 1]] * 1025)})
    assert response.status_code == 413 and "FEATURESERVE_MAX_REQUEST_PAIRS" in response.json()["error"]["message"]


def test_grpc_and_clients_answer_as_rest(server: Server, photos: list[bytes]) -> None:
    pairs = [(0, 1), (3, 2), (4, 0)]
    with RestClient(server.url) as rest, GrpcClient(server.grpc_target) as grpc_client:
        over_rest = rest.match_pairs(photos[:5], pairs, model="orb", geometry="homography")
        over_grpc = grpc_client.match_pairs(photos[:5], pairs, model="orb", geometry="homography")
        features = [grpc_client.extract(image, model="orb") for image in photos[:2]]
        from_sets = [client.match(*features, geometry="homography") for client in (rest, grpc_client)]
    for a, b in zip(over_rest, over_grpc, strict=True):
        assert np.array_equal(a.matches, b.matches) and np.array_equal(a.inliers, b.inliers)
    for result in from_sets:
        assert np.array_equal(result.matches, over_rest[0].matches)
    stub = FeatureServiceStub(grpc.insecure_channel(server.grpc_target))
    bad = service.MatchBatchRequest(pairs=to_array(np.array([[0, 7]], np.int32), "int32"))
    bad.images.add(encoded=photos[0])
    with pytest.raises(grpc.RpcError) as error:
        stub.MatchBatch(bad, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "pairs[0]" in error.value.details()


def test_a_feature_set_field_larger_than_a_megabyte_is_taken(client: httpx.Client, photo: np.ndarray) -> None:
    """Multipart fields are limited by ``max_request_bytes``, not Starlette's 1 MB default per part."""
    image = encode(np.ascontiguousarray(np.tile(photo, (2, 2, 1))))
    answer = client.post("/v1/extract", files={"image": ("x.png", image, "image/png")}, data={"max_keypoints": "4096"})
    features = answer.json()  # JSON float descriptors: several MB as one form field
    field = json.dumps(features)
    assert len(field) > 2**20 and len(features["keypoints"]) > 2048
    response = client.post("/v1/match", data={"features0": field, "features1": field})
    assert response.status_code == 200, response.text
    assert response.json()["num_matches"] > 1000  # a set matched to itself (tiles and orientations tie some)

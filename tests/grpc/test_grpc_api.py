"""The gRPC API on a real server: same answers as REST, health, reflection, and clear error statuses."""

from __future__ import annotations

import asyncio
import base64

import cv2
import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from featureserve.arrays import to_array
from featureserve.client import AsyncGrpcClient, GrpcClient
from featureserve.v1 import features_pb2 as pb
from featureserve.v1 import service_pb2 as service
from tests.conftest import Server, encode, fastest_seconds


@pytest.fixture(scope="module")
def grpc_client(server: Server) -> GrpcClient:
    with GrpcClient(server.grpc_target) as client:
        yield client


def rest_descriptors(body: dict) -> np.ndarray:
    array = body["descriptors"]
    return np.frombuffer(base64.b64decode(array["data"]), array["dtype"]).reshape(array["shape"])


@pytest.mark.parametrize("model", ["orb", "sift", "tiny-cnn"])
def test_extract_agrees_with_rest(model: str, photo: np.ndarray, client: httpx.Client, grpc_client: GrpcClient) -> None:
    png = encode(photo)
    rest = client.post(
        "/v1/extract",
        files={"image": ("a.png", png)},
        data={"model": model, "max_keypoints": "500", "descriptor_encoding": "base64"},
    ).json()
    features = grpc_client.extract(png, model=model, max_keypoints=500)
    assert features.model == model and len(features.keypoints) == rest["num_keypoints"] > 0
    np.testing.assert_array_equal(features.keypoints, np.asarray(rest["keypoints"], np.float32))
    np.testing.assert_array_equal(features.descriptors, rest_descriptors(rest))
    assert features.image_size == (photo.shape[1], photo.shape[0])
    assert features.descriptor == rest["descriptor"]


def test_raw_pixels_give_the_same_features_as_encoded_png(photo: np.ndarray, grpc_client: GrpcClient) -> None:
    encoded = grpc_client.extract(encode(photo), model="orb", max_keypoints=300)
    raw = grpc_client.extract(photo, model="orb", max_keypoints=300)
    np.testing.assert_array_equal(raw.keypoints, encoded.keypoints)
    grey = grpc_client.extract(cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY), model="orb", max_keypoints=300)
    assert len(grey.keypoints) == 300


def test_match_agrees_with_rest(
    photo: np.ndarray, warped_photo: np.ndarray, client: httpx.Client, grpc_client: GrpcClient
) -> None:
    png0, png1 = encode(photo), encode(warped_photo)
    options = {"model": "sift", "max_keypoints": 800, "geometry": "homography"}
    rest = client.post("/v1/match", files={"image0": ("a.png", png0), "image1": ("b.png", png1)}, data=options).json()
    result = grpc_client.match(png0, png1, **options)
    np.testing.assert_array_equal(result.matches, np.asarray(rest["matches"]))
    np.testing.assert_array_equal(result.points0, np.asarray(rest["points0"], np.float32))
    np.testing.assert_array_equal(result.inliers, np.asarray(rest["inliers"]))
    assert result.geometry.num_inliers == rest["num_inliers"] > 50
    np.testing.assert_allclose(result.geometry.matrix, np.asarray(rest["geometry"]["matrix"]))


def test_match_uploaded_feature_sets_and_describe(photo: np.ndarray, warped_photo: np.ndarray, server: Server) -> None:
    with GrpcClient(server.grpc_target) as client:
        features = [client.extract(image, model="orb", max_keypoints=500) for image in (photo, warped_photo)]
        request = service.MatchRequest(
            features0=feature_set_message(features[0]),
            features1=feature_set_message(features[1]),
            match_options=pb.MatchOptions(geometry="homography"),
        )
        response = client.stub.Match(request)
        by_images = client.match(photo, warped_photo, model="orb", max_keypoints=500, geometry="homography")
        assert response.model == "" and response.num_matches == len(by_images.matches) > 50
        described = client.describe(photo, features[0].keypoints, model="orb")
        assert described.descriptors.shape == features[0].descriptors.shape


def feature_set_message(features) -> pb.FeatureSet:
    return pb.FeatureSet(
        keypoints=to_array(features.keypoints, "float32"),
        scores=to_array(features.scores, "float32"),
        descriptors=to_array(features.descriptors, "uint8"),
        descriptor=pb.DescriptorInfo(**features.descriptor),
    )


def test_list_models_shows_the_same_cards_as_rest(client: httpx.Client, grpc_client: GrpcClient) -> None:
    rest = client.get("/v1/models").json()
    response = grpc_client.list_models()
    assert response.default_model == rest["default_model"]
    assert [m.name for m in response.models] == [m["name"] for m in rest["models"]]
    assert response.models[0].descriptor.dim == rest["models"][0]["descriptor"]["dim"]


def test_async_client_extract_batch_keeps_order(photo: np.ndarray, server: Server) -> None:
    images = [photo, photo[::2, ::2].copy(), photo[:300, :400].copy()]

    async def scenario() -> list:
        async with AsyncGrpcClient(server.grpc_target) as client:
            return await client.extract_batch(images, model="orb", max_keypoints=200)

    results = asyncio.run(scenario())
    assert [r.image_size for r in results] == [(i.shape[1], i.shape[0]) for i in images]


def test_health_and_reflection(server: Server) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "featureserve.v1.FeatureService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert {"featureserve.v1.FeatureService", "grpc.health.v1.Health"} <= set(services)


BAD_REQUESTS = {
    "undecodable image": (service.ExtractRequest(image=pb.Image(encoded=b"not an image")), "image"),
    "missing image": (service.ExtractRequest(), "missing image"),
    "pixel byte length": (
        service.ExtractRequest(image=pb.Image(pixels=pb.Array(dtype="uint8", shape=[10, 10], data=b"\0" * 99))),
        "needs 100",
    ),
    "pixel dtype": (
        service.ExtractRequest(image=pb.Image(pixels=pb.Array(dtype="float32", shape=[2, 2], data=b"\0" * 16))),
        "dtype",
    ),
    "pixel channels": (
        service.ExtractRequest(image=pb.Image(pixels=pb.Array(dtype="uint8", shape=[2, 2, 4], data=b"\0" * 16))),
        "shape",
    ),
    "unknown option value": (
        service.ExtractRequest(image=pb.Image(encoded=b"x"), options=pb.ExtractOptions(uniform="spiral")),
        "uniform",
    ),
    "too many keypoints": (
        service.ExtractRequest(image=pb.Image(encoded=b"x"), options=pb.ExtractOptions(max_keypoints=10**9)),
        "max_keypoints",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_is_invalid_argument_with_a_message(case: str, grpc_client: GrpcClient) -> None:
    request, fragment = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as caught:
        grpc_client.stub.Extract(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in caught.value.details()


def test_bad_match_inputs(photo: np.ndarray, grpc_client: GrpcClient) -> None:
    keypoints = to_array(np.zeros((3, 2)), "float32")
    wrong_rows = pb.FeatureSet(keypoints=keypoints, descriptors=to_array(np.zeros((4, 8)), "float32"))
    cases = {
        "descriptors.shape is [4, 8]; expected [3, *]": service.MatchRequest(
            features0=wrong_rows, features1=wrong_rows
        ),
        "essential needs intrinsics": service.MatchRequest(
            image0=pb.Image(pixels=to_array(photo, "uint8")),
            image1=pb.Image(pixels=to_array(photo, "uint8")),
            match_options=pb.MatchOptions(geometry="essential"),
        ),
    }
    for fragment, request in cases.items():
        with pytest.raises(grpc.RpcError) as caught:
            grpc_client.stub.Match(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, fragment
        assert fragment in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        grpc_client.extract(photo, model="sirf")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND and "sirf" in caught.value.details()
    # The server still answers normally afterwards.
    assert len(grpc_client.extract(photo, model="orb", max_keypoints=10).keypoints) == 10


def test_overload_is_resource_exhausted_with_retry_after(small_queue_server: Server, big_png: bytes) -> None:
    async def flood() -> list:
        async with AsyncGrpcClient(small_queue_server.grpc_target, max_retries=0) as client:
            calls = [client.stub.Extract(service.ExtractRequest(image=pb.Image(encoded=big_png))) for _ in range(12)]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(flood())
    errors = [r for r in results if isinstance(r, grpc.RpcError)]
    assert len(errors) < len(results) - 3  # one running plus a full queue of three were admitted
    assert errors and all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in errors)
    assert "queued" in errors[0].details()
    metadata = dict(errors[0].trailing_metadata())
    assert float(metadata["retry-after-s"]) >= 1.0


def test_deadline_passing_in_the_queue_is_deadline_exceeded(small_queue_server: Server, big_png: bytes) -> None:
    # Sized from this machine's extraction time: three requests ahead keep the late one queued about three
    # extraction times, twice its deadline of 1.5 extraction times.
    with GrpcClient(small_queue_server.grpc_target) as warm:
        one = fastest_seconds(lambda: warm.extract(big_png, timeout=120))

    async def scenario() -> tuple[list, BaseException | None]:
        async with AsyncGrpcClient(small_queue_server.grpc_target) as client:
            busy = [asyncio.ensure_future(client.extract(big_png, timeout=120)) for _ in range(3)]
            await asyncio.sleep(0.25 * one)
            try:
                await client.extract(big_png, timeout=1.5 * one)
                late = None
            except grpc.RpcError as error:
                late = error
            return await asyncio.gather(*busy), late

    busy, late = asyncio.run(scenario())
    assert len(busy) == 3 and all(len(f.keypoints) > 0 for f in busy)
    assert late is not None and late.code() == grpc.StatusCode.DEADLINE_EXCEEDED

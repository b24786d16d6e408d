"""REST and gRPC clients, sync and asyncio, against a real server: the same call gives the same result."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest

from featureserve.client import AsyncGrpcClient, AsyncRestClient, FeatureSet, GrpcClient, RestClient, RestError
from featureserve.local import LocalClient
from featureserve.service.errors import ModelNotFound
from tests.client.conftest import assert_same
from tests.conftest import Server, start_server

EXTRACT_CASES = [
    {"model": "orb", "max_keypoints": 400},
    {"model": "sift", "max_keypoints": 300, "uniform": "grid", "descriptor_dtype": "float16"},
    {"model": "akaze", "include_descriptors": False},
]


@pytest.mark.parametrize("options", EXTRACT_CASES, ids=lambda o: o["model"])
def test_extract_is_the_same_over_rest_and_grpc(
    options: dict, image_files: list[Path], rest: RestClient, grpc_client: GrpcClient
) -> None:
    over_rest = rest.extract(image_files[0], **options)
    over_grpc = grpc_client.extract(image_files[0], **options)
    assert isinstance(over_rest, FeatureSet) and len(over_rest.keypoints) > 100
    assert_same(over_rest, over_grpc)
    assert over_rest.model == options["model"] and over_rest.image_size == (512, 512)
    if options.get("include_descriptors") is False:
        assert over_rest.descriptors is None
    else:
        expected = np.float16 if "descriptor_dtype" in options else over_rest.descriptors.dtype
        assert over_rest.descriptors.dtype == expected and len(over_rest.descriptors) == len(over_rest.keypoints)


def test_match_and_batch_are_the_same_over_rest_and_grpc(
    image_files: list[Path], photo: np.ndarray, rest: RestClient, grpc_client: GrpcClient
) -> None:
    options = {"model": "sift", "max_keypoints": 800, "geometry": "homography", "ratio": 0.9, "include_features": True}
    # Paths on one side, a raw array (PNG over REST, pixels over gRPC) on the other: still the same answer.
    over_rest = rest.match(photo, image_files[1], **options)
    over_grpc = grpc_client.match(photo, image_files[1], **options)
    assert len(over_rest.matches) > 100 and over_rest.geometry.num_inliers > 50
    assert_same(over_rest, over_grpc)
    assert over_rest.num_keypoints0 == len(over_rest.features0.keypoints) and over_rest.features0.model == "sift"
    batch = {"model": "orb", "max_keypoints": 200}
    assert_same(rest.extract_batch(image_files, **batch), grpc_client.extract_batch(image_files, **batch))


def test_essential_matrix_results_are_the_same(
    image_files: list[Path], rest: RestClient, grpc_client: GrpcClient
) -> None:
    matrix = np.array([[400.0, 0, 255.5], [0, 400.0, 255.5], [0, 0, 1]])  # (fx, fy, cx, cy) or 3x3, both ways
    options = {
        "model": "orb",
        "geometry": "essential",
        "intrinsics0": (400.0, 400.0, 255.5, 255.5),
        "intrinsics1": matrix,
    }
    over_rest = rest.match(*image_files, **options)
    assert over_rest.geometry.rotation.shape == (3, 3) and over_rest.geometry.translation.shape == (3,)
    assert_same(over_rest, grpc_client.match(*image_files, **options))


def test_model_lists_are_the_same(rest: RestClient, grpc_client: GrpcClient) -> None:
    over_rest, over_grpc = rest.list_models(), grpc_client.list_models()
    assert over_rest.default_model == over_grpc.default_model == "sift"
    assert (
        [m.name for m in over_rest.models] == [m.name for m in over_grpc.models] == ["sift", "orb", "akaze", "tiny-cnn"]
    )
    # Cards agree except for details' number types (a protobuf Struct holds every number as a double).
    for a, b in zip(over_rest.models, over_grpc.models, strict=True):
        assert (a.name, a.version, a.method, a.descriptor, a.licence) == (
            b.name,
            b.version,
            b.method,
            b.descriptor,
            b.licence,
        )
        assert a.details == b.details


def test_async_clients_give_the_sync_results(server: Server, image_files: list[Path], rest: RestClient) -> None:
    options = {"model": "orb", "max_keypoints": 300, "geometry": "fundamental"}

    async def both() -> tuple:
        async with AsyncRestClient(server.url) as a_rest, AsyncGrpcClient(server.grpc_target) as a_grpc:
            return await asyncio.gather(
                a_rest.match(*image_files, **options),
                a_grpc.match(*image_files, **options),
                a_rest.extract(image_files[0], model="orb"),
                a_grpc.list_models(),
            )

    rest_match, grpc_match, features, listing = asyncio.run(both())
    expected = rest.match(*image_files, **options)
    assert_same(rest_match, expected)
    assert_same(grpc_match, expected)
    assert_same(features, rest.extract(image_files[0], model="orb"))
    assert [m.name for m in listing.models] == [m.name for m in rest.list_models().models]


def test_the_in_process_client_gives_the_servers_result(image_files: list[Path], rest: RestClient) -> None:
    options = {"model": "sift", "max_keypoints": 500, "geometry": "homography", "include_features": True}
    assert_same(LocalClient().match(*image_files, **options), rest.match(*image_files, **options))


def test_errors(image_files: list[Path], rest: RestClient, grpc_client: GrpcClient) -> None:
    with pytest.raises(RestError) as error:
        rest.extract(image_files[0], model="nope")
    assert error.value.status == 404 and error.value.code == "model_not_found" and "nope" in error.value.message
    with pytest.raises(RestError) as error:
        rest.match(image_files[0], b"not an image")
    assert error.value.status == 400 and error.value.code == "invalid_input"
    with pytest.raises(grpc.RpcError) as rpc_error:
        grpc_client.extract(image_files[0], model="nope")
    assert rpc_error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ModelNotFound):
        LocalClient().extract(image_files[0], model="nope")
    # Unknown options are refused before anything is sent, by every client alike.
    for client in (rest, grpc_client, LocalClient()):
        with pytest.raises(TypeError, match="max_keypoint"):
            client.extract(image_files[0], max_keypoint=10)
    with pytest.raises(TypeError, match="draw"):
        grpc_client.match(*image_files, draw=True)


def test_api_keys_reach_the_server_over_both_transports(image_files: list[Path]) -> None:
    key = "client-test-key-0123456789"
    server = start_server(models='["orb"]', default_model="orb", api_keys=f'["{key}"]', warmup="false")
    try:
        with RestClient(server.url) as anonymous, pytest.raises(RestError) as error:
            anonymous.extract(image_files[0])
        assert error.value.status == 401
        with GrpcClient(server.grpc_target) as anonymous, pytest.raises(grpc.RpcError) as rpc_error:
            anonymous.extract(image_files[0])
        assert rpc_error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with RestClient(server.url, api_key=key) as over_rest, GrpcClient(server.grpc_target, api_key=key) as over_grpc:
            assert_same(over_rest.extract(image_files[0]), over_grpc.extract(image_files[0]))
    finally:
        server.stop()

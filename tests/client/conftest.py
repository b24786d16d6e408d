"""Fixtures of the client-tool tests: image files, both network clients of the shared server, comparisons."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from featureserve.client import GrpcClient, RestClient
from tests.conftest import Server, encode


@pytest.fixture(scope="session")
def image_files(tmp_path_factory: pytest.TempPathFactory, photo: np.ndarray, warped_photo: np.ndarray) -> list[Path]:
    """The photo as PNG and its warped copy as JPEG, on disk (what users pass to the CLI)."""
    folder = tmp_path_factory.mktemp("images")
    first, second = folder / "astronaut.png", folder / "warped.jpg"
    first.write_bytes(encode(photo))
    second.write_bytes(encode(warped_photo, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]))
    return [first, second]


@pytest.fixture(scope="module")
def rest(server: Server) -> Iterator[RestClient]:
    """A REST client of the shared server."""
    with RestClient(server.url) as client:
        yield client


@pytest.fixture(scope="module")
def grpc_client(server: Server) -> Iterator[GrpcClient]:
    """A gRPC client of the shared server."""
    with GrpcClient(server.grpc_target) as client:
        yield client


def assert_same(a: object, b: object, path: str = "result") -> None:
    """Equal dataclasses, field by field; arrays equal in shape, dtype kind and every value."""
    if dataclasses.is_dataclass(a):
        assert type(a) is type(b), f"{path}: {type(a).__name__} vs {type(b).__name__}"
        for field in dataclasses.fields(a):
            assert_same(getattr(a, field.name), getattr(b, field.name), f"{path}.{field.name}")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), f"{path}: array vs {type(b).__name__}"
        assert a.shape == b.shape and a.dtype.kind == b.dtype.kind and a.itemsize == b.itemsize, (
            f"{path}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        )
        np.testing.assert_array_equal(a, b, err_msg=path)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"

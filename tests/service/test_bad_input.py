"""Bad input gets its documented status and a message that says what was wrong; never a 500."""

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import encode


def _error(response: httpx.Response, status: int, code: str, words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert words.lower() in error["message"].lower(), error["message"]


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def test_image_errors(client: httpx.Client, photo: np.ndarray) -> None:
    png = encode(photo)
    cases = [
        (b"", 400, "invalid_input", "empty"),
        (b"just some text", 400, "invalid_input", "not a decodable image"),
        (png[: len(png) // 3], 400, "invalid_input", "truncated"),
        (_png(9000, 8000), 413, "payload_too_large", "pixels"),
    ]
    for data, status, code, words in cases:
        _error(client.post("/v1/extract", files={"image": ("x.png", data)}), status, code, words)


def test_too_many_bytes(client: httpx.Client) -> None:
    big = b"\x89PNG" + bytes(33 * 1024 * 1024)
    _error(client.post("/v1/extract", files={"image": ("x.png", big)}), 413, "payload_too_large", "bytes")


def test_option_and_body_errors(client: httpx.Client, photo: np.ndarray) -> None:
    png = encode(photo[:64, :64])
    files = {"image": ("x.png", png)}
    _error(
        client.post("/v1/extract", files=files, data={"max_keypoints": "lots"}), 422, "invalid_option", "max_keypoints"
    )
    _error(client.post("/v1/extract", files=files, data={"max_keypoints": "1000000"}), 422, "invalid_option", "at most")
    _error(client.post("/v1/extract", files=files, data={"uniform": "sometimes"}), 422, "invalid_option", "uniform")
    _error(client.post("/v1/extract", files=files, data={"colour": "red"}), 422, "invalid_option", "colour")
    _error(client.post("/v1/extract", files=files, data={"model": "nope"}), 404, "model_not_found", "nope")
    _error(client.post("/v1/extract", data={"model": "sift"}), 400, "invalid_input", "missing image")
    _error(
        client.post("/v1/extract", content=b"{not json", headers={"content-type": "application/json"}),
        400,
        "invalid_input",
        "json",
    )
    _error(client.post("/v1/extract", json={"image": "%%%"}), 400, "invalid_input", "base64")
    _error(
        client.post("/v1/extract", content=png, headers={"content-type": "image/png"}),
        415,
        "unsupported_media_type",
        "image/png",
    )
    _error(
        client.post("/v1/extract", files=files, headers={"X-Deadline-Ms": "soon"}),
        422,
        "invalid_option",
        "X-Deadline-Ms",
    )
    _error(client.get("/v1/nothing-here"), 404, "not_found", "not found")


def test_match_errors(client: httpx.Client, photo: np.ndarray) -> None:
    png = encode(photo[:128, :128])
    pair = {"image0": ("a.png", png), "image1": ("b.png", png)}
    _error(client.post("/v1/match", files=pair, data={"geometry": "essential"}), 422, "invalid_option", "intrinsics")
    _error(
        client.post(
            "/v1/match",
            files=pair,
            data={"geometry": "essential", "intrinsics0": "[1, 2]", "intrinsics1": "[1, 1, 0, 0]"},
        ),
        422,
        "invalid_option",
        "intrinsics0",
    )
    _error(client.post("/v1/match", files=pair, data={"ratio": "1.5"}), 422, "invalid_option", "ratio")
    # Comma-separated intrinsics, as a user types them in a form field, are taken; words get the expected form.
    typed = {"geometry": "essential", "intrinsics0": "525,525,63.5,63.5", "intrinsics1": "525 525 63.5 63.5"}
    assert client.post("/v1/match", files=pair, data=typed).status_code == 200
    worded = {**typed, "intrinsics1": "five hundred"}
    _error(
        client.post("/v1/match", files=pair, data=worded),
        422,
        "invalid_option",
        "intrinsics1: Value error, expected [fx",
    )
    # The side that failed is named.
    text = {"image0": ("a.png", png), "image1": ("b.txt", b"a text file")}
    _error(client.post("/v1/match", files=text), 400, "invalid_input", "image1: data is not a decodable image")
    _error(client.post("/v1/extract", files={"image": ("b.txt", b"text")}), 400, "invalid_input", "image: data is not")
    _error(client.post("/v1/match", files={"image0": ("a.png", png)}), 400, "invalid_input", "image1")
    good = {
        "keypoints": [[1, 2], [3, 4]],
        "descriptors": {
            "encoding": "base64",
            "dtype": "float32",
            "shape": [2, 4],
            "data": base64.b64encode(bytes(32)).decode(),
        },
    }
    short = {**good, "descriptors": {**good["descriptors"], "data": base64.b64encode(bytes(30)).decode()}}
    _error(client.post("/v1/match", json={"features0": good, "features1": short}), 400, "invalid_input", "bytes")
    rows = {**good, "keypoints": [[1, 2]]}
    _error(client.post("/v1/match", json={"features0": good, "features1": rows}), 400, "invalid_input", "rows")
    binary = {
        "keypoints": [[1, 2], [3, 4]],
        "descriptors": {"encoding": "json", "dtype": "uint8", "shape": [2, 4], "data": [[1, 2, 3, 4]] * 2},
    }
    _error(
        client.post("/v1/match", json={"features0": good, "features1": binary}), 400, "invalid_input", "not comparable"
    )
    ok = client.post("/v1/match", json={"features0": good, "features1": good})
    assert ok.status_code == 200 and ok.json()["num_matches"] == 1  # all-zero descriptors: one mutual pair


@pytest.mark.parametrize("path", ["/v1/extract", "/v1/match", "/v1/extract/batch"])
def test_garbage_multipart_never_500(client: httpx.Client, path: str) -> None:
    response = client.post(
        path, content=b"--x\r\nnonsense", headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert 400 <= response.status_code < 500, response.text
    assert "error" in response.json()

"""REST clients, sync (`RestClient`) and asyncio (`AsyncRestClient`), with the gRPC clients' call shape.

The methods, keyword options and results (`FeatureSet`, `MatchResult`, `ModelList`) are those of
`GrpcClient`, so switching transports is changing one constructor. Images go up as multipart file parts
(arrays as lossless PNG); descriptors come back as base64 of packed little-endian bytes, so arrays are
bit-for-bit those the gRPC client returns. ``timeout`` (seconds) bounds the call and is sent as the
request's ``X-Deadline-Ms``, as a gRPC deadline is. A 429 is sent again after its ``Retry-After``, at most
``max_retries`` times within the timeout (`featureserve.client.retries`). REST-only: ``draw=True`` on `match`
fills ``MatchResult.drawing`` with the PNG picture of the matches. Errors raise `RestError`.

Example:
    >>> with RestClient("http://127.0.0.1:8080") as client:
    ...     features = client.extract("image.jpg", model="orb", max_keypoints=1000)
    ...     features.keypoints.shape  # (N, 2) float32
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from .options import DRAW_OPTION, DRAWING_OPTIONS, EXTRACT_OPTIONS, MATCH_OPTIONS, check_options, intrinsics_tuple
from .results import (
    DescriptorInfo,
    FeatureSet,
    GeometryResult,
    ImageInput,
    MatchInput,
    MatchResult,
    ModelCard,
    ModelList,
    inlier_ratio,
)
from .retries import DEFAULT_MAX_RETRIES, http_retry_wait_s, retry_after_s

DEFAULT_TIMEOUT_S = 60.0
REST_MATCH_OPTIONS = EXTRACT_OPTIONS | MATCH_OPTIONS | {DRAW_OPTION} | DRAWING_OPTIONS
Files = list[tuple[str, tuple[str, bytes, str]]]


class RestError(Exception):
    """A REST error answer: HTTP ``status``, the service's error ``code`` and ``message``, its ``details``.

    ``retry_after_s`` is the ``Retry-After`` of a 429, else None.
    """

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, Any], retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.retry_after_s = retry_after_s


def image_bytes(image: ImageInput) -> bytes:
    """Encoded bytes of an image: as given, read from a path, or a uint8 array encoded as lossless PNG."""
    if isinstance(image, np.ndarray):
        from PIL import Image  # only arrays need it

        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(f"an image array must be uint8 (H, W) or (H, W, 3), got {image.dtype} {image.shape}")
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        return buffer.getvalue()
    if isinstance(image, str | Path):
        return Path(image).read_bytes()
    return bytes(image)


def _form_value(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if name in ("intrinsics0", "intrinsics1"):
        return json.dumps(list(intrinsics_tuple(value)))
    return str(value)


def form_fields(options: dict[str, Any], allowed: frozenset[str]) -> dict[str, str]:
    """Keyword options as multipart form fields (descriptors always as base64); raises ``TypeError``."""
    fields = {k: _form_value(k, v) for k, v in check_options(options, allowed).items()}
    fields["descriptor_encoding"] = "base64"
    return fields


def _file(field: str, image: ImageInput) -> tuple[str, tuple[str, bytes, str]]:
    return field, (field, image_bytes(image), "application/octet-stream")


def deadline_headers(timeout: float | None) -> dict[str, str]:
    """``X-Deadline-Ms`` for a call bounded by ``timeout`` seconds."""
    return {} if timeout is None else {"X-Deadline-Ms": f"{timeout * 1000.0:g}"}


def attempt_options(deadline: float | None) -> dict[str, Any]:
    """httpx keyword arguments of one attempt of a call that must end by ``deadline`` (`time.monotonic`)."""
    if deadline is None:
        return {}
    remaining = max(deadline - time.monotonic(), 0.001)
    return {"timeout": remaining, "headers": deadline_headers(remaining)}


def extract_request(image: ImageInput, options: dict[str, Any]) -> tuple[Files, dict[str, str]]:
    """Files and form fields of ``/v1/extract``."""
    return [_file("image", image)], form_fields(options, EXTRACT_OPTIONS)


def extract_batch_request(images: Sequence[ImageInput], options: dict[str, Any]) -> tuple[Files, dict[str, str]]:
    """Files and form fields of ``/v1/extract/batch``."""
    return [_file("images", image) for image in images], form_fields(options, EXTRACT_OPTIONS)


def feature_set_body(features: FeatureSet) -> dict[str, Any]:
    """A `FeatureSet` as the ``FeatureSet`` JSON the service accepts (descriptors as base64)."""
    descriptors, dtype = features.wire_descriptors()
    packed = np.ascontiguousarray(descriptors, np.dtype(dtype).newbyteorder("<"))
    width, height = features.image_size
    return {
        "keypoints": np.asarray(features.keypoints, np.float32).reshape(-1, 2).tolist(),
        "scores": np.asarray(features.scores, np.float32).reshape(-1).tolist(),
        **{
            field: np.asarray(values, np.float32).reshape(-1).tolist()
            for field, values in (("sizes", features.sizes), ("angles", features.angles))
            if values is not None
        },
        "descriptors": {
            "encoding": "base64",
            "dtype": dtype,
            "shape": list(packed.shape),
            "data": base64.b64encode(packed.tobytes()).decode("ascii"),
        },
        "descriptor": dict(features.descriptor),
        "image_size": {"width": width, "height": height},
    }


def match_request(image0: MatchInput, image1: MatchInput, options: dict[str, Any]) -> tuple[Files, dict[str, str]]:
    """Files and form fields of ``/v1/match``: images as file parts, feature sets as JSON fields."""
    files: Files = []
    fields = form_fields(options, REST_MATCH_OPTIONS)
    for side, value in (("0", image0), ("1", image1)):
        if isinstance(value, FeatureSet):
            fields[f"features{side}"] = json.dumps(feature_set_body(value))
        else:
            files.append(_file(f"image{side}", value))
    return files, fields


def match_pairs_request(
    inputs: Sequence[MatchInput], pairs: Sequence[Sequence[int]], options: dict[str, Any]
) -> tuple[Files, dict[str, str]]:
    """Files and form fields of ``/v1/match/batch``: all images, or all feature sets, and the index pairs."""
    fields = form_fields(options, EXTRACT_OPTIONS | MATCH_OPTIONS)
    fields["pairs"] = json.dumps([[int(i), int(j)] for i, j in pairs])
    if all(isinstance(value, FeatureSet) for value in inputs):
        fields["features"] = json.dumps([feature_set_body(value) for value in inputs])  # type: ignore[arg-type]
        return [], fields
    if any(isinstance(value, FeatureSet) for value in inputs):
        raise ValueError("match_pairs takes images or feature sets, not a mix of both")
    return [_file("images", value) for value in inputs], fields  # type: ignore[arg-type]


def check_response(response: httpx.Response) -> Any:
    """The JSON body of a 2xx answer; raises `RestError` otherwise."""
    if response.is_success:
        return response.json()
    try:
        error = response.json()["error"]
        code, message, details = error["code"], error["message"], error.get("details") or {}
    except (ValueError, KeyError, TypeError):
        code, message, details = "http_error", response.text[:500], {}
    raise RestError(response.status_code, code, message, details, retry_after_s(response.headers))


def _descriptors(value: dict[str, Any] | None) -> np.ndarray | None:
    if value is None:
        return None
    dtype = np.dtype(value["dtype"]).newbyteorder("<")
    shape = tuple(value["shape"])
    if value["encoding"] == "base64":
        return np.frombuffer(base64.b64decode(value["data"]), dtype).reshape(shape)
    return np.asarray(value["data"], dtype).reshape(shape)


def feature_set(body: dict[str, Any], model: str = "") -> FeatureSet:
    """A ``FeatureSet`` JSON object as numpy arrays."""
    size = body["image_size"]
    return FeatureSet(
        keypoints=np.asarray(body["keypoints"], np.float32).reshape(-1, 2),
        scores=np.asarray(body["scores"], np.float32).reshape(-1),
        descriptors=_descriptors(body.get("descriptors")),
        descriptor=dict(body["descriptor"]),
        image_size=(size["width"], size["height"]),
        model=model,
        sizes=None if body.get("sizes") is None else np.asarray(body["sizes"], np.float32),
        angles=None if body.get("angles") is None else np.asarray(body["angles"], np.float32),
    )


def _matrix(value: list[Any] | None, shape: tuple[int, ...]) -> np.ndarray | None:
    return None if value is None else np.asarray(value, np.float64).reshape(shape)


def geometry(body: dict[str, Any] | None, num_matches: int) -> GeometryResult | None:
    """The ``geometry`` object of a match answer."""
    if body is None:
        return None
    return GeometryResult(
        geometry=body["geometry"],
        matrix=_matrix(body["matrix"], (3, 3)),
        num_inliers=body["num_inliers"],
        inlier_ratio=inlier_ratio(body["num_inliers"], num_matches),
        rotation=_matrix(body.get("rotation"), (3, 3)),
        translation=_matrix(body.get("translation"), (3,)),
        message=body.get("message") or "",
    )


def match_result(body: dict[str, Any]) -> MatchResult:
    """A ``/v1/match`` JSON answer as numpy arrays."""
    model = body["model"] or ""
    inliers = body["inliers"]
    drawing = body.get("drawing")
    return MatchResult(
        model=model,
        matches=np.asarray(body["matches"], np.int32).reshape(-1, 2),
        points0=np.asarray(body["points0"], np.float32).reshape(-1, 2),
        points1=np.asarray(body["points1"], np.float32).reshape(-1, 2),
        distances=np.asarray(body["distances"], np.float32).reshape(-1),
        inliers=None if inliers is None else np.asarray(inliers, bool).reshape(-1),
        geometry=geometry(body["geometry"], body["num_matches"]),
        features0=feature_set(body["features0"], model) if body.get("features0") else None,
        features1=feature_set(body["features1"], model) if body.get("features1") else None,
        num_keypoints0=body["num_keypoints0"],
        num_keypoints1=body["num_keypoints1"],
        drawing=None if drawing is None else base64.b64decode(drawing),
    )


def model_list(body: dict[str, Any]) -> ModelList:
    """A ``GET /v1/models`` answer."""
    cards = [
        ModelCard(
            name=card["name"],
            version=card["version"],
            method=card["method"],
            descriptor=DescriptorInfo(**card["descriptor"]),
            keypoints=card["keypoints"],
            licence=card["licence"],
            description=card["description"],
            details=card.get("details") or {},
        )
        for card in body["models"]
    ]
    return ModelList(body["default_model"], cards)


def auth_headers(api_key: str | None) -> dict[str, str]:
    """``Authorization: Bearer <key>`` when the server needs an API key."""
    return {} if api_key is None else {"Authorization": f"Bearer {api_key}"}


class RestClient:
    """Blocking client. Options are keyword arguments named as in the API (``model``, ``max_keypoints``, ...).

    ``api_key`` is sent as ``Authorization: Bearer <key>``; ``max_retries`` bounds the resends of a 429 (0: none).
    Other keyword arguments go to `httpx.Client`, e.g. ``verify="ca.pem"`` for a server whose TLS certificate
    your CA signed.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        timeout: float = DEFAULT_TIMEOUT_S,
        api_key: str | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        **httpx_options: Any,
    ) -> None:
        headers = {**auth_headers(api_key), **httpx_options.pop("headers", {})}
        self.http = httpx.Client(base_url=base_url, timeout=timeout, headers=headers, **httpx_options)
        self.max_retries = max_retries

    def __enter__(self) -> RestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def _send(self, method: str, path: str, timeout: float | None, **content: Any) -> Any:
        """The JSON answer of a request, sent again after a 429 while retries and time are left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for retry in itertools.count(1):
            response = self.http.request(method, path, **content, **attempt_options(deadline))
            wait = http_retry_wait_s(response.status_code, response.headers, retry, self.max_retries, deadline)
            if wait is None:
                break
            time.sleep(wait)
        return check_response(response)

    def _post(self, path: str, request: tuple[Files, dict[str, str]], timeout: float | None) -> Any:
        files, data = request
        return self._send("POST", path, timeout, files=files, data=data)

    def list_models(self, timeout: float | None = None) -> ModelList:
        """The loaded models and their cards."""
        return model_list(self._send("GET", "/v1/models", timeout))

    def extract(self, image: ImageInput, timeout: float | None = None, **options: Any) -> FeatureSet:
        """Features of one image."""
        body = self._post("/v1/extract", extract_request(image, options), timeout)
        return feature_set(body, body["model"])

    def extract_batch(
        self, images: Sequence[ImageInput], timeout: float | None = None, **options: Any
    ) -> list[FeatureSet]:
        """Features of several images, in order."""
        body = self._post("/v1/extract/batch", extract_batch_request(images, options), timeout)
        return [feature_set(r, r["model"]) for r in body["results"]]

    def match(
        self, image0: MatchInput, image1: MatchInput, timeout: float | None = None, **options: Any
    ) -> MatchResult:
        """Matches of two images (or feature sets from `extract`) and, with ``geometry=...``, their verification;
        ``draw=True`` adds a PNG."""
        return match_result(self._post("/v1/match", match_request(image0, image1, options), timeout))

    def match_pairs(
        self, inputs: Sequence[MatchInput], pairs: Sequence[Sequence[int]], timeout: float | None = None, **options: Any
    ) -> list[MatchResult]:
        """One `MatchResult` per index pair ``(i, j)`` of ``inputs`` (images or feature sets), each extracted once."""
        body = self._post("/v1/match/batch", match_pairs_request(inputs, pairs, options), timeout)
        return [match_result(pair) for pair in body["pairs"]]


class AsyncRestClient:
    """asyncio client with the same methods and constructor as `RestClient`, as coroutines."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        timeout: float = DEFAULT_TIMEOUT_S,
        api_key: str | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        **httpx_options: Any,
    ) -> None:
        headers = {**auth_headers(api_key), **httpx_options.pop("headers", {})}
        self.http = httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=headers, **httpx_options)
        self.max_retries = max_retries

    async def __aenter__(self) -> AsyncRestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()

    async def _send(self, method: str, path: str, timeout: float | None, **content: Any) -> Any:
        """The JSON answer of a request, sent again after a 429 while retries and time are left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for retry in itertools.count(1):
            response = await self.http.request(method, path, **content, **attempt_options(deadline))
            wait = http_retry_wait_s(response.status_code, response.headers, retry, self.max_retries, deadline)
            if wait is None:
                break
            await asyncio.sleep(wait)
        return check_response(response)

    async def _post(self, path: str, request: tuple[Files, dict[str, str]], timeout: float | None) -> Any:
        files, data = request
        return await self._send("POST", path, timeout, files=files, data=data)

    async def list_models(self, timeout: float | None = None) -> ModelList:
        """The loaded models and their cards."""
        return model_list(await self._send("GET", "/v1/models", timeout))

    async def extract(self, image: ImageInput, timeout: float | None = None, **options: Any) -> FeatureSet:
        """Features of one image."""
        body = await self._post("/v1/extract", extract_request(image, options), timeout)
        return feature_set(body, body["model"])

    async def extract_batch(
        self, images: Sequence[ImageInput], timeout: float | None = None, **options: Any
    ) -> list[FeatureSet]:
        """Features of several images, in order."""
        body = await self._post("/v1/extract/batch", extract_batch_request(images, options), timeout)
        return [feature_set(r, r["model"]) for r in body["results"]]

    async def match(
        self, image0: MatchInput, image1: MatchInput, timeout: float | None = None, **options: Any
    ) -> MatchResult:
        """Matches of two images (or feature sets from `extract`) and, with ``geometry=...``, their verification;
        ``draw=True`` adds a PNG."""
        return match_result(await self._post("/v1/match", match_request(image0, image1, options), timeout))

    async def match_pairs(
        self, inputs: Sequence[MatchInput], pairs: Sequence[Sequence[int]], timeout: float | None = None, **options: Any
    ) -> list[MatchResult]:
        """One `MatchResult` per index pair ``(i, j)`` of ``inputs`` (images or feature sets), each extracted once."""
        body = await self._post("/v1/match/batch", match_pairs_request(inputs, pairs, options), timeout)
        return [match_result(pair) for pair in body["pairs"]]

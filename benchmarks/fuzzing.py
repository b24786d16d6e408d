"""Fuzzing harnesses shared by the CI tests (few examples) and ``benchmarks/reliability/fuzz.py`` (many).

Three targets:
- `schema_fuzz`: schemathesis cases from the live server's ``/openapi.json``, for every operation, both
  valid (positive) and schema-violating (negative), with random ``X-Deadline-Ms`` headers: never a 5xx,
  always the one error shape.
- `decode_inputs`: bytes for `decode_image`: random bytes; small valid images of every accepted format and
  many modes, then truncated, overwritten, spliced; PNG, JPEG and BMP headers claiming huge dimensions;
  decompression bombs; JPEGs with odd or corrupt EXIF. `check_decode` states what must hold.
- `grpc_calls`: FeatureService calls with random messages (arrays of any dtype, shape and length, options
  of any value, images as bytes or raw pixels of odd shapes) and raw bytes that are not messages at all,
  plus StreamFrames sessions. `check_grpc_call` sends one to a live server and states what must hold.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import cache
from typing import Any

import grpc
import numpy as np
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from PIL import Image
from schemathesis.generation import GenerationMode

from featureserve.service.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from featureserve.service.workers import DecodeLimits, decode_image
from featureserve.v1 import features_pb2 as pb
from featureserve.v1 import service_pb2 as service

# The decode harness runs with small limits, so bombs and huge headers cross them cheaply.
FUZZ_LIMITS = DecodeLimits(max_bytes=2 * 1024 * 1024, max_pixels=4_000_000)
ALLOWED_DECODE_ERRORS = (InvalidInput, PayloadTooLarge, UnsupportedMediaType)


# ----------------------------------------------------------------------------------------- image decoding


def _save(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


@cache
def seed_images() -> tuple[bytes, ...]:
    """Small valid files: every accepted format, many modes, EXIF orientations, several frames."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 16, 3), np.uint8))
    grey = rgb.convert("L")
    seeds = [
        _save(grey, "PNG"),
        _save(rgb, "PNG"),
        _save(rgb.convert("RGBA"), "PNG"),
        _save(grey.convert("LA"), "PNG"),
        _save(rgb.convert("P"), "PNG"),
        _save(grey.convert("1"), "PNG"),
        _save(Image.fromarray(rng.integers(0, 65536, (12, 16), np.uint16)), "PNG"),
        _save(rgb, "JPEG", quality=80),
        _save(grey, "JPEG"),
        _save(rgb.convert("CMYK"), "JPEG"),
        _save(rgb, "JPEG", progressive=True),
        _save(rgb, "WEBP"),
        _save(rgb.convert("RGBA"), "WEBP", lossless=True),
        _save(rgb, "TIFF"),
        _save(rgb, "TIFF", compression="tiff_deflate"),
        _save(Image.fromarray(rng.random((12, 16)).astype(np.float32)), "TIFF"),
        _save(Image.fromarray(rng.integers(-(2**31), 2**31 - 1, (12, 16), np.int32)), "TIFF"),
        _save(rgb, "TIFF", save_all=True, append_images=[grey.convert("RGB")]),
        _save(rgb, "BMP"),
        _save(grey, "BMP"),
        _save(rgb, "PPM"),
        _save(grey, "PPM"),
        _save(rgb, "GIF"),  # not an accepted format: 415
    ]
    for orientation in (0, 1, 3, 5, 6, 8, 9, 255, 65535):
        exif = Image.Exif()
        exif[0x0112] = orientation
        seeds.append(_save(rgb, "JPEG", exif=exif.tobytes()))
    return tuple(seeds)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_header(width: int, height: int, colour_type: int, data: bytes = b"") -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (CRCs right), with ``data`` deflated as its IDAT."""
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(data))
        + _png_chunk(b"IEND", b"")
    )


@cache
def bombs() -> tuple[bytes, ...]:
    """Decompression bombs: tiny files of all-zero images past (and just inside) `FUZZ_LIMITS`."""
    over = png_with_header(2500, 2000, 0, bytes(2000 * 2501))  # 5 Mpx in about 5 KB
    inside = png_with_header(2000, 2000, 0, bytes(2000 * 2001))  # 4 Mpx: decodes
    huge = png_with_header(60000, 60000, 0, bytes(60001 * 10))  # 3.6 Gpx claimed, data cut short
    return over, inside, huge


def _patched_dimensions(data: bytes, fmt: str, width: int, height: int) -> bytes:
    buffer = bytearray(data)
    if fmt == "JPEG":
        at = buffer.find(b"\xff\xc0")
        if at < 0:
            at = buffer.find(b"\xff\xc2")
        struct.pack_into(">HH", buffer, at + 5, height & 0xFFFF, width & 0xFFFF)
    elif fmt == "BMP":
        struct.pack_into("<ii", buffer, 18, width, height)
    return bytes(buffer)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(seed_images())))
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["truncate", "overwrite", "insert", "delete"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if operation == "truncate":
            del data[at:]
        elif operation == "overwrite" and data:
            data[at] = draw(st.integers(0, 255))
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


@st.composite
def _huge_headers(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["png", "jpeg", "bmp"]))
    if kind == "png":
        side = st.integers(1, 2**31 - 1)
        return png_with_header(draw(side), draw(side), draw(st.sampled_from([0, 2, 3, 4, 6, 7])), draw(st.binary()))
    seeds = seed_images()
    if kind == "jpeg":
        return _patched_dimensions(seeds[7], "JPEG", draw(st.integers(0, 65535)), draw(st.integers(0, 65535)))
    side = st.integers(-(2**31), 2**31 - 1)
    return _patched_dimensions(seeds[18], "BMP", draw(side), draw(side))


@st.composite
def _corrupt_exif(draw: st.DrawFn) -> bytes:
    rgb = Image.fromarray(np.full((8, 8, 3), 128, np.uint8))
    return _save(rgb, "JPEG", exif=b"Exif\x00\x00" + draw(st.binary(max_size=256)))


def decode_inputs() -> st.SearchStrategy[bytes]:
    """Hostile and odd inputs for `decode_image`."""
    return st.one_of(
        st.binary(max_size=2048),
        st.sampled_from(seed_images()),
        _mutated(),
        _huge_headers(),
        st.sampled_from(bombs()),
        _corrupt_exif(),
    )


def check_decode(data: bytes) -> str:
    """Decode ``data`` under `FUZZ_LIMITS`: a uint8 grey or RGB array within the limits, or one of the
    documented errors; anything else fails. Returns what happened (``"ok"`` or the error's code)."""
    try:
        array = decode_image(data, FUZZ_LIMITS)
    except ALLOWED_DECODE_ERRORS as error:
        assert error.message, "an error must say what was wrong"
        return error.code
    assert isinstance(array, np.ndarray) and array.dtype == np.uint8, (type(array), getattr(array, "dtype", None))
    assert array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3), array.shape
    assert array.shape[0] >= 1 and array.shape[1] >= 1, array.shape
    assert array.shape[0] * array.shape[1] <= FUZZ_LIMITS.max_pixels, array.shape
    return "ok"


# ------------------------------------------------------------------------------------------- gRPC messages

# Status codes a client may get for anything it sends; INTERNAL, UNKNOWN or UNAVAILABLE would mean a bug.
ALLOWED_CODES = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
MODELS = ("orb", "sift", "akaze", "tiny-cnn")
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
TEXT = st.one_of(st.sampled_from(["", "none", "grid", "anms", "float16", "../etc/passwd"]), st.text(max_size=12))


def _small_ints() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(-3, 70), st.integers(-(2**31), 2**31 - 1))


@st.composite
def arrays(draw: st.DrawFn, dtype: str | None = None, shape: tuple[int | None, ...] | None = None) -> pb.Array:
    """An ``Array`` of any dtype and shape whose bytes may or may not fit them."""
    dtype = dtype or draw(st.sampled_from(["uint8", "float32", "float16", "float64", "int32", "", "int64", "u8"]))
    dims = st.one_of(st.integers(0, 40), st.integers(-3, -1), st.integers(2**31, 2**62))
    if shape is None:
        dims_list = draw(st.lists(dims, max_size=4))
    else:
        dims_list = [draw(st.integers(1, 40)) if d is None else d for d in shape]
    size = math.prod(dims_list) if all(0 <= d <= 10_000 for d in dims_list) else -1
    itemsize = {"float32": 4, "float16": 2, "float64": 8, "int32": 4}.get(dtype, 1)
    if 0 <= size <= 20_000 and draw(st.booleans()):
        data = draw(st.binary(min_size=size * itemsize, max_size=size * itemsize))
    else:
        data = draw(st.binary(max_size=64))
    return pb.Array(dtype=dtype, shape=dims_list, data=data)


@st.composite
def images(draw: st.DrawFn) -> pb.Image:
    """Encoded bytes (hostile or valid) or raw pixels of odd shapes (1 x N, N x 1, grey, RGB, wrong ones)."""
    kind = draw(st.sampled_from(["encoded", "pixels", "valid_pixels", "empty"]))
    if kind == "encoded":
        return pb.Image(encoded=draw(st.one_of(st.sampled_from(seed_images()), _mutated(), st.binary(max_size=64))))
    if kind == "pixels":
        return pb.Image(pixels=draw(arrays()))
    if kind == "valid_pixels":
        side = st.one_of(st.integers(1, 20), st.integers(16, 120))  # below and above the 16 px minimum
        height, width = draw(side), draw(side)
        channels = draw(st.sampled_from([(), (3,)]))
        content = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(0, 256, (height, width, *channels))
        return pb.Image(
            pixels=pb.Array(dtype="uint8", shape=[height, width, *channels], data=content.astype(np.uint8).tobytes())
        )
    return pb.Image()


@st.composite
def extract_options(draw: st.DrawFn) -> pb.ExtractOptions:
    """Any subset of the extraction options; half the time all valid (so the models run), else any values."""
    if draw(st.booleans()):
        fields = {
            "model": st.sampled_from(MODELS),
            "max_keypoints": st.integers(1, 300),
            "uniform": st.sampled_from(["none", "grid", "anms"]),
            "border_margin": st.integers(0, 20),
            "include_descriptors": st.booleans(),
            "descriptor_dtype": st.sampled_from(["float32", "float16"]),
        }
    else:
        fields = {
            "model": st.one_of(st.sampled_from(MODELS), TEXT),
            "max_keypoints": _small_ints(),
            "uniform": TEXT,
            "border_margin": _small_ints(),
            "include_descriptors": st.booleans(),
            "descriptor_dtype": st.one_of(st.sampled_from(["float32", "float16"]), TEXT),
        }
    return pb.ExtractOptions(**draw(st.fixed_dictionaries({}, optional=fields)))


@st.composite
def intrinsics(draw: st.DrawFn) -> pb.Intrinsics:
    value = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([525.0, 320.0, 0.0, -1.0]))
    return pb.Intrinsics(fx=draw(value), fy=draw(value), cx=draw(value), cy=draw(value))


@st.composite
def match_options(draw: st.DrawFn) -> pb.MatchOptions:
    """Any subset of the match options; half the time all valid, else any values."""
    if draw(st.booleans()):
        fields = {
            "matcher": st.sampled_from(["mnn", "nn"]),
            "ratio": st.floats(0.5, 1.0),
            "geometry": st.sampled_from(["none", "homography", "fundamental", "essential"]),
            "intrinsics0": st.just(pb.Intrinsics(fx=525, fy=525, cx=32, cy=24)),
            "intrinsics1": st.just(pb.Intrinsics(fx=525, fy=525, cx=32, cy=24)),
            "ransac_threshold": st.floats(0.1, 10),
            "ransac_max_iterations": st.integers(1, 1000),
            "include_features": st.booleans(),
        }
        return pb.MatchOptions(**draw(st.fixed_dictionaries({}, optional=fields)))
    fields = {
        "matcher": st.one_of(st.sampled_from(["mnn", "nn"]), TEXT),
        "ratio": FLOATS,
        "max_distance": FLOATS,
        "geometry": st.one_of(st.sampled_from(["none", "homography", "fundamental", "essential"]), TEXT),
        "intrinsics0": intrinsics(),
        "intrinsics1": intrinsics(),
        "ransac_threshold": FLOATS,
        "ransac_confidence": FLOATS,
        "ransac_max_iterations": _small_ints(),
        "include_features": st.booleans(),
    }
    return pb.MatchOptions(**draw(st.fixed_dictionaries({}, optional=fields)))


@st.composite
def feature_sets(draw: st.DrawFn) -> pb.FeatureSet:
    """Uploaded feature sets, consistent or not."""
    rows = draw(st.integers(0, 30))
    consistent = draw(st.booleans())
    dtype = draw(st.sampled_from(["uint8", "float32", "float16", "float64"]))
    width = draw(st.sampled_from([1, 8, 32, 64]))
    message = pb.FeatureSet(
        keypoints=draw(arrays("float32", (rows, 2))) if consistent else draw(arrays()),
        descriptors=draw(arrays(dtype, (rows, width))) if consistent else draw(arrays()),
    )
    if draw(st.booleans()):
        message.scores.CopyFrom(draw(arrays("float32", (rows,))) if consistent else draw(arrays()))
    if draw(st.booleans()):
        message.descriptor.CopyFrom(
            pb.DescriptorInfo(kind=draw(TEXT), dim=draw(_small_ints()), metric=draw(st.one_of(st.just("l2"), TEXT)))
        )
    if draw(st.booleans()):
        message.image_size.CopyFrom(pb.ImageSize(width=draw(_small_ints()), height=draw(_small_ints())))
    return message


@dataclass
class Call:
    """One call to make: ``method`` of FeatureService with ``request`` (a message, raw bytes, or stream messages)."""

    method: str
    request: Any

    def __repr__(self) -> str:
        return f"Call({self.method}, {str(self.request)[:2000]!r})"


@st.composite
def _stream(draw: st.DrawFn) -> list[service.StreamFramesRequest]:
    messages = []
    if draw(st.booleans()):
        session = service.SessionOptions(options=draw(extract_options()), match_options=draw(match_options()))
        if draw(st.booleans()):
            session.backpressure = draw(st.one_of(st.sampled_from(["queue", "latest"]), TEXT))
        if draw(st.booleans()):
            session.frame_deadline_ms = draw(FLOATS)
        messages.append(service.StreamFramesRequest(session=session))
    for sequence in range(draw(st.integers(0, 3))):
        frame = service.Frame(sequence=sequence, image=draw(images()), keyframe=draw(st.booleans()))
        if draw(st.booleans()):
            frame.intrinsics.CopyFrom(draw(intrinsics()))
        messages.append(service.StreamFramesRequest(frame=frame))
    return messages


def grpc_calls() -> st.SearchStrategy[Call]:
    """Random FeatureService calls (see the module docstring)."""
    methods = ["ListModels", "Extract", "ExtractBatch", "Describe", "Match", "MatchBatch"]
    return st.one_of(
        st.builds(lambda o: Call("ListModels", service.ListModelsRequest()), st.none()),
        st.builds(
            lambda i, o: Call("Extract", service.ExtractRequest(image=i, options=o)), images(), extract_options()
        ),
        st.builds(
            lambda i, o: Call("ExtractBatch", service.ExtractBatchRequest(images=i, options=o)),
            st.lists(images(), max_size=3),
            extract_options(),
        ),
        st.builds(
            lambda i, k, o: Call("Describe", service.DescribeRequest(image=i, keypoints=k, options=o)),
            images(),
            st.one_of(arrays("float32", (None, 2)), arrays()),
            extract_options(),
        ),
        st.builds(
            _match_call,
            images(),
            images(),
            st.one_of(st.none(), feature_sets()),
            st.one_of(st.none(), feature_sets()),
            extract_options(),
            match_options(),
        ),
        st.builds(
            lambda i, f, p, o, m: Call(
                "MatchBatch",
                service.MatchBatchRequest(images=i, features=f, pairs=p, options=o, match_options=m),
            ),
            st.lists(images(), max_size=3),
            st.lists(feature_sets(), max_size=2),
            st.one_of(arrays("int32", (None, 2)), arrays()),
            extract_options(),
            match_options(),
        ),
        st.builds(lambda m: Call("StreamFrames", m), _stream()),
        st.builds(lambda m, raw: Call(m, raw), st.sampled_from([*methods, "StreamFrames"]), st.binary(max_size=64)),
    )


def _match_call(
    image0: pb.Image,
    image1: pb.Image,
    features0: pb.FeatureSet | None,
    features1: pb.FeatureSet | None,
    options: pb.ExtractOptions,
    match: pb.MatchOptions,
) -> Call:
    request = service.MatchRequest(image0=image0, image1=image1, options=options, match_options=match)
    if features0 is not None:
        request.features0.CopyFrom(features0)
    if features1 is not None:
        request.features1.CopyFrom(features1)
    return Call("Match", request)


def check_grpc_call(channel: grpc.Channel, call: Call, timeout: float = 30.0) -> str:
    """Make ``call`` on a live server: it must end with an allowed status (OK, INVALID_ARGUMENT, NOT_FOUND,
    RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED) and a message saying why, and a StreamFrames session must answer
    every frame with no INTERNAL frame error. Returns the status name."""
    path = f"/featureserve.v1.FeatureService/{call.method}"
    raw = isinstance(call.request, bytes)
    serialize = None if raw else (lambda message: message.SerializeToString())
    try:
        if call.method == "StreamFrames":
            stream = channel.stream_stream(
                path, request_serializer=serialize, response_deserializer=service.FrameResult.FromString
            )
            requests = [call.request] if raw else call.request
            frames = sum(1 for m in requests if not raw and m.WhichOneof("message") == "frame")
            results = list(stream(iter(requests), timeout=timeout))
            for result in results:
                assert result.error.status != "INTERNAL", result.error
            if not raw:
                assert len(results) == frames, (len(results), frames)
        else:
            unary = channel.unary_unary(path, request_serializer=serialize, response_deserializer=None)
            unary(call.request, timeout=timeout)
        return "OK"
    except grpc.RpcError as error:
        assert error.code() in ALLOWED_CODES, (error.code(), error.details())
        assert error.details(), "an error must say what was wrong"
        return error.code().name


# ----------------------------------------------------------------------------------------------- REST schema

DEADLINE_HEADERS = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(2**70), 2**70).map(str),
    # Printable ASCII without surrounding spaces: anything else the HTTP client itself refuses to send.
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12).map(str.strip),
)


def schema_fuzz(base_url: str, examples: int, seed: int | None = None) -> Counter[str]:
    """Run schemathesis against every operation of ``base_url``'s OpenAPI schema, ``examples`` cases per
    operation and generation mode; returns ``"METHOD path status"`` counts. Fails on any 5xx (except 504 for
    a request whose own ``X-Deadline-Ms`` passed), or an error answer that is not the one error shape."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    seen: Counter[str] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=seed is not None,
                suppress_health_check=list(HealthCheck),
            )
            @given(operation.as_strategy(generation_mode=mode), DEADLINE_HEADERS)
            def call(case: Any, deadline: str | None) -> None:
                headers = {} if deadline is None else {"X-Deadline-Ms": deadline}
                response = case.call(base_url=base_url, headers=headers, timeout=60)
                seen[f"{case.operation.method.upper()} {case.operation.path} {response.status_code}"] += 1
                reproduce = case.as_curl_command(headers=headers)[:3000]
                # The one 5xx a client can cause: 504 when the deadline it set itself passes (documented).
                own_deadline = deadline is not None and response.status_code == 504
                assert response.status_code < 500 or own_deadline, (
                    response.status_code,
                    response.text[:500],
                    reproduce,
                )
                if response.status_code >= 400:
                    error = response.json()["error"]
                    assert error["code"] and error["message"] and isinstance(error["details"], dict), reproduce

            try:
                call()
            except Unsatisfiable:  # e.g. no schema-violating request exists for GET /v1/models
                continue
    return seen

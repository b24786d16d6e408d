"""Reading a request body, JSON or multipart, into images and option fields."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from ...contract import validate_options
from ...errors import FeatureServeError, InvalidInput, InvalidOption, UnsupportedMediaType
from ...settings import Settings

OptionsT = TypeVar("OptionsT", bound=BaseModel)
DEADLINE_HEADER = "x-deadline-ms"


@dataclass
class Payload:
    """A parsed request body: uploaded files and other fields, whichever way they were sent.

    In JSON bodies images are base64 strings (a ``data:...;base64,`` prefix is allowed); in multipart
    bodies they are file parts, and list or object fields are JSON strings.
    """

    files: dict[str, list[bytes]]
    fields: dict[str, Any]

    def images(self, key: str) -> list[bytes]:
        """All images sent under ``key``."""
        if key in self.files:
            return self.files[key]
        value = self.fields.get(key)
        if value is None:
            return []
        values = value if isinstance(value, list) else [value]
        return [_base64_image(v, f"{key}[{i}]" if isinstance(value, list) else key) for i, v in enumerate(values)]

    def image(self, key: str) -> bytes:
        """The one image sent under ``key``; raises `InvalidInput` when it is missing or repeated."""
        images = self.images(key)
        if len(images) > 1:
            raise InvalidInput(f"send one image as {key!r}, got {len(images)}")
        if not images:
            raise InvalidInput(f"missing image {key!r} (a file part, or a base64 string in a JSON body)")
        return images[0]

    def options(self, model: type[OptionsT], exclude: set[str]) -> OptionsT:
        """Validate the non-image fields as ``model``; raises `InvalidOption` naming each bad field."""
        return validate_options(model, {k: v for k, v in self.fields.items() if k not in exclude})


def _base64_image(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a base64 string, got {type(value).__name__}")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{name} is not valid base64") from None


async def read_payload(request: Request, settings: Settings) -> Payload:
    """Parse a JSON or multipart body; raises 415 / 400 errors for bodies we cannot take.

    The body's size is limited before and while it is read, by `RequestGuard`.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        body = await request.body()
        try:
            fields = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise InvalidInput(f"body is not valid JSON: {error}") from None
        if not isinstance(fields, dict):
            raise InvalidInput("JSON body must be an object")
        return Payload({}, fields)
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            # A field may be as large as the body (feature sets travel as JSON fields), not Starlette's 1 MB.
            form = await request.form(
                max_files=settings.max_request_images + 2, max_fields=100, max_part_size=settings.max_request_bytes
            )
        except FeatureServeError:
            raise  # the body grew past max_request_bytes while it was read (guards.py)
        except Exception as error:  # Starlette/python-multipart raise several types for malformed bodies
            raise InvalidInput(f"malformed multipart body: {error}") from None
        files: dict[str, list[bytes]] = {}
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.setdefault(key, []).append(await value.read())
            else:
                fields[key] = _form_value(key, value)
        await form.close()
        return Payload(files, fields)
    raise UnsupportedMediaType(
        f"content type {content_type or '(none)'!r} is not accepted; send application/json or multipart/form-data"
    )


def _form_value(key: str, value: str) -> Any:
    """Form fields are strings; JSON lists and objects (intrinsics, feature sets) are decoded."""
    if value[:1] in ("[", "{"):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            raise InvalidInput(f"field {key!r} looks like JSON but does not parse") from None
    return value


def deadline_ms(request: Request) -> float | None:
    """The ``X-Deadline-Ms`` header as milliseconds, or ``None``; raises `InvalidOption` when malformed."""
    raw = request.headers.get(DEADLINE_HEADER)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidOption(f"X-Deadline-Ms must be a number of milliseconds, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise InvalidOption(f"X-Deadline-Ms must be a positive finite number, got {raw!r}")
    return value

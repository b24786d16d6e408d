"""OpenAPI request bodies with examples that work when pasted into /docs."""

from __future__ import annotations

import base64
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel


def _example_png() -> str:
    """A small textured PNG (base64) on which every classical model finds keypoints."""
    rng = np.random.default_rng(7)
    image = np.kron(rng.integers(0, 256, (12, 16)), np.ones((8, 8))).astype(np.uint8)
    image = cv2.GaussianBlur(image, (3, 3), 0.8)
    return base64.b64encode(cv2.imencode(".png", image)[1].tobytes()).decode("ascii")


EXAMPLE_IMAGE = _example_png()


def request_body(options: type[BaseModel], images: dict[str, str], json_example: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` describing a JSON body and a multipart body with the same option fields."""
    option_schema = options.model_json_schema()
    json_properties = {name: {"type": "string", "format": "byte", "description": doc} for name, doc in images.items()}
    file_properties = {name: {"type": "string", "format": "binary", "description": doc} for name, doc in images.items()}
    defs = option_schema.get("$defs", {})
    properties = option_schema["properties"]
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "object", "properties": {**json_properties, **properties}, "$defs": defs},
                    "example": json_example,
                },
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": {**file_properties, **properties}, "$defs": defs},
                },
            },
        }
    }

"""Image decoding with limits: encoded bytes in, a uint8 grey or RGB array out, or a clear error."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

# MPO: the multi-picture JPEG many phones and cameras write; its first picture is a plain JPEG.
ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "TIFF", "BMP", "PPM")
# Pillow's plugins raise many exception types on hostile data, from Image.open as well as from load: fuzzing
# (tests/reliability) found OSError and ValueError from open; its documentation promises none in particular.
DECODER_ERRORS = (Exception,)


@dataclass(frozen=True)
class DecodeLimits:
    """Largest encoded size (bytes) and decoded size (pixels) accepted."""

    max_bytes: int
    max_pixels: int


def decode_image(data: bytes, limits: DecodeLimits, grey: bool = False) -> np.ndarray:
    """Decode JPEG (MPO too), PNG, WebP, TIFF, BMP or PPM/PGM bytes into ``(H, W)`` grey or ``(H, W, 3)`` RGB uint8.

    EXIF orientation is applied, so keypoints are in the pixels a viewer shows. 16-bit images are scaled
    to 8 bits, alpha is dropped, and multi-frame files give their first frame. With ``grey``, a colour JPEG is
    decoded to its luma channel alone (for models that read only grey values): the decoder then skips chroma
    upsampling and the colour conversion, about two thirds of a JPEG's decoding time.

    Raises:
        InvalidInput: empty, not an image, truncated or corrupt data.
        PayloadTooLarge: more than ``limits.max_bytes`` bytes or ``limits.max_pixels`` pixels.
        UnsupportedMediaType: an image format outside ``ACCEPTED_FORMATS``.
    """
    if not data:
        raise InvalidInput("image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(
            f"image is {len(data)} bytes; the limit is {limits.max_bytes}",
            {"bytes": len(data), "max_bytes": limits.max_bytes},
        )
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below is the one that applies; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise PayloadTooLarge(f"image has too many pixels: {error}") from None
    except UnidentifiedImageError:
        raise InvalidInput(f"data is not a decodable image (accepted formats: {', '.join(ACCEPTED_FORMATS)})") from None
    except DECODER_ERRORS as error:
        raise InvalidInput(f"image header is truncated or corrupt: {_describe(error)}") from None
    if image.format not in ACCEPTED_FORMATS:
        raise UnsupportedMediaType(
            f"image format {image.format} is not accepted; use one of {', '.join(ACCEPTED_FORMATS)}"
        )
    width, height = image.size
    if width * height > limits.max_pixels:
        raise PayloadTooLarge(
            f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}",
            {"width": width, "height": height, "max_pixels": limits.max_pixels},
        )
    if width == 0 or height == 0:
        raise InvalidInput(f"image has no pixels ({width}x{height})")
    if grey and image.format in ("JPEG", "MPO"):
        image.draft("L", image.size)  # same size: no DCT scaling, only the luma
    try:
        image.load()
        # In place: without it Pillow returns a copy even when the orientation needs no change.
        ImageOps.exif_transpose(image, in_place=True)
        return _to_array(image)
    except DECODER_ERRORS as error:
        raise InvalidInput(f"image data is truncated or corrupt ({image.format}): {_describe(error)}") from None


def _describe(error: Exception) -> str:
    # Messages may quote the file's bytes: keep them short.
    text = str(error) or type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def _to_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        # 16-bit and 32-bit integer images are scaled from their type's range, float ones from [0, 1].
        scale = 255.0 if mode == "F" else (255.0 / 65535.0)
        return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    # convert() copies even to the image's own mode, so the common modes skip it.
    if mode in ("1", "L", "LA", "La"):
        return np.asarray(image if mode == "L" else image.convert("L"), dtype=np.uint8)
    return np.asarray(image if mode == "RGB" else image.convert("RGB"), dtype=np.uint8)

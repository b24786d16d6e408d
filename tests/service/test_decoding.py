"""Image decoding: formats, bit depths, channels, EXIF orientation, and limits."""

import io

import numpy as np
import pytest
from PIL import Image

from featureserve.models.base import to_grey
from featureserve.service.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from featureserve.service.workers import DecodeLimits, decode_image

LIMITS = DecodeLimits(max_bytes=10_000_000, max_pixels=5_000_000)


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF", "BMP", "PPM"])
def test_formats_decode_to_rgb(fmt: str, photo: np.ndarray) -> None:
    decoded = decode_image(_save(Image.fromarray(photo[:64, :96]), fmt), LIMITS)
    assert decoded.shape == (64, 96, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - photo[:64, :96]).mean() < 8  # lossy formats stay close


def test_grey_rgba_and_16_bit() -> None:
    grey = (np.arange(64 * 80) % 251).astype(np.uint8).reshape(64, 80)
    assert decode_image(_save(Image.fromarray(grey), "PNG"), LIMITS).shape == (64, 80)
    rgba = np.dstack([np.stack([grey] * 3, axis=2), np.full_like(grey, 7)])
    assert decode_image(_save(Image.fromarray(rgba), "PNG"), LIMITS).shape == (64, 80, 3)
    deep = (grey.astype(np.uint16) * 257).astype(np.uint16)
    decoded = decode_image(_save(Image.fromarray(deep), "PNG"), LIMITS)
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, grey)


def test_exif_orientation_is_applied() -> None:
    image = Image.fromarray(np.zeros((20, 40, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(_save(image, "JPEG", exif=exif), LIMITS)
    assert decoded.shape == (40, 20, 3)


def test_grey_decoding_reads_a_colour_jpeg_luma_only(photo: np.ndarray) -> None:
    """``grey``: a colour JPEG gives its luma, within a few levels of the RGB decoding's grey conversion, with EXIF
    orientation applied; other formats decode as without it."""
    jpeg = _save(Image.fromarray(photo[:64, :96]), "JPEG")
    grey = decode_image(jpeg, LIMITS, grey=True)
    converted = to_grey(decode_image(jpeg, LIMITS))
    assert grey.shape == (64, 96) and grey.dtype == np.uint8
    difference = np.abs(grey.astype(int) - converted)
    assert difference.max() <= 8 and difference.mean() < 0.5
    exif = Image.Exif()
    exif[0x0112] = 6
    assert decode_image(_save(Image.fromarray(photo[:20, :40]), "JPEG", exif=exif), LIMITS, grey=True).shape == (40, 20)
    assert decode_image(_save(Image.fromarray(photo[:64, :96]), "PNG"), LIMITS, grey=True).shape == (64, 96, 3)


def test_multi_picture_jpegs_give_their_first_picture(photo: np.ndarray) -> None:
    """MPO (phones' and cameras' multi-picture JPEG) is accepted: its first picture, in colour or as luma."""
    first, second = Image.fromarray(photo[:48, :64]), Image.fromarray(255 - photo[:48, :64])
    mpo = _save(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    np.testing.assert_array_equal(decode_image(mpo, LIMITS), decode_image(_save(first, "JPEG"), LIMITS))
    assert decode_image(mpo, LIMITS, grey=True).shape == (48, 64)


def test_errors_say_what_was_wrong(photo: np.ndarray) -> None:
    png = _save(Image.fromarray(photo), "PNG")
    with pytest.raises(InvalidInput, match="empty"):
        decode_image(b"", LIMITS)
    with pytest.raises(InvalidInput, match="not a decodable image"):
        decode_image(b"GIF? no, just text", LIMITS)
    with pytest.raises(InvalidInput, match="truncated"):
        decode_image(png[: len(png) // 2], LIMITS)
    with pytest.raises(PayloadTooLarge, match="bytes"):
        decode_image(png, DecodeLimits(max_bytes=1000, max_pixels=10**9))
    with pytest.raises(PayloadTooLarge, match="pixels"):
        decode_image(png, DecodeLimits(max_bytes=10**9, max_pixels=512 * 511))
    with pytest.raises(UnsupportedMediaType, match="GIF"):
        decode_image(_save(Image.fromarray(photo[:8, :8]), "GIF"), LIMITS)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    # A 30000 x 30000 PNG of zeros compresses to under a megabyte; it must fail on its header alone.
    bomb = _save(Image.new("L", (30000, 30000)), "PNG")
    assert len(bomb) < LIMITS.max_bytes
    with pytest.raises(PayloadTooLarge, match="pixels"):
        decode_image(bomb, LIMITS)

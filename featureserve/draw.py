"""Pictures of matches: two images side by side, inliers and outliers in different colours.

One function for everyone who draws: the ``/v1/match`` ``draw`` option, the in-process client and the
CLI's ``featureserve match --draw``, so a picture from the service and one drawn locally from the same
images and matches are the same PNG, byte for byte.

Example:
    >>> import numpy as np
    >>> image = np.zeros((120, 160, 3), np.uint8)
    >>> points = np.array([[10.0, 20.0], [50.0, 60.0]], np.float32)
    >>> picture = draw_matches(image, image, points, points + 5, np.array([True, False]), title="orb")
    >>> picture.shape  # (caption + max height, sum of widths + gap, RGB)
    (146, 328, 3)
"""

from __future__ import annotations

import cv2
import numpy as np

# RGB colours: verified inliers green, rejected outliers red, unverified matches (no geometry) blue.
INLIER_COLOUR = (40, 210, 60)
OUTLIER_COLOUR = (235, 50, 50)
UNVERIFIED_COLOUR = (50, 150, 255)
BACKGROUND = (24, 24, 24)
GAP_PX = 8
CAPTION_PX = 26
LINE_ALPHA = 0.55
# Wider pictures are scaled down so a response stays small; points are scaled with the images.
DEFAULT_MAX_WIDTH = 2048
# More lines than this hide the images under a wash of colour; a spread-out subset is drawn instead.
DEFAULT_MAX_LINES = 300


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ValueError(f"image must be uint8 (H, W) or (H, W, 3), got shape {image.shape}")


def caption(title: str, num_matches: int, inliers: np.ndarray | None, drawn: int | None = None) -> str:
    """The text above the images: model, match count, inliers/outliers when verified, and how many are drawn."""
    head = f"{title}: " if title else ""
    tail = "" if drawn is None or drawn == num_matches else f"; {drawn} drawn"
    if inliers is None:
        return f"{head}{num_matches} matches (not verified){tail}"
    num_inliers = int(np.count_nonzero(inliers))
    return (
        f"{head}{num_matches} matches, {num_inliers} inliers (green), {num_matches - num_inliers} outliers (red){tail}"
    )


def draw_matches(
    image0: np.ndarray,
    image1: np.ndarray,
    points0: np.ndarray,
    points1: np.ndarray,
    inliers: np.ndarray | None = None,
    title: str = "",
    max_width: int = DEFAULT_MAX_WIDTH,
    max_lines: int = DEFAULT_MAX_LINES,
    outliers: bool = True,
) -> np.ndarray:
    """Draw matches between two images placed side by side.

    Args:
        image0: uint8 ``(H0, W0)`` grey or ``(H0, W0, 3)`` RGB image, shown on the left.
        image1: uint8 ``(H1, W1)`` or ``(H1, W1, 3)`` image, shown on the right.
        points0: ``(M, 2)`` matched ``(x, y)`` pixels in image 0 (pixel centres at integers).
        points1: ``(M, 2)`` matched pixels in image 1, row ``i`` matched to ``points0[i]``.
        inliers: ``(M,)`` bool mask from geometric verification: inliers green, outliers red; ``None``
            (not verified) draws every match blue.
        title: Shown first in the caption (the model name, say).
        max_width: The picture is scaled down to at most this many pixels wide.
        max_lines: Draw at most this many matches, inliers first, each group thinned evenly in match order.
        outliers: ``False`` draws inliers only (when verified).

    Returns:
        ``(CAPTION_PX + max(H0, H1) * s, (W0 + GAP_PX + W1) * s, 3)`` uint8 RGB picture, ``s <= 1``.
    """
    left, right = _rgb(image0), _rgb(image1)
    points0 = np.asarray(points0, np.float64).reshape(-1, 2)
    points1 = np.asarray(points1, np.float64).reshape(-1, 2)
    if len(points0) != len(points1):
        raise ValueError(f"points0 has {len(points0)} rows but points1 has {len(points1)}")
    if inliers is not None:
        inliers = np.asarray(inliers, bool).reshape(-1)
        if len(inliers) != len(points0):
            raise ValueError(f"inliers has {len(inliers)} values for {len(points0)} matches")
    scale = min(1.0, (max_width - GAP_PX) / (left.shape[1] + right.shape[1]))
    if scale < 1.0:
        left = cv2.resize(left, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        right = cv2.resize(right, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    offset = left.shape[1] + GAP_PX
    height = max(left.shape[0], right.shape[0])
    picture = np.empty((CAPTION_PX + height, offset + right.shape[1], 3), np.uint8)
    picture[:] = BACKGROUND
    picture[CAPTION_PX : CAPTION_PX + left.shape[0], : left.shape[1]] = left
    picture[CAPTION_PX : CAPTION_PX + right.shape[0], offset:] = right

    # Pixel centres are at integers, so a point maps to (x + 0.5) * s - 0.5 in the scaled image.
    def place(points: np.ndarray, dx: int) -> np.ndarray:
        return np.rint((points + 0.5) * scale - 0.5 + [dx, CAPTION_PX]).astype(np.int32)

    start, end = place(points0, 0), place(points1, offset)
    shown = drawn_matches(inliers, len(points0), max_lines, outliers)
    if inliers is None:
        groups = [(shown, UNVERIFIED_COLOUR)]
    else:
        groups = [(shown & ~inliers, OUTLIER_COLOUR), (shown & inliers, INLIER_COLOUR)]  # inliers on top
    # Lines are blended in (LINE_ALPHA) so the images stay visible under many matches; endpoints are opaque.
    lines = picture.copy()
    for mask, colour in groups:
        for (x0, y0), (x1, y1) in zip(start[mask], end[mask], strict=True):
            cv2.line(lines, (int(x0), int(y0)), (int(x1), int(y1)), colour, 1, cv2.LINE_AA)
    picture = cv2.addWeighted(lines, LINE_ALPHA, picture, 1.0 - LINE_ALPHA, 0.0)
    for mask, colour in groups:
        for x, y in np.concatenate([start[mask], end[mask]]):
            cv2.circle(picture, (int(x), int(y)), 2, colour, -1, cv2.LINE_AA)
    text = caption(title, len(points0), inliers, int(shown.sum()))
    cv2.putText(picture, text, (6, CAPTION_PX - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (235, 235, 235), 1, cv2.LINE_AA)
    return picture


def drawn_matches(inliers: np.ndarray | None, count: int, max_lines: int, outliers: bool = True) -> np.ndarray:
    """``(count,)`` mask of the matches to draw: inliers first, then outliers while ``max_lines`` allows."""
    if max_lines < 0:
        raise ValueError(f"max_lines must be >= 0, got {max_lines}")
    groups = [np.arange(count)] if inliers is None else [np.flatnonzero(inliers), np.flatnonzero(~inliers)]
    if not outliers:
        groups = groups[:1]
    shown, room = np.zeros(count, bool), max_lines
    for members in groups:
        if len(members) > room:  # evenly spaced through the group, so the subset covers the image as the whole does
            members = members[np.linspace(0, len(members) - 1, room).round().astype(int)] if room else members[:0]
        shown[members] = True
        room -= len(members)
    return shown


def encode_png(picture: np.ndarray) -> bytes:
    """An RGB (or grey) uint8 picture as PNG bytes."""
    bgr = cv2.cvtColor(picture, cv2.COLOR_RGB2BGR) if picture.ndim == 3 else picture
    ok, buffer = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()


def match_picture(
    image0: np.ndarray,
    image1: np.ndarray,
    points0: np.ndarray,
    points1: np.ndarray,
    inliers: np.ndarray | None = None,
    title: str = "",
    max_lines: int = DEFAULT_MAX_LINES,
    outliers: bool = True,
) -> bytes:
    """`draw_matches` encoded as PNG: what ``/v1/match`` with ``draw`` returns and ``--draw`` writes."""
    picture = draw_matches(image0, image1, points0, points1, inliers, title, max_lines=max_lines, outliers=outliers)
    return encode_png(picture)

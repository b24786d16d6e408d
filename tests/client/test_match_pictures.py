"""Pictures of matches: the drawing function, the ``draw`` option of ``/v1/match``, ``Accept: image/png``."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from featureserve.client import RestClient
from featureserve.draw import (
    CAPTION_PX,
    GAP_PX,
    INLIER_COLOUR,
    OUTLIER_COLOUR,
    UNVERIFIED_COLOUR,
    caption,
    draw_matches,
    drawn_matches,
    match_picture,
)
from featureserve.local import LocalClient


def decode_png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_inliers_and_outliers_have_their_colours() -> None:
    left, right = np.full((100, 120), 128, np.uint8), np.full((80, 90, 3), 128, np.uint8)
    points0 = np.array([[20.0, 30.0], [60.0, 70.0]])
    points1 = np.array([[40.0, 20.0], [10.0, 60.0]])
    picture = draw_matches(left, right, points0, points1, np.array([True, False]), title="orb")
    assert picture.shape == (CAPTION_PX + 100, 120 + GAP_PX + 90, 3) and picture.dtype == np.uint8
    # Endpoints are opaque dots: image 1's points sit at x + 120 + GAP_PX.
    for (x, y), colour in (((20, 30), INLIER_COLOUR), ((60, 70), OUTLIER_COLOUR)):
        assert tuple(picture[CAPTION_PX + y, x]) == colour
    assert tuple(picture[CAPTION_PX + 20, 120 + GAP_PX + 40]) == INLIER_COLOUR
    assert tuple(picture[CAPTION_PX + 60, 120 + GAP_PX + 10]) == OUTLIER_COLOUR
    # Halfway along the inlier's line the grey is blended with green.
    mid = picture[CAPTION_PX + 25, (20 + 120 + GAP_PX + 40) // 2]
    assert mid[1] > mid[0] + 40 and mid[1] > mid[2] + 40
    unverified = draw_matches(left, right, points0, points1)
    assert tuple(unverified[CAPTION_PX + 30, 20]) == UNVERIFIED_COLOUR
    with pytest.raises(ValueError, match="inliers"):
        draw_matches(left, right, points0, points1, np.array([True]))


def test_at_most_max_lines_are_drawn_inliers_first_and_outliers_on_request() -> None:
    inliers = np.arange(1000) % 4 != 0  # 750 inliers, 250 outliers
    shown = drawn_matches(inliers, 1000, max_lines=300)
    assert shown.sum() == 300 and shown[inliers].sum() == 300  # inliers take the whole budget
    np.testing.assert_array_equal(np.flatnonzero(shown)[[0, -1]], [1, 999])  # spread over the whole group
    assert drawn_matches(inliers, 1000, max_lines=800).sum() == 800  # then 50 outliers
    assert not drawn_matches(inliers, 1000, max_lines=5000, outliers=False)[~inliers].any()
    assert drawn_matches(None, 10, max_lines=4).sum() == 4 and drawn_matches(None, 10, max_lines=0).sum() == 0
    # The picture says what it leaves out.
    image = np.full((100, 100), 128, np.uint8)
    points = np.random.default_rng(0).uniform(0, 99, (1000, 2))
    few = draw_matches(image, image, points, points, inliers, max_lines=10)
    many = draw_matches(image, image, points, points, inliers, max_lines=1000)
    green = np.all(few[CAPTION_PX:] == INLIER_COLOUR, axis=-1).sum()
    assert 0 < green < np.all(many[CAPTION_PX:] == INLIER_COLOUR, axis=-1).sum()
    assert caption("orb", 1000, inliers, 10).endswith("; 10 drawn") and "drawn" not in caption(
        "orb", 1000, inliers, 1000
    )


def test_wide_pictures_are_scaled_down_with_their_points() -> None:
    image = np.zeros((1000, 1500), np.uint8)
    point = np.array([[999.0, 499.0]])
    picture = draw_matches(image, image, point, point, np.array([True]), max_width=1508)
    assert picture.shape == (CAPTION_PX + 500, 750 + GAP_PX + 750, 3)
    # (999 + 0.5) * 0.5 - 0.5 = 499.25 -> pixel 499 of the half-size image.
    assert tuple(picture[CAPTION_PX + 249, 499]) == INLIER_COLOUR


def test_the_endpoint_draws_what_the_in_process_client_draws(image_files: list[Path], rest: RestClient) -> None:
    options = {"model": "orb", "max_keypoints": 500, "geometry": "homography"}
    result = rest.match(*image_files, draw=True, **options)
    picture = decode_png(result.drawing)
    assert picture.shape == (CAPTION_PX + 512, 512 + GAP_PX + 512, 3)
    assert np.count_nonzero(np.all(picture == INLIER_COLOUR, axis=2)) > 100  # the inliers' endpoints
    # Same images, same function: the service's PNG and one drawn here are the same bytes.
    assert LocalClient().match(*image_files, draw=True, **options).drawing == result.drawing
    decoder = LocalClient()
    images = [decoder.decode(path) for path in image_files]
    drawn_here = match_picture(*images, result.points0, result.points1, result.inliers, "orb")
    assert drawn_here == result.drawing
    plain = rest.match(*image_files, **options)
    # Drawing never changes the matches (the model decodes its grey JPEG either way).
    assert plain.drawing is None and np.array_equal(plain.matches, result.matches)
    # The drawing limits travel as options, with the same effect wherever the picture is drawn.
    limits = {"draw_max_lines": 20, "draw_outliers": False}
    limited = rest.match(*image_files, draw=True, **limits, **options).drawing
    assert limited == LocalClient().match(*image_files, draw=True, **limits, **options).drawing != result.drawing
    args = (result.points0, result.points1, result.inliers, "orb")
    assert limited == match_picture(*images, *args, max_lines=20, outliers=False)


def test_accept_png_returns_the_picture_alone(image_files: list[Path], client: httpx.Client) -> None:
    files = {"image0": image_files[0].read_bytes(), "image1": image_files[1].read_bytes()}
    data = {"model": "orb", "geometry": "homography", "max_keypoints": "500"}
    response = client.post("/v1/match", files=files, data=data, headers={"Accept": "image/png"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    json_body = client.post("/v1/match", files=files, data={**data, "draw": "true"}).json()
    assert response.content == base64.b64decode(json_body["drawing"])
    assert response.headers["x-num-matches"] == str(json_body["num_matches"])
    assert response.headers["x-num-inliers"] == str(json_body["num_inliers"])
    phases = dict(part.strip().split(";dur=") for part in response.headers["server-timing"].split(","))
    assert set(phases) == {"extract", "match", "draw"} and all(float(v) >= 0 for v in phases.values())
    assert "draw" not in client.post("/v1/match", files=files, data=data).headers["server-timing"]


def test_draw_needs_both_images(image_files: list[Path], client: httpx.Client) -> None:
    features = client.post(
        "/v1/extract",
        files={"image": image_files[0].read_bytes()},
        data={"model": "orb", "descriptor_encoding": "base64"},
    ).json()
    features = {k: features[k] for k in ("keypoints", "scores", "descriptors", "descriptor", "image_size")}
    # Features for side 0 and no image there: nothing to draw it on.
    response = client.post(
        "/v1/match",
        json={"features0": features, "image1": base64.b64encode(image_files[1].read_bytes()).decode(), "draw": True},
    )
    assert response.status_code == 400 and "image0" in response.json()["error"]["message"]
    # Features and the image they came from: matched from the features, drawn on the image.
    both = {"image0": base64.b64encode(image_files[0].read_bytes()).decode()}
    response = client.post(
        "/v1/match",
        json={
            "features0": features,
            **both,
            "image1": base64.b64encode(image_files[1].read_bytes()).decode(),
            "draw": True,
            "model": "orb",
        },
    )
    assert response.status_code == 200 and decode_png(base64.b64decode(response.json()["drawing"])).shape[1] == 1032

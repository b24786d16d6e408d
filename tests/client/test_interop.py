"""Interop: cv2.KeyPoint both ways, hloc's HDF5 layout, a COLMAP database read back by pycolmap."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pycolmap
import pytest

from featureserve.client import RestClient
from featureserve.interop import (
    colmap_descriptors,
    from_cv2_keypoints,
    names_to_pair,
    read_hloc_features,
    read_hloc_matches,
    to_cv2_keypoints,
    write_colmap_database,
    write_hloc_features,
    write_hloc_matches,
)
from featureserve.models import KeypointOptions, load_model
from tests.client.conftest import assert_same


def test_cv2_keypoints_both_ways(photo: np.ndarray, rest: RestClient) -> None:
    features = rest.extract(photo, model="orb", max_keypoints=200)
    keypoints = to_cv2_keypoints(features.keypoints, features.scores)
    assert len(keypoints) == 200 and isinstance(keypoints[0], cv2.KeyPoint)
    assert keypoints[0].pt == tuple(float(v) for v in features.keypoints[0])
    points, scores = from_cv2_keypoints(keypoints)
    np.testing.assert_array_equal(points, features.keypoints)
    np.testing.assert_array_equal(scores, features.scores)
    # OpenCV takes them as its own: ORB describes them at the same (pixel-centre) coordinates.
    grey = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    sized = to_cv2_keypoints(features.keypoints, features.scores, size=31)
    kept, _ = cv2.ORB_create().compute(grey, sized)
    assert (
        len(kept) > 150
        and np.abs(from_cv2_keypoints(kept)[0][:, None] - features.keypoints).sum(-1).min(1).max() < 1e-3
    )
    assert from_cv2_keypoints([])[0].shape == (0, 2)
    # The service's sizes and angles are OpenCV's own: ORB's keypoints come back as ORB made them.
    native = cv2.ORB_create(200).detect(grey, None)
    again = to_cv2_keypoints(features.keypoints, features.scores, features.sizes, features.angles)
    rows = [
        {(round(k.pt[0], 2), round(k.pt[1], 2), round(k.size, 2), round(k.angle, 2)) for k in ks}
        for ks in (native, again)
    ]
    assert len(rows[1]) > 150 and len(rows[0] & rows[1]) > 0.95 * len(rows[1])


def test_hloc_layout(image_files: list[Path], rest: RestClient, tmp_path: Path) -> None:
    names = ["db/astronaut.png", "query/warped.jpg"]  # hloc names are paths relative to its image folder
    features = {
        name: rest.extract(path, model="sift", max_keypoints=500) for name, path in zip(names, image_files, strict=True)
    }
    result = rest.match(*image_files, model="sift", max_keypoints=500, geometry="homography")
    write_hloc_features(tmp_path / "features.h5", features)
    write_hloc_matches(tmp_path / "matches.h5", {(names[0], names[1]): result})

    # Read as hloc reads it, with h5py alone.
    with h5py.File(tmp_path / "features.h5", "r") as file:
        group = file["db"]["astronaut.png"]
        np.testing.assert_array_equal(group["keypoints"][()], features[names[0]].keypoints)
        assert group["descriptors"].shape == (128, 500)  # D x N, as hloc stores them
        np.testing.assert_array_equal(group["descriptors"][()].T, features[names[0]].descriptors)
        assert group["scores"].shape == (500,) and group["image_size"][()].tolist() == [512, 512]
        np.testing.assert_array_equal(group["angles"][()], features[names[0]].angles)  # ours; hloc ignores them
    assert names_to_pair(*names) == "db-astronaut.png/query-warped.jpg"
    with h5py.File(tmp_path / "matches.h5", "r") as file:
        pair = file["db-astronaut.png"]["query-warped.jpg"]
        matches0, scores0 = pair["matches0"][()], pair["matching_scores0"][()]
    assert matches0.shape == (result.num_keypoints0,) and scores0.dtype == np.float16
    matched = np.flatnonzero(matches0 >= 0)
    order = np.argsort(result.matches[:, 0])
    np.testing.assert_array_equal(np.stack([matched, matches0[matched]], 1), result.matches[order])
    np.testing.assert_array_equal(scores0[matched] == 1, result.inliers[order])  # outliers score 0

    # And back through our readers, either way round, all matches or only inliers.
    assert_same(read_hloc_features(tmp_path / "features.h5")[names[1]], features[names[1]])
    forward, scores = read_hloc_matches(tmp_path / "matches.h5", *names)
    backward, _ = read_hloc_matches(tmp_path / "matches.h5", names[1], names[0])
    np.testing.assert_array_equal(backward, forward[:, ::-1])
    write_hloc_matches(tmp_path / "matches.h5", {(names[0], names[1]): result}, inliers_only=True)
    inliers, scores = read_hloc_matches(tmp_path / "matches.h5", *names)
    assert len(inliers) == int(result.inliers.sum()) >= result.geometry.num_inliers and np.all(scores == 1)
    with pytest.raises(KeyError):
        read_hloc_matches(tmp_path / "matches.h5", names[0], "other.jpg")


def test_colmap_database(image_files: list[Path], photo: np.ndarray, rest: RestClient, tmp_path: Path) -> None:
    names = ["astronaut.png", "warped.jpg", "astronaut-copy.png"]
    paths = [*image_files, image_files[0]]
    features = {
        name: rest.extract(path, model="sift", max_keypoints=400) for name, path in zip(names, paths, strict=True)
    }
    verified = rest.match(image_files[0], image_files[1], model="sift", max_keypoints=400, geometry="fundamental")
    unverified = rest.match(image_files[1], image_files[0], model="sift", max_keypoints=400)
    matches = {(names[0], names[1]): verified, (names[1], names[2]): unverified}
    ids = write_colmap_database(tmp_path / "database.db", features, matches)
    assert sorted(ids) == sorted(names)

    database = pycolmap.Database.open(str(tmp_path / "database.db"))
    try:
        assert database.num_images() == 3 and database.num_cameras() == 3
        image = database.read_image(ids[names[1]])
        assert image.name == names[1]
        camera = database.read_camera(image.camera_id)
        assert (camera.width, camera.height, camera.model.name) == (512, 512, "SIMPLE_RADIAL")
        # COLMAP's origin is the corner of the top-left pixel: our keypoints + 0.5.
        np.testing.assert_allclose(database.read_keypoints(ids[names[1]])[:, :2], features[names[1]].keypoints + 0.5)
        descriptors = database.read_descriptors(ids[names[0]])
        np.testing.assert_array_equal(descriptors.data, colmap_descriptors(features[names[0]].descriptors))
        np.testing.assert_array_equal(database.read_matches(ids[names[0]], ids[names[1]]), verified.matches)
        geometry = database.read_two_view_geometry(ids[names[0]], ids[names[1]])
        assert geometry.config == pycolmap.TwoViewGeometryConfiguration.UNCALIBRATED
        np.testing.assert_array_equal(geometry.inlier_matches, verified.matches[verified.inliers])
        assert database.num_verified_image_pairs() == 1  # the unverified pair has matches only
        assert database.read_matches(ids[names[1]], ids[names[2]]).shape == unverified.matches.shape
    finally:
        database.close()
    # Writing again leaves the images as they are and replaces a pair's matches.
    inliers_only = rest.match(image_files[0], image_files[1], model="sift", max_keypoints=400, geometry="homography")
    again = write_colmap_database(tmp_path / "database.db", features, {(names[0], names[1]): inliers_only})
    assert again == ids
    database = pycolmap.Database.open(str(tmp_path / "database.db"))
    try:
        assert database.num_images() == 3
        geometry = database.read_two_view_geometry(ids[names[0]], ids[names[1]])
        assert geometry.config == pycolmap.TwoViewGeometryConfiguration.PLANAR_OR_PANORAMIC
        np.testing.assert_array_equal(geometry.inlier_matches, inliers_only.matches[inliers_only.inliers])
    finally:
        database.close()


def test_colmap_descriptors_scale_sift_as_colmap_does(photo: np.ndarray) -> None:
    [sift] = load_model("sift").extract([photo], [KeypointOptions(max_keypoints=100)])
    scaled = colmap_descriptors(sift.descriptors)
    assert scaled.dtype == np.uint8 and scaled.shape == (100, 128)
    unit = sift.descriptors / np.linalg.norm(sift.descriptors, axis=1, keepdims=True)
    np.testing.assert_array_equal(scaled, np.minimum(np.rint(512 * unit), 255))
    assert colmap_descriptors(np.array([[-0.5, 0.5]], np.float32)) is None  # learned, signed: no COLMAP form
    assert colmap_descriptors(np.zeros((3, 32), np.uint8)) is None  # binary

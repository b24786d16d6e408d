"""Features and matches for other tools: hloc's HDF5 files, a COLMAP database, OpenCV's ``cv2.KeyPoint``.

Feature sets may be the clients' `FeatureSet` or the models' `Features` (anything with ``keypoints``
``(N, 2)``, ``scores`` ``(N,)``, ``descriptors`` ``(N, D)`` and ``image_size`` ``(width, height)``);
matches are the clients' `MatchResult` (``matches`` ``(M, 2)``, ``inliers``, ``num_keypoints0``).

hloc (cvg/Hierarchical-Localization) layout, as its ``extract_features.py`` and ``match_features.py``
write it and ``triangulation.py``/``reconstruction.py`` read it:

- ``features.h5``: one group per image name (``/`` in a name makes nested groups) holding ``keypoints``
  ``(N, 2)``, ``descriptors`` ``(D, N)`` (transposed!), ``scores`` ``(N,)`` and ``image_size``
  ``(width, height)``. Keypoint convention: pixel centres at integers, ours too, so no shift.
- ``matches.h5``: one group per pair, named by ``names_to_pair(name0, name1)`` (below), holding
  ``matches0`` ``(N0,)`` (index in image 1, or -1) and ``matching_scores0`` ``(N0,)`` float16.

Our extras, which hloc ignores: ``sizes`` and ``angles`` ``(N,)`` datasets (OpenCV's ``KeyPoint.size`` and
``angle``) and the attributes ``model``, ``descriptor_kind``, ``descriptor_dim`` and ``descriptor_metric`` on
feature groups, ``model`` and ``geometry`` on pair groups. The hloc and COLMAP
writers need the ``interop`` extra (h5py, pycolmap): ``pip install 'featureserve[interop]'``.

Example:
    >>> with RestClient(url) as client:  # doctest: +SKIP
    ...     features = {name: client.extract(name, model="sift") for name in ["a.jpg", "b.jpg"]}
    ...     result = client.match("a.jpg", "b.jpg", model="sift", geometry="fundamental", include_features=True)
    >>> write_hloc_features("features.h5", features)  # doctest: +SKIP
    >>> write_hloc_matches("matches.h5", {("a.jpg", "b.jpg"): result})  # doctest: +SKIP
    >>> write_colmap_database("database.db", features, {("a.jpg", "b.jpg"): result})  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .client.results import FeatureSet, MatchResult

# COLMAP puts the origin at the top-left corner of the top-left pixel, so its centre is (0.5, 0.5); ours
# (and hloc's, and OpenCV's) is (0, 0). hloc's triangulation.import_features adds the same 0.5.
COLMAP_PIXEL_OFFSET = 0.5
# TwoViewGeometry configuration for each of our verification models.
COLMAP_CONFIGS = {"essential": "CALIBRATED", "fundamental": "UNCALIBRATED", "homography": "PLANAR_OR_PANORAMIC"}


def _need(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"{module} is needed here: pip install 'featureserve[interop]'") from None


def _descriptor_info(features: Any) -> dict[str, Any]:
    """``{"kind", "dim", "metric"}`` of a client `FeatureSet` (dict) or a models `Features` (DescriptorInfo)."""
    info = features.descriptor
    if isinstance(info, dict):
        return dict(info)
    return {"kind": info.kind, "dim": info.dim, "metric": info.metric}


# ---------------------------------------------------------------------------------------------------
# cv2.KeyPoint


def to_cv2_keypoints(
    keypoints: np.ndarray,
    scores: np.ndarray | None = None,
    size: float | np.ndarray = 1.0,
    angles: np.ndarray | None = None,
) -> list[cv2.KeyPoint]:
    """``(N, 2)`` pixel keypoints (and ``(N,)`` scores as ``response``) as OpenCV keypoints.

    Both conventions put pixel centres at integers, so ``pt`` is ``(x, y)`` unchanged. ``size``: one diameter
    for all, or the ``(N,)`` ``sizes`` of a feature set; ``angles``: its ``(N,)`` ``angles`` (OpenCV's degrees
    already), -1 ("none") when not given.
    """
    keypoints = np.asarray(keypoints, np.float32).reshape(-1, 2)
    count = len(keypoints)
    columns = {
        "scores": np.zeros(count, np.float32) if scores is None else np.asarray(scores, np.float32).reshape(-1),
        "sizes": np.broadcast_to(np.asarray(size, np.float32), (count,)) if np.ndim(size) == 0 else np.asarray(size),
        "angles": np.full(count, -1.0, np.float32) if angles is None else np.asarray(angles, np.float32).reshape(-1),
    }
    for name, values in columns.items():
        if len(values) != count:
            raise ValueError(f"{len(values)} {name} for {count} keypoints")
    return [
        cv2.KeyPoint(float(x), float(y), float(s), float(a), float(r))
        for (x, y), r, s, a in zip(keypoints, columns["scores"], columns["sizes"], columns["angles"], strict=True)
    ]


def from_cv2_keypoints(keypoints: Sequence[cv2.KeyPoint]) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV keypoints as ``(N, 2)`` float32 ``(x, y)`` pixels and ``(N,)`` float32 scores (``response``)."""
    points = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
    scores = np.array([k.response for k in keypoints], np.float32)
    return points, scores


# ---------------------------------------------------------------------------------------------------
# hloc


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's key of a pair in ``matches.h5``: ``/`` inside names becomes ``-``, joined by ``separator``.

    The same rule as ``names_to_pair`` in hloc's ``hloc/utils/parsers.py``, which ``match_features.py``
    uses to name its groups (so ``a.jpg/b.jpg`` is a group ``b.jpg`` inside a group ``a.jpg``); hloc's
    older files used ``separator="_"`` (``names_to_pair_old``), which `read_hloc_matches` also finds.
    """
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def write_hloc_features(path: str | Path, features: Mapping[str, Any], as_half: bool = False) -> None:
    """Add (or replace) one group per image name in an hloc ``features.h5``.

    Args:
        path: The HDF5 file; created if missing, other images' groups are kept.
        features: Image name (as hloc's image list names it, e.g. ``db/1.jpg``) -> feature set.
        as_half: Store float descriptors and scores as float16 (hloc's ``--as_half``); keypoints stay float32.
    """
    h5py = _need("h5py")
    with h5py.File(str(path), "a", libver="latest") as file:
        for name, f in features.items():
            if f.descriptors is None:
                raise ValueError(f"{name}: features without descriptors cannot be matched by hloc")
            if name in file:
                del file[name]
            group = file.create_group(name)
            descriptors = np.ascontiguousarray(np.asarray(f.descriptors).T)  # hloc stores (D, N)
            scores = np.asarray(f.scores, np.float32)
            if as_half and descriptors.dtype != np.uint8:
                descriptors = descriptors.astype(np.float16)
            if as_half:
                scores = scores.astype(np.float16)
            group.create_dataset("keypoints", data=np.asarray(f.keypoints, np.float32).reshape(-1, 2))
            group.create_dataset("descriptors", data=descriptors)
            group.create_dataset("scores", data=scores)
            group.create_dataset("image_size", data=np.asarray(f.image_size, np.int32))
            for field in ("sizes", "angles"):
                if getattr(f, field, None) is not None:
                    group.create_dataset(field, data=np.asarray(getattr(f, field), np.float32))
            info = _descriptor_info(f)
            group.attrs.update({f"descriptor_{k}": v for k, v in info.items()})
            group.attrs["model"] = getattr(f, "model", "") or ""


def read_hloc_features(path: str | Path) -> dict[str, FeatureSet]:
    """Every image's features in an hloc ``features.h5`` (ours or hloc's), descriptors back as ``(N, D)``."""
    h5py = _need("h5py")
    found: dict[str, FeatureSet] = {}
    with h5py.File(str(path), "r") as file:

        def visit(name: str, item: Any) -> None:
            if isinstance(item, h5py.Group) and "keypoints" in item:
                descriptors = item["descriptors"][()].T if "descriptors" in item else None
                keypoints = item["keypoints"][()].astype(np.float32)
                scores = item["scores"][()].astype(np.float32) if "scores" in item else np.ones(len(keypoints))
                attrs = dict(item.attrs)
                if "descriptor_kind" in attrs:
                    info = {k: attrs[f"descriptor_{k}"] for k in ("kind", "dim", "metric")}
                    info = {"kind": str(info["kind"]), "dim": int(info["dim"]), "metric": str(info["metric"])}
                elif descriptors is not None and descriptors.dtype == np.uint8:
                    info = {"kind": "binary", "dim": 8 * descriptors.shape[1], "metric": "hamming"}
                else:  # hloc's learned descriptors are unit vectors compared by dot product
                    info = {"kind": "float", "dim": 0 if descriptors is None else descriptors.shape[1], "metric": "l2"}
                width, height = (int(v) for v in item["image_size"][()])
                found[name] = FeatureSet(
                    keypoints=keypoints,
                    scores=scores,
                    descriptors=None if descriptors is None else np.ascontiguousarray(descriptors),
                    descriptor=info,
                    image_size=(width, height),
                    model=str(attrs.get("model", "")),
                    sizes=item["sizes"][()].astype(np.float32) if "sizes" in item else None,
                    angles=item["angles"][()].astype(np.float32) if "angles" in item else None,
                )

        file.visititems(visit)
    return found


def matches0(result: MatchResult, inliers_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """hloc's ``matches0`` (index in image 1 per image-0 keypoint, -1 if none) and ``matching_scores0``.

    Scores are 1 for verified inliers and for unverified matches and 0 for outliers (and unmatched), so
    hloc's ``min_match_score`` (e.g. 0.5) keeps only what our verification kept.
    """
    count = result.num_keypoints0 or (len(result.features0.keypoints) if result.features0 is not None else 0)
    pairs = np.asarray(result.matches, np.int64).reshape(-1, 2)
    if len(pairs) and count <= pairs[:, 0].max():
        raise ValueError(f"matches refer to keypoint {pairs[:, 0].max()} of image 0, which has {count}")
    keep = np.ones(len(pairs), bool) if result.inliers is None else np.asarray(result.inliers, bool)
    if inliers_only:
        pairs, keep = pairs[keep], keep[keep]
    indices = np.full(count, -1, np.int32)
    scores = np.zeros(count, np.float16)
    indices[pairs[:, 0]] = pairs[:, 1]
    scores[pairs[:, 0]] = keep
    return indices, scores


def write_hloc_matches(
    path: str | Path, matches: Mapping[tuple[str, str], MatchResult], inliers_only: bool = False
) -> None:
    """Add (or replace) one group per image pair in an hloc ``matches.h5``; see `matches0` for the scores."""
    h5py = _need("h5py")
    with h5py.File(str(path), "a", libver="latest") as file:
        for (name0, name1), result in matches.items():
            key = names_to_pair(name0, name1)
            if key in file:
                del file[key]
            group = file.create_group(key)
            indices, scores = matches0(result, inliers_only)
            group.create_dataset("matches0", data=indices)
            group.create_dataset("matching_scores0", data=scores)
            group.attrs["model"] = result.model
            group.attrs["geometry"] = result.geometry.geometry if result.geometry is not None else "none"


def read_hloc_matches(path: str | Path, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """``(M, 2)`` matches (index in ``name0``'s keypoints, index in ``name1``'s) and their ``(M,)`` scores.

    Finds the pair stored either way round, and under hloc's older ``_`` separator, as hloc's
    ``find_pair`` does.
    """
    h5py = _need("h5py")
    with h5py.File(str(path), "r") as file:
        for separator in ("/", "_"):
            for key, reverse in (
                (names_to_pair(name0, name1, separator), False),
                (names_to_pair(name1, name0, separator), True),
            ):
                if key in file and "matches0" in file[key]:
                    indices = file[key]["matches0"][()]
                    scores = file[key]["matching_scores0"][()].astype(np.float32)
                    found = np.flatnonzero(indices >= 0)
                    pairs = np.stack([found, indices[found]], -1).astype(np.int64)
                    return (pairs[:, ::-1] if reverse else pairs), scores[found]
    raise KeyError(f"no matches of ({name0}, {name1}) in {path}")


# ---------------------------------------------------------------------------------------------------
# COLMAP


def colmap_descriptors(descriptors: np.ndarray | None) -> np.ndarray | None:
    """SIFT-like descriptors (non-negative floats) as COLMAP's uint8 rows: L2-normalised, x512, capped at 255.

    That is COLMAP's own scaling of SIFT descriptors (``FeatureDescriptorsToUnsignedByte``), so COLMAP's
    matchers can use them. Other descriptors (binary, or learned ones with negative values) have no
    COLMAP form; None then, and matches must come from us.
    """
    if descriptors is None or descriptors.dtype == np.uint8 or len(descriptors) == 0:
        return None
    values = np.asarray(descriptors, np.float32)
    if values.min() < 0:
        return None
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    return np.minimum(np.rint(512.0 * values / np.maximum(norms, 1e-12)), 255).astype(np.uint8)


def write_colmap_database(
    path: str | Path,
    features: Mapping[str, Any],
    matches: Mapping[tuple[str, str], MatchResult] | None = None,
    camera_model: str = "SIMPLE_RADIAL",
    single_camera: bool = False,
    two_view_geometries: bool = True,
) -> dict[str, int]:
    """Write images, keypoints, descriptors, matches and verified pairs into a COLMAP database.

    Then ``pycolmap.incremental_mapping(database, image_dir, output)`` (or ``colmap mapper``) reconstructs
    with our features; with ``two_view_geometries=False`` run ``pycolmap.verify_matches`` first.

    Args:
        path: The database file (created if missing; an image already in it keeps its id and is not rewritten;
            a pair's matches and two-view geometry are replaced).
        features: Image name (relative to the image folder COLMAP will read) -> feature set.
        matches: ``(name0, name1)`` -> `MatchResult` whose indices refer to those feature sets.
        camera_model: COLMAP camera model of new cameras; the focal length prior is 1.2 x the larger
            image side, COLMAP's own default without EXIF.
        single_camera: One camera for all images (they must share a size).
        two_view_geometries: Also write our verified inliers (matches with ``inliers``) as each pair's
            two-view geometry, so the mapper needs no verification of its own.

    Returns:
        Image name -> COLMAP image id.
    """
    pycolmap = _need("pycolmap")
    database = pycolmap.Database.open(str(path))
    try:
        existing = {image.name: image.image_id for image in database.read_all_images()}
        image_ids: dict[str, int] = {}
        shared_camera: int | None = None
        for name, f in features.items():
            if name in existing:
                image_ids[name] = existing[name]
                continue
            width, height = (int(v) for v in f.image_size)
            if shared_camera is None or not single_camera:
                camera = pycolmap.Camera.create_from_model_name(
                    pycolmap.INVALID_CAMERA_ID, camera_model, 1.2 * max(width, height), width, height
                )
                shared_camera = database.write_camera(camera)
            image_id = database.write_image(pycolmap.Image(name=name, camera_id=shared_camera))
            image_ids[name] = image_id
            keypoints = np.asarray(f.keypoints, np.float32).reshape(-1, 2) + COLMAP_PIXEL_OFFSET
            database.write_keypoints(image_id, keypoints)
            descriptors = colmap_descriptors(f.descriptors)
            if descriptors is not None:
                database.write_descriptors(
                    image_id, pycolmap.FeatureDescriptors(pycolmap.FeatureExtractorType.SIFT, descriptors)
                )
        for (name0, name1), result in (matches or {}).items():
            id0, id1 = image_ids[name0], image_ids[name1]
            pairs = np.asarray(result.matches, np.uint32).reshape(-1, 2)
            if database.exists_matches(id0, id1):  # written again: the new matches replace the old
                database.delete_matches(id0, id1)
            if database.exists_two_view_geometry(id0, id1):
                database.delete_two_view_geometry(id0, id1)
            database.write_matches(id0, id1, pairs)
            if two_view_geometries and result.inliers is not None and result.geometry is not None:
                geometry = pycolmap.TwoViewGeometry()
                geometry.config = getattr(
                    pycolmap.TwoViewGeometryConfiguration, COLMAP_CONFIGS[result.geometry.geometry]
                )
                geometry.inlier_matches = pairs[np.asarray(result.inliers, bool)]
                database.write_two_view_geometry(id0, id1, geometry)
        return image_ids
    finally:
        database.close()

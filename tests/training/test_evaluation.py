"""Tests of the homography-sequence evaluation on small synthetic sequences (no shared data needed)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from featureserve.models import Features, load_model
from training.evaluation import (
    HomographyEvaluation,
    evaluate_homography_sequences,
    load_image,
    load_sequence,
    load_sequences,
    markdown_table,
    matching_accuracy,
    model_extractor,
    reprojection_errors,
    sequence_category,
    sequence_markdown_table,
)

MAX_KEYPOINTS = 512


def mild_homography(angle_deg: float, scale: float, shift: tuple[float, float], tilt: float, size: int) -> np.ndarray:
    """Rotation and scale about the image centre, a shift and a little perspective."""
    c = (size - 1) / 2
    to_centre = np.array([[1, 0, -c], [0, 1, -c], [0, 0, 1]], np.float64)
    a = np.deg2rad(angle_deg)
    cos, sin = scale * np.cos(a), scale * np.sin(a)
    similarity = np.array([[cos, -sin, c + shift[0]], [sin, cos, c + shift[1]], [0, 0, 1]], np.float64)
    perspective = np.array([[1, 0, 0], [0, 1, 0], [tilt, -tilt, 1]], np.float64)
    return perspective @ similarity @ to_centre


def write_sequence(folder: Path, images: list[np.ndarray], homographies: list[np.ndarray], style: str) -> None:
    """Write image 1..N and H(1, N) files in HPatches (``1.ppm``, ``H_1_2``) or Oxford style."""
    folder.mkdir(parents=True)
    for n, image in enumerate(images, start=1):
        name = f"{n}.ppm" if style == "hpatches" else f"img{n}.png"
        cv2.imwrite(str(folder / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    for n, h in enumerate(homographies, start=2):
        name = f"H_1_{n}" if style == "hpatches" else f"H1to{n}p"
        np.savetxt(folder / name, h)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    """A 384x384 RGB photo: large enough for a few hundred SIFT keypoints, small enough to be fast."""
    return cv2.resize(data.astronaut(), (384, 384), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def warps() -> list[np.ndarray]:
    """Five mild homographies for pairs (1, 2) .. (1, 6)."""
    params = [
        (3, 1.0, (4, -3), 1e-5),
        (-6, 0.95, (-5, 6), 2e-5),
        (9, 1.05, (6, 2), -2e-5),
        (-12, 0.9, (0, 8), 3e-5),
        (15, 1.1, (-8, -4), -3e-5),
    ]
    return [mild_homography(*p, size=384) for p in params]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray, warps: list[np.ndarray]) -> Path:
    """Two sequences: ``v_astro`` warped (HPatches names), ``i_astro`` re-lit only (Oxford names)."""
    root = tmp_path_factory.mktemp("sequences")
    warped = [cv2.warpPerspective(astronaut, h, (384, 384)) for h in warps]
    write_sequence(root / "v_astro", [astronaut, *warped], warps, "hpatches")
    # Gamma curves from brighter to darker, like a day-to-dusk illumination sequence.
    tables = [(255 * (np.arange(256) / 255) ** g).astype(np.uint8) for g in (0.6, 0.8, 1.3, 1.6, 2.0)]
    relit = [cv2.LUT(astronaut, table) for table in tables]
    write_sequence(root / "i_astro", [astronaut, *relit], [np.eye(3)] * 5, "oxford")
    return root


@pytest.fixture(scope="module")
def sift_result(root: Path) -> HomographyEvaluation:
    """SIFT evaluated on both synthetic sequences."""
    return evaluate_homography_sequences(
        model_extractor(load_model("sift"), MAX_KEYPOINTS), root, max_keypoints=MAX_KEYPOINTS
    )


def test_loader_parses_both_naming_styles(root: Path, astronaut: np.ndarray, warps: list[np.ndarray]) -> None:
    sequences = load_sequences(root)
    assert [s.name for s in sequences] == ["i_astro", "v_astro"]
    oxford, hpatches = sequences
    assert (oxford.category, hpatches.category) == ("i", "v")
    assert oxford.reference_path.name == "img1.png"
    assert hpatches.reference_path.name == "1.ppm"
    for sequence in sequences:
        assert [p.index for p in sequence.pairs] == [2, 3, 4, 5, 6]
    assert [p.image_path.name for p in oxford.pairs] == [f"img{n}.png" for n in range(2, 7)]
    assert [p.image_path.name for p in hpatches.pairs] == [f"{n}.ppm" for n in range(2, 7)]
    for pair, h in zip(hpatches.pairs, warps, strict=True):
        np.testing.assert_allclose(pair.homography, h, rtol=1e-12)
    np.testing.assert_array_equal(oxford.pairs[0].homography, np.eye(3))
    # Lossless PNG round trip: equal only if the loader turned OpenCV's BGR back into RGB.
    image = load_image(oxford.reference_path)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, astronaut)


def test_loader_reads_only_named_sequences_and_rejects_unpaired_files(root: Path, tmp_path: Path) -> None:
    assert [s.name for s in load_sequences(root, names=["v_astro"])] == ["v_astro"]
    with pytest.raises(FileNotFoundError):
        load_sequences(root, names=["v_missing"])
    broken = tmp_path / "v_broken"
    broken.mkdir()
    for n in (1, 2, 3):
        (broken / f"img{n}.png").write_bytes(b"")
    np.savetxt(broken / "H1to2p", np.eye(3))
    with pytest.raises(ValueError, match="not pairs"):
        load_sequence(broken)


def test_sequence_category() -> None:
    assert sequence_category("i_ajuntament") == "i"
    assert sequence_category("v_graffiti") == "v"
    assert sequence_category("leuven") == "i"
    assert sequence_category("boat") == "v"
    assert sequence_category("lobby", {"lobby": "i"}) == "i"
    with pytest.raises(ValueError, match="lobby"):
        sequence_category("lobby")


def test_reprojection_errors_and_matching_accuracy_follow_the_protocol() -> None:
    shift = np.array([[1, 0, 2], [0, 1, 0], [0, 0, 1]], np.float64)
    points0 = np.array([[0, 0], [10, 5], [3, 3]], np.float32)
    points1 = np.array([[2, 0], [12, 8], [5, 3]], np.float32)
    np.testing.assert_allclose(reprojection_errors(points0, points1, shift), [0, 3, 0])
    # A point mapped to the line at infinity can never be correct.
    horizon = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]], np.float64)
    assert reprojection_errors(np.zeros((1, 2)), np.zeros((1, 2)), horizon)[0] == np.inf
    # Correct means error <= t, and MMA is the fraction of all matches.
    errors = np.array([0.0, 1.0, 1.5, 3.0, np.inf])
    np.testing.assert_allclose(matching_accuracy(errors, [1, 2, 3]), [0.4, 0.6, 0.8])
    np.testing.assert_array_equal(matching_accuracy(np.zeros(0), [1, 2, 3]), [0, 0, 0])


def test_sift_on_mild_warps_is_accurate(sift_result: HomographyEvaluation) -> None:
    assert len(sift_result.pairs) == 10
    assert sift_result.mma_at(3) > 0.5
    assert sift_result.mma_at(3, "v") > 0.5
    assert sift_result.mma_at(3, "i") > 0.5
    assert sift_result.homography_accuracy_at(3) == 1.0
    assert 100 < sift_result.features_per_image <= MAX_KEYPOINTS
    assert all(max(p.num_features) <= MAX_KEYPOINTS for p in sift_result.pairs)
    assert sift_result.matches_per_pair > 50
    # Strict JSON (no NaN or Infinity) that reads back to the same figures.
    loaded = json.loads(json.dumps(sift_result.to_dict(), allow_nan=False))
    assert loaded["mma"] == sift_result.mma
    assert loaded["homography_accuracy"] == sift_result.homography_accuracy
    assert len(loaded["pairs"]) == 10


def test_mma_is_monotone_in_threshold(sift_result: HomographyEvaluation) -> None:
    assert sift_result.thresholds == [float(t) for t in range(1, 11)]
    for curve in [*sift_result.mma.values(), *(p.mma for p in sift_result.pairs)]:
        assert np.all(np.diff(curve) >= 0)
        assert curve[0] >= 0 and curve[-1] <= 1
    for curve in sift_result.homography_accuracy.values():
        assert np.all(np.diff(curve) >= 0)


def test_wrong_homography_gives_near_zero_mma(tmp_path: Path, astronaut: np.ndarray, warps: list[np.ndarray]) -> None:
    warped = [cv2.warpPerspective(astronaut, h, (384, 384)) for h in warps]
    # The truth shifted by 40 px: every correct match now misses by about 40 px.
    shift = np.array([[1, 0, 40], [0, 1, 0], [0, 0, 1]], np.float64)
    write_sequence(tmp_path / "v_wrong", [astronaut, *warped], [shift @ h for h in warps], "hpatches")
    result = evaluate_homography_sequences(
        model_extractor(load_model("sift"), MAX_KEYPOINTS), tmp_path, max_keypoints=MAX_KEYPOINTS
    )
    assert result.matches_per_pair > 50
    assert max(result.mma["overall"]) < 0.05
    assert result.homography_accuracy_at(5) == 0.0


def test_keypoint_cap_keeps_the_strongest_and_extractor_sees_rgb(root: Path) -> None:
    sift = model_extractor(load_model("sift"), 4 * MAX_KEYPOINTS)
    seen: list[tuple[tuple[int, ...], np.dtype]] = []

    def extract(image: np.ndarray) -> Features:
        seen.append((image.shape, image.dtype))
        return sift(image)

    result = evaluate_homography_sequences(extract, root, max_keypoints=64, sequences=["v_astro"])
    assert seen == [((384, 384, 3), np.dtype(np.uint8))] * 6
    assert result.features_per_image == 64
    assert all(p.num_features == (64, 64) for p in result.pairs)


def test_markdown_tables(sift_result: HomographyEvaluation) -> None:
    results = {"sift": sift_result, "sift again": sift_result}
    table = markdown_table(results).splitlines()
    assert table[0].startswith("| model | MMA@1 | MMA@3 | MMA@5 | MMA@10 | Hacc@1 | Hacc@3 | Hacc@5 |")
    assert len(table) == 4
    assert table[2].startswith(f"| sift | {sift_result.mma_at(1):.3f} | {sift_result.mma_at(3):.3f} |")
    per_sequence = sequence_markdown_table(results, threshold=3)
    assert f"| v_astro (v) | {sift_result.sequence_mma(3)['v_astro']:.3f} |" in per_sequence
    assert f"| overall | {sift_result.mma_at(3):.3f} | {sift_result.mma_at(3):.3f} |" in per_sequence

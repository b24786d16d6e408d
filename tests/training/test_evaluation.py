"""Tests of the homography-sequence evaluation on small synthetic sequences (no shared data needed)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from featureserve.models import Features, load_model
from training.__main__ import main
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
from training.evaluation.metrics import repeatability
from training.evaluation.report import card_summary

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


def test_loader_takes_one_sequence_folder_as_root_and_skips_an_identity_h1to1p(
    tmp_path: Path, astronaut: np.ndarray
) -> None:
    # The layout of the A-KAZE noise set: the root is the sequence, and H1to1p is the identity.
    folder = tmp_path / "akaze_iguazu_noise"
    write_sequence(folder, [astronaut] * 3, [np.eye(3)] * 2, "oxford")
    np.savetxt(folder / "H1to1p", np.eye(3))
    [sequence] = load_sequences(folder)
    assert (sequence.name, sequence.category) == ("akaze_iguazu_noise", "i")
    assert [p.index for p in sequence.pairs] == [2, 3]
    # A non-identity H1to1p is a mislabelled file, not a pair to skip.
    np.savetxt(folder / "H1to1p", np.diag([1.0, 1.0 + 1e-3, 1.0]))
    with pytest.raises(ValueError, match="not the identity"):
        load_sequences(folder)


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
    # Detections are as repeatable as before, but judged against the wrong truth they rarely coincide.
    assert result.repeatability["overall"] < 0.2


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
    assert table[0].startswith("| model | MMA@1 | MMA@3 | MMA@5 | MMA@10 | Hacc@1 | Hacc@3 | Hacc@5 | Rep@3 |")
    assert len(table) == 4
    assert table[2].startswith(f"| sift | {sift_result.mma_at(1):.3f} | {sift_result.mma_at(3):.3f} |")
    hacc = " | ".join(f"{sift_result.homography_accuracy_at(t):.3f}" for t in (1, 3, 5))
    assert f" | {hacc} | {sift_result.repeatability['overall']:.3f} | " in table[2]
    per_sequence = sequence_markdown_table(results, threshold=3)
    assert f"| v_astro (v) | {sift_result.sequence_mma(3)['v_astro']:.3f} |" in per_sequence
    assert f"| overall | {sift_result.mma_at(3):.3f} | {sift_result.mma_at(3):.3f} |" in per_sequence


# Detector repeatability (SuperPoint protocol) on exact synthetic keypoints: image 1 is 320x240, image N 300x260.
SIZE0, SIZE1 = (320, 240), (300, 260)


def warp(points: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``H @ points[i]`` in pixels, written out here so the tests do not lean on the module's own warp."""
    mapped = np.c_[points, np.ones(len(points))] @ h.T
    return mapped[:, :2] / mapped[:, 2:]


@pytest.fixture
def pair_homography() -> np.ndarray:
    """A rotation, scale, shift and perspective that keeps the centre of image 1 inside image N."""
    return mild_homography(7, 0.95, (-5, 12), 2e-5, size=240)


def interior_grid(h: np.ndarray) -> np.ndarray:
    """Image-1 keypoints 20 px apart whose warps by ``h`` lie at least 15 px inside image N."""
    xs, ys = np.meshgrid(np.arange(20.0, 300.0, 20.0), np.arange(20.0, 230.0, 20.0))
    points = np.c_[xs.ravel(), ys.ravel()]
    mapped = warp(points, h)
    inside = np.all((mapped >= 15) & (mapped <= np.array(SIZE1) - 16), axis=1)
    assert inside.sum() > 40
    return points[inside]


@pytest.fixture
def grid0(pair_homography: np.ndarray) -> np.ndarray:
    """`interior_grid` of the pair's homography."""
    return interior_grid(pair_homography)


def test_repeatability_of_exactly_warped_keypoints_is_one(pair_homography: np.ndarray, grid0: np.ndarray) -> None:
    grid1 = warp(grid0, pair_homography)
    assert repeatability(grid0, grid1, pair_homography, SIZE0, SIZE1) == 1.0
    # The same image-N keypoints judged against a wrong homography are not repeated.
    wrong = np.array([[1, 0, 9], [0, 1, 0], [0, 0, 1]], np.float64) @ pair_homography
    assert repeatability(grid0, grid1, wrong, SIZE0, SIZE1) < 0.2


def test_repeatability_threshold_decides_a_5px_offset(pair_homography: np.ndarray, grid0: np.ndarray) -> None:
    moved = warp(grid0, pair_homography) + np.array([3.0, 4.0])  # 5 px from the true position
    assert repeatability(grid0, moved, pair_homography, SIZE0, SIZE1, threshold=3) == 0.0
    assert repeatability(grid0, moved, pair_homography, SIZE0, SIZE1, threshold=6) == 1.0
    assert repeatability(grid0, moved, pair_homography, SIZE0, SIZE1, threshold=5.0 + 1e-9) == 1.0


def test_repeatability_counts_only_the_shared_view() -> None:
    # Image 1 seen 60 px further right in image N: image N's left strip and image 1's right strip are not shared.
    h = np.array([[1, 0, 60], [0, 1, 0], [0, 0, 1]], np.float64) @ mild_homography(3, 1.0, (0, 0), 1e-5, size=240)
    grid0 = interior_grid(h)
    grid1 = warp(grid0, h)
    # Every other image-N keypoint is 10 px off (and 10 px from any other grid point): about 0.5 before extras.
    grid1[::2] += np.array([6.0, 8.0])
    base = repeatability(grid0, grid1, h, SIZE0, SIZE1)
    assert base == pytest.approx(0.5, abs=0.02)
    # Image-N points whose inverse warp lies left of or below image 1 (240 rows, image N has 260), and
    # image-1 points that land right of image N.
    extra1 = np.array([[5.0, 50.0], [20.0, 120.0], [10.0, 200.0], [30.0, 30.0], [150.0, 257.0], [200.0, 258.0]])
    back = warp(extra1, np.linalg.inv(h))
    assert np.all((back[:, 0] < -0.5) | (back[:, 1] > SIZE0[1] - 0.5))
    assert np.all((back[4:, 0] > 0) & (back[4:, 0] < SIZE0[0]))
    extra0 = np.array([[300.0, 120.0], [310.0, 10.0], [280.0, 200.0]])
    assert np.all(warp(extra0, h)[:, 0] > SIZE1[0])
    with_extras = repeatability(np.r_[grid0, extra0], np.r_[grid1, extra1], h, SIZE0, SIZE1)
    assert with_extras == pytest.approx(base, abs=1e-12)


def test_repeatability_of_half_repeated_keypoints_is_half(pair_homography: np.ndarray, grid0: np.ndarray) -> None:
    grid1 = warp(grid0, pair_homography)
    half = len(grid0) // 2
    grid1[half:] += np.array([0.0, 10.0])
    # Image 1 repeats `half` points, image N repeats `half` points, out of 2 * len(grid0).
    expected = 2 * half / (2 * len(grid0))
    assert repeatability(grid0, grid1, pair_homography, SIZE0, SIZE1) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.5, abs=0.01)


def test_repeatability_leaves_out_points_at_the_horizon() -> None:
    # w = 1 - x / 300: image-1 x = 300 goes to infinity; (100, 50) goes to (150, 75).
    horizon = np.array([[1, 0, 0], [0, 1, 0], [-1 / 300, 0, 1]], np.float64)
    points0 = np.array([[100.0, 50.0], [300.0, 50.0]])
    points1 = np.array([[150.0, 75.0]])
    assert repeatability(points0, points1, horizon, SIZE0, SIZE1) == 1.0
    assert repeatability(points0[1:], np.zeros((0, 2)), horizon, SIZE0, SIZE1) == 0.0
    assert repeatability(np.zeros((0, 2)), np.zeros((0, 2)), np.eye(3), SIZE0, SIZE1) == 0.0


def test_sift_repeatability_per_pair_and_group(root: Path, sift_result: HomographyEvaluation) -> None:
    assert sift_result.repeatability_threshold == 3.0
    assert set(sift_result.repeatability) == set(sift_result.mma) == {"overall", "i", "v"}
    values = [p.repeatability for p in sift_result.pairs]
    assert all(0 <= v <= 1 for v in values)
    # SIFT finds most of its corners again under mild warps and gamma changes.
    assert sift_result.repeatability["overall"] > 0.5
    assert sift_result.repeatability["overall"] == pytest.approx(np.mean(values))
    for group in ("i", "v"):
        in_group = [p.repeatability for p in sift_result.pairs if p.category == group]
        assert sift_result.repeatability[group] == pytest.approx(np.mean(in_group))
    loaded = json.loads(json.dumps(sift_result.to_dict(), allow_nan=False))
    assert loaded["repeatability"] == sift_result.repeatability
    assert loaded["repeatability_threshold"] == 3.0
    assert [p["repeatability"] for p in loaded["pairs"]] == values
    # A looser threshold repeats at least as much, pair by pair, and the table says which threshold.
    loose = evaluate_homography_sequences(
        model_extractor(load_model("sift"), MAX_KEYPOINTS),
        root,
        max_keypoints=MAX_KEYPOINTS,
        repeatability_threshold=6,
    )
    assert all(p.repeatability >= v for p, v in zip(loose.pairs, values, strict=True))
    assert loose.repeatability["overall"] > sift_result.repeatability["overall"]
    assert "| Rep@6 |" in markdown_table({"sift": loose}).splitlines()[0]
    with pytest.raises(ValueError, match="one threshold"):
        markdown_table({"sift": sift_result, "loose": loose})


def test_card_summary_keeps_repeatability(sift_result: HomographyEvaluation) -> None:
    report = {
        "max_keypoints": MAX_KEYPOINTS,
        "matcher": "mutual nearest neighbour",
        "homography_data": "synthetic",
        "homography": {"sift": sift_result.to_dict()},
        "posed": {},
    }
    summary = card_summary(report, "sift")["homography"]["sift"]
    assert summary["repeatability"] == sift_result.repeatability
    assert summary["repeatability_threshold"] == 3.0
    assert "pairs" not in summary
    # A report written before repeatability was measured still summarises.
    old = {k: v for k, v in sift_result.to_dict().items() if not k.startswith("repeatability")}
    report["homography"] = {"sift": old}
    assert "repeatability" not in card_summary(report, "sift")["homography"]["sift"]


def test_the_evaluate_command_loads_the_first_model_with_its_conf(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "evaluation.json"
    argv = ["evaluate", "--models", "scfeat", "sift", "--conf", '{"scale_levels": 1, "coarser_descriptor": false}']
    main([*argv, "--homography", str(root), "--posed", "--max-keypoints", "300", "--out", str(out)])
    report = json.loads(out.read_text())
    conf = report["cards"]["scfeat"]["details"]["conf"]
    assert conf["scale_levels"] == 1 and conf["coarser_descriptor"] is False
    assert set(report["homography"]) == {"scfeat", "sift"}
    assert report["homography"]["scfeat"]["features_per_image"] == 300

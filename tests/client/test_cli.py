"""The ``featureserve`` command: models, extract, match (in process, over REST, over gRPC), eval, train."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from benchmarks.common import metric_value
from featureserve.__main__ import main
from featureserve.client import RestClient
from featureserve.interop import read_hloc_features, read_hloc_matches
from tests.client.conftest import assert_same
from tests.conftest import TEST_HOMOGRAPHY, Server, encode

ROOT = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """``featureserve ARGV`` in this process: exit status, stdout, stderr."""
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_extract_writes_npz_and_hloc_files(
    image_files: list[Path], rest: RestClient, server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(
        capsys, "extract", image_files[0], "--model", "orb", "--max-keypoints", "300", "--out", tmp_path / "a.npz"
    )
    assert status == 0 and "orb" in out and "300" in out  # the table
    saved = np.load(tmp_path / "a.npz")
    expected = rest.extract(image_files[0], model="orb", max_keypoints=300)
    np.testing.assert_array_equal(saved["keypoints"], expected.keypoints)
    np.testing.assert_array_equal(saved["descriptors"], expected.descriptors)
    assert saved["image_size"].tolist() == [512, 512] and str(saved["model"]) == "orb"

    h5 = tmp_path / "features.h5"
    status, out, _ = run(capsys, "extract", *image_files, "--model", "sift", "--out", h5, "--url", server.url, "--json")
    report = json.loads(out)
    assert status == 0 and [r["num_keypoints"] for r in report["results"]] == [
        len(rest.extract(p, model="sift").keypoints) for p in image_files
    ]
    features = read_hloc_features(h5)
    assert len(features) == 2
    assert_same(features[report["results"][1]["image"]], rest.extract(image_files[1], model="sift"))
    status, _, err = run(capsys, "extract", *image_files, "--out", tmp_path / "two.npz")
    assert status == 2 and ".h5" in err


def test_match_draws_the_same_picture_in_process_over_rest_and_over_grpc(
    image_files: list[Path], rest: RestClient, server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = rest.match(*image_files, model="orb", geometry="homography", draw=True)
    where = {"local": [], "rest": ["--url", server.url], "grpc": ["--grpc", server.grpc_target]}
    for name, flags in where.items():
        picture = tmp_path / f"{name}.png"
        flags = ["--model", "orb", "--geometry", "homography", "--draw", picture, "--json", *flags]
        status, out, _ = run(capsys, "match", *image_files, *flags)
        report = json.loads(out)
        assert status == 0, name
        assert (report["num_matches"], report["num_inliers"]) == (len(expected.matches), int(expected.inliers.sum()))
        assert report["matches"] == expected.matches.tolist() and report["inliers"] == expected.inliers.tolist()
        assert np.allclose(report["geometry"]["matrix"], expected.geometry.matrix)
        assert picture.read_bytes() == expected.drawing, name
    status, out, _ = run(capsys, "match", *image_files, "--model", "orb", "--geometry", "none", "--ratio", "0.8")
    assert status == 0 and "matches" in out and "inliers" not in out


def test_match_exports_the_pair_for_hloc(
    image_files: list[Path],
    rest: RestClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(image_files[0].parent)  # names are relative to the working directory, as hloc's
    flags = ["--model", "sift", "--geometry", "homography", "--hloc", tmp_path]
    status, _, _ = run(capsys, "match", "astronaut.png", "warped.jpg", *flags)
    assert status == 0
    expected = rest.match(*image_files, model="sift", geometry="homography")
    matches, scores = read_hloc_matches(tmp_path / "matches.h5", "astronaut.png", "warped.jpg")
    order = np.argsort(expected.matches[:, 0])
    np.testing.assert_array_equal(matches, expected.matches[order])
    np.testing.assert_array_equal(scores, expected.inliers[order].astype(np.float32))
    assert set(read_hloc_features(tmp_path / "features.h5")) == {"astronaut.png", "warped.jpg"}


def test_match_pairs_extracts_each_image_once_and_matches_as_pairwise(
    server: Server, rest: RestClient, photo: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    names = [f"{i:02d}.png" for i in range(20)]
    for i, name in enumerate(names):
        x, y = 17 * (i % 5), 23 * (i // 5)
        (folder / name).write_bytes(encode(np.ascontiguousarray(photo[y : y + 192, x : x + 192])))
    pairs = [(a, b) for k, a in enumerate(names) for b in names[k + 1 :]]
    (tmp_path / "pairs.txt").write_text("".join(f"{a} {b}\n" for a, b in pairs))

    def extracted() -> float:
        return metric_value(
            httpx.get(f"{server.url}/metrics").text, "featureserve_keypoints_per_image_count", model="orb"
        )

    before = extracted()
    out = tmp_path / "hloc" / "matches.h5"
    flags = ["--model", "orb", "--geometry", "homography", "--url", server.url, "--out", out, "--json"]
    status, printed, _ = run(capsys, "match", "--pairs", tmp_path / "pairs.txt", folder, *flags)
    assert status == 0 and json.loads(printed)["pairs"] == 190
    assert extracted() - before == 20
    assert set(read_hloc_features(out.parent / "features.h5")) == set(names)
    for a, b in pairs[::37]:
        expected = rest.match(folder / a, folder / b, model="orb", geometry="homography")
        matches, scores = read_hloc_matches(out, a, b)
        order = np.argsort(expected.matches[:, 0])
        np.testing.assert_array_equal(matches, expected.matches[order])
        np.testing.assert_array_equal(scores, expected.inliers[order].astype(np.float32))
    status, _, err = run(capsys, "match", "--pairs", tmp_path / "pairs.txt", tmp_path)
    assert status != 0 and "are not in" in err and len(err.strip().splitlines()) == 1


def test_match_defaults_and_options_are_the_apis(
    image_files: list[Path], rest: RestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """No verification unless asked (as /v1/match); essential with intrinsics and RANSAC options; bad input named."""
    status, out, _ = run(capsys, "match", *image_files, "--model", "orb", "--json")
    report = json.loads(out)
    assert status == 0 and report["geometry"] is None and report["inliers"] is None and report["num_inliers"] is None
    camera = "500,500,255.5,255.5"
    flags = ["--model", "sift", "--geometry", "essential", "--intrinsics", camera, "--ransac-threshold", "2", "--json"]
    status, out, _ = run(capsys, "match", *image_files, *flags)
    report = json.loads(out)
    expected = rest.match(
        *image_files,
        model="sift",
        geometry="essential",
        intrinsics0=[500, 500, 255.5, 255.5],
        intrinsics1=[500, 500, 255.5, 255.5],
        ransac_threshold=2,
    )
    assert status == 0 and report["num_inliers"] == expected.geometry.num_inliers > 20
    assert np.allclose(report["geometry"]["rotation"], expected.geometry.rotation)
    status, out, _ = run(capsys, "match", *image_files, "--geometry", "essential", "--intrinsics", camera)
    assert status == 0 and "rotation" in out and "translation" in out
    status, _, err = run(capsys, "match", *image_files, "--geometry", "essential")
    assert status == 2 and "--intrinsics FX,FY,CX,CY" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as usage:  # argparse's usage error: the usage line, then the problem
        run(capsys, "match", *image_files, "--intrinsics", "525,525")
    assert usage.value.code == 2 and "expected fx,fy,cx,cy in pixels" in capsys.readouterr().err


def test_models_lists_a_servers_models_or_the_installed_ones(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, "models", "--url", server.url, "--json")
    assert status == 0 and [m["name"] for m in json.loads(out)["models"]] == ["sift", "orb", "akaze", "tiny-cnn"]
    status, out, _ = run(capsys, "models", "--grpc", server.grpc_target)
    assert status == 0 and "sift *" in out and "hamming" in out
    status, out, _ = run(capsys, "models", "--json")
    assert status == 0 and {"sift", "orb", "akaze", "caps"} <= {m["name"] for m in json.loads(out)["models"]}


def test_errors_are_one_line(
    image_files: list[Path],
    server: Server,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    status, out, err = run(capsys, "match", "no-such-image.png", image_files[1])
    assert status == 1 and "no-such-image.png" in err and "Traceback" not in err and not out
    status, _, err = run(capsys, "extract", image_files[0], "--model", "nope", "--url", server.url)
    assert status == 1 and "model_not_found" in err
    # A missing extra: pycolmap made unimportable, as on an install without the interop extra.
    monkeypatch.setitem(sys.modules, "pycolmap", None)
    folder = image_files[0].parent
    (tmp_path / "pairs.txt").write_text(f"{image_files[0].name} {image_files[1].name}\n")
    flags = ["--model", "orb", "--colmap", tmp_path / "db.db", "--out", tmp_path / "m.h5"]
    status, _, err = run(capsys, "match", "--pairs", tmp_path / "pairs.txt", folder, *flags)
    assert status == 1 and "pip install 'featureserve[interop]'" in err and len(err.strip().splitlines()) == 1


def test_eval_runs_the_homography_evaluation(
    photo: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One HPatches-layout sequence: a 256 px photo and two warps of it with their ground-truth homographies.
    sequence = tmp_path / "data" / "v_astronaut"
    sequence.mkdir(parents=True)
    image = cv2.resize(photo, (256, 256), interpolation=cv2.INTER_AREA)
    rotation = cv2.getRotationMatrix2D((128, 128), 15, 1.0)
    warps = {2: TEST_HOMOGRAPHY, 3: np.vstack([rotation, [0, 0, 1]])}
    (sequence / "1.png").write_bytes(encode(image))
    for n, h in warps.items():
        (sequence / f"{n}.png").write_bytes(encode(cv2.warpPerspective(image, h, (256, 256))))
        np.savetxt(sequence / f"H_1_{n}", h)
    status, out, err = run(
        capsys,
        "eval",
        tmp_path / "data",
        "--models",
        "orb",
        "--max-keypoints",
        "500",
        "--json",
        "--out",
        tmp_path / "eval.json",
    )
    assert status == 0, err
    row = json.loads(out)["orb"]
    assert row["MMA@3"] > 0.5 and row["Hacc@5"] == 1.0 and 100 < row["features/img"] <= 500
    assert json.loads((tmp_path / "eval.json").read_text())["homography"]["orb"]["pairs"]
    status, _, err = run(capsys, "eval", tmp_path, "--models", "orb")
    assert status == 2 and "no HPatches-layout sequences" in err and len(err.strip().splitlines()) == 1
    # One sequence folder is a dataset of one; the table fits an 80-column terminal with every figure whole.
    status, out, err = run(capsys, "eval", sequence, "--models", "orb", "orb-patch", "--max-keypoints", "300")
    assert status == 0, err
    assert "v_astronaut: 1 sequence," in out and max(len(line) for line in out.splitlines()) <= 80 and "…" not in out
    assert {"orb", "orb-patch"} <= {line.split()[0] for line in out.splitlines() if line.strip()}


def test_train_runs_the_training_package(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = ROOT / "training" / "configs" / "caps_tiny.yaml"
    status, _, err = run(capsys, "train", config, "--run-dir", tmp_path / "run", "--steps", "2")
    assert status == 0, err
    assert (tmp_path / "run" / "last.pt").is_file() and (tmp_path / "run" / "train.csv").is_file()


def test_the_installed_command(image_files: list[Path], server: Server) -> None:
    command = Path(sys.executable).with_name("featureserve")
    done = subprocess.run(
        [command, "match", *image_files, "--model", "orb", "--url", server.url, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["num_matches"] > 100
    help_text = subprocess.run([command, "--help"], capture_output=True, text=True, check=True).stdout
    assert all(name in help_text for name in ("serve", "models", "extract", "match", "eval", "train"))

"""Training data: configs, the synthetic generator, query points and the posed-image loaders."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from training.config import OptimConfig, TrainConfig, load_config
from training.data.pairs import QueryConfig, RealPairs, SyntheticPairs, epipolar_line_crosses
from training.data.posed import load_kapture, load_megadepth, load_strecha
from training.data.synthetic import SceneConfig, SceneGenerator
from training.geometry import epipolar_distance

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def test_yaml_configs_become_typed_configs(tmp_path: Path) -> None:
    config = load_config(ROOT / "training" / "configs" / "caps_lite.yaml")
    assert isinstance(config, TrainConfig) and isinstance(config.optim, OptimConfig)
    assert config.data.scene.width == 320 and isinstance(config.loss.temperature, float)
    assert config.validation.real[0].format == "strecha" and config.validation.real[0].gaps == (1,)
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {stepz: 3}\n")
    with pytest.raises(ValueError, match="stepz"):
        load_config(bad)


def test_synthetic_samples_are_reproducible_and_queries_visible() -> None:
    generator = SceneGenerator([], SceneConfig(width=160, height=120))
    dataset = SyntheticPairs(generator, 3, seed=7, queries=QueryConfig(48), photometric=None)
    a, b = dataset[1], dataset[1]
    assert all(torch.equal(a[k], b[k]) for k in ("image1", "image2", "queries"))
    assert a["queries"].shape == (48, 2) and a["image1"].shape == (1, 120, 160)
    # Every query is visible in image 2: its true match is inside image 2 and on its epipolar line.
    targets = a["targets"]
    assert ((targets >= -0.5) & (targets <= torch.tensor([159.5, 119.5]))).all()
    distances = epipolar_distance(a["queries"][None].double(), targets[None].double(), a["fundamental"][None].double())
    assert distances.max() < 1.0  # the target is the nearest pixel's projection, hence up to ~0.7 px


def test_epipolar_line_pruning() -> None:
    # Pure x translation: the epipolar line of (x, y) is row y, which crosses a 100-row image only for y < 100.
    fundamental = np.array([[0, 0, 0], [0, 0, -1], [0, 1, 0]], np.float64)
    points = np.array([[10.0, 20.0], [10.0, 150.0]])
    assert epipolar_line_crosses(points, fundamental, (200, 100)).tolist() == [True, False]


def _write_megadepth(root: Path) -> None:
    folder = root / "train" / "0001" / "dense0" / "aligned"
    (folder / "images").mkdir(parents=True)
    image = data.astronaut()
    for name in ("a.jpg", "b.jpg"):
        cv2.imwrite(str(folder / "images" / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    rotation = cv2.Rodrigues(np.array([0.0, 0.1, 0.0]))[0]
    rows = ["# name w h fx fy cx cy R t", "a.jpg 512 512 400 400 255.5 255.5 1 0 0 0 1 0 0 0 1 0 0 0"]
    rows.append("b.jpg 512 512 400 400 255.5 255.5 " + " ".join(f"{v:.9f}" for v in rotation.ravel()) + " 1 0 0")
    (folder / "img_cam.txt").write_text("\n".join(rows) + "\n")
    (folder / "pairs.txt").write_text("a.jpg b.jpg\n")


def test_megadepth_layout_loader(tmp_path: Path) -> None:
    _write_megadepth(tmp_path)
    images, pairs = load_megadepth(tmp_path)
    assert [i.path.name for i in images] == ["a.jpg", "b.jpg"] and pairs == [(0, 1)]
    assert np.allclose(images[1].translation, [1, 0, 0]) and images[0].k[0, 0] == 400
    sample = RealPairs(images, pairs, (256, 192), seed=0, queries=QueryConfig(32))[0]
    assert sample["image1"].shape == (1, 192, 256) and sample["queries"].shape == (32, 2)
    assert torch.isnan(sample["targets"]).all()  # real pairs have no depth


@pytest.mark.skipif(not (SHARED / "kapture_maupertuis_sfm").is_dir(), reason="shared data not present")
def test_real_posed_sets_load() -> None:
    kapture = load_kapture(SHARED / "kapture_maupertuis_sfm")
    strecha = load_strecha(SHARED / "strecha_mvs" / "castle-P19")
    assert len(kapture) == 4 and len(strecha) == 19
    for image in kapture + strecha:
        assert image.path.is_file() and np.allclose(image.rotation @ image.rotation.T, np.eye(3), atol=1e-5)
    assert kapture[0].distortion is not None and strecha[0].distortion is None

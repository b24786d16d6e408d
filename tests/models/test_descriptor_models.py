"""The `orb-patch` and `hndesc` models: patch geometry, keypoint sources, cards, batching.

`orb-patch` has no trained checkpoint yet, so its tests load a checkpoint exported from a tiny training run.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from featureserve.models import KeypointOptions, load_model
from featureserve.models.hndesc import DEFAULT_CARD as HNDESC_CARD
from featureserve.models.orb_patch import (
    OrbPatch,
    PatchNetwork,
    _sample_patches,
    cv_keypoint_rows,
    extract_patches,
    load_checkpoint,
)
from training.config import load_config
from training.export import export
from training.methods import method_for
from training.trainer import train

OPTIONS = KeypointOptions(max_keypoints=300)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def patch_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The card of a 3-step orb-patch run, exported in float32."""
    folder = tmp_path_factory.mktemp("orb-patch")
    train(load_config(ROOT / "training" / "configs" / "orb_patch_tiny.yaml"), folder / "run")
    return export(folder / "run", "orb-patch", folder / "export", dtype="float32")


def _textured(size: int = 200) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur((rng.random((size, size, 3)) * 255).astype(np.uint8), (0, 0), 2)
    return cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX)


def test_patch_network_is_the_reference_layout() -> None:
    network = PatchNetwork()
    assert sum(p.numel() for p in network.parameters()) == 259_296  # the reference code's 3x32x32 -> 128 network
    descriptors = network(torch.rand(5, 3, 32, 32))
    assert descriptors.shape == (5, 128)
    torch.testing.assert_close(descriptors.norm(dim=1), torch.ones(5))


def test_patch_descriptors_ignore_brightness_and_contrast() -> None:
    network = PatchNetwork().eval()
    patches = torch.rand(6, 3, 32, 32) * 0.5
    with torch.no_grad():
        plain, brighter, stronger = network(patches), network(patches + 0.3), network(patches * 1.8)
    torch.testing.assert_close(brighter, plain, atol=1e-5, rtol=0)
    assert (stronger * plain).sum(dim=1).min() > 0.99  # the 0.01 floor on the std keeps it approximate


def test_training_starts_from_centred_patch_descriptors() -> None:
    method = method_for(load_config(ROOT / "training" / "configs" / "orb_patch_tiny.yaml"))
    first, second = (method.validation_sets()["bags"][i] for i in range(2))  # two different photos
    bags = [sample["anchor"][sample["anchor_mask"]].float() / 255.0 for sample in (first, second)]

    def mean_cosine(network: torch.nn.Module) -> float:
        with torch.no_grad():
            return float((network(bags[0]) @ network(bags[1]).T).mean())

    torch.manual_seed(0)
    assert mean_cosine(PatchNetwork()) > 0.5  # the shared component of untrained ReLU features
    torch.manual_seed(0)  # the same initial weights, then centred: 0.16 here, 0.04 on the real photos
    network = method.network()
    method.initialise(network)
    assert abs(mean_cosine(network)) < 0.3


@pytest.mark.parametrize("angle", [90.0, 37.0, -120.0])
def test_patches_are_rotation_consistent(angle: float) -> None:
    image = _textured()
    centre = (99.5, 99.5)
    keypoint = np.array([120.0, 90.0])
    size, keypoint_angle = 20.0, 15.0
    # Rotate the image about its centre by `angle` degrees counter-clockwise on screen (OpenCV's convention).
    rotation = cv2.getRotationMatrix2D(centre, angle, 1.0)
    rotated = cv2.warpAffine(image, rotation, (200, 200), flags=cv2.INTER_CUBIC)
    moved = rotation @ np.array([*keypoint, 1.0])
    # On screen (y down) a counter-clockwise rotation lowers OpenCV's clockwise keypoint angle.
    original = extract_patches(image, np.array([[*keypoint, size, keypoint_angle]]))
    turned = extract_patches(rotated, np.array([[*moved, size, keypoint_angle - angle]]))
    assert float((original - turned).abs().mean()) < 0.02
    # A wrong angle gives a different patch: the check above is not vacuous.
    wrong = extract_patches(rotated, np.array([[*moved, size, keypoint_angle + angle]]))
    assert float((original - wrong).abs().mean()) > 0.04


def test_patch_side_follows_the_keypoint_size() -> None:
    image = np.zeros((100, 100), np.uint8)
    image[40:60, 40:60] = 255  # a 20-pixel white square
    # The sampler alone (no pyramid level), side 1.5 x size: with size 40/3 the patch spans the square (20 px);
    # only its outermost samples (0.3 px from the square's edge) blend with the black outside.
    inner = _sample_patches(image, np.array([[49.5, 49.5, 40 / 3, 0.0]], np.float32))
    assert float(inner[..., 1:-1, 1:-1].min()) > 0.99 and float(inner.min()) > 0.6
    # With size 40 the patch spans 60 px: a third of its width on each side is black.
    outer = _sample_patches(image, np.array([[49.5, 49.5, 40.0, 0.0]], np.float32))[0, 0]
    assert float(outer[:, :8].max()) < 0.01 and float(outer[16, 16]) > 0.99
    # Cut from its pyramid level, the large patch keeps that layout, with softer edges.
    outer_level = extract_patches(image, np.array([[49.5, 49.5, 40.0, 0.0]]))[0, 0]
    assert float(outer_level[:, :6].max()) < 0.05 and float(outer_level[16, 16]) > 0.95


def test_large_patches_do_not_alias() -> None:
    image = np.zeros((256, 256), np.uint8)
    image[:, ::2] = 255  # one-pixel stripes: finer than the samples of a large patch
    # Size 64: samples 3 px apart, which on the full image would land on stripes in an aliased pattern.
    large = extract_patches(image, np.array([[127.5, 127.5, 64.0, 0.0]]))
    assert float(large.std()) < 0.05 and abs(float(large.mean()) - 0.5) < 0.05
    # Size 10: samples under a pixel apart still resolve the stripes.
    small = extract_patches(image, np.array([[127.5, 127.5, 10.0, 0.0]]))
    assert float(small.std()) > 0.2


def test_orb_patch_keeps_orbs_keypoints(patch_card: Path) -> None:
    image = data.astronaut()
    [plain] = load_model("orb").extract([image], [OPTIONS])
    [learned] = OrbPatch(card=str(patch_card)).extract([image], [OPTIONS])
    np.testing.assert_array_equal(plain.keypoints, learned.keypoints)
    np.testing.assert_array_equal(plain.scores, learned.scores)
    assert learned.descriptors.shape == (len(plain), 128) and learned.descriptors.dtype == np.float32


def test_orb_patch_descriptors_come_from_the_checkpoint(patch_card: Path) -> None:
    network, card = load_checkpoint(patch_card)
    image = data.astronaut()
    model = OrbPatch(card=str(patch_card))
    cv_keypoints = cv2.ORB_create(50).detect(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), None)
    rows = cv_keypoint_rows(cv_keypoints)
    with torch.inference_mode():
        expected = network(extract_patches(image, rows)).numpy()
    [described] = model.extract([image], [KeypointOptions(max_keypoints=50)])
    order = np.lexsort(rows[:, :2].T)
    got = described.descriptors[np.lexsort(described.keypoints.T)]
    np.testing.assert_allclose(got, expected[order], atol=1e-5)
    assert card["keypoints"]["source"] == "orb" and model.card.details["architecture"]["parameters"] == 259_296


def test_hndesc_serves_the_fine_map_at_sift_keypoints() -> None:
    image = data.astronaut()
    [sift] = load_model("sift").extract([image], [OPTIONS])
    model = load_model("hndesc")
    [features] = model.extract([image], [OPTIONS])
    np.testing.assert_array_equal(sift.keypoints, features.keypoints)
    assert features.descriptors.shape == (len(sift), 128)
    np.testing.assert_allclose(np.linalg.norm(features.descriptors, axis=1), 1, atol=1e-5)
    assert model.card.details["keypoints"]["source"] == "sift" and str(HNDESC_CARD).endswith("hndesc-lite.json")


def test_hndesc_batches_match_single_images() -> None:
    model = load_model("hndesc")
    images = [data.astronaut(), data.astronaut()[:480, :448]]
    batched = model.extract(images, [OPTIONS, OPTIONS])
    for image, features in zip(images, batched, strict=True):
        [single] = model.extract([image], [OPTIONS])
        np.testing.assert_allclose(features.descriptors, single.descriptors, atol=1e-4)

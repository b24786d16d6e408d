"""The served `caps` model: committed checkpoint and card, SIFT keypoints, tensor batching, network sizes."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from featureserve.models import KeypointOptions, load_model
from featureserve.models.caps import DEFAULT_CARD, CAPSNetwork, load_checkpoint
from featureserve.models.dense import pyramid_levels
from featureserve.models.matching import match_descriptors

OPTIONS = KeypointOptions(max_keypoints=400)


@pytest.fixture(scope="module")
def caps():
    """The served model from its committed card."""
    return load_model("caps")


def test_committed_card_records_what_the_checkpoint_is() -> None:
    network, card = load_checkpoint(DEFAULT_CARD)
    assert sum(p.numel() for p in network.parameters()) == card["architecture"]["parameters"]
    assert card["architecture"]["strides"] == {"coarse": 16, "fine": 4}
    assert card["descriptor"]["dim"] == 256 and card["keypoints"]["source"] == "sift"
    assert "(u + 0.5) / s - 0.5" in card["pixel_convention"]
    assert {"mean", "std"} <= set(card["input"]["normalisation"])
    training = card["training"]
    assert training["steps"] > 0 and training["wall_seconds"] > 0 and training["device"]
    assert {"generator", "seed"} <= set(training["data"]) and "Adam" in training["optimiser"]
    assert card["licence"].startswith("MIT")


def test_extract_sift_keypoints_with_unit_caps_descriptors() -> None:
    caps = load_model("caps", scale_levels=1)  # one level: every descriptor is one sample of each map
    image = data.astronaut()
    [features] = caps.extract([image], [OPTIONS])
    [sift] = load_model("sift").detect([image], [OPTIONS])
    # Same detector, same keypoints: caps only replaces the descriptors.
    assert np.array_equal(features.keypoints, sift.keypoints) and np.array_equal(features.scores, sift.scores)
    assert features.descriptors.shape == (len(features), 256) and features.descriptors.dtype == np.float32
    # concat(coarse, fine), each half normalised before the concatenation: each half has norm 1/sqrt(2).
    halves = np.linalg.norm(features.descriptors.reshape(-1, 2, 128), axis=2)
    assert np.allclose(halves, 2**-0.5, atol=1e-4)
    assert caps.card.to_dict()["details"]["training"]["steps"] > 0


def test_a_tensor_batch_matches_single_images(caps) -> None:
    first, second = data.astronaut(), data.chelsea()[:300, :450]
    second = np.ascontiguousarray(np.pad(second, ((0, 212), (0, 62), (0, 0)))[:512, :512])
    batched = caps.extract([first, second], [OPTIONS, OPTIONS])
    for image, features in zip([first, second], batched, strict=True):
        [single] = caps.extract([image], [OPTIONS])
        assert np.allclose(features.descriptors, single.descriptors, atol=1e-4)


def test_descriptors_match_across_a_small_shift(caps) -> None:
    # A learned descriptor should recognise the same point after a pure translation.
    image = data.astronaut()
    shifted = np.ascontiguousarray(image[24:, 40:])
    [a] = caps.describe([image], [np.array([[200.0, 150.0], [300.0, 320.0], [120.0, 400.0]], np.float32)])
    [b] = caps.describe([shifted], [a.keypoints - np.array([40, 24], np.float32)])
    similarity = a.descriptors @ b.descriptors.T
    assert np.array_equal(similarity.argmax(axis=1), np.arange(3))


def test_pyramid_levels_bracket_each_keypoint_size() -> None:
    sizes = np.array([1.0, 2.5, 2.5 * 2**0.25, 5.0, 1000.0], np.float32)
    lower, upper, weight = pyramid_levels(sizes, reference_size=2.5, step=0.5, levels=6)
    assert lower.tolist() == [0, 0, 0, 2, 5] and upper.tolist() == [1, 1, 1, 3, 5]
    assert np.allclose(weight, [0, 0, 0.5, 0, 0], atol=1e-6)


def test_finer_levels_come_first_in_the_pyramid() -> None:
    sizes = np.array([1.0, 2.5 * 2**-0.5, 2.5, 5.0], np.float32)
    lower, upper, weight = pyramid_levels(sizes, reference_size=2.5, step=0.5, levels=7, finer=1)
    # Level 0 is the image upsampled by 2 ** 0.5: a keypoint of 2.5 / sqrt(2) px has the reference size there.
    assert lower.tolist() == [0, 0, 1, 3] and upper.tolist() == [1, 1, 2, 4]
    assert np.allclose(weight, 0, atol=1e-6)
    with pytest.raises(ValueError, match="finer_levels"):
        load_model("caps", finer_levels=-1)


def test_a_finer_level_finds_more_matches_across_a_zoom_out() -> None:
    # Zoomed out, a keypoint is smaller than the reference size in the smaller image and was described on the
    # image itself, at another scale than its partner; an upsampled level describes it at its partner's scale.
    # A large reference size leaves many keypoints below it, which is where the level matters.
    image = data.astronaut()
    smaller = cv2.resize(image, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    options = [KeypointOptions(max_keypoints=1000)] * 2
    scale = np.array(smaller.shape[1::-1]) / np.array(image.shape[1::-1])

    def correct_matches(model) -> int:
        first, second = model.extract([image, smaller], options)
        pairs = match_descriptors(first.descriptors, second.descriptors, metric="cosine", matcher="mnn").indices
        expected = (first.keypoints[pairs[:, 0]] + 0.5) * scale - 0.5
        return int((np.linalg.norm(second.keypoints[pairs[:, 1]] - expected, axis=1) < 3).sum())

    finer = load_model("caps", finer_levels=1, reference_size=3.5)
    assert correct_matches(finer) > 1.15 * correct_matches(load_model("caps", reference_size=3.5))


def test_sift_keypoints_carry_their_sizes_through_subset() -> None:
    [features] = load_model("sift").detect([data.astronaut()], [OPTIONS])
    assert features.sizes.shape == (len(features),) and (features.sizes > 0).all()
    strongest = features.subset(np.arange(10))
    assert np.array_equal(strongest.sizes, features.sizes[:10])
    assert np.array_equal(strongest.angles, features.angles[:10])


def test_unique_locations_keep_one_sift_keypoint_per_location() -> None:
    image = cv2.resize(data.astronaut(), (1024, 1024))  # more SIFT keypoints than the budget
    options = [KeypointOptions(max_keypoints=1500)]
    [every] = load_model("sift").detect([image], options)
    [unique] = load_model("sift", unique_locations=True).detect([image], options)
    assert len(np.unique(every.keypoints, axis=0)) < len(every) == 1500  # orientations repeat locations
    assert len(np.unique(unique.keypoints, axis=0)) == len(unique) == 1500  # the budget holds distinct ones
    assert (unique.angles >= 0).all() and (unique.sizes > 0).all()


def test_featureless_and_tiny_images_give_empty_or_full_resolution_features(caps) -> None:
    flat, tiny = np.full((100, 120), 128, np.uint8), data.astronaut()[:40, :48]
    empty, small = caps.extract([flat, tiny], [OPTIONS, OPTIONS])
    assert len(empty) == 0 and empty.descriptors.shape == (0, 256) and len(small) > 0
    # Too small for a second pyramid level: every keypoint is described at full resolution.
    [single] = load_model("caps", scale_levels=1).extract([tiny], [OPTIONS])
    np.testing.assert_allclose(small.descriptors, single.descriptors, atol=1e-5)


def test_the_scale_pyramid_finds_more_matches_across_a_zoom(caps) -> None:
    # A 2x zoom doubles SIFT keypoint sizes; describing every keypoint where its size is the reference size
    # should find more correct mutual matches than describing both images at full resolution.
    image = data.astronaut()
    zoomed = cv2.resize(image, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    options = [KeypointOptions(max_keypoints=1000)] * 2

    def correct_matches(model) -> int:
        first, second = model.extract([image, zoomed], options)
        pairs = match_descriptors(first.descriptors, second.descriptors, metric="cosine", matcher="mnn").indices
        expected = (first.keypoints[pairs[:, 0]] + 0.5) * 2 - 0.5
        return int((np.linalg.norm(second.keypoints[pairs[:, 1]] - expected, axis=1) < 3).sum())

    assert correct_matches(caps) > 1.2 * correct_matches(load_model("caps", scale_levels=1))


@pytest.mark.parametrize("size, parameters", [("lite", (0.8e6, 1.5e6)), ("resnet18", (2e6, 6e6))])
def test_network_sizes_and_strides(size: str, parameters: tuple[float, float]) -> None:
    network = CAPSNetwork(size).eval()
    assert parameters[0] < sum(p.numel() for p in network.parameters()) < parameters[1]
    with torch.no_grad():
        outputs = network(torch.rand(1, 1, 96, 128))
    assert outputs["coarse"].shape == (1, 128, 6, 8) and outputs["fine"].shape == (1, 128, 24, 32)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())


def test_models_never_import_training() -> None:
    code = "import sys, featureserve.models; sys.exit(any(m.split('.')[0] == 'training' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

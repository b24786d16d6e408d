"""The `scfeat` model: its layers, NMS and sub-pixel keypoints, batching, and a two-stage tiny run it can serve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from featureserve.models import KeypointOptions
from featureserve.models.base import image_size, normalise_rows, rescale_points, resize_image
from featureserve.models.dense import nms_mask, refine_subpixel
from featureserve.models.scfeat import CouplingBridgeNorm, SCFeat, SCFeatNetwork, peakiness
from training.config import load_config
from training.export import export
from training.trainer import train

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = KeypointOptions(max_keypoints=300)


@pytest.fixture(scope="module")
def tiny_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The card of a tiny two-stage run: 3 descriptor steps, then 3 detector steps from that run."""
    folder = tmp_path_factory.mktemp("scfeat")
    config = ROOT / "training" / "configs" / "scfeat_tiny.yaml"
    train(load_config(config), folder / "descriptor")
    detector = {"scfeat": {"stage": "detector"}, "init_from": str(folder / "descriptor" / "last.pt")}
    train(load_config(config, detector), folder / "detector")
    return export(folder / "detector", "scfeat-tiny", folder / "export", dtype="float32")


def test_the_detector_stage_trains_only_the_detector(tiny_card: Path) -> None:
    card = json.loads(tiny_card.read_text())
    lineage = card["training"]["initialised_from"]
    assert card["stage"] == "detector" and lineage["steps"] == 3 and lineage["device"] == "cpu"
    descriptor_run = torch.load(Path(lineage["path"]), weights_only=False)["network"]
    detector_run = torch.load(tiny_card.parent.parent / "detector" / "last.pt", weights_only=False)["network"]
    for name, weights in detector_run.items():
        if not name.startswith("detector."):
            assert torch.equal(weights, descriptor_run[name]), f"{name} moved in the detector stage"
    assert any(not torch.equal(w, descriptor_run[n]) for n, w in detector_run.items() if n.startswith("detector."))
    assert card["name"] == "scfeat" and card["keypoints"]["source"] == "scfeat"


def test_keypoints_are_refined_nms_peaks_above_the_threshold(tiny_card: Path) -> None:
    image = data.camera()
    exact = SCFeat(card=str(tiny_card), subpixel=False)
    [features] = exact.extract([image], [OPTIONS])
    with torch.inference_mode():
        scores = exact.network(exact._to_tensor([image]))["scores"]
    peaks = nms_mask(scores, 1)[0, 0]
    xs, ys = features.keypoints.astype(int).T
    assert len(features) == 300 and np.array_equal(features.keypoints, np.round(features.keypoints))
    assert peaks[ys, xs].all(), "every keypoint is a local maximum of the score map"
    np.testing.assert_allclose(features.scores, scores[0, 0, ys, xs].numpy(), rtol=1e-6)
    assert features.scores.min() >= scores[0, 0][peaks].sort(descending=True).values[299].item()
    [refined] = SCFeat(card=str(tiny_card)).extract([image], [OPTIONS])
    shift = np.abs(refined.keypoints - features.keypoints)
    assert shift.max() <= 1.0 and shift.max() > 0, "sub-pixel refinement moves peaks within their 3x3 window"


def test_subpixel_refinement_is_the_score_weighted_mean() -> None:
    scores = torch.zeros(5, 5)
    scores[2, 2], scores[2, 3], scores[1, 2] = 2.0, 1.0, 1.0
    refined = refine_subpixel(scores, torch.tensor([[2, 2]]))
    np.testing.assert_allclose(refined.numpy(), [[2.25, 1.75]])
    corner = refine_subpixel(torch.ones(4, 4), torch.tensor([[0, 0]]))  # outside the map counts as score 0
    np.testing.assert_allclose(corner.numpy(), [[0.5, 0.5]])


def test_batches_match_single_images(tiny_card: Path) -> None:
    model = SCFeat(card=str(tiny_card))
    images = [data.astronaut(), data.astronaut()[:480, :448]]
    batched = model.extract(images, [OPTIONS, OPTIONS])
    for image, features in zip(images, batched, strict=True):
        [single] = model.extract([image], [OPTIONS])
        np.testing.assert_allclose(features.keypoints, single.keypoints, atol=1e-3)
        np.testing.assert_allclose(features.descriptors, single.descriptors, atol=1e-4)


def test_descriptors_are_the_normalised_sum_over_pyramid_levels(tiny_card: Path) -> None:
    image = data.astronaut()
    single_scale = SCFeat(card=str(tiny_card), scale_levels=1)
    pyramid = SCFeat(card=str(tiny_card), scale_levels=3, scale_step=0.5)
    [single] = single_scale.extract([image], [OPTIONS])
    [features] = pyramid.extract([image], [OPTIONS])
    np.testing.assert_allclose(features.keypoints, single.keypoints)
    total = np.zeros_like(single.descriptors)
    for level in range(3):
        scaled = resize_image(image, 2.0 ** (-0.5 * level))
        points = rescale_points(single.keypoints, image_size(image), image_size(scaled))
        [described] = single_scale.describe([scaled], [points])
        total += described.descriptors
    np.testing.assert_allclose(features.descriptors, normalise_rows(total), atol=1e-5)
    assert np.mean(np.sum(features.descriptors * single.descriptors, axis=1)) < 0.999  # the levels contribute
    [at_keypoints] = pyramid.describe([image], [features.keypoints])
    np.testing.assert_allclose(at_keypoints.descriptors, features.descriptors, atol=1e-5)


def test_featureless_and_tiny_images_and_detect_only(tiny_card: Path) -> None:
    model = SCFeat(card=str(tiny_card))
    flat, tiny = np.full((100, 120), 128, np.uint8), data.astronaut()[:40, :48]
    empty, small = model.extract([flat, tiny], [OPTIONS, OPTIONS])
    assert empty.descriptors.shape == (len(empty), 128) and len(small) > 0
    # Too small for a second pyramid level: descriptors are the single-scale ones.
    [single] = SCFeat(card=str(tiny_card), scale_levels=1).extract([tiny], [OPTIONS])
    np.testing.assert_allclose(small.descriptors, single.descriptors, atol=1e-5)
    [detected] = model.detect([tiny], [OPTIONS])
    assert detected.descriptors is None
    np.testing.assert_allclose(detected.keypoints, small.keypoints)
    with pytest.raises(ValueError, match="scale_levels"):
        SCFeat(card=str(tiny_card), scale_levels=0)


def test_uniform_selection_spreads_keypoints(tiny_card: Path) -> None:
    model = SCFeat(card=str(tiny_card))
    image = data.astronaut()
    [strongest] = model.extract([image], [OPTIONS])
    [uniform] = model.extract([image], [KeypointOptions(max_keypoints=300, uniform="grid")])
    assert len(uniform) == 300

    def occupied(keypoints: np.ndarray) -> int:
        return len({(int(x) // 64, int(y) // 64) for x, y in keypoints})

    assert occupied(uniform.keypoints) >= occupied(strongest.keypoints)


def test_peakiness_is_non_negative_and_peaks_at_a_spike() -> None:
    x = torch.zeros(1, 4, 9, 9)
    x[0, 2, 4, 4] = 3.0
    prior = peakiness(x)
    assert prior.shape == (1, 1, 9, 9) and (prior >= 0).all()
    assert prior[0, 0].argmax().item() == 4 * 9 + 4
    torch.testing.assert_close(peakiness(5 * x), prior)  # divided by the largest magnitude: scale-free


def test_the_coupling_bridge_starts_scale_free_and_blends_both_norms() -> None:
    torch.manual_seed(0)
    bridge = CouplingBridgeNorm()
    x = torch.randn(2, 16, 6, 7) * 3 + 1
    torch.testing.assert_close(bridge(5 * x), bridge(x), atol=1e-4, rtol=1e-4)
    position = (x - x.mean(1, keepdim=True)) / (x.var(1, keepdim=True) + 1e-5).sqrt()
    channel = torch.nn.functional.instance_norm(x, eps=1e-5)
    torch.testing.assert_close(bridge(x), 0.7 * position + 0.3 * channel, atol=1e-5, rtol=1e-5)


def test_the_network_gives_a_stride_4_map_and_full_resolution_scores() -> None:
    network = SCFeatNetwork("lite").eval()
    with torch.inference_mode():
        outputs = network(torch.rand(2, 1, 64, 96))
    assert outputs["raw"].shape == (2, 128, 16, 24) and outputs["scores"].shape == (2, 1, 64, 96)
    assert (outputs["scores"] >= 0).all()
    assert "scores" not in network(torch.rand(1, 1, 64, 96), detect=False)

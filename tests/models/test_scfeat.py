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
from featureserve.models.dense import DenseFeatureModel, nms_mask, refine_subpixel
from featureserve.models.scfeat import (
    CouplingBridgeNorm,
    SCFeat,
    SCFeatNetwork,
    cornerness,
    hessian_blobness,
    peakiness,
)
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
    exact = SCFeat(card=str(tiny_card), subpixel=False, scale_levels=1)
    [features] = exact.extract([image], [OPTIONS])
    with torch.inference_mode():
        scores = exact.network(exact._to_tensor([image]))["scores"]
    peaks = nms_mask(scores, 1)[0, 0]
    xs, ys = features.keypoints.astype(int).T
    assert len(features) == 300 and np.array_equal(features.keypoints, np.round(features.keypoints))
    assert peaks[ys, xs].all(), "every keypoint is a local maximum of the score map"
    np.testing.assert_allclose(features.scores, scores[0, 0, ys, xs].numpy(), rtol=1e-6)
    assert features.scores.min() >= scores[0, 0][peaks].sort(descending=True).values[299].item()
    [refined] = SCFeat(card=str(tiny_card), scale_levels=1).extract([image], [OPTIONS])
    shift = np.abs(refined.keypoints - features.keypoints)
    assert shift.max() <= 0.5 and shift.max() > 0, "sub-pixel refinement moves peaks within half a pixel"


def test_subpixel_refinement_finds_the_vertex_of_a_quadratic() -> None:
    ys, xs = torch.meshgrid(torch.arange(7.0), torch.arange(9.0), indexing="ij")
    axis_aligned = 10 - (xs - 4.3) ** 2 - 2 * (ys - 2.8) ** 2  # a paraboloid: the fit is exact
    np.testing.assert_allclose(refine_subpixel(axis_aligned, torch.tensor([[4, 3]])).numpy(), [[4.3, 2.8]], atol=1e-5)
    # Elongated along a diagonal, like a corner's peak along its bisector: only the cross term finds the vertex.
    dx, dy = xs - 4.2, ys - 3.3
    diagonal = 10 - (2 * dx**2 + 3 * dx * dy + 2 * dy**2)
    np.testing.assert_allclose(refine_subpixel(diagonal, torch.tensor([[4, 3]])).numpy(), [[4.2, 3.3]], atol=1e-5)
    flat = refine_subpixel(torch.ones(4, 4), torch.tensor([[1, 1], [0, 3]]))  # no curvature; a border pixel
    np.testing.assert_array_equal(flat.numpy(), [[1.0, 1.0], [0.0, 3.0]])
    # A saddle has no vertex: each axis takes its own parabola (concave along x here, convex along y: stays).
    saddle = 10 - (xs - 4.3) ** 2 + (ys - 3.2) ** 2
    np.testing.assert_allclose(refine_subpixel(saddle, torch.tensor([[4, 3]])).numpy(), [[4.3, 3.0]], atol=1e-5)


def test_batches_match_single_images(tiny_card: Path) -> None:
    model = SCFeat(card=str(tiny_card))
    images = [data.astronaut(), data.astronaut()[:480, :448]]
    batched = model.extract(images, [OPTIONS, OPTIONS])
    for image, features in zip(images, batched, strict=True):
        [single] = model.extract([image], [OPTIONS])
        np.testing.assert_allclose(features.keypoints, single.keypoints, atol=1e-3)
        np.testing.assert_allclose(features.descriptors, single.descriptors, atol=1e-4)


def test_keypoints_come_from_every_level_and_are_described_on_it_and_the_next(tiny_card: Path) -> None:
    image = data.astronaut()
    pyramid = SCFeat(card=str(tiny_card), scale_levels=3, scale_step=0.5)
    single_level = SCFeat(card=str(tiny_card), scale_levels=1)
    [features] = pyramid.extract([image], [OPTIONS])
    scaled = [resize_image(image, 2.0 ** (-0.5 * level)) for level in range(4)]
    level_of = np.full(len(features), -1)
    for level in range(3):  # each level's own keypoints, in full-resolution pixels
        [found] = single_level.detect([scaled[level]], [OPTIONS])
        points = rescale_points(found.keypoints, image_size(scaled[level]), image_size(image))
        distance = np.linalg.norm(features.keypoints[:, None] - points[None], axis=2).min(axis=1)
        level_of[(distance < 1e-3) & (level_of < 0)] = level
    assert (level_of >= 0).all() and set(level_of) == {0, 1, 2}, "every level contributes keypoints"
    unit = [  # each keypoint's unit descriptor on each level
        DenseFeatureModel.describe(
            single_level, [s], [rescale_points(features.keypoints, image_size(image), image_size(s))]
        )[0].descriptors
        for s in scaled
    ]
    rows = np.arange(len(features))
    expected = normalise_rows(np.stack(unit)[level_of, rows] + np.stack(unit)[level_of + 1, rows])
    np.testing.assert_allclose(features.descriptors, expected, atol=1e-5)
    # Bare keypoints are described as found on the full-resolution level.
    [described] = pyramid.describe([image], [features.keypoints])
    np.testing.assert_allclose(described.descriptors[level_of == 0], features.descriptors[level_of == 0], atol=1e-5)


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


def test_cornerness_peaks_at_corners_not_on_edges_or_flat_areas() -> None:
    image = torch.zeros(1, 1, 48, 64)
    image[..., 12:36, 16:48] = 1.0  # a bright rectangle: four corners, four edges
    prior = cornerness(image)[0, 0]
    assert prior.min() >= 0 and prior.max() == 1.0
    corners, edge_middle, flat = prior[12, 16], prior[12, 32], prior[24, 32]
    assert corners > 0.5 and edge_middle < 0.05 * corners and flat < 1e-6
    rotated = cornerness(torch.rot90(image, 1, dims=(2, 3)))[0, 0]  # the structure tensor is rotation-invariant
    torch.testing.assert_close(rotated, torch.rot90(prior, 1, dims=(0, 1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(cornerness(3 * image + 1)[0, 0], prior)  # divided by its maximum: contrast-free


def test_hessian_blobness_peaks_at_blob_centres_and_is_zero_at_saddles_and_edges() -> None:
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(96.0), indexing="ij")
    bright = torch.exp(-((x - 20.3) ** 2 + (y - 30.0) ** 2) / (2 * 2.0**2))
    dark = -0.5 * torch.exp(-((x - 60.0) ** 2 + (y - 20.7) ** 2) / (2 * 3.0**2))
    saddle = 1e-3 * ((x - 75.0) ** 2 - (y - 50.0) ** 2) * (((x - 75) ** 2 + (y - 50) ** 2) < 36)
    # Ixx = Iyy > 0 but Ixy is larger: a saddle only the cross term reveals.
    u, v = x - 80.0, y - 15.0
    diagonal_saddle = 1e-3 * (u**2 + v**2 + 3 * u * v) * ((u**2 + v**2) < 36)
    edge = (x > 40) & (y > 45)  # a bright quadrant: two straight edges meeting at a corner
    image = (bright + dark + saddle + diagonal_saddle + 0.8 * edge)[None, None]
    prior = hessian_blobness(image)[0, 0]
    assert prior.min() >= 0 and prior.max() == 1.0
    # The brighter blob is the strongest response, a pixel from its centre; the dark blob (negative contrast) peaks too.
    peak = divmod(prior.argmax().item(), 96)
    assert abs(peak[0] - 30) <= 1 and abs(peak[1] - 20.3) <= 1
    assert prior[21, 60] > 0.1 and prior[21, 60] == prior[18:24, 57:63].max()
    assert prior[50, 75] == 0 and prior[15, 80] == 0  # a saddle has a negative determinant
    assert prior[44:48, 88:95].max() < 1e-6 and prior[5, 90] < 1e-6  # across a straight edge and on a flat area
    # Divided by each sample's own maximum: contrast-free.
    batch = hessian_blobness(torch.cat([3 * image + 1, 0.1 * image]))
    torch.testing.assert_close(batch[0, 0], prior)
    torch.testing.assert_close(batch[1, 0], prior)


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

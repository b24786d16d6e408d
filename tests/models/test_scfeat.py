"""The `scfeat` model: its layers, NMS and sub-pixel keypoints, batching, and a two-stage tiny run it can serve."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from featureserve.models import KeypointOptions, load_model, match_descriptors
from featureserve.models.backbones import resize_like
from featureserve.models.base import image_size, normalise_rows, rescale_points, resize_image
from featureserve.models.cards import CHECKPOINT_DIR
from featureserve.models.dense import (
    DenseFeatureModel,
    max_filter,
    nms_mask,
    refine_subpixel,
    sample_descriptors,
    sample_map,
)
from featureserve.models.orientation import gaussian_blur
from featureserve.models.scfeat import (
    HESSIAN_SIGMA,
    CellDetector,
    CouplingBridgeNorm,
    SCFeat,
    SCFeatNetwork,
    box_mean3,
    cornerness,
    hessian_blobness,
    load_checkpoint,
    peakiness,
    sample_upsampled,
)
from training.config import load_config
from training.export import export
from training.methods import method_for
from training.trainer import train

ROOT = Path(__file__).resolve().parents[2]
LITE_CARD = CHECKPOINT_DIR / "scfeat-lite.json"
OPTIONS = KeypointOptions(max_keypoints=300)


@pytest.fixture(scope="module")
def tiny_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The card of a tiny three-stage run: 3 distillation, 3 descriptor, then 3 detector steps, each from the last."""
    folder = tmp_path_factory.mktemp("scfeat")
    config = ROOT / "training" / "configs" / "scfeat_tiny.yaml"
    distil = {"scfeat": {"stage": "distil", "teacher": str(LITE_CARD)}}
    train(load_config(config, distil), folder / "distil")
    train(load_config(config, {"init_from": str(folder / "distil" / "last.pt")}), folder / "descriptor")
    detector = {"scfeat": {"stage": "detector"}, "init_from": str(folder / "descriptor" / "last.pt")}
    train(load_config(config, detector), folder / "detector")
    return export(folder / "detector", "scfeat-tiny", folder / "export", dtype="float32")


def test_the_detector_stage_trains_only_the_detector(tiny_card: Path) -> None:
    card = json.loads(tiny_card.read_text())
    lineage = card["training"]["initialised_from"]
    assert card["stage"] == "detector" and lineage["steps"] == 3 and lineage["device"] == "cpu"
    distilled = lineage["initialised_from"]  # the descriptor run's own start: the distillation run
    assert distilled["path"].endswith("distil/last.pt") and distilled["steps"] == 3
    assert "initialised_from" not in distilled
    descriptor_run = torch.load(Path(lineage["path"]), weights_only=False)["network"]
    detector_run = torch.load(tiny_card.parent.parent / "detector" / "last.pt", weights_only=False)["network"]
    for name, weights in detector_run.items():
        if not name.startswith("detector."):
            assert torch.equal(weights, descriptor_run[name]), f"{name} moved in the detector stage"
    assert any(not torch.equal(w, descriptor_run[n]) for n, w in detector_run.items() if n.startswith("detector."))
    assert card["name"] == "scfeat" and card["keypoints"]["source"] == "scfeat"


def test_distillation_scores_the_teacher_itself_zero_and_a_fresh_network_above_zero() -> None:
    config = load_config(
        ROOT / "training" / "configs" / "scfeat_tiny.yaml", {"scfeat": {"stage": "distil", "teacher": str(LITE_CARD)}}
    )
    method = method_for(config)
    images = torch.rand(2, 1, 64, 96)
    batch = {"image1": images[:1], "image2": images[1:], "fundamental": torch.eye(3)[None]}
    teacher = load_checkpoint(LITE_CARD)[0]
    with torch.no_grad():
        assert float(method.loss_terms(teacher, batch, 0)["loss"]) < 1e-4
        assert float(method.loss_terms(SCFeatNetwork("fast").eval(), batch, 0)["loss"]) > 0.1


def test_the_fine_stage_trains_only_the_fine_head_which_starts_as_the_upsampled_map(
    tiny_card: Path, tmp_path: Path
) -> None:
    network = SCFeatNetwork("fast", fine_head=True).eval()
    with torch.inference_mode():
        maps = network(torch.rand(1, 1, 64, 96), detect=False)
    assert network.descriptor_stride == 4 and maps["fine"].shape == (1, 128, 16, 24)
    upsampled = torch.nn.functional.normalize(resize_like(maps["raw"], maps["fine"]), dim=1)
    torch.testing.assert_close(maps["fine"], upsampled)  # the head starts at zero
    with pytest.raises(ValueError, match="stride-8"):
        SCFeatNetwork("lite", fine_head=True)

    config = ROOT / "training" / "configs" / "scfeat_tiny.yaml"
    fine = {"scfeat": {"stage": "fine", "fine_head": True, "teacher": str(LITE_CARD)}, "init_from": str(tiny_card)}
    train(load_config(config, fine), tmp_path / "fine")
    start = torch.load(tiny_card.parent.parent / "detector" / "last.pt", weights_only=False)["network"]
    trained = torch.load(tmp_path / "fine" / "last.pt", weights_only=False)["network"]
    assert {n for n in trained if n not in start} == {n for n in trained if n.startswith("fine.")}
    for name, weights in start.items():
        assert torch.equal(weights, trained[name]), f"{name} moved in the fine stage"
    assert any(trained[n].abs().sum() > 0 for n in trained if n.startswith("fine.mlp.2."))

    card = export(tmp_path / "fine", "scfeat-fine", tmp_path / "export", dtype="float32")
    architecture = json.loads(card.read_text())["architecture"]
    assert architecture["fine_head"] and architecture["strides"]["descriptor"] == 4
    model = load_model("scfeat", card=str(card), scale_levels=1, coarser_descriptor=False, fine_weight=0.5)
    [features] = model.extract([data.camera()], [OPTIONS])
    assert model.network.fine is not None and len(features) > 0
    assert np.allclose(np.linalg.norm(features.descriptors, axis=1), 1, atol=1e-5)
    # Served: the head at the keypoints only; at the centres of the stride-4 cells, the dense map's own values.
    image = torch.rand(1, 1, 64, 96)
    cells = torch.stack(torch.meshgrid(torch.arange(24), torch.arange(16), indexing="xy"), dim=-1).reshape(1, -1, 2)
    points = cells * 4.0 + 1.5
    with torch.inference_mode():
        dense = model.network.descriptor_maps(image)["fine"]
        served = model._describe_at(model._forward(image, detect=False), points)
    expected = torch.nn.functional.normalize(dense.flatten(2).transpose(1, 2), dim=-1)
    torch.testing.assert_close(served, expected, atol=1e-5, rtol=1e-4)
    plain = sample_descriptors(model.network(image, detect=False)["raw"], points, 8)
    assert not torch.allclose(served, plain, atol=1e-3)
    with pytest.raises(ValueError, match="fine_weight"):
        load_model("scfeat", card=str(card), fine_weight=1.5)


def test_samples_of_the_upsampled_map_come_without_it() -> None:
    generator = torch.Generator().manual_seed(0)
    for height, width in ((6, 10), (1, 1), (2, 1)):
        feature_map = torch.randn(2, 5, height, width, generator=generator)
        size = torch.tensor([8.0 * width, 8.0 * height])
        # Beyond the borders too: both repeat the border cells.
        points = torch.rand(2, 300, 2, generator=generator) * (size + 6) - 3
        upsampled = resize_like(feature_map, torch.empty(1, 1, 2 * height, 2 * width))
        torch.testing.assert_close(sample_upsampled(feature_map, points, 8), sample_map(upsampled, points, 4))


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


@pytest.mark.parametrize("finer", [True, False])
def test_keypoints_come_from_every_level_and_are_described_on_it_and_its_neighbours(
    tiny_card: Path, finer: bool
) -> None:
    """Each keypoint is described on its level, the next coarser one and (``finer_descriptor``) the previous one."""
    image = data.astronaut()
    pyramid = SCFeat(
        card=str(tiny_card), scale_levels=3, scale_step=0.5, coarser_descriptor=True, finer_descriptor=finer
    )
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
    # A keypoint's size is its level's scale (3.2 px on the full-resolution level); no orientation.
    scale = np.array([image.shape[1] / s.shape[1] for s in scaled])
    np.testing.assert_allclose(features.sizes, DenseFeatureModel.keypoint_size * scale[level_of], rtol=1e-6)
    assert (features.angles == -1).all()
    unit = [  # each keypoint's unit descriptor on each level
        DenseFeatureModel.describe(
            single_level, [s], [rescale_points(features.keypoints, image_size(image), image_size(s))]
        )[0].descriptors
        for s in scaled
    ]
    rows = np.arange(len(features))
    summed = np.stack(unit)[level_of, rows] + np.stack(unit)[level_of + 1, rows]
    if finer:  # keypoints of the first level have no finer level
        summed += np.where((level_of > 0)[:, None], np.stack(unit)[np.maximum(level_of - 1, 0), rows], 0)
    expected = normalise_rows(summed)
    np.testing.assert_allclose(features.descriptors, expected, atol=1e-5)
    # Bare keypoints are described as found on the full-resolution level.
    [described] = pyramid.describe([image], [features.keypoints])
    np.testing.assert_allclose(described.descriptors[level_of == 0], features.descriptors[level_of == 0], atol=1e-5)


def test_levels_run_side_by_side_give_the_same_features(tiny_card: Path) -> None:
    images = [data.astronaut(), data.camera()[:200, :300], np.zeros((40, 40), np.uint8)]
    options = [OPTIONS] * 3
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the side-by-side passes need two torch threads
    try:
        side_by_side = SCFeat(card=str(tiny_card)).extract(images, options)
    finally:
        torch.set_num_threads(threads)
    in_turn = SCFeat(card=str(tiny_card), parallel_levels=False).extract(images, options)
    # Concurrent passes may share out their reductions differently, so values agree to rounding: each keypoint
    # has its twin within 1e-2 px, with the same size and descriptor (a mixed-up level would move them by pixels).
    for a, b in zip(side_by_side, in_turn, strict=True):
        assert len(a) == len(b)
        if not len(a):  # the blank image
            continue
        twin = np.linalg.norm(a.keypoints[:, None] - b.keypoints[None], axis=2).argmin(axis=1)
        same = np.linalg.norm(a.keypoints - b.keypoints[twin], axis=1) < 1e-2
        assert same.mean() > 0.99 and len(np.unique(twin[same])) == same.sum()
        np.testing.assert_array_equal(a.sizes[same], b.sizes[twin[same]])
        np.testing.assert_allclose(a.descriptors[same], b.descriptors[twin[same]], atol=1e-4)


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


def test_the_served_hessian_sigma_keeps_keypoints_in_place_under_heavy_noise() -> None:
    # Smoothed more than in training, the Hessian prior's peaks move less with noise: more of the clean image's
    # keypoints are found again within 2 px.
    image = data.astronaut()
    noisy = np.clip(image + np.random.default_rng(0).normal(0, 60, image.shape), 0, 255).astype(np.uint8)
    options = [KeypointOptions(max_keypoints=1000)] * 2

    def repeated(model) -> float:
        clean, noised = model.extract([image, noisy], options)
        return float((np.linalg.norm(clean.keypoints[:, None] - noised.keypoints[None], axis=2).min(1) < 2).mean())

    served = load_model("scfeat")
    assert served.conf["hessian_sigma"] > HESSIAN_SIGMA
    assert served.network.detector.hessian_sigma == served.conf["hessian_sigma"]
    assert repeated(served) > repeated(load_model("scfeat", hessian_sigma=HESSIAN_SIGMA)) + 0.05
    with pytest.raises(ValueError, match="hessian_sigma"):
        load_model("scfeat", hessian_sigma=0)


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


@pytest.mark.parametrize(("size", "stride"), [("fast", 8), ("lite", 4)])
def test_the_network_gives_its_strides_map_and_full_resolution_scores(size: str, stride: int) -> None:
    network = SCFeatNetwork(size).eval()
    with torch.inference_mode():
        outputs = network(torch.rand(2, 1, 64, 96))
    assert network.stride == stride
    assert outputs["raw"].shape == (2, 128, 64 // stride, 96 // stride) and outputs["scores"].shape == (2, 1, 64, 96)
    assert (outputs["scores"] >= 0).all()
    assert "scores" not in network(torch.rand(1, 1, 64, 96), detect=False)


@pytest.mark.parametrize("size", ["fast", "lite"])
def test_the_split_fusion_equals_the_1x1_convolution_of_the_concatenated_levels(size: str) -> None:
    torch.manual_seed(0)
    network = SCFeatNetwork(size).eval()
    images = torch.rand(1, 1, 64, 96)
    with torch.inference_mode():
        levels = network.levels(images)
        if size == "lite":
            base = levels["decoder4"]
            inputs = (base, levels["decoder8"], levels["trunk16"])
        else:
            base = levels["trunk8"]
            inputs = (torch.nn.functional.pixel_unshuffle(levels["trunk4"], 2), base, levels["trunk16"])
        parts = [network.fuse4(inputs[0])]
        for block, level in ((network.fuse8, inputs[1]), (network.fuse16, inputs[2])):
            # lite convolves every level at stride 4, fast at the level's own stride
            parts.append(resize_like(block(resize_like(level, base) if size == "lite" else level), base))
        expected = network.fuse(torch.cat(parts, dim=1))
        torch.testing.assert_close(network.descriptor_maps(images)["raw"], expected, atol=1e-5, rtol=1e-4)


def test_the_cell_detector_unfolds_its_cells_logits_smoothed_onto_their_pixels() -> None:
    torch.manual_seed(0)
    detector = CellDetector(4, (8,), "hessian", cell=8).eval()
    features, image = torch.rand(1, 4, 3, 5), torch.rand(1, 1, 24, 40)
    nn_f = torch.nn.functional
    with torch.inference_mode():
        scores = detector(features, image)
        cells = nn_f.pixel_unshuffle(peakiness(image) * image, 8)  # (1, 64, 3, 5): each cell's 8x8 pixels
        assert torch.equal(cells[0, 8 * 2 + 3, 1, 4], (peakiness(image) * image)[0, 0, 8 + 2, 32 + 3])
        h = detector.activation(
            nn_f.instance_norm(detector.reduce(torch.cat([peakiness(features) * features, cells], 1)))
        )
        logits = detector.out_conv(detector.activation(nn_f.instance_norm(detector.conv(h))))
        o = nn_f.softplus(nn_f.instance_norm(gaussian_blur(nn_f.pixel_shuffle(logits, 8), 2.0)))
        prior = nn_f.interpolate(peakiness(features), size=(24, 40), mode="bilinear", align_corners=False)
        expected = prior * hessian_blobness(image) * o
    assert scores.shape == (1, 1, 24, 40) and (scores >= 0).all()
    torch.testing.assert_close(scores, expected)


@pytest.mark.parametrize("radius", [1, 2, 4])
def test_the_max_filter_is_the_stride_1_max_pool(radius: int) -> None:
    x = torch.randn(2, 1, 13, 17)
    x[0, 0, 0, 0] = 100.0  # a maximum on the corner reaches its window's edge, clipped
    expected = torch.nn.functional.max_pool2d(x, 2 * radius + 1, stride=1, padding=radius)
    assert torch.equal(max_filter(x, radius), expected)


def test_the_separable_box_mean_is_the_3x3_average_pool() -> None:
    x = torch.rand(2, 3, 9, 11)
    expected = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    torch.testing.assert_close(box_mean3(x), expected)


def zoom_and_turn(image: np.ndarray, degrees: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` turned by ``degrees`` and scaled by ``scale`` about its centre, and that homography."""
    height, width = image.shape[:2]
    homography = np.vstack([cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), degrees, scale), [0, 0, 1]])
    return cv2.warpPerspective(image, homography, (width, height)), homography


@pytest.mark.parametrize(("name", "conf", "least"), [("scfeat", {}, 0.6), ("sift", {}, 0.4)])
def test_the_served_model_matches_a_turned_and_zoomed_photo(name: str, conf: dict, least: float) -> None:
    image = data.astronaut()
    warped, homography = zoom_and_turn(image, 20.0, 0.8)
    model = load_model(name, **conf)
    f0, f1 = model.extract([image, warped], [KeypointOptions(max_keypoints=1000)] * 2)
    pairs = match_descriptors(f0.descriptors, f1.descriptors, model.descriptor.metric).indices
    mapped = cv2.perspectiveTransform(f0.keypoints[pairs[:, 0]].reshape(-1, 1, 2).astype(np.float64), homography)
    correct = np.linalg.norm(mapped.reshape(-1, 2) - f1.keypoints[pairs[:, 1]], axis=1) < 3
    assert len(pairs) > 200 and correct.mean() > least

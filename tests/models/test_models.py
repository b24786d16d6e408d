"""Feature models: the shared protocol on real photos, pixel conventions, tensor batching."""

import cv2
import numpy as np
import pytest
import torch

from featureserve.models import KeypointOptions, available_models, load_model, sample_descriptors
from featureserve.models.base import to_grey

OPTIONS = KeypointOptions(max_keypoints=300)


@pytest.mark.parametrize("name", available_models())
def test_extract_detect_describe_protocol(name: str, photo: np.ndarray) -> None:
    model = load_model(name)
    [features] = model.extract([photo], [OPTIONS])
    spec = model.descriptor
    assert 0 < len(features) <= 300
    assert features.image_size == (512, 512)
    assert features.keypoints.dtype == np.float32 and features.keypoints.shape == (len(features), 2)
    assert features.descriptors.shape == (len(features), spec.row_length)
    assert features.descriptors.dtype == spec.dtype
    assert np.all((features.keypoints >= 0) & (features.keypoints <= 511))
    # OpenCV's units: a positive diameter in pixels, degrees in [0, 360) or -1 for "no orientation".
    assert features.sizes.shape == features.angles.shape == (len(features),) and (features.sizes > 0).all()
    assert np.all(((features.angles >= 0) & (features.angles < 360)) | (features.angles == -1))
    [detected] = model.detect([photo], [OPTIONS])
    assert detected.descriptors is None and len(detected) > 0
    assert detected.sizes is not None and detected.angles is not None
    [described] = model.describe([photo], [features.keypoints[:40]])
    assert 0 < len(described) <= 40 and described.descriptors.shape[1] == spec.row_length
    assert model.card.name == name and model.card.descriptor == spec


@pytest.mark.parametrize("name", available_models())
def test_grey_input_says_whether_the_model_reads_only_grey_values(name: str, photo: np.ndarray) -> None:
    """A model with ``grey_input`` (the service then decodes JPEGs to luma) describes an RGB image and its grey
    conversion alike: at keypoints found in both, descriptors equal up to the rounding of resized pyramid levels.
    One without it (orb-patch cuts its patches from RGB) does not."""
    model = load_model(name)
    image = np.ascontiguousarray(photo[100:260, 140:340])
    options = [KeypointOptions(max_keypoints=200)]
    [colour] = model.extract([image], options)
    [grey] = model.extract([to_grey(image)], options)
    distance = np.linalg.norm(colour.keypoints[:, None] - grey.keypoints[None], axis=2)
    common, partner = distance.min(axis=1) < 0.01, distance.argmin(axis=1)
    assert common.mean() > 0.5  # scfeat's pyramid levels, resized in colour or in grey, move some peaks
    a, b = colour.descriptors[common], grey.descriptors[partner[common]]
    if a.dtype == np.uint8:
        difference = np.unpackbits(a ^ b, axis=1).sum(axis=1).astype(np.float32)
    else:
        difference = np.abs(a - b).max(axis=1)
    assert (np.median(difference) < 0.01) == model.grey_input


@pytest.mark.parametrize("name", ["orb", "sift", "akaze"])
def test_grey_and_featureless_images(name: str, photo: np.ndarray) -> None:
    model = load_model(name)
    grey = photo.mean(axis=2).astype(np.uint8)
    flat = np.full((100, 120), 128, np.uint8)
    features = model.extract([grey, flat], [OPTIONS, OPTIONS])
    assert len(features[0]) > 0
    assert len(features[1]) == 0 and features[1].descriptors.shape == (0, model.descriptor.row_length)


@pytest.mark.parametrize("name, tolerance", [("orb", 0.5), ("sift", 0.05), ("akaze", 0.05)])
def test_keypoints_are_in_pixels_of_the_image_as_sent(name: str, tolerance: float, photo: np.ndarray) -> None:
    # Shift the photo by whole pixels: keypoints shift by that much (ORB's 1.2x pyramid resamples, hence
    # its looser tolerance).
    model = load_model(name)
    shifted = np.zeros((512 + 24, 512 + 40, 3), np.uint8)
    shifted[24:, 40:] = photo
    [a] = model.extract([photo], [KeypointOptions(max_keypoints=200, border_margin=40)])
    [b] = model.extract([shifted], [KeypointOptions(max_keypoints=400)])
    distances = np.linalg.norm((a.keypoints + np.array([40, 24]))[:, None] - b.keypoints[None], axis=2).min(1)
    assert np.median(distances) < tolerance


def test_invalid_images_are_refused_with_a_message() -> None:
    model = load_model("orb")
    with pytest.raises(ValueError, match="uint8"):
        model.extract([np.zeros((10, 10), np.float32)], [OPTIONS])
    with pytest.raises(ValueError, match="shape"):
        model.extract([np.zeros((10, 10, 4), np.uint8)], [OPTIONS])


@pytest.mark.parametrize("name", available_models())
def test_images_under_two_pixels_a_side_are_refused_and_thin_ones_served(name: str) -> None:
    # OpenCV's pyramids fail on a one-pixel side, and an empty image would reach size arithmetic: both must be
    # the caller's ValueError, whatever the model; two pixels is enough for every model to answer.
    model = load_model(name)
    point = [np.array([[0.5, 0.5]], np.float32)]
    for shape in [(1, 1, 3), (0, 5, 3), (5, 1)]:
        image = np.zeros(shape, np.uint8)
        for method, per_image in (("extract", [OPTIONS]), ("detect", [OPTIONS]), ("describe", point)):
            with pytest.raises(ValueError, match="at least 2"):
                getattr(model, method)([image], per_image)
    thin = np.random.default_rng(0).integers(0, 256, (2, 300, 3), dtype=np.uint8)
    for method, per_image in (("extract", [OPTIONS]), ("detect", [OPTIONS]), ("describe", point)):
        [features] = getattr(model, method)([thin], per_image)
        assert features.image_size == (300, 2)


def test_unknown_model_and_option() -> None:
    with pytest.raises(KeyError, match="available"):
        load_model("superpoint-from-the-internet")
    with pytest.raises(ValueError, match="unknown options"):
        load_model("sift", colour=True)


@pytest.mark.parametrize("stride", [1, 4, 16])
def test_descriptor_sampling_pixel_convention(stride: int) -> None:
    # A map whose cell (i, j) holds (j, i, 1): sampling at a pixel must give that pixel's map coordinate.
    h, w = 8, 10
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    descriptor_map = torch.stack([xs, ys, torch.full_like(xs, 1000.0)])[None]
    pixels = torch.tensor(
        [[[stride * 2 + (stride - 1) / 2, stride * 3 + (stride - 1) / 2], [stride * 5.0, stride * 1.0]]]
    )
    sampled = sample_descriptors(descriptor_map, pixels, stride)[0]
    sampled = sampled / sampled[:, 2:] * 1000.0  # undo the L2 normalisation
    expected = (pixels[0] + 0.5) / stride - 0.5
    assert torch.allclose(sampled[:, :2], expected, atol=1e-4)


def test_tensor_batch_equals_one_by_one(photo: np.ndarray) -> None:
    model = load_model("tiny-cnn")
    crops = [photo[:300, :280], photo[100:400, 50:330], photo[:200, :200]]
    options = [KeypointOptions(max_keypoints=100)] * 3
    together = model.extract(crops, options)
    for crop, batched in zip(crops, together, strict=True):
        [alone] = model.extract([crop], options[:1])
        assert np.array_equal(alone.keypoints, batched.keypoints)
        assert np.allclose(alone.descriptors, batched.descriptors, atol=1e-5)


def test_a_bucket_over_batch_pixels_runs_in_several_passes(photo: np.ndarray) -> None:
    images = [photo[:128, :128], photo[128:256, :128], photo[256:384, :128]]
    split = load_model("tiny-cnn", batch_pixels=2 * 128 * 128)
    assert split._by_bucket(images) == [[0, 1], [2]]
    assert load_model("tiny-cnn", batch_pixels=None)._by_bucket(images) == [[0, 1, 2]]
    options = [KeypointOptions(max_keypoints=50)] * 3
    for one, other in zip(split.extract(images, options), load_model("tiny-cnn").extract(images, options), strict=True):
        assert np.array_equal(one.keypoints, other.keypoints)
        assert np.allclose(one.descriptors, other.descriptors, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-cnn", "caps", "scfeat"])
def test_images_over_max_pixels_are_downscaled_and_answered_in_their_own_pixels(name: str, photo: np.ndarray) -> None:
    model = load_model(name, max_pixels=256 * 256)  # the 512 x 512 photo is downscaled by 1/2
    half = cv2.resize(photo, (256, 256), interpolation=cv2.INTER_AREA)
    [features], [on_half] = model.extract([photo], [OPTIONS]), model.extract([half], [OPTIONS])
    assert features.image_size == (512, 512) and on_half.image_size == (256, 256)
    np.testing.assert_allclose(features.keypoints, (on_half.keypoints + 0.5) * 2 - 0.5, atol=1e-4)
    np.testing.assert_array_equal(features.descriptors, on_half.descriptors)
    np.testing.assert_allclose(features.sizes, on_half.sizes * 2)
    np.testing.assert_array_equal(features.angles, on_half.angles)
    # border_margin is in the photo's pixels: nothing closer, and not twice the margin either.
    [margined] = model.extract([photo], [KeypointOptions(max_keypoints=300, border_margin=40)])
    distance = np.minimum(margined.keypoints, 511 - margined.keypoints).min(axis=1)
    assert distance.min() >= 40 and distance.min() < 60
    # Given keypoints go in and come back in the photo's pixels, described where extract described them.
    [described] = model.describe([photo], [features.keypoints])
    np.testing.assert_allclose(described.keypoints, features.keypoints, atol=1e-4)
    [described_on_half] = model.describe([half], [on_half.keypoints])
    np.testing.assert_allclose(described.descriptors, described_on_half.descriptors, atol=1e-5)


def test_padding_to_the_size_bucket_is_invisible(photo: np.ndarray) -> None:
    # The bucket pads at the bottom and right by repeating the edge, so an image and the same image already
    # extended that way give the network the same tensor: same descriptors, even right beside the padding.
    model = load_model("tiny-cnn")
    image = photo[:100, :70]
    extended = np.pad(image, ((0, 28), (0, 58), (0, 0)), mode="edge")  # to the 128 x 128 bucket
    assert model.bucket_key(image) == model.bucket_key(extended) == (128, 128)
    corner = np.array([[69.0, 99.0], [60.0, 95.0], [10.0, 10.0]], np.float32)
    [small], [large] = model.describe([image], [corner]), model.describe([extended], [corner])
    np.testing.assert_allclose(small.descriptors, large.descriptors, atol=1e-6)


def test_a_half_precision_network_gives_float32_features_close_to_full_precision(photo: np.ndarray) -> None:
    """conf dtype: bfloat16 here (the CPU has no float16 convolutions); GPUs take float16 too."""
    image = np.ascontiguousarray(photo[100:228, 150:310])  # small: bfloat16 is slow on this CPU
    options = [KeypointOptions(max_keypoints=200)]
    [full] = load_model("scfeat").extract([image], options)
    half_model = load_model("scfeat", dtype="bfloat16")
    assert next(half_model.network.parameters()).dtype == torch.bfloat16
    [half] = half_model.extract([image], options)
    assert half.descriptors.dtype == np.float32 and half.keypoints.dtype == np.float32
    distance = np.linalg.norm(full.keypoints[:, None] - half.keypoints[None], axis=2)
    twin, same = distance.argmin(axis=1), distance.min(axis=1) < 0.5
    assert same.mean() > 0.8, same.mean()  # bfloat16 has 8 bits of mantissa: near-equal scores may swap
    cosine = (full.descriptors[same] * half.descriptors[twin[same]]).sum(axis=1)  # unit rows
    assert np.median(cosine) > 0.999 and cosine.min() > 0.95
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_model("scfeat", dtype="int8")

"""The torch models and matching on a CUDA device: the same features and matches as on the CPU, half precision close
to full, and batches that go through pinned memory. Marked ``gpu``; skipped where torch sees no GPU
(``benchmarks/gpu_check.sh`` runs them on a lent one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featureserve.models import KeypointOptions, load_model, match_descriptors

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device"),
]
OPTIONS = KeypointOptions(max_keypoints=1000)


def _twins(a: np.ndarray, b: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """For each point of ``a``, its nearest in ``b`` and whether it lies within ``tolerance`` px."""
    distance = np.linalg.norm(a[:, None] - b[None], axis=2)
    return distance.argmin(axis=1), distance.min(axis=1) < tolerance


@pytest.mark.parametrize("name", ["caps", "scfeat", "hndesc"])
def test_cuda_features_equal_cpu_features(name: str, photo: np.ndarray) -> None:
    [cpu] = load_model(name).extract([photo], [OPTIONS])
    [gpu] = load_model(name, device="cuda:0").extract([photo], [OPTIONS])
    twin, same = _twins(cpu.keypoints, gpu.keypoints, 1e-2)
    assert same.mean() > 0.98
    np.testing.assert_allclose(cpu.descriptors[same], gpu.descriptors[twin[same]], atol=1e-3)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_on_cuda_is_close_to_full(dtype: str, photo: np.ndarray) -> None:
    images = [photo, np.ascontiguousarray(photo[::-1])]  # a batch of two, through pinned memory
    full = load_model("scfeat", device="cuda:0").extract(images, [OPTIONS] * 2)
    half = load_model("scfeat", device="cuda:0", dtype=dtype).extract(images, [OPTIONS] * 2)
    for f, h in zip(full, half, strict=True):
        twin, same = _twins(f.keypoints, h.keypoints, 0.5)
        cosine = (f.descriptors[same] * h.descriptors[twin[same]]).sum(axis=1)
        assert same.mean() > 0.8 and np.median(cosine) > 0.999


@pytest.mark.parametrize("metric", ["hamming", "l2"])
def test_cuda_matching_equals_cpu_matching(metric: str) -> None:
    """The batched torch path on the GPU and the CPU paths (for Hamming, the int8 kernel) give the same matches."""
    rng = np.random.default_rng(0)
    if metric == "hamming":
        d0 = rng.integers(0, 256, (700, 32), dtype=np.uint8)
        d1 = np.concatenate([d0[:500] ^ rng.integers(0, 2, (500, 32), dtype=np.uint8), d0[500:520]])
    else:
        d0 = rng.normal(size=(700, 128)).astype(np.float32)
        d1 = np.concatenate([d0[:500] + 0.1 * rng.normal(size=(500, 128)).astype(np.float32), d0[500:520]])
    cpu = match_descriptors(d0, d1, metric)
    gpu = match_descriptors(d0, d1, metric, device="cuda:0")
    np.testing.assert_array_equal(cpu.indices, gpu.indices)
    np.testing.assert_allclose(cpu.distances, gpu.distances, atol=1e-4)

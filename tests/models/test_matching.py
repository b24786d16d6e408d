"""Matching: mutual NN, ratio test, distance threshold, Hamming, padded batches, empty sets."""

import numpy as np
import pytest
import torch

from featureserve.models import match_batch, match_descriptors, matching


def test_mutual_nn_recovers_a_permutation() -> None:
    rng = np.random.default_rng(0)
    descriptors = rng.normal(size=(300, 128)).astype(np.float32)
    permutation = rng.permutation(300)
    matches = match_descriptors(descriptors, descriptors[permutation], "l2")
    assert len(matches) == 300
    assert np.array_equal(permutation[matches.indices[:, 1]], matches.indices[:, 0])
    assert np.allclose(matches.distances, 0, atol=1e-3)


def test_hamming_distances_are_bit_counts() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (40, 32), dtype=np.uint8)
    b = rng.integers(0, 256, (50, 32), dtype=np.uint8)
    expected = np.unpackbits(a[:, None] ^ b[None], axis=2).sum(2)
    matches = match_descriptors(a, b, "hamming", matcher="nn")
    assert len(matches) == 40
    for (i, j), distance in zip(matches.indices, matches.distances, strict=True):
        assert distance == expected[i, j] == expected[i].min()


def test_hamming_needs_packed_bytes() -> None:
    with pytest.raises(ValueError, match="uint8"):
        match_descriptors(np.zeros((3, 8), np.float32), np.zeros((3, 8), np.float32), "hamming")


def test_ratio_test_drops_ambiguous_matches() -> None:
    query = np.array([[0.0, 0.0], [10.0, 0.0]], np.float32)
    # Row 0 has two nearly equal candidates; row 1 one clear one.
    target = np.array([[1.0, 0.0], [-1.05, 0.0], [10.0, 0.5]], np.float32)
    plain = match_descriptors(query, target, "l2", matcher="nn")
    ratio = match_descriptors(query, target, "l2", matcher="nn", ratio=0.8)
    assert plain.indices[:, 0].tolist() == [0, 1]
    assert ratio.indices.tolist() == [[1, 2]]


def test_max_distance_and_cosine() -> None:
    query = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    target = np.array([[2.0, 0.1], [-1.0, -1.0]], np.float32)
    cosine = match_descriptors(query, target, "cosine", matcher="nn", max_distance=0.2)
    assert cosine.indices.tolist() == [[0, 0]]


@pytest.mark.parametrize("n0, n1", [(0, 5), (5, 0), (0, 0)])
def test_empty_sets_give_no_matches(n0: int, n1: int) -> None:
    matches = match_descriptors(np.zeros((n0, 16), np.float32), np.zeros((n1, 16), np.float32), "l2")
    assert matches.indices.shape == (0, 2) and matches.distances.shape == (0,)


def test_padded_batch_equals_pairs_one_by_one() -> None:
    rng = np.random.default_rng(2)
    sizes = [(30, 40), (12, 7), (0, 9)]
    pairs = [(rng.normal(size=(n, 8)).astype(np.float32), rng.normal(size=(m, 8)).astype(np.float32)) for n, m in sizes]
    d0 = torch.zeros(3, 30, 8)
    d1 = torch.zeros(3, 40, 8)
    for b, (a, c) in enumerate(pairs):
        d0[b, : len(a)] = torch.from_numpy(a)
        d1[b, : len(c)] = torch.from_numpy(c)
    lengths0 = torch.tensor([n for n, _ in sizes])
    lengths1 = torch.tensor([m for _, m in sizes])
    match0, _ = match_batch(d0, d1, lengths0, lengths1, "l2")
    for b, (a, c) in enumerate(pairs):
        single = match_descriptors(a, c, "l2")
        batched = match0[b, : len(a)].numpy()
        i0 = np.flatnonzero(batched >= 0)
        assert np.array_equal(np.stack([i0, batched[i0]], 1).reshape(-1, 2), single.indices)


def _distances(d0: np.ndarray, d1: np.ndarray, metric: str) -> np.ndarray:
    """All distances by brute force in numpy (bit counts for Hamming)."""
    if metric == "hamming":
        return np.unpackbits(d0[:, None] ^ d1[None], axis=2).sum(axis=2).astype(np.float64)
    return np.linalg.norm(d0[:, None].astype(np.float64) - d1[None], axis=2)


NO_INT8 = "this torch has no exact oneDNN int8 linear"
INT8 = pytest.param(True, id="int8", marks=pytest.mark.skipif(not matching.INT8_KEYS, reason=NO_INT8))


@pytest.mark.parametrize(("metric", "int8"), [("hamming", INT8), ("hamming", False), ("l2", False)])
def test_mutual_nn_under_ties_and_row_chunks(metric: str, int8: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Short descriptors tie often: every match is a row and a column minimum, each row and column is used once,
    and chunks of rows (the column minimum carried from chunk to chunk) give the same matches as one chunk."""
    monkeypatch.setattr(matching, "INT8_KEYS", int8)
    rng = np.random.default_rng(3)
    if metric == "hamming":
        d0, d1 = rng.integers(0, 256, (60, 1), dtype=np.uint8), rng.integers(0, 256, (45, 1), dtype=np.uint8)
    else:
        d0, d1 = rng.integers(0, 3, (60, 2)).astype(np.float32), rng.integers(0, 3, (45, 2)).astype(np.float32)
    whole = match_descriptors(d0, d1, metric)
    monkeypatch.setattr(matching, "ROW_CHUNK", 7)
    chunked = match_descriptors(d0, d1, metric)
    np.testing.assert_array_equal(chunked.indices, whole.indices)
    distance = _distances(d0, d1, metric)
    i, j = whole.indices.T
    assert len(i) > 3 and len(set(i)) == len(i) and len(set(j)) == len(j)
    np.testing.assert_allclose(distance[i, j], distance.min(axis=1)[i], atol=1e-6)
    np.testing.assert_allclose(distance[i, j], distance.min(axis=0)[j], atol=1e-6)
    np.testing.assert_allclose(whole.distances, distance[i, j], atol=1e-6)


@pytest.mark.skipif(not matching.INT8_KEYS, reason=NO_INT8)
def test_int8_keys_are_exact_at_the_extremes() -> None:
    """All-one and all-zero bit rows (the largest sums, where AVX2's 16-bit multiply-add would saturate with wider
    levels) and a full chunk of rows (the largest row digits) give exact keys."""
    rng = np.random.default_rng(4)
    bits0 = rng.integers(0, 2, (matching.ROW_CHUNK, 256), dtype=np.uint8)
    bits1 = rng.integers(0, 2, (5, 256), dtype=np.uint8)
    bits0[[0, -1]], bits1[[0, 1]] = 1, 0
    bits0[1], bits1[2] = 0, 1
    keys = matching._Int8Keys(bits1, len(bits0))(bits0)
    hamming = (bits0[:, None] != bits1[None]).sum(axis=2)
    np.testing.assert_array_equal(keys, -matching._Int8Keys.scale * hamming - np.arange(len(bits0))[:, None])


@pytest.mark.parametrize("width", [1, 3, 32, 61, 130])  # 130 bytes: past the int8 keys' exact range
@pytest.mark.parametrize(
    ("matcher", "ratio", "max_distance"), [("mnn", None, None), ("nn", 0.9, None), ("mnn", 0.8, 100)]
)
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("int8", [INT8, pytest.param(False, id="float")])
@pytest.mark.parametrize("row_chunk", [7, 4096, 2**20])  # 2**20-row chunks: keys in float64 from 3 bytes on
def test_cpu_hamming_kernels_equal_the_torch_one(
    width: int,
    matcher: str,
    ratio: float | None,
    max_distance: float | None,
    threads: int,
    int8: bool,
    row_chunk: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both key products of a lone CPU pair (oneDNN int8; float) and `match_batch` agree on matches
    and distances, ties included (1- and 3-byte descriptors tie often; 61 bytes is AKAZE's width), in one chunk
    and in chunks of rows, on one or three threads."""
    rng = np.random.default_rng(width)
    d0 = rng.integers(0, 256, (50, width), dtype=np.uint8)
    d1 = np.concatenate([d0[rng.permutation(50)[:30]] ^ rng.integers(0, 2, (30, width), dtype=np.uint8), d0[:9]])
    monkeypatch.setattr(matching, "ROW_CHUNK", row_chunk)
    monkeypatch.setattr(matching, "INT8_KEYS", int8)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        kernel = match_descriptors(d0, d1, "hamming", matcher, ratio, max_distance)
    finally:
        torch.set_num_threads(before)
    t0, t1 = torch.from_numpy(d0)[None], torch.from_numpy(d1)[None]
    match0, distance0 = match_batch(
        t0, t1, torch.tensor([50]), torch.tensor([39]), "hamming", matcher, ratio, max_distance
    )
    i0 = np.flatnonzero(match0[0].numpy() >= 0)
    assert len(i0) > 0
    np.testing.assert_array_equal(kernel.indices, np.stack([i0, match0[0, i0].numpy()], 1))
    np.testing.assert_array_equal(kernel.distances, distance0[0, i0].numpy())

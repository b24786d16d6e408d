"""Descriptor matching: nearest neighbour, mutual check, Lowe's ratio test, distance threshold.

Batches and float descriptors go through torch (CPU or GPU). A lone pair of binary descriptors on the CPU goes
through one matrix product of the bits whose entries are keys ``-scale * hamming - row``: the row maxima are the
nearest columns and plain column maxima each column's nearest row, with no second product and no strided
arg-max. The product is oneDNN's int8 one where torch has it (about half the time of float32 on AVX2 CPUs, whose
int8 units torch's own `_int_mm` does not use), else float32. Both beat `match_batch`, a popcount of 64-bit words
and OpenCV's brute-force matcher on the CPUs measured (docs/benchmarks.md); all give the same matches, ties
included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .features import Metric

Matcher = Literal["mnn", "nn"]
# Rows of the distance matrix computed at once; bounds memory to ROW_CHUNK x M floats per pair.
ROW_CHUNK = 4096


@dataclass
class Matches:
    """Correspondences between two feature sets.

    Attributes:
        indices: ``(M, 2)`` int64, ``(i0, i1)`` indices into the first and second feature set.
        distances: ``(M,)`` float32 descriptor distance of each match, in the metric's units
            (bits for ``hamming``, Euclidean for ``l2``, Euclidean between unit vectors for ``cosine``).
    """

    indices: np.ndarray
    distances: np.ndarray

    def __len__(self) -> int:
        return int(self.indices.shape[0])


def _signs(packed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(..., B)`` packed uint8 bits -> ``(..., 8B)`` of -1/+1 (bit 0 / bit 1) in ``dtype``."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"hamming matching needs packed uint8 descriptors, got {packed.dtype}")
    if packed.device.type == "cpu":  # numpy's unpackbits is about 10x faster than torch's shifts there
        bits = torch.from_numpy(np.unpackbits(packed.numpy(), axis=-1))
    else:
        shifts = torch.arange(7, -1, -1, device=packed.device, dtype=torch.uint8)
        bits = ((packed.unsqueeze(-1) >> shifts) & 1).flatten(-2)
    return bits.to(dtype).mul_(2).sub_(1)


def _prepare(descriptors: torch.Tensor, metric: Metric) -> torch.Tensor:
    if metric == "hamming":
        return _signs(descriptors)
    descriptors = descriptors.float()
    if metric == "cosine":
        descriptors = torch.nn.functional.normalize(descriptors, dim=-1)
    return descriptors


def _distances(d0: torch.Tensor, d1: torch.Tensor, metric: Metric) -> torch.Tensor:
    """``(B, n, D)``, ``(B, m, D)`` prepared descriptors -> ``(B, n, m)`` distances."""
    if metric == "hamming":
        # For -1/+1 vectors of length D, a.b = D - 2 |a xor b|: one matrix product, exact in float32 (integers).
        return torch.bmm(d0, d1.transpose(-1, -2)).mul_(-0.5).add_(d0.shape[-1] / 2)
    return torch.cdist(d0, d1)


def match_batch(
    descriptors0: torch.Tensor,
    descriptors1: torch.Tensor,
    lengths0: torch.Tensor,
    lengths1: torch.Tensor,
    metric: Metric,
    matcher: Matcher = "mnn",
    ratio: float | None = None,
    max_distance: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Match a padded batch of descriptor-set pairs.

    Args:
        descriptors0: ``(B, N, D)`` padded descriptors of the first images (uint8 for ``hamming``).
        descriptors1: ``(B, M, D)`` padded descriptors of the second images.
        lengths0: ``(B,)`` number of valid rows in each ``descriptors0[b]``.
        lengths1: ``(B,)`` number of valid rows in each ``descriptors1[b]``.
        metric: ``"l2"``, ``"cosine"`` or ``"hamming"``.
        matcher: ``"mnn"`` keeps mutual nearest neighbours; ``"nn"`` keeps every nearest neighbour. Among equally
            distant candidates the first column (for a row) and the first row (for a column) are the nearest, as
            in OpenCV's brute-force matcher, whatever the row chunks.
        ratio: If set, keep a match only if its distance is below ``ratio`` times the second-nearest's.
        max_distance: If set, keep a match only if its distance is at most this.

    Returns:
        ``match0`` ``(B, N)`` int64, the index in image 1 of each row's match or -1; and ``distance0``
        ``(B, N)`` float32, the distance of that match (``inf`` where there is none).
    """
    if matcher not in ("mnn", "nn"):
        raise ValueError(f"matcher must be 'mnn' or 'nn', got {matcher!r}")
    batch, n, m = descriptors0.shape[0], descriptors0.shape[1], descriptors1.shape[1]
    match0 = torch.full((batch, n), -1, dtype=torch.int64, device=descriptors0.device)
    distance0 = torch.full((batch, n), float("inf"), device=descriptors0.device)
    if n == 0 or m == 0:
        return match0, distance0
    d0, d1 = _prepare(descriptors0, metric), _prepare(descriptors1, metric)
    rows = torch.arange(n, device=d0.device)
    cols = torch.arange(m, device=d0.device)
    valid1 = cols[None, :] < lengths1[:, None]
    best = torch.full((batch, n, 2), float("inf"), device=d0.device)
    best_index = torch.zeros((batch, n), dtype=torch.int64, device=d0.device)
    column_best = torch.full((batch, m), float("inf"), device=d0.device)
    column_index = torch.zeros((batch, m), dtype=torch.int64, device=d0.device)
    padded = bool((lengths0 < n).any() or (lengths1 < m).any())
    for start in range(0, n, ROW_CHUNK):
        stop = min(start + ROW_CHUNK, n)
        dist = _distances(d0[:, start:stop], d1, metric)
        if padded:  # a lone pair (the usual case) has no padding rows to hide
            valid0 = (rows[start:stop][None, :] < lengths0[:, None])[:, :, None]
            dist = dist.masked_fill(~(valid0 & valid1[:, None, :]), float("inf"))
        k = min(2, m)
        values, indices = dist.topk(k, dim=2, largest=False)
        # topk orders equal distances as it likes (and differently for other shapes); the nearest is the first
        # column of the row's minimum, and the second the other of topk's two.
        nearest = dist.argmin(dim=2)
        if k == 2:
            other = torch.where(indices[:, :, 0] == nearest, indices[:, :, 1], indices[:, :, 0])
            indices = torch.stack([nearest, other], dim=2)
        else:
            indices = nearest.unsqueeze(2)
        if metric != "hamming":
            # cdist takes a fast matrix-product path that loses precision; redo the k kept distances exactly.
            candidates = torch.gather(
                d1.unsqueeze(1).expand(-1, stop - start, -1, -1),
                2,
                indices.unsqueeze(-1).expand(-1, -1, -1, d1.shape[-1]),
            )
            exact = (d0[:, start:stop].unsqueeze(2) - candidates).norm(dim=-1)
            values = torch.where(torch.isfinite(values), exact, values)
        best[:, start:stop, :k] = values
        best_index[:, start:stop] = indices[:, :, 0]
        # Each column's minimum and the first row (of all) that reaches it, from value reductions: min() with indices
        # along this dimension is several times slower.
        chunk_best = dist.amin(dim=1)
        reaches = dist == chunk_best.unsqueeze(1)
        first = torch.where(reaches, rows[start:stop].view(1, -1, 1).to(dist.dtype), float("inf")).amin(dim=1)
        chunk_index = first.nan_to_num(posinf=0).long()
        better = chunk_best < column_best
        column_best = torch.where(better, chunk_best, column_best)
        column_index = torch.where(better, chunk_index, column_index)
    keep = torch.isfinite(best[:, :, 0])
    if matcher == "mnn":
        keep &= torch.gather(column_index, 1, best_index) == rows[None, :]
    if ratio is not None:
        keep &= best[:, :, 0] < ratio * best[:, :, 1]
    if max_distance is not None:
        keep &= best[:, :, 0] <= max_distance
    match0 = torch.where(keep, best_index, match0)
    distance0 = torch.where(keep, best[:, :, 0], distance0)
    return match0, distance0


def match_descriptors(
    descriptors0: np.ndarray,
    descriptors1: np.ndarray,
    metric: Metric,
    matcher: Matcher = "mnn",
    ratio: float | None = None,
    max_distance: float | None = None,
    device: str | torch.device = "cpu",
) -> Matches:
    """Match two descriptor sets (``(N, D)`` and ``(M, D)``, uint8 packed bits for ``hamming``).

    Example:
        >>> d = np.eye(4, dtype=np.float32)
        >>> match_descriptors(d, d[[2, 0, 3, 1]], "l2").indices.tolist()
        [[0, 1], [1, 3], [2, 0], [3, 2]]
    """
    if descriptors0.ndim != 2 or descriptors1.ndim != 2 or descriptors0.shape[1] != descriptors1.shape[1]:
        raise ValueError(
            f"descriptors must be (N, D) and (M, D) with the same D, got {descriptors0.shape} and {descriptors1.shape}"
        )
    if metric == "hamming" and torch.device(device).type == "cpu":
        return _match_hamming(descriptors0, descriptors1, matcher, ratio, max_distance)
    t0 = torch.from_numpy(np.ascontiguousarray(descriptors0)).to(device)[None]
    t1 = torch.from_numpy(np.ascontiguousarray(descriptors1)).to(device)[None]
    lengths0 = torch.tensor([t0.shape[1]], device=device)
    lengths1 = torch.tensor([t1.shape[1]], device=device)
    match0, distance0 = match_batch(t0, t1, lengths0, lengths1, metric, matcher, ratio, max_distance)
    i0 = torch.nonzero(match0[0] >= 0).squeeze(1)
    indices = torch.stack([i0, match0[0, i0]], dim=1).cpu().numpy().astype(np.int64)
    return Matches(indices=indices.reshape(-1, 2), distances=distance0[0, i0].cpu().numpy().astype(np.float32))


def _row_maxima(values: np.ndarray, second: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Each row's first arg-max, its maximum and (if ``second``) its second largest value."""
    nearest = values.argmax(axis=1)
    best = values[np.arange(len(values)), nearest]
    return nearest, best, np.partition(values, -2, axis=1)[:, -2] if second else None


class _FloatKeys:
    """Keys ``-scale * hamming - row`` of a chunk of rows against all columns, from one float product.

    Rows ``[bits * scale, -row, 1]`` times columns ``[-1/+1 signs, 1, -scale * |b|]``: ``a.(2b - 1) - |b|`` is
    minus the Hamming distance for 0/1 vectors. Exact integers while they stay below 2**24 in float32, else float64.
    """

    def __init__(self, bits1: np.ndarray, scale: int) -> None:
        self.scale = scale
        self.dtype = torch.float32 if (bits1.shape[1] + 1) * scale <= 2**24 else torch.float64
        signs = torch.from_numpy(bits1).to(self.dtype).mul_(2).sub_(1)
        ones = torch.ones(len(bits1), 1, dtype=self.dtype)
        weights = torch.from_numpy(bits1.sum(axis=1, dtype=np.int64)).to(self.dtype)[:, None] * -scale
        self.columns = torch.cat([signs, ones, weights], dim=1).T

    def __call__(self, bits0: np.ndarray) -> np.ndarray:
        local = torch.arange(len(bits0), dtype=self.dtype)[:, None]
        rows = torch.cat([torch.from_numpy(bits0).to(self.dtype) * self.scale, -local, torch.ones_like(local)], dim=1)
        return (rows @ self.columns).numpy()


class _Int8Keys:
    """`_FloatKeys` from oneDNN's uint8 x int8 product, which runs on the int8 units of AVX2 CPUs too (torch's
    `_int_mm` is a slow reference loop there), in half the time of the float product.

    Rows ``[127 * bits, row // 127, row % 127]`` times columns ``[127 * signs, -127, -1]`` plus the bias
    ``-scale * |b|``, with ``scale = 127**2``: sums are exact in int32, and each pair of products stays within
    int16, where AVX2's multiply-add saturates.
    """

    LEVEL = 127
    scale = LEVEL * LEVEL

    @classmethod
    def exact_for(cls, rows: int, bits: int) -> bool:
        """Whether chunks of ``rows`` rows of ``bits`` bits keep the row digits below 127 and the keys below 2**24
        (exact in the float32 output)."""
        return rows <= cls.scale and (bits + 1) * cls.scale <= 2**24

    def __init__(self, bits1: np.ndarray, rows: int) -> None:
        columns = np.empty((len(bits1), bits1.shape[1] + 2), np.int8)
        np.multiply(bits1.view(np.int8), np.int8(2), out=columns[:, :-2])
        columns[:, :-2] -= np.int8(1)
        columns[:, :-2] *= np.int8(self.LEVEL)
        columns[:, -2:] = (-self.LEVEL, -1)
        self.packed = torch.ops.onednn.qlinear_prepack(torch.from_numpy(columns), [rows, columns.shape[1]])
        self.bias = torch.from_numpy((bits1.sum(axis=1, dtype=np.int64) * -self.scale).astype(np.float32))

    def __call__(self, bits0: np.ndarray) -> np.ndarray:
        rows = np.empty((len(bits0), bits0.shape[1] + 2), np.uint8)
        np.multiply(bits0, np.uint8(self.LEVEL), out=rows[:, :-2])
        rows[:, -2], rows[:, -1] = np.divmod(np.arange(len(bits0)), self.LEVEL)
        unit, zero = torch.ones(1), torch.zeros(1, dtype=torch.int64)  # scales 1 and zero points 0: plain integers
        keys = torch.ops.onednn.qlinear_pointwise(
            torch.from_numpy(rows), 1.0, 0, self.packed, unit, zero, self.bias, 1.0, 0, torch.float32, "none", [], ""
        )
        return keys.numpy()


def _int8_keys_exact() -> bool:
    """Whether this torch build has oneDNN's int8 linear and it gives exact keys (else the float product is used)."""
    rng = np.random.default_rng(0)
    bits0, bits1 = rng.integers(0, 2, (5, 16), dtype=np.uint8), rng.integers(0, 2, (3, 16), dtype=np.uint8)
    try:
        keys = _Int8Keys(bits1, len(bits0))(bits0)
    except (AttributeError, RuntimeError):
        return False
    hamming = (bits0[:, None] != bits1[None]).sum(axis=2)
    return bool(np.array_equal(keys, -_Int8Keys.scale * hamming - np.arange(5)[:, None]))


# Lone binary pairs on the CPU take the int8 keys where oneDNN gives them (checked once, at import).
INT8_KEYS = _int8_keys_exact()


def _hamming_nearest(
    bits0: np.ndarray, bits1: np.ndarray, second: bool, mutual: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each row's nearest column (the first among equals), its Hamming distance, the second smallest distance (if
    ``second``) and (if ``mutual``) each column's nearest row, the first among equals: all from keys
    ``-scale * hamming - row`` (``row`` within its chunk), whose row maxima are the nearest columns and whose plain
    column maxima are each column's nearest row."""
    n, m = len(bits0), len(bits1)
    if INT8_KEYS and _Int8Keys.exact_for(ROW_CHUNK, bits0.shape[1]):
        keys_of: _FloatKeys | _Int8Keys = _Int8Keys(bits1, min(n, ROW_CHUNK))
    else:
        keys_of = _FloatKeys(bits1, ROW_CHUNK)
    scale = keys_of.scale
    nearest, best = np.empty(n, np.int64), np.empty(n, np.int64)
    seconds = np.empty(n if second else 0, np.int64)
    column_best = np.full(m, np.iinfo(np.int64).max)
    column_row = np.zeros(m if mutual else 0, np.int64)
    for start in range(0, n, ROW_CHUNK):
        stop = min(start + ROW_CHUNK, n)
        keys = keys_of(bits0[start:stop])
        local = np.arange(stop - start)
        nearest[start:stop], top, runner_up = _row_maxima(keys, second)
        best[start:stop] = -(top.astype(np.int64) + local) // scale
        if second:
            seconds[start:stop] = -(runner_up.astype(np.int64) + local) // scale
        if mutual:
            distance, row = np.divmod(-keys.max(axis=0).astype(np.int64), scale)
            better = distance < column_best  # an earlier chunk keeps its rows on ties
            column_best = np.where(better, distance, column_best)
            column_row = np.where(better, row + start, column_row)
    return nearest, best, seconds, column_row


def _match_hamming(
    descriptors0: np.ndarray,
    descriptors1: np.ndarray,
    matcher: Matcher,
    ratio: float | None,
    max_distance: float | None,
) -> Matches:
    """`match_descriptors` for one pair of binary descriptors on the CPU (same rules as `match_batch`)."""
    if matcher not in ("mnn", "nn"):
        raise ValueError(f"matcher must be 'mnn' or 'nn', got {matcher!r}")
    for d in (descriptors0, descriptors1):
        if d.dtype != np.uint8:
            raise ValueError(f"hamming matching needs packed uint8 descriptors, got {d.dtype}")
    n, m = len(descriptors0), len(descriptors1)
    if n == 0 or m == 0:
        return Matches(indices=np.empty((0, 2), np.int64), distances=np.empty(0, np.float32))
    bits0, bits1 = (np.unpackbits(d, axis=1) for d in (descriptors0, descriptors1))
    second = ratio is not None and m > 1
    nearest, best, second_best, nearest_row = _hamming_nearest(bits0, bits1, second, matcher == "mnn")
    keep = np.ones(n, bool)
    if matcher == "mnn":
        keep &= nearest_row[nearest] == np.arange(n)
    if second:
        keep &= best < ratio * second_best.astype(np.float32)
    if max_distance is not None:
        keep &= best <= max_distance
    rows = np.nonzero(keep)[0]
    indices = np.stack([rows, nearest[rows]], axis=1).astype(np.int64)
    return Matches(indices=indices.reshape(-1, 2), distances=best[rows].astype(np.float32))

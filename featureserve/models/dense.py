"""Base for torch models with dense outputs: padding into size buckets, NMS, descriptor sampling.

Pixel convention, used by every sampler here and by training: pixel centres sit at integer coordinates,
and cell ``j`` of a stride-``s`` map covers pixels ``[j*s, (j+1)*s)``, so pixel ``u`` sits at map
coordinate ``(u + 0.5) / s - 0.5``. Sampling uses ``grid_sample(align_corners=False)``, which shares
that convention, so no half-cell shift appears at any stride.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import FeatureModel, check_image, image_size, rescale_points, resize_image, to_grey
from .features import Features, KeypointOptions
from .keypoints import candidate_count, select_keypoints
from .orientation import dominant_orientations, quarter_turn_weights, turn_points

MIN_LEVEL_SIDE = 32  # a pyramid level keeps at least this many pixels on its shorter side


# Network precisions a dense model may run in (conf ``dtype``).
NETWORK_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def keypoints_to_grid(keypoints: torch.Tensor, stride: int, map_size: tuple[int, int]) -> torch.Tensor:
    """``(B, N, 2)`` pixel ``(x, y)`` -> ``(B, N, 1, 2)`` ``grid_sample`` coordinates on a ``(h, w)`` map."""
    h, w = map_size
    scale = keypoints.new_tensor([2.0 / (stride * w), 2.0 / (stride * h)])
    return ((keypoints + 0.5) * scale - 1.0).unsqueeze(2)


def sample_map(feature_map: torch.Tensor, keypoints: torch.Tensor, stride: int) -> torch.Tensor:
    """``(B, N, C)`` bilinear samples of a ``(B, C, h, w)`` map at ``stride`` pixels per cell at ``(B, N, 2)`` pixel
    ``(x, y)`` keypoints (borders repeated)."""
    grid = keypoints_to_grid(keypoints, stride, feature_map.shape[-2:])
    samples = F.grid_sample(feature_map, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return samples.squeeze(3).transpose(1, 2)


def sample_descriptors(descriptor_map: torch.Tensor, keypoints: torch.Tensor, stride: int) -> torch.Tensor:
    """Bilinear descriptors at keypoints, L2-normalised.

    Args:
        descriptor_map: ``(B, D, h, w)`` dense descriptors at ``stride`` pixels per cell.
        keypoints: ``(B, N, 2)`` ``(x, y)`` pixel coordinates.
        stride: Pixels per map cell.

    Returns:
        ``(B, N, D)`` unit-length descriptors.
    """
    return F.normalize(sample_map(descriptor_map, keypoints, stride), dim=-1)


def pyramid_levels(
    sizes: np.ndarray, reference_size: float, step: float, levels: int, finer: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per keypoint, the two pyramid levels that bracket its size and the weight of the upper one.

    Level ``l`` is the image scaled by ``2 ** ((finer - l) * step)`` (the first ``finer`` levels are upsampled),
    so a keypoint of diameter ``s`` pixels has diameter ``reference_size`` at the fractional level
    ``finer + log2(s / reference_size) / step``, clamped to ``[0, levels - 1]``: keypoints up to
    ``reference_size * 2 ** (-finer * step)`` are described on the finest level.

    Returns:
        ``(lower, upper, upper_weight)``: int64 levels and float32 weights in ``[0, 1)``, each ``(N,)``.
    """
    position = np.clip(finer + np.log2(np.maximum(sizes, 1e-6) / reference_size) / step, 0, levels - 1)
    lower = np.floor(position).astype(np.int64)
    return lower, np.minimum(lower + 1, levels - 1), (position - lower).astype(np.float32)


def max_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """The maximum of every ``(2r+1)^2`` window of ``(..., H, W)`` (outside is -inf), as ``max_pool2d`` with stride 1.

    Separable maxima of shifted views: on the CPU, ``max_pool2d`` with stride 1 takes about 25 times as long.
    """
    height, width = x.shape[-2:]
    padded = F.pad(x, (radius, radius, radius, radius), value=float("-inf"))
    rows = padded[..., :, :width]
    for shift in range(1, 2 * radius + 1):
        rows = torch.maximum(rows, padded[..., :, shift : shift + width])
    out = rows[..., :height, :]
    for shift in range(1, 2 * radius + 1):
        out = torch.maximum(out, rows[..., shift : shift + height, :])
    return out


def nms_mask(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """``(B, 1, H, W)`` bool mask of pixels that are the maximum of their ``(2r+1)^2`` window."""
    return scores == max_filter(scores, radius)


def refine_subpixel(scores: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
    """``(N, 2)`` sub-pixel ``(x, y)``: the vertex of the quadratic that fits each peak's 3x3 neighbourhood.

    The gradient and Hessian come from central differences, and the Newton step ``-H^-1 g`` is taken where ``H``
    is negative definite and the step stays within half a pixel on both axes, as in SIFT's refinement (Lowe,
    IJCV 2004, §4) without the scale axis. Elsewhere each axis falls back to the vertex of the parabola through
    the peak and its two neighbours, ``(s[-1] - s[+1]) / (2 (s[-1] - 2 s[0] + s[+1]))`` clamped to half a pixel;
    on the map's border, or where the three scores are not strictly concave, the keypoint stays on its pixel.
    The cross term matters because corner peaks are elongated along the corner's bisector, often diagonal;
    the score-weighted 3x3 mean of the SCFeat reference pulls every peak towards the pixel centre
    (docs/models/scfeat.md compares the three).

    Args:
        scores: ``(H, W)`` score map.
        keypoints: ``(N, 2)`` integer ``(x, y)`` pixels (NMS peaks).
    """
    height, width = scores.shape
    xs, ys = keypoints[:, 0].long(), keypoints[:, 1].long()
    inside_x, inside_y = (xs > 0) & (xs < width - 1), (ys > 0) & (ys < height - 1)
    x0, x1 = (xs - 1).clamp(min=0), (xs + 1).clamp(max=width - 1)
    y0, y1 = (ys - 1).clamp(min=0), (ys + 1).clamp(max=height - 1)
    centre, left, right, up, down = scores[ys, xs], scores[ys, x0], scores[ys, x1], scores[y0, xs], scores[y1, xs]
    gx, gy = (right - left) / 2, (down - up) / 2
    hxx, hyy = left - 2 * centre + right, up - 2 * centre + down
    hxy = (scores[y1, x1] - scores[y1, x0] - scores[y0, x1] + scores[y0, x0]) / 4

    def vertex(gradient: torch.Tensor, curvature: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        usable = inside & (curvature < 0)
        return torch.where(usable, -gradient / torch.where(usable, curvature, -1.0), 0.0).clamp(-0.5, 0.5)

    separable = torch.stack([vertex(gx, hxx, inside_x), vertex(gy, hyy, inside_y)], dim=1)
    determinant = hxx * hyy - hxy**2
    definite = inside_x & inside_y & (hxx < 0) & (determinant > 0)
    safe = torch.where(definite, determinant, 1.0)
    newton = torch.stack([hxy * gy - hyy * gx, hxy * gx - hxx * gy], dim=1) / safe[:, None]
    use_newton = definite & (newton.abs() <= 0.5).all(dim=1)
    return keypoints.float() + torch.where(use_newton[:, None], newton, separable)


def within_max_pixels(method: Callable[..., list[Features]]) -> Callable[..., list[Features]]:
    """Run a dense model's ``extract``, ``detect`` or ``describe`` on its images downscaled to ``conf["max_pixels"]``.

    An image with more pixels is resized (area averaging) by ``sqrt(max_pixels / pixels)``; given keypoints
    (``describe``) are mapped onto the smaller image and the results' keypoints, sizes and ``image_size`` back
    to the original, so callers always work in the pixels they sent; ``border_margin`` is scaled with the image.
    Images within the limit pass unchanged. A nested call (a subclass calling its parent) sees the downscaled
    images, which rounding can leave a row or column over the limit; resizing them again keeps their size.
    """

    @functools.wraps(method)
    def bounded(self: DenseFeatureModel, images: Sequence[np.ndarray], per_image: Sequence[Any]) -> list[Features]:
        for image in images:  # before any size arithmetic: an empty image would divide by zero
            check_image(image)
        limit = self.conf["max_pixels"]
        factors = [min(1.0, math.sqrt(limit / max(im.shape[0] * im.shape[1], 1))) if limit else 1.0 for im in images]
        if all(f == 1.0 for f in factors):
            return method(self, images, per_image)
        scaled = [resize_image(im, f) for im, f in zip(images, factors, strict=True)]
        if method.__name__ == "describe":
            per_image = [
                rescale_points(np.asarray(k, np.float32).reshape(-1, 2), image_size(im), image_size(s))
                for k, im, s in zip(per_image, images, scaled, strict=True)
            ]
        else:  # the margin is in the caller's pixels; rounded up, no kept keypoint is closer than asked
            per_image = [
                replace(o, border_margin=max(0, math.ceil((o.border_margin + 0.5) * f - 0.5)))
                for o, f in zip(per_image, factors, strict=True)
            ]
        results = method(self, scaled, per_image)
        for features, image, s in zip(results, images, scaled, strict=True):
            features.keypoints = rescale_points(features.keypoints, image_size(s), image_size(image))
            features.image_size = image_size(image)
            if features.sizes is not None:
                features.sizes = features.sizes * (image.shape[1] / s.shape[1])
        return results

    return bounded


class DenseFeatureModel(FeatureModel):
    """A torch network with a full-resolution score map and one or more descriptor maps.

    Subclasses build ``self.network``: a module mapping ``(B, C, H, W)`` float images in ``[0, 1]`` to
    ``{"scores": (B, 1, H, W), "descriptors": [(B, D_i, H/s_i, W/s_i), ...]}`` and set
    ``descriptor_strides``. Images are padded at the bottom and right to a multiple of ``conf["pad_multiple"]``
    so that images of similar size share a tensor batch; padding never moves keypoints, and detections in the
    padding are discarded. The padding repeats the last row and column: zeros would put a false edge in the
    image, which convolutions and scfeat's image prior see as structure (docs/models/caps.md and
    docs/models/scfeat.md measure both).
    """

    default_conf: ClassVar[dict[str, Any]] = {
        "device": "cpu",
        "pad_multiple": 64,
        # Larger images are downscaled to this many pixels before the network (`within_max_pixels`), which bounds
        # the memory and time of one image (docs/models/README.md, "Large images"). 2**21 keeps 1920x1080 and
        # 1600x1200 whole; 0 or None: no limit.
        "max_pixels": 2**21,
        # Most padded pixels in one network pass: a size bucket with more is run in several passes, so that
        # ``max_batch`` large images do not multiply the peak memory. Small images still share one pass; 0 or None:
        # one pass per bucket.
        "batch_pixels": 2**22,
        "nms_radius": 2,
        "detection_threshold": 0.0,
        "subpixel": False,  # refine NMS peaks to the vertex of the quadratic through each 3x3 neighbourhood
        "grey": True,
        # False: steer every descriptor by its keypoint's dominant gradient orientation, blending the descriptors
        # of the image turned by the two nearest quarter turns (models/orientation.py). Four network passes per
        # image instead of one (docs/models/scfeat.md, "Steered descriptors").
        "upright": True,
        # The network's precision: "float16" or "bfloat16" halves its memory and, on GPUs with tensor cores, its
        # time; keypoints and descriptors are computed from float32 copies of its outputs (docs/models/README.md).
        "dtype": "float32",
    }
    descriptor_strides: ClassVar[Sequence[int]]
    # The ``sizes`` of detected keypoints, in pixels: SIFT's diameter (twice the scale) of a blob of the 1.6 px
    # base scale that SIFT and the Hessian prior of `scfeat` share. Dense detectors give no orientation (-1).
    keypoint_size: ClassVar[float] = 3.2

    def bucket_key(self, image: np.ndarray) -> Hashable:
        """Padded ``(height, width)``: images with the same key share a tensor batch."""
        m = int(self.conf["pad_multiple"])
        return (-(-image.shape[0] // m) * m, -(-image.shape[1] // m) * m)

    @property
    def grey_input(self) -> bool:
        """The network's input is grey with conf ``grey`` (the default)."""
        return bool(self.conf["grey"])

    @property
    def device(self) -> torch.device:
        """Where the network runs."""
        return torch.device(self.conf["device"])

    @property
    def dtype(self) -> torch.dtype:
        """The network's precision (conf ``dtype``)."""
        if self.conf["dtype"] not in NETWORK_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(NETWORK_DTYPES)}, got {self.conf['dtype']!r}")
        return NETWORK_DTYPES[self.conf["dtype"]]

    @property
    def network(self) -> nn.Module:
        """The network, in the precision of conf ``dtype``."""
        return self._network

    @network.setter
    def network(self, module: nn.Module) -> None:
        self._network = module.to(self.dtype)

    def _to_tensor(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        height, width = self.bucket_key(images[0])
        channels = 1 if self.conf["grey"] else 3
        batch = torch.empty((len(images), channels, height, width), dtype=torch.float32)
        for i, image in enumerate(images):  # checked on entry, by `within_max_pixels`
            if self.bucket_key(image) != (height, width):
                raise ValueError("images of one tensor batch must share a size bucket")
            array = to_grey(image)[None] if self.conf["grey"] else self._to_rgb(image).transpose(2, 0, 1)
            rows, cols = image.shape[:2]
            batch[i, :, :rows, :cols] = torch.from_numpy(array).float() / 255.0
            batch[i, :, :rows, cols:] = batch[i, :, :rows, cols - 1 : cols]
            batch[i, :, rows:] = batch[i, :, rows - 1 : rows]
        if self.device.type == "cuda":  # a page-locked copy goes to the GPU without blocking this thread
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)

    @staticmethod
    def _to_rgb(image: np.ndarray) -> np.ndarray:
        return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image

    def _describe_at(self, outputs: dict[str, Any], keypoints: torch.Tensor) -> torch.Tensor:
        """``(B, N, D)`` descriptors: every map sampled and normalised, concatenated, normalised again."""
        parts = [
            sample_descriptors(m, keypoints, s)
            for m, s in zip(outputs["descriptors"], self.descriptor_strides, strict=True)
        ]
        return F.normalize(torch.cat(parts, dim=-1), dim=-1)

    def _by_bucket(self, images: Sequence[np.ndarray]) -> list[list[int]]:
        """Indices of ``images`` grouped by size bucket, each group cut to at most ``conf["batch_pixels"]``."""
        groups: dict[Hashable, list[int]] = defaultdict(list)
        for i, image in enumerate(images):
            groups[self.bucket_key(image)].append(i)
        limit, passes = self.conf["batch_pixels"], []
        for (height, width), indices in groups.items():
            per_pass = max(1, int(limit) // (height * width)) if limit else len(indices)
            passes += [indices[start : start + per_pass] for start in range(0, len(indices), per_pass)]
        return passes

    @within_max_pixels
    @torch.inference_mode()
    def extract(self, images: Sequence[np.ndarray], options: Sequence[KeypointOptions]) -> list[Features]:
        """Detect (NMS on the score map) and describe, one tensor batch per size bucket."""
        results: list[Features | None] = [None] * len(images)
        for i, outputs, b in self._bucket_outputs(images, detect=True):
            results[i] = self._extract_one(images[i], options[i], outputs, b)
        return results  # type: ignore[return-value]

    def _extract_one(
        self, image: np.ndarray, options: KeypointOptions, outputs: dict[str, Any], b: int, describe: bool = True
    ) -> Features:
        """Keypoints of row ``b`` of a batch's outputs (``image`` is that row, unpadded) and, if ``describe``,
        their descriptors."""
        height, width = image.shape[:2]
        scores = outputs["scores"][b, 0, :height, :width]
        peaks = nms_mask(scores[None, None], int(self.conf["nms_radius"]))[0, 0]  # the padding suppresses nothing
        candidates = peaks & (scores > float(self.conf["detection_threshold"]))
        ys, xs = torch.nonzero(candidates, as_tuple=True)
        values = scores[ys, xs]
        top = torch.argsort(values, descending=True, stable=True)[: candidate_count(options)]
        keypoints = torch.stack([xs[top], ys[top]], dim=1).float()
        values = values[top]
        keep = select_keypoints(keypoints.cpu().numpy(), values.cpu().numpy(), (width, height), options)
        keep_t = torch.from_numpy(keep).to(keypoints.device)
        keypoints, values = keypoints[keep_t], values[keep_t]
        if self.conf["subpixel"]:
            keypoints = refine_subpixel(scores, keypoints)
        return Features(
            keypoints=keypoints.cpu().numpy().astype(np.float32),
            scores=values.float().cpu().numpy(),
            descriptors=self._sample(outputs, b, keypoints).float().cpu().numpy() if describe else None,
            image_size=(width, height),
            descriptor=self.descriptor,
            sizes=np.full(len(keypoints), self.keypoint_size, np.float32),
            angles=np.full(len(keypoints), -1.0, np.float32),
        )

    @within_max_pixels
    @torch.inference_mode()
    def describe(self, images: Sequence[np.ndarray], keypoints: Sequence[np.ndarray]) -> list[Features]:
        """Descriptors sampled at the given keypoints (every keypoint is kept)."""
        results: list[Features | None] = [None] * len(images)
        for i, outputs, b in self._bucket_outputs(images, detect=True):
            points = self._points(keypoints[i])
            results[i] = Features(
                keypoints=points.cpu().numpy(),
                scores=self._scores_at(outputs, b, points, images[i].shape[:2]),
                descriptors=self._sample(outputs, b, points).float().cpu().numpy(),
                image_size=image_size(images[i]),
                descriptor=self.descriptor,
            )
        return results  # type: ignore[return-value]

    def _forward_float32(self, batch: torch.Tensor, detect: bool) -> dict[str, Any]:
        """`_forward` in the network's precision, its tensors (and lists of them) back as float32."""
        outputs = self._forward(batch.to(self.dtype), detect)
        if self.dtype == torch.float32:
            return outputs
        return {
            key: [v.float() for v in value] if isinstance(value, list) else value.float()
            for key, value in outputs.items()
        }

    def _forward(self, batch: torch.Tensor, detect: bool) -> dict[str, Any]:
        """Network outputs of a padded batch; ``detect=False`` lets a network with a detector skip its score map."""
        return self.network(batch)

    def _bucket_outputs(
        self, images: Sequence[np.ndarray], detect: bool, describe: bool = True
    ) -> Iterator[tuple[int, dict[str, Any], int]]:
        """``(index of the image, outputs of its tensor batch, its row in that batch)`` for every image.

        When ``describe`` and not ``conf["upright"]``, the outputs also hold the batch (``"images"``) and the
        descriptor maps of the batch turned by 0..3 quarter turns (``"turned_descriptors"``), which `_sample`
        steers between; ``describe=False`` (keypoints only) skips those three extra passes.
        """
        for indices in self._by_bucket(images):
            batch = self._to_tensor([images[i] for i in indices])
            outputs = self._forward_float32(batch, detect)
            if describe and not self.conf["upright"]:
                turned = [
                    self._forward_float32(torch.rot90(batch, k, dims=(2, 3)), False)["descriptors"] for k in (1, 2, 3)
                ]
                outputs |= {"images": batch, "turned_descriptors": [outputs["descriptors"], *turned]}
            for b, i in enumerate(indices):
                yield i, outputs, b

    def _points(self, keypoints: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(keypoints, np.float32).reshape(-1, 2), device=self.device)

    def _sample(self, outputs: dict[str, Any], b: int, points: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` descriptors of row ``b`` of a batch's outputs at ``(N, 2)`` pixel ``points``, steered by each
        point's dominant orientation when the outputs hold the turned maps (``conf["upright"]`` false)."""
        if "turned_descriptors" not in outputs:
            return self._describe_at({"descriptors": [m[b : b + 1] for m in outputs["descriptors"]]}, points[None])[0]
        image = outputs["images"][b].mean(dim=0)  # grey, padded: the turned maps are of the padded batch
        weights = quarter_turn_weights(dominant_orientations(image, points))
        size = (image.shape[1], image.shape[0])
        steered = torch.zeros((len(points), self.descriptor.dim), device=points.device)
        for turns, maps in enumerate(outputs["turned_descriptors"]):
            chosen = weights[:, turns] > 0
            if chosen.any():
                turned_points = turn_points(points[chosen], turns, size)
                descriptors = self._describe_at({"descriptors": [m[b : b + 1] for m in maps]}, turned_points[None])[0]
                steered[chosen] += weights[chosen, turns, None] * descriptors
        return F.normalize(steered, dim=-1)

    # The pyramid helpers below serve subclasses whose conf has "scale_levels" and "scale_step".
    def _check_pyramid_conf(self) -> None:
        """Refuse pyramid settings that would describe no level or repeat one."""
        if int(self.conf["scale_levels"]) < 1 or float(self.conf["scale_step"]) <= 0:
            raise ValueError(
                f"{self.name}: scale_levels must be >= 1 and scale_step > 0, "
                f"got {self.conf['scale_levels']} and {self.conf['scale_step']}"
            )

    def _usable_levels(self, image: np.ndarray, levels: int | None = None) -> int:
        """How many of the first ``levels`` (default ``scale_levels``) pyramid levels of ``image`` keep at least
        ``MIN_LEVEL_SIDE`` pixels on the shorter side (always at least 1)."""
        octaves = np.log2(max(min(image.shape[:2]), 1) / MIN_LEVEL_SIDE)
        cap = int(self.conf["scale_levels"]) if levels is None else levels
        return int(np.clip(np.floor(octaves / float(self.conf["scale_step"])) + 1, 1, cap))

    @torch.inference_mode()
    def _pyramid_descriptor_sums(
        self,
        images: Sequence[np.ndarray],
        keypoints: Sequence[np.ndarray],
        weights: Sequence[np.ndarray],
        finer: int = 0,
    ) -> list[np.ndarray]:
        """Per image, ``sum_l weights[l, n] * d_l(n)``, ``d_l(n)`` the unit descriptor of keypoint ``n`` on level ``l``.

        Level ``l`` is the image scaled by ``2 ** ((finer - l) * conf["scale_step"])``. ``weights`` holds one
        ``(levels, N)`` array per image; a level whose weights are all zero is not computed for that image.
        """
        step = float(self.conf["scale_step"])
        sums = [np.zeros((len(k), self.descriptor.dim), np.float32) for k in keypoints]
        for level in range(max((len(w) for w in weights), default=0)):
            chosen = [i for i, w in enumerate(weights) if level < len(w) and w[level].any()]
            scaled = [resize_image(images[i], 2.0 ** ((finer - level) * step)) for i in chosen]
            for j, outputs, b in self._bucket_outputs(scaled, detect=False):
                i = chosen[j]
                points = rescale_points(keypoints[i], image_size(images[i]), image_size(scaled[j]))
                descriptors = self._sample(outputs, b, self._points(points)).float().cpu().numpy()
                sums[i] += weights[i][level][:, None] * descriptors
        return sums

    @staticmethod
    def _scores_at(outputs: dict[str, Any], b: int, points: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """Score-map values at the nearest pixels, or zeros for networks without a score map (descriptor-only)."""
        if "scores" not in outputs:
            return np.zeros(len(points), np.float32)
        height, width = size
        xs = points[:, 0].round().clamp(0, width - 1).long()
        ys = points[:, 1].round().clamp(0, height - 1).long()
        return outputs["scores"][b, 0, ys, xs].float().cpu().numpy()

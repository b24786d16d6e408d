"""Self-supervised samples from single photos: homographic views, strong appearance changes, ORB patch bags.

Two datasets, both pure functions of ``(seed, index)``:

- `CropPairs` (HNDesc: Melekhov et al., 3DV 2021): two homographic crops of one photo, the second with a strong
  appearance change (the stand-in for the paper's photorealistic stylisation), and SIFT keypoints of crop A
  mapped into crop B as (anchor, positive) pairs.
- `PhotoBagPairs` (Markuš et al., IEEE TIP 2019, Sec. III): bags of ORB-keypoint patches from views of photos; two
  views of one photo form the matching pair (the image-level weak label), bags of other photos are the
  negatives. No keypoint correspondence leaves this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from featureserve.models.orb_patch import cv_keypoint_rows, extract_patches

from ..geometry import warp_points
from .photometric import PhotometricConfig, augment, procedural_texture


@dataclass(frozen=True)
class ViewConfig:
    """Ranges of one homographic view (angles in degrees).

    ``zoom`` is the fraction of the view side covered in the source photo; ``perspective`` scales two opposite
    sides of the view's footprint independently; a ``wide_rotation_fraction`` of views draws its rotation from
    the whole circle, the rest from ``±max_rotation`` (HNDesc uses ±15°; wider here so the served descriptor
    copes with rotated sequences).
    """

    zoom: tuple[float, float] = (0.8, 1.0)
    max_rotation: float = 30.0
    wide_rotation_fraction: float = 0.2
    perspective: tuple[float, float] = (0.6, 1.0)
    scale_jitter: tuple[float, float] = (0.7, 1.4)  # extra relative scale between the two views of a pair


def view_homography(
    rng: np.random.Generator, centre: np.ndarray, side: float, out_size: tuple[int, int], config: ViewConfig
) -> np.ndarray:
    """``(3, 3)`` homography from the source photo into an ``out_size`` ``(W, H)`` view centred at ``centre``.

    The view's footprint in the photo is a square of ``side`` pixels, scaled by a zoom, squeezed on two opposite
    sides (perspective) and rotated; its corners map onto the view's corners.
    """
    width, height = out_size
    half = 0.5 * side * rng.uniform(*config.zoom) * np.array([1.0, height / width])
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * half
    near, far = rng.uniform(*config.perspective, size=2)
    if rng.random() < 0.5:  # squeeze the top and bottom sides
        corners[:2, 0] *= near
        corners[2:, 0] *= far
    else:  # or the left and right ones
        corners[[0, 3], 1] *= near
        corners[[1, 2], 1] *= far
    wide = rng.random() < config.wide_rotation_fraction
    angle = np.radians(rng.uniform(-180, 180) if wide else rng.uniform(-config.max_rotation, config.max_rotation))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = corners @ rotation.T + centre
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float64) - 0.5
    return cv2.getPerspectiveTransform(source.astype(np.float32), target.astype(np.float32)).astype(np.float64)


def inside(points: np.ndarray, size: tuple[int, int], margin: float) -> np.ndarray:
    """``(N,)`` bool: the point lies at least ``margin`` pixels inside a ``(W, H)`` image."""
    width, height = size
    return (
        (points[:, 0] >= margin)
        & (points[:, 0] <= width - 1 - margin)
        & (points[:, 1] >= margin)
        & (points[:, 1] <= height - 1 - margin)
    )


class PhotoSource:
    """Source photos, RGB uint8, loaded lazily and cached per process; procedural ones when a list is empty."""

    def __init__(self, paths: list[Path], min_side: int = 256) -> None:
        self.paths, self.min_side = paths, min_side
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return max(len(self.paths), 1)

    def photo(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """Photo ``index`` (modulo the count), upscaled so its shorter side is at least ``min_side``."""
        if not self.paths:
            return procedural_texture(rng, (self.min_side, self.min_side * 4 // 3))
        index %= len(self.paths)
        if index not in self._cache:
            image = cv2.cvtColor(cv2.imread(str(self.paths[index]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            scale = self.min_side / min(image.shape[:2])
            if scale > 1:
                image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
            self._cache[index] = image
        return self._cache[index]


def stylise(rng: np.random.Generator, image: np.ndarray, other: np.ndarray) -> np.ndarray:
    """A strong appearance change of an RGB view: one of tone curve, colour transfer, night, hue, blend.

    ``other`` is an RGB photo of any size used by colour transfer (its Lab statistics) and texture blending.
    """
    kind = rng.integers(5)
    rgb = image.astype(np.float32) / 255
    if kind == 0:  # a random monotone tone curve per channel
        knots = np.sort(rng.uniform(0, 1, size=(3, 3)), axis=1)
        xs = np.array([0, 0.25, 0.5, 0.75, 1.0])
        rgb = np.stack([np.interp(rgb[..., c], xs, np.r_[0, knots[c], 1]) for c in range(3)], axis=-1)
    elif kind == 1:  # Reinhard colour transfer: match the Lab mean and spread of another photo
        lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
        ref = cv2.cvtColor(other.astype(np.float32) / 255, cv2.COLOR_RGB2LAB)
        mean, std = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0) + 1e-3
        ref_mean, ref_std = ref.reshape(-1, 3).mean(0), ref.reshape(-1, 3).std(0) + 1e-3
        rgb = cv2.cvtColor(((lab - mean) / std * ref_std + ref_mean).astype(np.float32), cv2.COLOR_LAB2RGB)
    elif kind == 2:  # day to night: darker, bluer, lower contrast, sensor noise
        rgb = rgb ** rng.uniform(1.5, 3.0) * np.array([0.6, 0.7, 1.0], np.float32) * rng.uniform(0.4, 0.8)
        rgb += rng.normal(0, 0.02, rgb.shape).astype(np.float32)
    elif kind == 3:  # hue rotation
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(60, 300)) % 360
        rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    else:  # blend with another photo's texture
        texture = cv2.resize(other, (image.shape[1], image.shape[0])).astype(np.float32) / 255
        alpha = rng.uniform(0.15, 0.35)
        rgb = (1 - alpha) * rgb + alpha * texture
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def _grey_tensor(grey: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(grey).float().div(255).unsqueeze(0)


ConfigT = TypeVar("ConfigT")


class PhotoSamples(Dataset, Generic[ConfigT]):
    """``length`` samples cut from ``photos`` as ``config`` says; sample ``i`` is a pure function of ``(seed, i)``."""

    def __init__(
        self, photos: PhotoSource, length: int, seed: int, config: ConfigT, photometric: PhotometricConfig | None
    ) -> None:
        self.photos, self.length, self.seed, self.config, self.photometric = photos, length, seed, config, photometric

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True)
class CropConfig:
    """HNDesc crop pairs: crop side, keypoints per pair, appearance change, retries."""

    size: int = 192
    keypoints: int = 128
    shift: float = 0.1  # crop B's centre = crop A's ± shift x size in x and y (as HNDesc)
    stylise_probability: float = 0.7
    min_std: float = 20.0  # grey-level standard deviation crop A needs (as HNDesc)
    min_keypoints: int = 8
    tries: int = 10
    view: ViewConfig = ViewConfig()


class CropPairs(PhotoSamples[CropConfig]):
    """HNDesc samples: ``image1``/``image2`` ``(1, S, S)``, ``points1``/``points2`` ``(N, 2)``, ``mask`` ``(N,)``."""

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        c = self.config
        for _ in range(c.tries):
            sample = self._try(rng)
            if sample is not None:
                return sample
        return self._try(rng, final=True)  # type: ignore[return-value]

    def _try(self, rng: np.random.Generator, final: bool = False) -> dict[str, torch.Tensor] | None:
        c = self.config
        photo = self.photos.photo(int(rng.integers(len(self.photos))), rng)
        height, width = photo.shape[:2]
        side = min(width, height) * rng.uniform(0.4, 0.7)
        margin = np.array([side, side]) * 0.6  # keeps most rotated, shifted footprints inside the photo
        centre = rng.uniform(np.minimum(margin, [width / 2, height / 2]), np.maximum([width, height] - margin, 1))
        shift = c.shift * side * rng.choice([-1, 1], size=2)
        size = (c.size, c.size)
        h1 = view_homography(rng, centre, side, size, c.view)
        h2 = view_homography(rng, centre + shift, side * rng.uniform(*c.view.scale_jitter), size, c.view)
        view1 = cv2.warpPerspective(photo, h1, size, flags=cv2.INTER_LINEAR)
        view2 = cv2.warpPerspective(photo, h2, size, flags=cv2.INTER_LINEAR)
        valid2 = cv2.warpPerspective(np.full(photo.shape[:2], 255, np.uint8), h2, size, flags=cv2.INTER_NEAREST)
        if rng.random() < c.stylise_probability:
            view2 = stylise(rng, view2, self.photos.photo(int(rng.integers(len(self.photos))), rng))
        grey1 = cv2.cvtColor(view1, cv2.COLOR_RGB2GRAY)
        if grey1.std() < c.min_std and not final:
            return None
        keypoints = cv2.SIFT_create(nfeatures=c.keypoints * 2).detect(grey1, None)
        points1 = np.array([k.pt for k in keypoints], np.float64).reshape(-1, 2)
        points2 = warp_points(points1, h2 @ np.linalg.inv(h1))
        keep = inside(points2, size, 4)
        keep[keep] &= valid2[points2[keep, 1].astype(int), points2[keep, 0].astype(int)] > 0
        points1, points2 = points1[keep][: c.keypoints], points2[keep][: c.keypoints]
        if len(points1) < c.min_keypoints and not final:
            return None
        mask = np.zeros(c.keypoints, bool)
        mask[: len(points1)] = True
        pad = np.zeros((c.keypoints - len(points1), 2))
        if self.photometric is not None:
            grey1, grey2 = augment(rng, view1, self.photometric), augment(rng, view2, self.photometric)
        else:
            grey2 = cv2.cvtColor(view2, cv2.COLOR_RGB2GRAY)
        return {
            "image1": _grey_tensor(grey1),
            "image2": _grey_tensor(grey2),
            "points1": torch.from_numpy(np.concatenate([points1, pad]).astype(np.float32)),
            "points2": torch.from_numpy(np.concatenate([points2, pad]).astype(np.float32)),
            "mask": torch.from_numpy(mask),
        }


@dataclass(frozen=True)
class BagConfig:
    """Patch bags: view size, ORB keypoints per bag, and how often a pair shares one view.

    ``same_view`` is the fraction of pairs whose positive bag is cut from the anchor's view with a new
    photometric draw only: its patches nearly repeat the anchor's, so even an untrained network ranks them
    above other photos' patches and the ratio loss starts below 1 instead of collapsing (docs/models/orb-patch.md,
    "orb-patch"). The label stays image-level: which patch repeats which is never given.
    """

    width: int = 320
    height: int = 240
    keypoints: int = 128
    tries: int = 5
    same_view: float = 0.0
    view: ViewConfig = ViewConfig(zoom=(0.6, 1.0), max_rotation=30.0, wide_rotation_fraction=0.2)


class PhotoBagPairs(PhotoSamples[BagConfig]):
    """Matching bag pairs: ``anchor``/``positive`` ``(N, 3, 32, 32)`` uint8 patches, their masks, and ``label``.

    Both bags are views of photo ``label``; the negatives of a pair are the bags of other photos in the same
    batch, so a batch of B pairs gives each anchor ``2 (B - 1)`` negative bags without extra views.
    """

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        label = int(rng.integers(len(self.photos)))
        photo = self.photos.photo(label, rng)
        anchor, anchor_mask, homography = self._bag(rng, photo)
        same_view = rng.random() < self.config.same_view
        positive, positive_mask, _ = self._bag(rng, photo, homography if same_view else None)
        return {
            "anchor": anchor,
            "anchor_mask": anchor_mask,
            "positive": positive,
            "positive_mask": positive_mask,
            "label": torch.tensor(label),
        }

    def _bag(
        self, rng: np.random.Generator, photo: np.ndarray, homography: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """The bag of one view of ``photo`` (a new view unless ``homography`` is given) and the view's homography."""
        c = self.config
        height, width = photo.shape[:2]
        fixed = homography is not None
        for _ in range(1 if fixed else c.tries):  # a view of sky or wall may hold few corners: draw another
            if not fixed:
                side = min(width, height) * rng.uniform(0.7, 1.0)
                centre = np.array([width, height]) / 2 + rng.uniform(-0.1, 0.1, size=2) * [width, height]
                homography = view_homography(rng, centre, side, (c.width, c.height), c.view)
            view = cv2.warpPerspective(photo, homography, (c.width, c.height), flags=cv2.INTER_LINEAR)
            if self.photometric is not None:
                view = augment(rng, view, self.photometric, keep_colour=True)
            keypoints = cv2.ORB_create(nfeatures=c.keypoints).detect(cv2.cvtColor(view, cv2.COLOR_RGB2GRAY), None)
            if len(keypoints) >= c.keypoints // 2:
                break
        rows = cv_keypoint_rows(keypoints[: c.keypoints])
        patches = (extract_patches(view, rows) * 255).round().to(torch.uint8)  # uint8 keeps batches small
        bag = torch.zeros((c.keypoints, 3, 32, 32), dtype=torch.uint8)
        bag[: len(patches)] = patches
        mask = torch.zeros(c.keypoints, dtype=torch.bool)
        mask[: len(patches)] = True
        return bag, mask, homography

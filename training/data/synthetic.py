"""Synthetic posed image pairs: piecewise-planar scenes seen by two cameras with known K, R, t.

A scene is a textured back wall, an optional ground plane and 2-7 textured planes with random poses in front
of camera 1 (our synthetic posed pairs). Each view is rendered by one homography per plane (texture -> image),
composited
with a z-buffer, so depth, plane labels, visibility masks and dense ground-truth correspondences come for free.
Camera 2 moves by a baseline proportional to the scene depth, looks back at the scene, rolls about its optical
axis and zooms, so training sees the rotation and scale changes that real sequences have.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .photometric import procedural_texture

GENERATOR_VERSION = "1"


@dataclass(frozen=True)
class SceneConfig:
    """Ranges of the scene and camera generator (angles in degrees, depths in scene units)."""

    width: int = 320
    height: int = 240
    planes: tuple[int, int] = (2, 7)
    back_depth: tuple[float, float] = (8.0, 25.0)
    focal: tuple[float, float] = (0.7, 1.3)  # focal length / image width
    baseline: tuple[float, float] = (0.05, 0.35)  # baseline / depth of the look-at point
    max_roll: float = 90.0  # in-plane roll of camera 2, |roll| = max_roll * u^2 (median 22.5°)
    max_zoom: float = 2.5  # focal length of camera 2 / camera 1 = max_zoom^(±u^2)
    min_overlap: float = 0.25  # fraction of image-1 pixels visible in image 2
    procedural_fraction: float = 0.3


@dataclass
class PosedPair:
    """Two images with their cameras; synthetic pairs also carry depth and visibility.

    Attributes:
        image1: ``(H, W, 3)`` uint8 RGB.
        image2: ``(H, W, 3)`` uint8 RGB.
        k1: ``(3, 3)`` intrinsics of image 1.
        k2: ``(3, 3)`` intrinsics of image 2.
        rotation: ``(3, 3)`` relative rotation, camera 1 -> camera 2.
        translation: ``(3,)`` relative translation, camera 1 -> camera 2.
        depth1: ``(H, W)`` depth of image 1 (``inf`` where empty), or ``None`` for real pairs.
        visible1: ``(H, W)`` bool, image-1 pixels whose scene point is visible in image 2, or ``None``.
    """

    image1: np.ndarray
    image2: np.ndarray
    k1: np.ndarray
    k2: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    depth1: np.ndarray | None = None
    visible1: np.ndarray | None = None


@dataclass(frozen=True)
class Plane:
    """A textured rectangle: centre, half-extent vectors along the texture's x and y axes, texture index."""

    centre: np.ndarray
    half_u: np.ndarray
    half_v: np.ndarray
    texture: int


def texture_paths(folders: list[str | Path]) -> list[Path]:
    """Image files (jpg, png) under each folder, sorted."""
    paths: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"no texture folder at {folder}")
        paths += sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return paths


def rotation_about(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation by ``angle`` radians about ``axis``."""
    rotation, _ = cv2.Rodrigues(np.asarray(axis, np.float64) / np.linalg.norm(axis) * angle)
    return rotation


def look_at(centre: np.ndarray, target: np.ndarray, roll: float) -> tuple[np.ndarray, np.ndarray]:
    """World -> camera ``(R, t)`` of a camera at ``centre`` looking at ``target``, rolled by ``roll`` radians."""
    z = target - centre
    z /= np.linalg.norm(z)
    x = np.cross(np.array([0.0, 1.0, 0.0]), z)  # camera 1's y axis points down, so "up" is -y
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    rotation = rotation_about(np.array([0.0, 0.0, 1.0]), roll) @ np.stack([x, y, z])
    return rotation, -rotation @ centre


def plane_facing(
    rng: np.random.Generator, centre: np.ndarray, half_size: tuple[float, float], tilt: float, texture: int
) -> Plane:
    """A plane at ``centre`` whose normal points at camera 1 (the origin), tilted by up to ``tilt`` degrees."""
    normal = -centre / np.linalg.norm(centre)
    normal = rotation_about(rng.normal(size=3), np.radians(rng.uniform(0, tilt))) @ normal
    u = np.cross(normal, rng.normal(size=3))
    u /= np.linalg.norm(u)
    v = np.cross(normal, u)
    return Plane(centre, u * half_size[0], v * half_size[1], texture)


class SceneGenerator:
    """Draws scenes and renders posed pairs; ``pair(rng)`` is a pure function of the generator state."""

    def __init__(self, textures: list[Path], config: SceneConfig = SceneConfig()) -> None:
        self.textures = textures
        self.config = config

    def pair(self, rng: np.random.Generator) -> PosedPair:
        """A rendered pair with at least ``min_overlap`` of image 1 visible in image 2."""
        c = self.config
        while True:
            planes, images, depth_mid = self._scene(rng)
            k1 = self._intrinsics(rng, rng.uniform(*c.focal) * c.width)
            k2 = self._intrinsics(rng, k1[0, 0] * np.exp(_skewed(rng) * np.log(c.max_zoom)))
            rotation, translation = self._second_camera(rng, depth_mid)
            view1 = render(planes, images, k1, np.eye(3), np.zeros(3), (c.width, c.height))
            view2 = render(planes, images, k2, rotation, translation, (c.width, c.height))
            visible1 = visibility(view1, view2, k1, k2, rotation, translation)
            if visible1.mean() >= c.min_overlap:
                return PosedPair(view1.image, view2.image, k1, k2, rotation, translation, view1.depth, visible1)

    def _intrinsics(self, rng: np.random.Generator, focal: float) -> np.ndarray:
        c = self.config
        cx = (c.width - 1) / 2 + rng.uniform(-0.05, 0.05) * c.width
        cy = (c.height - 1) / 2 + rng.uniform(-0.05, 0.05) * c.height
        return np.array([[focal, 0, cx], [0, focal, cy], [0, 0, 1]], np.float64)

    def _texture(self, rng: np.random.Generator) -> np.ndarray:
        if not self.textures or rng.random() < self.config.procedural_fraction:
            return procedural_texture(rng, (256, 256))
        image = cv2.imread(str(self.textures[rng.integers(len(self.textures))]), cv2.IMREAD_COLOR)
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if rng.random() < 0.5:
            image = np.ascontiguousarray(image[:, ::-1])
        return image

    def _scene(self, rng: np.random.Generator) -> tuple[list[Plane], list[np.ndarray], float]:
        c = self.config
        back = rng.uniform(*c.back_depth)
        images: list[np.ndarray] = []

        def texture() -> int:
            images.append(self._texture(rng))
            return len(images) - 1

        # The back wall is wide enough to fill both views, so every pixel shows texture.
        planes = [plane_facing(rng, np.array([0.0, 0.0, back]), (1.5 * back, 1.1 * back), 30.0, texture())]
        if rng.random() < 0.5:
            height = rng.uniform(1.0, 3.0)
            half = back / 2
            ground = Plane(np.array([0.0, height, half + 1]), np.array([half, 0, 0]), np.array([0, 0, half]), texture())
            planes.append(ground)
        for _ in range(rng.integers(c.planes[0], c.planes[1] + 1)):
            depth = rng.uniform(2.5, 0.8 * back)
            lateral = rng.uniform(-0.45, 0.45, size=2) * depth
            size = depth * rng.uniform(0.1, 0.45, size=2)
            planes.append(plane_facing(rng, np.array([lateral[0], lateral[1], depth]), tuple(size), 60.0, texture()))
        return planes, images, rng.uniform(0.4, 0.8) * back

    def _second_camera(self, rng: np.random.Generator, depth_mid: float) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        centre = direction * depth_mid * rng.uniform(*c.baseline)
        target = np.array([0.0, 0.0, depth_mid]) + rng.normal(size=3) * 0.1 * depth_mid
        return look_at(centre, target, np.radians(_skewed(rng) * c.max_roll))


def _skewed(rng: np.random.Generator) -> float:
    """A value in [-1, 1] with a random sign and magnitude u^2: small changes are common, the extremes still occur."""
    return float(rng.choice([-1.0, 1.0]) * rng.random() ** 2)


@dataclass
class View:
    """A rendered view: RGB image, depth (``inf`` where empty) and the index of the plane seen at each pixel."""

    image: np.ndarray
    depth: np.ndarray
    label: np.ndarray


def render(
    planes: list[Plane],
    textures: list[np.ndarray],
    k: np.ndarray,
    rotation: np.ndarray,
    translation: np.ndarray,
    size: tuple[int, int],
) -> View:
    """Render planes into a ``size = (W, H)`` view by per-plane homographies and a z-buffer."""
    width, height = size
    image = np.zeros((height, width, 3), np.uint8)
    depth = np.full((height, width), np.inf, np.float32)
    label = np.full((height, width), -1, np.int32)
    u = np.arange(width, dtype=np.float32)[None, :]
    v = np.arange(height, dtype=np.float32)[:, None]
    for index, plane in enumerate(planes):
        texture = _prefiltered(textures[plane.texture], plane, k, rotation, translation)
        th, tw = texture.shape[:2]
        # Texture pixel (a, b) -> world point; pixel centres at integer coordinates.
        to_world = np.stack(
            [
                plane.half_u * 2 / tw,
                plane.half_v * 2 / th,
                plane.centre - plane.half_u * (1 - 1 / tw) - plane.half_v * (1 - 1 / th),
            ],
            axis=1,
        )
        to_camera = rotation @ to_world
        to_camera[:, 2] += translation
        homography = k @ to_camera
        warped = cv2.warpPerspective(texture, homography, size, flags=cv2.INTER_LINEAR)
        inside = cv2.warpPerspective(np.ones((th, tw), np.uint8), homography, size, flags=cv2.INTER_NEAREST) > 0
        normal = rotation @ np.cross(plane.half_u, plane.half_v)
        offset = normal @ (rotation @ plane.centre + translation)
        # Inverse depth on a plane is affine in the pixel: (n . K^-1 x) / offset, with x = (u, v, 1).
        a, b, c = (np.linalg.inv(k).T @ normal / offset).astype(np.float32)
        with np.errstate(divide="ignore"):
            z = 1 / (a * u + b * v + c)
        closer = inside & (z > 1e-3) & (z < depth)
        image[closer] = warped[closer]
        depth[closer] = z[closer]
        label[closer] = index
    return View(image, depth, label)


def _prefiltered(
    texture: np.ndarray, plane: Plane, k: np.ndarray, rotation: np.ndarray, translation: np.ndarray
) -> np.ndarray:
    """The texture downsampled to about the on-screen size, since ``warpPerspective`` has no mipmaps."""
    depth = (rotation @ plane.centre + translation)[2]
    if depth <= 0:
        return texture
    on_screen = 2 * np.linalg.norm(plane.half_u) * k[0, 0] / depth
    shrink = texture.shape[1] / max(on_screen, 1.0)
    if shrink < 1.5:
        return texture
    w = max(int(texture.shape[1] / shrink), 8)
    h = max(int(texture.shape[0] / shrink), 8)
    return cv2.resize(texture, (w, h), interpolation=cv2.INTER_AREA)


def project(
    depth1: np.ndarray, k1: np.ndarray, k2: np.ndarray, rotation: np.ndarray, translation: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Image-2 pixel ``(H, W, 2)`` and camera-2 depth ``(H, W)`` of every image-1 pixel with known depth."""
    height, width = depth1.shape
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # empty pixels have infinite depth
        points = np.stack([u, v, np.ones_like(u)], axis=-1) @ np.linalg.inv(k1).T * depth1[..., None]
        camera2 = points @ rotation.T + translation
        pixels = camera2 @ k2.T
        pixels = pixels[..., :2] / pixels[..., 2:]
    return pixels, camera2[..., 2]


def visibility(
    view1: View, view2: View, k1: np.ndarray, k2: np.ndarray, rotation: np.ndarray, translation: np.ndarray
) -> np.ndarray:
    """``(H, W)`` bool: the image-1 pixel projects inside image 2 onto the same plane, unoccluded."""
    height, width = view1.depth.shape
    pixels, z2 = project(view1.depth, k1, k2, rotation, translation)
    finite = np.isfinite(pixels).all(-1) & (z2 > 0)
    xs = np.where(finite, np.round(pixels[..., 0]), -1).astype(np.int64)
    ys = np.where(finite, np.round(pixels[..., 1]), -1).astype(np.int64)
    inside = finite & (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
    seen = np.zeros_like(inside)
    seen[inside] = view2.label[ys[inside], xs[inside]] == view1.label[inside]
    # Same plane is not enough where a plane folds behind itself; the depth test settles it.
    seen[inside] &= np.abs(view2.depth[ys[inside], xs[inside]] - z2[inside]) < 0.02 * z2[inside]
    return seen & (view1.label >= 0)

"""Real posed images: Strecha (``cameras.json``), kapture, and the CAPS MegaDepth layout (``img_cam.txt``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..geometry import relative_pose
from .synthetic import PosedPair


@dataclass(frozen=True)
class PosedImage:
    """An image file with its camera: intrinsics, world -> camera pose and optional OpenCV distortion."""

    path: Path
    k: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    distortion: np.ndarray | None = None


def load_strecha(scene: str | Path) -> list[PosedImage]:
    """Images of a Strecha scene folder with ``cameras.json`` (see ``strecha_mvs/README.md``), sorted by name."""
    scene = Path(scene)
    cameras = json.loads((scene / "cameras.json").read_text())
    return [
        PosedImage(
            scene / "images" / name,
            np.array(c["K"], np.float64),
            np.array(c["R_world_to_cam"], np.float64),
            np.array(c["t_world_to_cam"], np.float64),
        )
        for name, c in sorted(cameras.items())
    ]


def _rows(path: Path) -> list[list[str]]:
    """Comma- or space-separated rows of a text file without ``#`` comments and blank lines."""
    rows = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            # kapture separates by commas and may leave a field empty; img_cam.txt separates by spaces.
            rows.append([field.strip() for field in line.split(",")] if "," in line else line.split())
    return rows


def quaternion_to_rotation(qw: float, qx: float, qy: float, qz: float) -> np.ndarray:
    """``(3, 3)`` rotation of a unit quaternion (w, x, y, z)."""
    q = np.array([qw, qx, qy, qz], np.float64)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def load_kapture(root: str | Path) -> list[PosedImage]:
    """Images of a kapture 1.1 folder with one camera (RADIAL or PINHOLE-like models), by timestamp.

    Expects ``kapture/sensors/{sensors,trajectories,records_camera}.txt`` and images in ``images/``; the
    first path component of a record (kapture's image-folder prefix) is dropped.
    """
    root = Path(root)
    sensors = {row[0]: row for row in _rows(root / "kapture" / "sensors" / "sensors.txt")}
    poses = {(row[0], row[1]): row[2:] for row in _rows(root / "kapture" / "sensors" / "trajectories.txt")}
    images = []
    for timestamp, device, image_path in _rows(root / "kapture" / "sensors" / "records_camera.txt"):
        model, params = sensors[device][3], [float(p) for p in sensors[device][4:]]
        if model == "RADIAL":  # w, h, f, cx, cy, k1, k2
            f, cx, cy, k1, k2 = params[2:7]
            k, distortion = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]]), np.array([k1, k2, 0, 0])
        elif model == "PINHOLE":  # w, h, fx, fy, cx, cy
            fx, fy, cx, cy = params[2:6]
            k, distortion = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]), None
        else:
            raise ValueError(f"kapture camera model {model!r} is not supported (RADIAL, PINHOLE)")
        qw, qx, qy, qz, tx, ty, tz = (float(v) for v in poses[(timestamp, device)])
        path = root / "images" / Path(*Path(image_path).parts[1:])
        images.append(PosedImage(path, k, quaternion_to_rotation(qw, qx, qy, qz), np.array([tx, ty, tz]), distortion))
    return images


def load_megadepth_scene(folder: str | Path) -> tuple[list[PosedImage], list[tuple[int, int]]]:
    """One CAPS MegaDepth ``dense*/aligned`` folder: images from ``img_cam.txt`` and index pairs from ``pairs.txt``.

    ``img_cam.txt`` rows: ``name width height fx fy cx cy R11 .. R33 t1 t2 t3`` (world -> camera, row-major).
    """
    folder = Path(folder)
    images, index = [], {}
    for row in _rows(folder / "img_cam.txt"):
        values = [float(v) for v in row[3:]]
        fx, fy, cx, cy = values[:4]
        index[row[0]] = len(images)
        images.append(
            PosedImage(
                folder / "images" / row[0],
                np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float64),
                np.array(values[4:13], np.float64).reshape(3, 3),
                np.array(values[13:16], np.float64),
            )
        )
    pairs = [(index[a], index[b]) for a, b, *_ in _rows(folder / "pairs.txt") if a in index and b in index]
    return images, pairs


def load_megadepth(root: str | Path) -> tuple[list[PosedImage], list[tuple[int, int]]]:
    """Every ``<root>/train/<scene>/dense*/aligned`` folder of the CAPS layout, pairs re-indexed into one list."""
    images: list[PosedImage] = []
    pairs: list[tuple[int, int]] = []
    folders = sorted(Path(root).glob("train/*/dense*/aligned"))
    if not folders:
        raise FileNotFoundError(f"no train/<scene>/dense*/aligned folders under {root}")
    for folder in folders:
        scene_images, scene_pairs = load_megadepth_scene(folder)
        pairs += [(i + len(images), j + len(images)) for i, j in scene_pairs]
        images += scene_images
    return images, pairs


def nearby_pairs(count: int, gaps: tuple[int, ...] = (1, 2)) -> list[tuple[int, int]]:
    """Index pairs ``(i, i + g)`` for each gap: neighbours in a sequence of ``count`` images."""
    return [(i, i + g) for g in gaps for i in range(count - g)]


def resized_intrinsics(k: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
    """Intrinsics after resizing by ``(scale_x, scale_y)`` under the pixel-centre convention."""
    scaled = k.copy()
    scaled[0] *= scale_x
    scaled[1] *= scale_y
    scaled[0, 2] = (k[0, 2] + 0.5) * scale_x - 0.5
    scaled[1, 2] = (k[1, 2] + 0.5) * scale_y - 0.5
    return scaled


def load_posed_image(image: PosedImage, size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 image (undistorted, resized to ``size = (W, H)`` if given) and its intrinsics."""
    pixels = cv2.imread(str(image.path), cv2.IMREAD_COLOR)
    if pixels is None:
        raise OSError(f"cannot read image {image.path}")
    pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    if image.distortion is not None:
        pixels = cv2.undistort(pixels, image.k, image.distortion)
    k = image.k
    if size is not None:
        height, width = pixels.shape[:2]
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
        k = resized_intrinsics(k, size[0] / width, size[1] / height)
    return pixels, k


def posed_pair(first: PosedImage, second: PosedImage, size: tuple[int, int] | None = None) -> PosedPair:
    """A `PosedPair` of two real images (no depth or visibility)."""
    image1, k1 = load_posed_image(first, size)
    image2, k2 = load_posed_image(second, size)
    rotation, translation = relative_pose(first.rotation, first.translation, second.rotation, second.translation)
    return PosedPair(image1, image2, k1, k2, rotation, translation)

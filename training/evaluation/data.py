"""Evaluation data: homography sequences (HPatches and Oxford layouts) and posed image sets.

A sequence is a folder with six images of one planar scene, ``1.ppm`` .. ``6.ppm`` (HPatches) or
``img1.png`` .. ``img6.png`` (Oxford), and ground-truth homographies ``H_1_N`` (HPatches) or ``H1toNp``
(Oxford): 3x3 text matrices that map pixel ``(x, y)`` of image 1 to image N, with pixel centres at
integer coordinates, the same convention as `Features.keypoints`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..data.posed import load_kapture, load_megadepth, load_strecha, nearby_pairs

# Sequences not named i_* / v_* by HPatches category. Oxford affine: only leuven changes the light; blur (bikes,
# trees) and JPEG (ubc) keep the geometry-changing "v" label that the Oxford names carry in the literature. The
# A-KAZE Iguazu set (one view, Gaussian noise) changes no geometry, like an illumination sequence.
SEQUENCE_CATEGORIES: dict[str, str] = {
    "akaze_iguazu_noise": "i",
    "bark": "v",
    "bikes": "v",
    "boat": "v",
    "graf": "v",
    "leuven": "i",
    "trees": "v",
    "ubc": "v",
    "wall": "v",
}


CATEGORY_NAMES: dict[str, str] = {"i": "illumination", "v": "viewpoint"}


_IMAGE_NAME = re.compile(r"^(?:img)?([1-9][0-9]*)\.(?:ppm|pgm|png|jpe?g)$", re.IGNORECASE)


_HOMOGRAPHY_NAME = re.compile(r"^(?:H_1_([1-9][0-9]*)|H1to([1-9][0-9]*)p)$")


@dataclass(frozen=True)
class HomographyPair:
    """Image N of a sequence and the ground-truth homography mapping image-1 pixels to it."""

    index: int
    image_path: Path
    homography: np.ndarray


@dataclass(frozen=True)
class HomographySequence:
    """One sequence: its name, category (``"i"`` or ``"v"``), reference image 1 and pairs (1, N)."""

    name: str
    category: str
    reference_path: Path
    pairs: tuple[HomographyPair, ...]


def sequence_category(name: str, categories: Mapping[str, str] = SEQUENCE_CATEGORIES) -> str:
    """``"i"`` or ``"v"`` for a sequence: from ``categories``, else the HPatches ``i_`` / ``v_`` prefix."""
    category = categories.get(name)
    if category is None and name[:2] in ("i_", "v_"):
        category = name[0]
    if category not in CATEGORY_NAMES:
        hint = f"name it i_* / v_* or pass categories={{{name!r}: 'i' or 'v'}}"
        raise ValueError(f"no category for sequence {name!r}: {hint}")
    return category


def load_image(path: str | Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB image (grey files are expanded to three channels)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_homography(path: str | Path) -> np.ndarray:
    """``(3, 3)`` float64 homography from a whitespace-separated text file."""
    matrix = np.loadtxt(path, dtype=np.float64)
    if matrix.shape != (3, 3) or not np.all(np.isfinite(matrix)):
        raise ValueError(f"{path}: expected a finite 3x3 matrix, got shape {matrix.shape}")
    return matrix


def _numbered_files(folder: Path) -> tuple[dict[int, Path], dict[int, Path]]:
    """Images and homography files of a folder, keyed by their image number."""
    images: dict[int, Path] = {}
    homographies: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        image_match = _IMAGE_NAME.match(path.name)
        h_match = _HOMOGRAPHY_NAME.match(path.name)
        if image_match:
            found, index = images, int(image_match.group(1))
        elif h_match:
            found, index = homographies, int(h_match.group(1) or h_match.group(2))
        else:
            continue
        if index in found:
            raise ValueError(f"{folder}: both {found[index].name} and {path.name} claim number {index}")
        found[index] = path
    return images, homographies


def load_sequence(folder: str | Path, categories: Mapping[str, str] = SEQUENCE_CATEGORIES) -> HomographySequence:
    """Read one sequence folder; raise ``ValueError`` if images and homography files do not pair up."""
    folder = Path(folder)
    images, homographies = _numbered_files(folder)
    if 1 not in images:
        raise ValueError(f"{folder}: no reference image (1.ppm or img1.png style)")
    if 1 in homographies:  # the A-KAZE sets ship an identity H1to1p; anything else is a mislabelled file
        if not np.allclose(load_homography(homographies[1]), np.eye(3), rtol=0, atol=1e-9):
            raise ValueError(f"{folder}: {homographies[1].name} maps image 1 to itself but is not the identity")
        del homographies[1]
    targets = sorted(set(images) - {1})
    if not targets or targets != sorted(homographies):
        raise ValueError(
            f"{folder}: images {sorted(images)} and homographies {sorted(homographies)} are not pairs (1, N)"
        )
    pairs = tuple(HomographyPair(n, images[n], load_homography(homographies[n])) for n in targets)
    return HomographySequence(folder.name, sequence_category(folder.name, categories), images[1], pairs)


def _holds_images(folder: Path) -> bool:
    return any(_IMAGE_NAME.match(f.name) for f in folder.iterdir() if f.is_file())


def load_sequences(
    root: str | Path,
    categories: Mapping[str, str] = SEQUENCE_CATEGORIES,
    names: Iterable[str] | None = None,
) -> list[HomographySequence]:
    """Every sequence folder under ``root`` (sorted by name), or only those in ``names``; ``root`` itself when it
    is one sequence folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no sequence folder at {root}")
    # A folder is a sequence when it holds numbered images; anything else under root is not ours to judge.
    if _holds_images(root):
        folders = {root.name: root}
    else:
        folders = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and _holds_images(p)}
    if names is not None:
        wanted = list(names)
        missing = sorted(set(wanted) - set(folders))
        if missing:
            raise FileNotFoundError(f"sequences {missing} not found under {root}")
        folders = {name: folders[name] for name in wanted}
    if not folders:
        raise FileNotFoundError(f"no homography sequences under {root}")
    return [load_sequence(folder, categories) for folder in folders.values()]


def load_posed_set(format: str, path: str | Path) -> tuple[list[Any], list[tuple[int, int]]]:
    """Images and pairs of a posed set: ``strecha`` / ``kapture`` pair neighbours at gaps 1 and 2."""
    if format == "megadepth":
        return load_megadepth(path)
    loaders = {"strecha": load_strecha, "kapture": load_kapture}
    if format not in loaders:
        raise ValueError(f"unknown posed-set format {format!r}; known: megadepth, {', '.join(loaders)}")
    images = loaders[format](path)
    return images, nearby_pairs(len(images), (1, 2))

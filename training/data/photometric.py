"""Procedural textures and photometric augmentation (per view, so the two images of a pair differ)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def procedural_texture(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """``(H, W, 3)`` uint8: multi-scale noise with random shapes and lines drawn over it."""
    height, width = size
    image = np.zeros((height, width), np.float32)
    for octave in range(1, 6):  # value noise: upsampled random grids, finer octaves weaker
        cells = 2**octave
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        image += cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC) / octave
    image = (image - image.min()) / max(float(np.ptp(image)), 1e-6) * 255
    canvas = np.repeat(image[..., None], 3, axis=2).astype(np.uint8)
    for _ in range(rng.integers(10, 40)):
        colour = tuple(int(x) for x in rng.integers(0, 256, size=3))
        x, y = (int(a) for a in rng.integers(0, (width, height)))
        r = int(rng.integers(3, max(width, height) // 6))
        kind = rng.integers(3)
        if kind == 0:
            cv2.circle(canvas, (x, y), r, colour, -1 if rng.random() < 0.7 else 2)
        elif kind == 1:
            cv2.rectangle(canvas, (x, y), (x + r, y + int(rng.integers(3, r + 4))), colour, -1)
        else:
            x2, y2 = (int(a) for a in rng.integers(0, (width, height)))
            cv2.line(canvas, (x, y), (x2, y2), colour, int(rng.integers(1, 5)))
    return canvas


@dataclass(frozen=True)
class PhotometricConfig:
    """Ranges of the per-view photometric changes (CAPS's code uses ColorJitter 1 / 1 / 1 / 0.4)."""

    brightness: float = 0.3
    contrast: float = 0.4
    gamma: float = 0.6  # gamma drawn as exp(U(-g, g))
    channel_gain: float = 0.3
    noise: float = 8.0  # max Gaussian noise sigma, grey levels
    blur_probability: float = 0.25
    max_blur: float = 2.5  # max Gaussian blur sigma, pixels


def augment(
    rng: np.random.Generator,
    image: np.ndarray,
    config: PhotometricConfig = PhotometricConfig(),
    keep_colour: bool = False,
) -> np.ndarray:
    """An RGB view after colour, tone, noise and blur changes: grey ``(H, W)`` uint8, or RGB with ``keep_colour``."""
    view = image.astype(np.float32) / 255
    view *= 1 + rng.uniform(-config.channel_gain, config.channel_gain, size=3).astype(np.float32)
    view = np.clip(view, 0, 1)
    if not keep_colour:
        view = cv2.cvtColor(view, cv2.COLOR_RGB2GRAY)
    view = view ** np.exp(rng.uniform(-config.gamma, config.gamma))
    mean = float(view.mean())
    view = (view - mean) * (1 + rng.uniform(-config.contrast, config.contrast)) + mean
    view += rng.uniform(-config.brightness, config.brightness) * 0.5
    if rng.random() < config.blur_probability:
        view = cv2.GaussianBlur(view, (0, 0), rng.uniform(0.5, config.max_blur))
    view += rng.normal(0, rng.uniform(0, config.noise) / 255, size=view.shape).astype(np.float32)
    return (np.clip(view, 0, 1) * 255 + 0.5).astype(np.uint8)

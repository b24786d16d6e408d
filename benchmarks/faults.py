"""Fault injection for tests and the soak benchmark: a model that crashes or hangs its worker thread on command.

It can never be served by accident: it lives under ``benchmarks/`` (outside the installed package and the
Docker build context) and exists only in a server started from the repository root with
``FEATURESERVE_PLUGINS='["benchmarks.faults:register"]'`` that also lists ``faulty`` in ``FEATURESERVE_MODELS``;
registering it logs a warning.

The command is the image's top-left pixel (its value in a grey image, its red value in an RGB one):

- `CRASH` (251): the worker thread dies: ``SystemExit`` escapes the model call, as when native code or a
  library ends a thread.
- `HANG` (252): the call blocks (for `HANG_SECONDS`, far past any test's batch timeout), as a deadlocked
  or spinning model would.
- `SLOW` (250): the call sleeps ``pixel (0, 1) x 10 ms`` first, then answers.
- `OUT_OF_MEMORY` (253): the call raises torch's ``OutOfMemoryError``, as a GPU batch too large for the
  device's memory does.
- anything else: ORB features, a real and deterministic answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import numpy as np
import torch

from featureserve.models import Features, KeypointOptions
from featureserve.models.classical import ORB

SLOW, CRASH, HANG, OUT_OF_MEMORY = 250, 251, 252, 253
HANG_SECONDS = 600.0
_never = threading.Event()


def command(image: np.ndarray) -> int:
    """The command an image carries: its top-left grey or red value."""
    return int(image[0, 0] if image.ndim == 2 else image[0, 0, 0])


def with_command(image: np.ndarray, value: int, argument: int = 0) -> np.ndarray:
    """A copy of ``image`` carrying ``value`` (and ``argument`` in the next pixel, for `SLOW`)."""
    marked = image.copy()
    marked[0, 0] = value
    marked[0, 1] = argument
    return marked


class FaultyModel(ORB):
    """ORB that obeys the commands above, checked on the worker thread before any work."""

    name = "faulty"
    description = "Test-only fault injection model (benchmarks/faults.py); never serve it."

    def _obey(self, images: Sequence[np.ndarray]) -> None:
        for image in images:
            order = command(image)
            if order == CRASH:
                raise SystemExit("injected crash (benchmarks/faults.py)")
            if order == HANG:
                _never.wait(HANG_SECONDS)
            if order == SLOW:
                time.sleep(int(image[0, 1] if image.ndim == 2 else image[0, 1, 0]) / 100.0)
            if order == OUT_OF_MEMORY:
                raise torch.OutOfMemoryError("injected: CUDA out of memory (benchmarks/faults.py)")

    def extract(self, images: Sequence[np.ndarray], options: Sequence[KeypointOptions]) -> list[Features]:
        """ORB features, after obeying the images' commands."""
        self._obey(images)
        return super().extract(images, options)

    def detect(self, images: Sequence[np.ndarray], options: Sequence[KeypointOptions]) -> list[Features]:
        """ORB keypoints, after obeying the images' commands."""
        self._obey(images)
        return super().detect(images, options)

    def describe(self, images: Sequence[np.ndarray], keypoints: Sequence[np.ndarray]) -> list[Features]:
        """ORB descriptors, after obeying the images' commands."""
        self._obey(images)
        return super().describe(images, keypoints)


def register() -> None:
    """The plugin entry point (``benchmarks.faults:register``): make ``faulty`` loadable by name."""
    from featureserve.models.registry import MODELS

    MODELS[FaultyModel.name] = FaultyModel
    logging.getLogger(__name__).warning("test-only fault injection model %r registered", FaultyModel.name)

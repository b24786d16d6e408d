"""`LocalClient`: the clients' methods and results with the service running in this process, no server.

What the CLI uses unless it is given ``--url`` or ``--grpc``. It runs the service's own worker pool and
operations layer (`featureserve.service.operations`) on a private event loop, so options, limits, errors
and results are the ones a server with the same settings gives. Models load on first use; ``timeout``
(seconds) is the request deadline, as for the network clients. Importing this module imports torch and
the models; ``featureserve.client`` does not.

Example:
    >>> client = LocalClient()
    >>> result = client.match("a.jpg", "b.jpg", model="orb", geometry="homography", draw=True)
    >>> result.drawing[:4]  # PNG bytes of the picture
    b'\\x89PNG'
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .client.options import DRAW_OPTION, EXTRACT_OPTIONS, MATCH_OPTIONS, check_options
from .client.results import (
    DescriptorInfo,
    FeatureSet,
    GeometryResult,
    ImageInput,
    MatchResult,
    ModelCard,
    ModelList,
    inlier_ratio,
)
from .models import FeatureModel, Features, available_models, check_image
from .models import ModelCard as ServedCard
from .service.contract import ExtractOptions, MatchOptions, validate_options
from .service.errors import InvalidInput, ModelNotFound
from .service.metrics import ServiceMetrics
from .service.operations import Matched, Operations
from .service.settings import Settings
from .service.workers import WorkerPool

T = TypeVar("T")


def card(served: ServedCard) -> ModelCard:
    """A model's card in the clients' shape."""
    spec = served.descriptor
    return ModelCard(
        name=served.name,
        version=served.version,
        method=served.method,
        descriptor=DescriptorInfo(spec.kind, spec.dim, spec.metric),
        keypoints=served.keypoints,
        licence=served.licence,
        description=served.description,
        details=dict(served.details),
    )


def feature_set(features: Features, model: str, include_descriptors: bool = True, dtype: str = "float32") -> FeatureSet:
    """`Features` as the clients' `FeatureSet` (float descriptors as ``dtype``, as the service sends them)."""
    descriptors = features.descriptors if include_descriptors else None
    if descriptors is not None and descriptors.dtype != np.uint8:
        descriptors = descriptors.astype(np.float16 if dtype == "float16" else np.float32)
    spec = features.descriptor
    return FeatureSet(
        keypoints=features.keypoints,
        scores=features.scores,
        descriptors=descriptors,
        descriptor={"kind": spec.kind, "dim": spec.dim, "metric": spec.metric},
        image_size=features.image_size,
        model=model,
    )


class LocalClient:
    """In-process client: ``list_models``, ``extract``, ``extract_batch``, ``match`` as the network clients.

    Settings (default model, keypoint limits, device, threads, image limits) are the service's
    ``FEATURESERVE_*`` variables, read once here; models are not warmed up (``warmup`` defaults to false).
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings(warmup=False)
        self.ops = Operations(WorkerPool(self.settings, ServiceMetrics()))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="featureserve-local", daemon=True)
        self._thread.start()
        self._closed = False

    def __enter__(self) -> LocalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the models' workers and the private event loop."""
        if self._closed:
            return
        self._closed = True
        self._run(self.ops.pool.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    def _deadline(self, timeout: float | None) -> float:
        return self.ops.deadline(None if timeout is None else timeout * 1000.0)

    def model(self, name: str | None) -> FeatureModel:
        """The model ``name`` (the default when ``None``), loaded on first use; raises `ModelNotFound`."""
        name = name or self.settings.default_model
        if name not in self.ops.pool.workers:
            if name not in available_models():
                raise ModelNotFound(f"model {name!r} does not exist; available: {', '.join(available_models())}")
            self._run(self.ops.pool.add_model(name))
        return self.ops.pool.workers[name].model

    def decode(self, image: ImageInput) -> np.ndarray:
        """An image input as a uint8 grey or RGB array (EXIF orientation applied, as the service does)."""
        if isinstance(image, np.ndarray):
            try:
                check_image(image)
            except ValueError as error:
                raise InvalidInput(str(error)) from None
            return image
        return self._run(self.ops.decode(self._read(image)))

    def _input(self, image: ImageInput) -> bytes | np.ndarray:
        """Arrays checked now, encoded images as bytes (decoded by the operation under the service's limits)."""
        return self.decode(image) if isinstance(image, np.ndarray) else self._read(image)

    @staticmethod
    def _read(image: bytes | str | Path) -> bytes:
        return Path(image).read_bytes() if isinstance(image, str | Path) else bytes(image)

    def _options(self, schema: type[ExtractOptions], options: dict[str, Any], allowed: frozenset[str]) -> Any:
        parsed = validate_options(schema, check_options(options, allowed))
        self.model(parsed.model)
        return parsed

    def list_models(self, timeout: float | None = None) -> ModelList:
        """Every model this installation can run, with its card (loads each model once)."""
        return ModelList(self.settings.default_model, [card(self.model(name).card) for name in available_models()])

    def extract(self, image: ImageInput, timeout: float | None = None, **options: Any) -> FeatureSet:
        """Features of one image."""
        parsed = self._options(ExtractOptions, options, EXTRACT_OPTIONS)
        plan = self.ops.plan_extract(parsed)
        features = self._run(self.ops.extract(plan, self._input(image), self._deadline(timeout)))
        return feature_set(features, plan.model, parsed.include_descriptors, parsed.descriptor_dtype)

    def extract_batch(
        self, images: Sequence[ImageInput], timeout: float | None = None, **options: Any
    ) -> list[FeatureSet]:
        """Features of several images, in order (they may share a batch)."""
        parsed = self._options(ExtractOptions, options, EXTRACT_OPTIONS)
        plan = self.ops.plan_extract(parsed)
        inputs = [self._input(image) for image in images]
        features = self._run(self.ops.extract_batch(plan, inputs, self._deadline(timeout)))
        return [feature_set(f, plan.model, parsed.include_descriptors, parsed.descriptor_dtype) for f in features]

    def match(
        self, image0: ImageInput, image1: ImageInput, timeout: float | None = None, **options: Any
    ) -> MatchResult:
        """Matches of two images, their verification with ``geometry=...``, and with ``draw=True`` a PNG."""
        draw = bool(options.pop(DRAW_OPTION, False))
        parsed = self._options(MatchOptions, options, EXTRACT_OPTIONS | MATCH_OPTIONS)
        plan = self.ops.plan_match(parsed)
        # Decoded once, for the model and for the picture.
        arrays = [self.decode(image0), self.decode(image1)]
        matched = self._run(self.ops.match(plan, arrays[0], arrays[1], self._deadline(timeout)))
        drawing = self._run(self.ops.draw(arrays[0], arrays[1], matched, plan.model or "")) if draw else None
        return self._result(plan.model or "", matched, parsed, drawing)

    @staticmethod
    def _result(model: str, matched: Matched, options: MatchOptions, drawing: bytes | None) -> MatchResult:
        features, result = matched.features, matched.result
        verification = result.geometry
        geometry = None
        inliers = None
        if verification is not None:
            inliers = np.asarray(verification.inliers, bool)
            geometry = GeometryResult(
                geometry=verification.geometry,
                matrix=verification.matrix,
                num_inliers=verification.num_inliers,
                inlier_ratio=inlier_ratio(verification.num_inliers, len(result.matches)),
                rotation=verification.rotation,
                translation=verification.translation,
                message=verification.message or "",
            )
        sets = [feature_set(f, model, True, options.descriptor_dtype) for f in features]
        return MatchResult(
            model=model,
            matches=result.matches.indices.astype(np.int32),
            points0=result.points0,
            points1=result.points1,
            distances=result.matches.distances.astype(np.float32),
            inliers=inliers,
            geometry=geometry,
            features0=sets[0] if options.include_features else None,
            features1=sets[1] if options.include_features else None,
            num_keypoints0=len(features[0]),
            num_keypoints1=len(features[1]),
            drawing=drawing,
        )

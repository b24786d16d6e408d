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
import weakref
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .client.options import DRAW_OPTION, DRAWING_OPTIONS, EXTRACT_OPTIONS, MATCH_OPTIONS, check_options
from .client.results import (
    DescriptorInfo,
    FeatureSet,
    GeometryResult,
    ImageInput,
    MatchInput,
    MatchResult,
    ModelCard,
    ModelList,
    inlier_ratio,
)
from .models import FeatureModel, Features, PairResult, available_models, check_image
from .models import ModelCard as ServedCard
from .models import features as model_features
from .service.contract import ExtractOptions, MatchOptions, features_from_arrays, validate_options
from .service.errors import InvalidInput, ModelNotFound
from .service.metrics import ServiceMetrics
from .service.operations import Operations
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
        sizes=features.sizes,
        angles=features.angles,
    )


def _shut_down(loop: asyncio.AbstractEventLoop, thread: threading.Thread, pool: WorkerPool) -> None:
    asyncio.run_coroutine_threadsafe(pool.stop(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


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
        # Also run at exit for a client never closed, so its workers stop instead of being cut off.
        self._finalizer = weakref.finalize(self, _shut_down, self._loop, self._thread, self.ops.pool)

    def __enter__(self) -> LocalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the models' workers and the private event loop (once)."""
        self._finalizer()

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

    def decode(self, image: ImageInput, name: str = "") -> np.ndarray:
        """An image input as a uint8 grey or RGB array (EXIF orientation applied, as the service does); errors
        name the input ``name`` if given."""
        if isinstance(image, np.ndarray):
            try:
                check_image(image)
            except ValueError as error:
                raise InvalidInput(f"{name}: {error}" if name else str(error)) from None
            return image
        return self._run(self.ops.decode(self._read(image), name))

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
        features = self._run(self.ops.extract(plan, self._input(image), self._deadline(timeout), "image"))
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

    def _side(self, value: MatchInput, name: str) -> bytes | np.ndarray | Features:
        """An image as bytes or a checked array, or a client `FeatureSet` as checked `Features`."""
        if not isinstance(value, FeatureSet):
            return self._input(value)
        descriptors, _ = value.wire_descriptors()
        return features_from_arrays(
            name,
            np.asarray(value.keypoints, np.float32).reshape(-1, 2),
            np.asarray(value.scores, np.float32).reshape(-1),
            descriptors,
            model_features.DescriptorInfo(**value.descriptor),
            value.image_size,
            sizes=None if value.sizes is None else np.asarray(value.sizes, np.float32).reshape(-1),
            angles=None if value.angles is None else np.asarray(value.angles, np.float32).reshape(-1),
        )

    def match(
        self, image0: MatchInput, image1: MatchInput, timeout: float | None = None, **options: Any
    ) -> MatchResult:
        """Matches of two images (or feature sets from `extract`), their verification with ``geometry=...``, and
        with ``draw=True`` a PNG."""
        draw = bool(options.pop(DRAW_OPTION, False))
        parsed = self._options(MatchOptions, options, EXTRACT_OPTIONS | MATCH_OPTIONS | DRAWING_OPTIONS)
        uploaded = [isinstance(value, FeatureSet) for value in (image0, image1)]
        plan = self.ops.plan_match(parsed, extract=not all(uploaded))
        deadline = self._deadline(timeout)
        if draw and any(uploaded):
            raise InvalidInput("draw needs both images (features are matched, images drawn)")
        sides = self._side(image0, "features0"), self._side(image1, "features1")
        matched = self._run(self.ops.match(plan, sides[0], sides[1], deadline))
        drawing = None
        if draw:
            # Drawn on the images decoded in colour; the model decoded its own copies (grey JPEGs for grey models).
            images = [self.decode(image0, "image0"), self.decode(image1, "image1")]
            drawing = self._run(self.ops.draw(images[0], images[1], matched, plan.model or "", parsed))
        return self._result(plan.model or "", matched.features, matched.result, parsed, drawing)

    def match_pairs(
        self, inputs: Sequence[MatchInput], pairs: Sequence[Sequence[int]], timeout: float | None = None, **options: Any
    ) -> list[MatchResult]:
        """One `MatchResult` per index pair ``(i, j)`` of ``inputs`` (images or feature sets), each extracted once."""
        parsed = self._options(MatchOptions, options, EXTRACT_OPTIONS | MATCH_OPTIONS)
        plan = self.ops.plan_match(parsed, extract=not all(isinstance(value, FeatureSet) for value in inputs))
        sides = [self._side(value, f"features[{i}]") for i, value in enumerate(inputs)]
        matched = self._run(self.ops.match_pairs(plan, sides, [list(pair) for pair in pairs], self._deadline(timeout)))
        model = plan.model or ""
        return [self._result(model, matched.sides(k), result, parsed, None) for k, result in enumerate(matched.results)]

    @staticmethod
    def _result(
        model: str,
        features: tuple[Features, Features],
        result: PairResult,
        options: MatchOptions,
        drawing: bytes | None,
    ) -> MatchResult:
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

"""`LocalClient`: the clients' methods and results with the models running in this process, no server.

What the CLI uses unless it is given ``--url`` or ``--grpc``. Options are validated by the service's own
schemas, images decoded by the service's decoder and pairs matched by the service's matching code, so a
result equals the one a server with the same settings returns. Models load on first use. Importing this
module imports torch and the models; ``featureserve.client`` itself does not.

Example:
    >>> client = LocalClient()
    >>> result = client.match("a.jpg", "b.jpg", model="orb", geometry="homography", draw=True)
    >>> result.drawing[:4]  # PNG bytes of the picture
    b'\\x89PNG'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from ..draw import match_picture
from ..models import FeatureModel, Features, available_models, check_image, load_model_with_knobs
from ..models import ModelCard as ServedCard
from ..service.api.payload import describe_validation_error
from ..service.api.schemas import ExtractOptions, MatchOptions
from ..service.errors import InvalidInput, InvalidOption, ModelNotFound
from ..service.settings import Settings
from ..service.workers import PairResult
from ..service.workers.decoding import DecodeLimits, decode_image
from ..service.workers.pairing import match_pair
from ..service.workers.pool import resolve_device
from .options import DRAW_OPTION, EXTRACT_OPTIONS, MATCH_OPTIONS, check_options
from .results import DescriptorInfo, FeatureSet, Geometry, ImageInput, MatchResult, ModelCard, ModelList, inlier_ratio


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
    ``FEATURESERVE_*`` variables, read once here. ``timeout`` is accepted for the same call shape and ignored.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.limits = DecodeLimits(self.settings.max_image_bytes, self.settings.max_image_pixels)
        self.device = resolve_device(self.settings.device)
        self._models: dict[str, FeatureModel] = {}

    def __enter__(self) -> LocalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Forget the loaded models."""
        self._models.clear()

    def model(self, name: str | None) -> FeatureModel:
        """The model ``name`` (the default model when None), loaded on first use; raises `ModelNotFound`."""
        name = name or self.settings.default_model
        if name not in self._models:
            if name not in available_models():
                raise ModelNotFound(f"model {name!r} does not exist; available: {', '.join(available_models())}")
            self._models[name] = load_model_with_knobs(
                name, self.settings.model_conf.get(name), device=self.device, num_threads=self.settings.cpu_threads
            )
        return self._models[name]

    def decode(self, image: ImageInput) -> np.ndarray:
        """An image input as a uint8 grey or RGB array (EXIF orientation applied, as the service does)."""
        if isinstance(image, np.ndarray):
            try:
                check_image(image)
            except ValueError as error:
                raise InvalidInput(str(error)) from None
            return image
        data = Path(image).read_bytes() if isinstance(image, str | Path) else bytes(image)
        return decode_image(data, self.limits)

    def _options(self, schema: type[ExtractOptions], options: dict[str, Any], allowed: frozenset[str]) -> Any:
        try:
            parsed = schema.model_validate(check_options(options, allowed))
        except ValidationError as error:
            raise InvalidOption(describe_validation_error(error)) from None
        limit = self.settings.max_keypoints_limit
        if parsed.max_keypoints is not None and parsed.max_keypoints > limit:
            raise InvalidOption(f"max_keypoints: must be at most {limit}, got {parsed.max_keypoints}")
        return parsed

    def list_models(self, timeout: float | None = None) -> ModelList:
        """Every model this installation can run, with its card (loads each model once)."""
        return ModelList(self.settings.default_model, [card(self.model(name).card) for name in available_models()])

    def extract(self, image: ImageInput, timeout: float | None = None, **options: Any) -> FeatureSet:
        """Features of one image."""
        return self.extract_batch([image], timeout, **options)[0]

    def extract_batch(
        self, images: Sequence[ImageInput], timeout: float | None = None, **options: Any
    ) -> list[FeatureSet]:
        """Features of several images, in order (one model call for the batch)."""
        parsed = self._options(ExtractOptions, options, EXTRACT_OPTIONS)
        model = self.model(parsed.model)
        arrays = [self.decode(image) for image in images]
        keypoint_options = [parsed.keypoint_options(self.settings.default_max_keypoints)] * len(arrays)
        run = model.extract if parsed.include_descriptors else model.detect
        features = run(arrays, keypoint_options)
        return [feature_set(f, model.name, parsed.include_descriptors, parsed.descriptor_dtype) for f in features]

    def match(
        self, image0: ImageInput, image1: ImageInput, timeout: float | None = None, **options: Any
    ) -> MatchResult:
        """Matches of two images, their verification with ``geometry=...``, and with ``draw=True`` a PNG."""
        draw = bool(options.pop(DRAW_OPTION, False))
        parsed = self._options(MatchOptions, options, EXTRACT_OPTIONS | MATCH_OPTIONS)
        pair_options = parsed.pair_options()
        model = self.model(parsed.model)
        arrays = [self.decode(image0), self.decode(image1)]
        keypoint_options = parsed.keypoint_options(self.settings.default_max_keypoints)
        features = model.extract(arrays, [keypoint_options] * 2)
        try:
            result = match_pair(features[0], features[1], pair_options)
        except ValueError as error:
            raise InvalidInput(str(error)) from None
        return self._result(model.name, features, arrays, result, parsed, draw)

    def _result(
        self,
        model: str,
        features: list[Features],
        images: list[np.ndarray],
        result: PairResult,
        options: MatchOptions,
        draw: bool,
    ) -> MatchResult:
        verification = result.verification
        geometry = None
        inliers = None
        if verification is not None:
            inliers = np.asarray(verification.inliers, bool)
            geometry = Geometry(
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
            drawing=match_picture(*images, result.points0, result.points1, inliers, model) if draw else None,
        )

"""`Operations`: extract, describe and match, with every check and limit in one place.

The REST routers, the gRPC servicer, StreamFrames sessions and the in-process `LocalClient` call only
this layer; each transport parses its own wire format into the shared options (`service.contract`) and
encodes the results back. An operation runs in two steps: ``plan_*`` checks the options and resolves the
model (so a transport can label its metrics before any work), then the ``async`` call does the work on the
worker pool.

Example:
    >>> ops = Operations(pool)
    >>> plan = ops.plan_match(MatchOptions(model="orb", geometry="homography"))
    >>> # inside the pool's event loop:
    >>> # matched = await ops.match(plan, png0, png1, ops.deadline(None))
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..draw import match_picture
from ..models import Features, KeypointOptions, PairOptions, PairResult, match_pair
from .contract import ExtractOptions, MatchOptions
from .errors import FeatureServeError, InvalidInput, InvalidOption, PayloadTooLarge
from .metrics import ServiceMetrics
from .settings import Settings
from .workers import WorkerPool
from .workers.batcher import JobKind, Priority

ImageInput = bytes | np.ndarray


@contextlib.contextmanager
def naming(name: str) -> Iterator[None]:
    """Service errors raised inside say which input they concern: ``name: message`` (unchanged when empty)."""
    try:
        yield
    except FeatureServeError as error:
        if name:
            error.message = f"{name}: {error.message}"
        raise


def raise_first(outcomes: Sequence[object], names: Sequence[str]) -> None:
    """Raise the first exception among gathered ``outcomes``, naming its input."""
    for name, outcome in zip(names, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            with naming(name):
                raise outcome


# Widest descriptor row an uploaded feature set may have (values per row): matching cost grows with it.
MAX_DESCRIPTOR_WIDTH = 4096


@dataclass(frozen=True)
class ExtractPlan:
    """A checked extraction: which model, detection alone or with descriptors, which keypoints to keep, and
    its place in the model's queue."""

    model: str
    kind: JobKind
    keypoints: KeypointOptions
    priority: Priority = "bulk"


@dataclass(frozen=True)
class MatchPlan:
    """A checked match: the extraction of image sides (``None`` when both sides are feature sets) and the
    matching and verification options."""

    extract: ExtractPlan | None
    pair: PairOptions

    @property
    def model(self) -> str | None:
        """The model that extracts image sides, or ``None``."""
        return None if self.extract is None else self.extract.model


@dataclass
class MatchedPairs:
    """Pairs of one batch: the features of each side (``None`` for sides no pair names), the checked index
    pairs, and each pair's result, in the order the pairs were given."""

    features: list[Features | None]
    pairs: list[tuple[int, int]]
    results: list[PairResult]

    def sides(self, k: int) -> tuple[Features, Features]:
        """Both sides' features of pair ``k``."""
        i, j = self.pairs[k]
        first, second = self.features[i], self.features[j]
        assert first is not None and second is not None  # every side a pair names was extracted
        return first, second


@dataclass
class Matched:
    """A matched pair: both sides' features, the matches and their verification, and the time of each phase."""

    features: tuple[Features, Features]
    result: PairResult
    extract_s: float
    match_s: float


class Operations:
    """The service's operations over one `WorkerPool` (see the module docstring)."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    @property
    def settings(self) -> Settings:
        """The pool's settings (limits and defaults)."""
        return self.pool.settings

    @property
    def metrics(self) -> ServiceMetrics:
        """The pool's metrics."""
        return self.pool.metrics

    def deadline(self, timeout_ms: float | None) -> float:
        """Monotonic deadline ``timeout_ms`` from now (the configured default when ``None``)."""
        return self.pool.deadline_from(timeout_ms)

    def check_keypoint_count(self, count: int | None, name: str = "max_keypoints") -> None:
        """Refuse more than ``max_keypoints_limit`` keypoints asked for or sent, with `InvalidOption`."""
        limit = self.settings.max_keypoints_limit
        if count is not None and count > limit:
            raise InvalidOption(f"{name}: must be at most {limit}, got {count}")

    def plan_extract(self, options: ExtractOptions, descriptors: bool | None = None) -> ExtractPlan:
        """Check ``options`` and resolve the model; raises `InvalidOption` or `ModelNotFound`.

        ``descriptors`` overrides ``options.include_descriptors`` (matching always needs them); without
        descriptors only detection runs, which is cheaper for every model.
        """
        self.check_keypoint_count(options.max_keypoints)
        model = self.pool.worker(options.model).model.name
        describe = options.include_descriptors if descriptors is None else descriptors
        keypoints = options.keypoint_options(self.settings.default_max_keypoints)
        return ExtractPlan(model, "extract" if describe else "detect", keypoints, options.priority)

    def plan_match(self, options: MatchOptions, extract: bool = True) -> MatchPlan:
        """Check ``options``; ``extract`` is false when both sides will be uploaded feature sets."""
        pair = options.pair_options()
        if not extract:
            self.check_keypoint_count(options.max_keypoints)
            return MatchPlan(None, pair)
        return MatchPlan(self.plan_extract(options, descriptors=True), pair)

    async def decode(self, data: bytes, name: str = "") -> np.ndarray:
        """Decode image bytes under the configured limits (off the event loop); errors name ``name`` if given."""
        with naming(name):
            return await self.pool.decode(data)

    async def extract(self, plan: ExtractPlan, image: ImageInput, deadline: float, name: str = "") -> Features:
        """Features of one image (encoded bytes or a decoded array); errors name the field ``name`` if given."""
        with naming(name):
            if plan.kind == "detect":
                return await self.pool.detect(plan.model, image, plan.keypoints, deadline, plan.priority)
            return await self.pool.extract(plan.model, image, plan.keypoints, deadline, plan.priority)

    async def extract_batch(self, plan: ExtractPlan, images: Sequence[ImageInput], deadline: float) -> list[Features]:
        """Features of each image, in order; the images may share a batch. Errors name ``images[i]``."""
        if not images:
            raise InvalidInput("missing images: send at least one as 'images'")
        limit = self.settings.max_request_images
        if len(images) > limit:
            raise PayloadTooLarge(f"{len(images)} images in one request; the limit is {limit}")
        work = (self.extract(plan, image, deadline) for image in images)
        results = await asyncio.gather(*work, return_exceptions=True)
        raise_first(results, [f"images[{i}]" for i in range(len(results))])
        return list(results)  # type: ignore[arg-type]

    async def describe(self, plan: ExtractPlan, image: ImageInput, keypoints: np.ndarray, deadline: float) -> Features:
        """Descriptors of one image at given ``(N, 2)`` pixel keypoints."""
        if not np.all(np.isfinite(keypoints)):
            raise InvalidInput("keypoints contains non-finite values")
        self.check_keypoint_count(len(keypoints))
        return await self.pool.describe(plan.model, image, np.array(keypoints, np.float32), deadline, plan.priority)

    async def match(
        self, plan: MatchPlan, side0: ImageInput | Features, side1: ImageInput | Features, deadline: float
    ) -> Matched:
        """Match two sides (images to extract, or uploaded feature sets) and verify the matches."""
        started = time.perf_counter()
        outcomes = await asyncio.gather(
            *(self._side(plan, side, deadline) for side in (side0, side1)), return_exceptions=True
        )
        raise_first(outcomes, ["image0", "image1"])
        both: tuple[Features, Features] = (outcomes[0], outcomes[1])  # type: ignore[assignment]
        extracted = time.perf_counter()
        result = await self.match_features(plan.model, both[0], both[1], plan.pair)
        return Matched(both, result, extracted - started, time.perf_counter() - extracted)

    async def _side(self, plan: MatchPlan, side: ImageInput | Features, deadline: float) -> Features:
        """A side's features: an uploaded feature set as it is, an image extracted with the plan's model."""
        if isinstance(side, Features):
            return side
        if plan.extract is None:
            raise InvalidInput("an image side needs a model: plan the match with extract=True")
        return await self.extract(plan.extract, side, deadline)

    async def match_pairs(
        self,
        plan: MatchPlan,
        sides: Sequence[ImageInput | Features],
        pairs: Sequence[Sequence[int]],
        deadline: float,
    ) -> MatchedPairs:
        """Match the given index ``pairs`` of ``sides`` (images or feature sets), each side extracted once.

        hloc's pairs semantics: ``[i, j]`` matches side ``i`` (as image 0) to side ``j`` (as image 1).
        Errors name the side (``images[i]``) or the pair (``pairs[k]``).
        """
        checked = self.check_pairs(len(sides), pairs)
        used = sorted({i for pair in checked for i in pair})

        results = await asyncio.gather(*(self._side(plan, sides[i], deadline) for i in used), return_exceptions=True)
        extracted: dict[int, Features] = {}
        for i, result in zip(used, results, strict=True):  # in order: the first bad image is the one named
            raise_first([result], [f"images[{i}]"])
            self._check_feature_size(f"features[{i}]", result)  # type: ignore[arg-type]
            extracted[i] = result  # type: ignore[assignment]

        async def match(k: int, i: int, j: int) -> PairResult:
            with naming(f"pairs[{k}]"):
                return await self.match_features(plan.model, extracted[i], extracted[j], plan.pair)

        matched = await asyncio.gather(*(match(k, i, j) for k, (i, j) in enumerate(checked)))
        return MatchedPairs([extracted.get(i) for i in range(len(sides))], checked, list(matched))

    def check_pairs(self, count: int, pairs: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
        """``pairs`` as ``(i, j)`` index tuples into ``count`` sides; raises naming the first bad pair."""
        if count > self.settings.max_request_images:
            limit = self.settings.max_request_images
            raise PayloadTooLarge(
                f"{count} images in one request; the limit is {limit} (FEATURESERVE_MAX_REQUEST_IMAGES)"
            )
        if not pairs:
            raise InvalidInput("missing pairs: send a list of index pairs [[i, j], ...] into images")
        if len(pairs) > self.settings.max_request_pairs:
            limit = self.settings.max_request_pairs
            raise PayloadTooLarge(
                f"{len(pairs)} pairs in one request; the limit is {limit} (FEATURESERVE_MAX_REQUEST_PAIRS)"
            )
        checked = []
        for k, pair in enumerate(pairs):
            valid = len(pair) == 2 and all(isinstance(i, int) and not isinstance(i, bool) for i in pair)
            if not valid or not all(0 <= i < count for i in pair):
                raise InvalidInput(f"pairs[{k}] is {list(pair)}; each pair is two indices into the {count} images")
            if pair[0] == pair[1]:
                raise InvalidInput(f"pairs[{k}] matches image {pair[0]} with itself")
            checked.append((int(pair[0]), int(pair[1])))
        return checked

    async def match_features(
        self, model: str | None, features0: Features, features1: Features, options: PairOptions
    ) -> PairResult:
        """Match and verify two feature sets on the CPU threads, recording match and inlier counts.

        Uploaded feature sets are held to the extraction limits: at most ``max_keypoints_limit`` keypoints
        and `MAX_DESCRIPTOR_WIDTH` values per descriptor, so one request cannot buy minutes of matching.
        """
        for name, features in (("features0", features0), ("features1", features1)):
            self._check_feature_size(name, features)
        try:
            result = await self.pool.run_cpu(match_pair, features0, features1, options)
        except ValueError as error:
            raise InvalidInput(str(error)) from None
        label = model or "features"
        self.metrics.matches.labels(label).observe(len(result.matches))
        if result.geometry is not None:
            self.metrics.inliers.labels(label).observe(result.geometry.num_inliers)
        return result

    async def draw(
        self, image0: np.ndarray, image1: np.ndarray, matched: Matched, title: str, options: MatchOptions
    ) -> bytes:
        """A PNG of both images side by side with the matches drawn (inliers green, outliers red)."""
        result = matched.result
        inliers = None if result.geometry is None else result.geometry.inliers
        points = (result.points0, result.points1, inliers, title, options.draw_max_lines, options.draw_outliers)
        return await self.pool.run_cpu(match_picture, image0, image1, *points)

    def _check_feature_size(self, name: str, features: Features) -> None:
        limit = self.settings.max_keypoints_limit
        if len(features) > limit:
            raise PayloadTooLarge(
                f"{name} has {len(features)} keypoints; the limit is {limit}",
                {"keypoints": len(features), "max_keypoints": limit},
            )
        descriptors = features.descriptors
        if descriptors is not None and descriptors.ndim == 2 and descriptors.shape[1] > MAX_DESCRIPTOR_WIDTH:
            raise PayloadTooLarge(
                f"{name}.descriptors rows hold {descriptors.shape[1]} values; the limit is {MAX_DESCRIPTOR_WIDTH}"
            )

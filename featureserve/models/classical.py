"""Classical feature models through OpenCV: ORB, SIFT and AKAZE."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import cv2
import numpy as np

from .base import FeatureModel, check_image, image_size, to_grey
from .cards import ModelCard
from .features import DescriptorInfo, Features, KeypointOptions
from .keypoints import candidate_count, select_keypoints


class OpenCVFeatureModel(FeatureModel):
    """Base for OpenCV ``Feature2D`` models: one image per thread, keypoint selection shared.

    Subclasses write ``_create(max_features)`` (a new, thread-confined OpenCV object) and the card text.
    ``describe`` at given keypoints uses upright keypoints of size ``conf["describe_size"]`` pixels.
    """

    default_conf: ClassVar[dict[str, Any]] = {
        "num_threads": 2,
        "describe_size": 12.0,
        # True: detection keeps one keypoint per location (SIFT gives one per dominant orientation), so the
        # keypoint budget holds distinct locations; for describers that ignore the orientation (caps, hndesc).
        "unique_locations": False,
    }
    method: ClassVar[str]
    licence: ClassVar[str] = "Apache-2.0 (OpenCV)"
    description: ClassVar[str]

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        self._threads = ThreadPoolExecutor(int(self.conf["num_threads"]), thread_name_prefix=self.name)

    @property
    def grey_input(self) -> bool:
        """OpenCV's detectors and descriptors work on the grey image."""
        return True

    @property
    def card(self) -> ModelCard:
        """The model card."""
        return ModelCard(
            name=self.name,
            version=cv2.__version__,
            method=self.method,
            descriptor=self.descriptor,
            keypoints=f"{self.name} detector (OpenCV {cv2.__version__}), top-k by response",
            licence=self.licence,
            description=self.description,
            details={"conf": dict(self.conf)},
        )

    def _create(self, max_features: int) -> cv2.Feature2D:
        raise NotImplementedError

    def extract(self, images: Sequence[np.ndarray], options: Sequence[KeypointOptions]) -> list[Features]:
        """Detect and describe keypoints in each image (images run in parallel threads)."""
        return self._map(self._extract_one, images, options)

    def detect(self, images: Sequence[np.ndarray], options: Sequence[KeypointOptions]) -> list[Features]:
        """Keypoints and scores only (``descriptors`` is ``None``)."""
        return self._map(self._detect_one, images, options)

    def describe(self, images: Sequence[np.ndarray], keypoints: Sequence[np.ndarray]) -> list[Features]:
        """Descriptors at given keypoints (upright, size ``describe_size``); unusable ones are left out."""
        return self._map(self._describe_one, images, keypoints)

    def _map(
        self, function: Callable[[np.ndarray, Any], Features], images: Sequence[np.ndarray], args: Sequence[Any]
    ) -> list[Features]:
        if len(images) == 1:  # a lone image skips the hand-off to another thread
            return [function(images[0], args[0])]
        return list(self._threads.map(function, images, args))

    def _extract_one(self, image: np.ndarray, options: KeypointOptions) -> Features:
        check_image(image)
        grey = to_grey(image)
        algorithm = self._create(candidate_count(options))
        if options.uniform == "none":
            # The detector already keeps the strongest candidates: describe them in the same pass.
            cv_keypoints, descriptors = algorithm.detectAndCompute(grey, None)
            if descriptors is None:  # OpenCV's answer when it found nothing
                return Features.empty(image_size(image), self.descriptor)
            features = self._to_features(image, cv_keypoints, descriptors)
            return features.subset(select_keypoints(features.keypoints, features.scores, features.image_size, options))
        cv_keypoints = self._select(image, algorithm.detect(grey, None), options)
        return self._describe_cv(algorithm, image, grey, cv_keypoints)

    def _detect_one(self, image: np.ndarray, options: KeypointOptions) -> Features:
        check_image(image)
        if self.conf["unique_locations"]:  # every candidate (0: no cap), the strongest one per location
            found = self._create(0).detect(to_grey(image), None)
            cv_keypoints = list({k.pt: k for k in sorted(found, key=lambda k: k.response)}.values())
        else:
            cv_keypoints = self._create(candidate_count(options)).detect(to_grey(image), None)
        return self._to_features(image, self._select(image, cv_keypoints, options), None)

    def _describe_one(self, image: np.ndarray, keypoints: np.ndarray) -> Features:
        check_image(image)
        size = float(self.conf["describe_size"])
        cv_keypoints = [cv2.KeyPoint(float(x), float(y), size, 0.0, 1.0, 0, 0) for x, y in keypoints]
        return self._describe_cv(self._create(0), image, to_grey(image), cv_keypoints)

    def _select(
        self, image: np.ndarray, cv_keypoints: Sequence[cv2.KeyPoint], options: KeypointOptions
    ) -> list[cv2.KeyPoint]:
        candidates = self._to_features(image, cv_keypoints, None)
        keep = select_keypoints(candidates.keypoints, candidates.scores, candidates.image_size, options)
        return [cv_keypoints[i] for i in keep]

    def _describe_cv(
        self, algorithm: cv2.Feature2D, image: np.ndarray, grey: np.ndarray, cv_keypoints: list[cv2.KeyPoint]
    ) -> Features:
        if not cv_keypoints:
            return Features.empty(image_size(image), self.descriptor)
        cv_keypoints, descriptors = algorithm.compute(grey, cv_keypoints)
        if descriptors is None:
            return Features.empty(image_size(image), self.descriptor)
        return self._to_features(image, cv_keypoints, descriptors)

    def _to_features(
        self, image: np.ndarray, cv_keypoints: Sequence[cv2.KeyPoint], descriptors: np.ndarray | None
    ) -> Features:
        size = image_size(image)
        if not cv_keypoints:
            empty = Features.empty(size, self.descriptor)
            if descriptors is None:
                empty.descriptors = None
            return empty
        # One pass over the KeyPoint objects (and OpenCV's own conversion for the points): attribute reads
        # of thousands of Python objects cost as much as ORB's description of them.
        keypoints = cv2.KeyPoint_convert(cv_keypoints).reshape(-1, 2).astype(np.float32, copy=False)
        scores, sizes, angles = np.array([(k.response, k.size, k.angle) for k in cv_keypoints], np.float32).T.copy()
        if descriptors is not None:
            descriptors = np.ascontiguousarray(descriptors, self.descriptor.dtype)
        return Features(keypoints, scores, descriptors, size, self.descriptor, sizes, angles)


class ORB(OpenCVFeatureModel):
    """ORB: oriented FAST keypoints with rotated BRIEF, 256-bit binary descriptors."""

    name = "orb"
    descriptor = DescriptorInfo("binary", 256, "hamming")
    default_conf: ClassVar[dict[str, Any]] = {
        **OpenCVFeatureModel.default_conf,
        "describe_size": 31.0,
        "scale_factor": 1.2,
        "n_levels": 8,
        "fast_threshold": 20,
    }
    method = "ORB (Rublee, Rabaud, Konolige, Bradski, ICCV 2011)"
    description = "Fast binary features; the default for real-time SLAM front ends."

    def _create(self, max_features: int) -> cv2.Feature2D:
        return cv2.ORB_create(
            nfeatures=max(max_features, 1),
            scaleFactor=float(self.conf["scale_factor"]),
            nlevels=int(self.conf["n_levels"]),
            fastThreshold=int(self.conf["fast_threshold"]),
        )


class SIFT(OpenCVFeatureModel):
    """SIFT: difference-of-Gaussians keypoints with 128-D gradient-histogram descriptors."""

    name = "sift"
    descriptor = DescriptorInfo("float", 128, "l2")
    default_conf: ClassVar[dict[str, Any]] = {
        **OpenCVFeatureModel.default_conf,
        "contrast_threshold": 0.04,
        "edge_threshold": 10.0,
    }
    method = "SIFT (Lowe, IJCV 2004)"
    description = "Accurate float features, invariant to scale and rotation; the default model."

    def _create(self, max_features: int) -> cv2.Feature2D:
        return cv2.SIFT_create(
            nfeatures=max_features,
            contrastThreshold=float(self.conf["contrast_threshold"]),
            edgeThreshold=float(self.conf["edge_threshold"]),
        )


class AKAZE(OpenCVFeatureModel):
    """AKAZE: nonlinear scale-space keypoints with 486-bit binary M-LDB descriptors."""

    name = "akaze"
    descriptor = DescriptorInfo("binary", 486, "hamming")
    default_conf: ClassVar[dict[str, Any]] = {**OpenCVFeatureModel.default_conf, "threshold": 0.001}
    method = "AKAZE (Alcantarilla, Nuevo, Bartoli, BMVC 2013)"
    description = "Binary features in a nonlinear scale space; robust to blur and noise."

    def _create(self, max_features: int) -> cv2.Feature2D:
        # AKAZE has no feature budget; the caller's selection applies after detection.
        return cv2.AKAZE_create(threshold=float(self.conf["threshold"]))

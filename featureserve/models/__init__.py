"""Feature models, matching and geometric verification; imports nothing from the service or training."""

from .base import FeatureModel, check_image, check_options, image_size, to_grey
from .caps import CAPS
from .cards import ModelCard
from .classical import AKAZE, ORB, SIFT
from .dense import DenseFeatureModel, sample_descriptors
from .features import DescriptorInfo, Features, KeypointOptions
from .geometry import GeometryResult, homography_corner_error, intrinsics_matrix, verify
from .hndesc import HNDesc
from .keypoints import select_keypoints
from .matching import Matches, match_batch, match_descriptors
from .orb_patch import OrbPatch
from .pairs import PairOptions, PairResult, match_pair
from .registry import available_models, default_conf, load_model, load_model_with_knobs
from .scfeat import SCFeat
from .tiny_cnn import TinyCNN

__all__ = [
    "AKAZE",
    "CAPS",
    "ORB",
    "SIFT",
    "DenseFeatureModel",
    "DescriptorInfo",
    "FeatureModel",
    "Features",
    "GeometryResult",
    "HNDesc",
    "KeypointOptions",
    "Matches",
    "ModelCard",
    "OrbPatch",
    "PairOptions",
    "PairResult",
    "SCFeat",
    "TinyCNN",
    "available_models",
    "check_image",
    "check_options",
    "default_conf",
    "homography_corner_error",
    "image_size",
    "intrinsics_matrix",
    "load_model",
    "load_model_with_knobs",
    "match_batch",
    "match_descriptors",
    "match_pair",
    "sample_descriptors",
    "select_keypoints",
    "to_grey",
    "verify",
]

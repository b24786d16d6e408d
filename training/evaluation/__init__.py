"""Evaluation of feature models, as a library: ``data`` (homography sequences, posed sets), ``metrics``,
``extraction`` (extractor, keypoint cap, mutual NN), the loops ``homography`` (HPatches layout, D2-Net MMA
protocol) and ``posed`` (relative-pose AUC), and ``report`` (several models, JSON + Markdown)."""

from .data import (
    CATEGORY_NAMES,
    SEQUENCE_CATEGORIES,
    HomographyPair,
    HomographySequence,
    load_homography,
    load_image,
    load_sequence,
    load_sequences,
    sequence_category,
)
from .extraction import ExtractFn, model_extractor
from .homography import (
    HomographyEvaluation,
    PairResult,
    evaluate_homography_sequences,
    markdown_row,
    markdown_table,
    sequence_markdown_table,
)
from .metrics import matching_accuracy, reprojection_errors

__all__ = [
    "CATEGORY_NAMES",
    "SEQUENCE_CATEGORIES",
    "ExtractFn",
    "HomographyEvaluation",
    "HomographyPair",
    "HomographySequence",
    "PairResult",
    "evaluate_homography_sequences",
    "load_homography",
    "load_image",
    "load_sequence",
    "load_sequences",
    "markdown_row",
    "markdown_table",
    "matching_accuracy",
    "model_extractor",
    "reprojection_errors",
    "sequence_category",
    "sequence_markdown_table",
]

"""Evaluation: the benchmarks' metrics, equal to the scorers the papers report with.

One function per metric family, each taking ``{id: prediction}`` and ``{id: references}`` and
returning the official scorer's numbers under its own keys (the ``pali eval`` command reads the
published files and calls these same functions, so a training loop gets the CLI's numbers):

- [`caption_metrics`][pali.eval.caption_metrics]: CIDEr-D, BLEU-1..4, ROUGE-L (pycocoevalcap's scorers);
- [`xm3600_metrics`][pali.eval.xm3600_metrics]: CIDEr per language and averaged (Crossmodal-3600);
- [`vqa_accuracy`][pali.eval.vqa_accuracy]: the VQAv2 script's accuracy;
- [`anls`][pali.eval.anls], [`ocr_metrics`][pali.eval.ocr_metrics],
  [`detection_metrics`][pali.eval.detection_metrics], [`classification_accuracy`][pali.eval.classification_accuracy].

Each has a ``score_*`` twin returning an [`EvalResult`][pali.eval.result.EvalResult] with per-item
scores. See docs/evaluation.md.
"""

from .captions import CAPTION_KEYS, caption_metrics, score_captions
from .classification import classification_accuracy, score_classification
from .detection import detection_metrics, score_detection
from .errors import (
    AnnotationFormatError,
    DuplicateIdsError,
    EvalInputError,
    MissingExtraError,
    MissingPredictionsError,
    UnknownIdsError,
)
from .ids import Coverage
from .result import EvalResult
from .text import anls, levenshtein, ocr_metrics, score_anls, score_ocr
from .tokenize import ptb_tokenize, segment_characters
from .vqa import VqaAnnotation, normalize_answer, score_vqa, vqa_accuracy
from .xm3600 import score_xm3600, xm3600_metrics

__all__ = [
    "CAPTION_KEYS", "AnnotationFormatError", "Coverage", "DuplicateIdsError", "EvalInputError", "EvalResult",
    "MissingExtraError", "MissingPredictionsError", "UnknownIdsError", "VqaAnnotation", "anls",
    "caption_metrics", "classification_accuracy", "detection_metrics", "levenshtein", "normalize_answer",
    "ocr_metrics", "ptb_tokenize", "score_anls", "score_captions", "score_classification", "score_detection",
    "score_ocr", "score_vqa", "score_xm3600", "segment_characters", "vqa_accuracy", "xm3600_metrics",
]

from ..lazy import submodules_on_demand  # noqa: E402

__getattr__ = submodules_on_demand(__name__)  # pali.eval.<module> after a bare ``import pali``

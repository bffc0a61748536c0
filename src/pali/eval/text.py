"""Text-reading metrics: ANLS (ST-VQA, DocVQA), exact match and character error rate (OCR)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from .captions import check_predictions, check_references
from .ids import align
from .result import EvalResult


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions: cost 1 each) between two strings."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _anls_text(text: str) -> str:
    # ST-VQA's and DocVQA's scripts compare answers lower-cased, outer spaces stripped, inner runs of
    # white space as one space.
    return " ".join(text.lower().split())


def anls_one(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Best similarity ``1 - NL`` over the answers, 0 where the normalized Levenshtein distance
    ``NL = edit distance / longer length`` is ``threshold`` or more."""
    prediction = _anls_text(prediction)
    best = 0.0
    for answer in answers:
        answer = _anls_text(answer)
        longest = max(len(prediction), len(answer))
        distance = levenshtein(prediction, answer) / longest if longest else 0.0
        best = max(best, 1.0 - distance if distance < threshold else 0.0)
    return best


def score_anls(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], *,
               threshold: float = 0.5, allow_partial: bool = False) -> EvalResult:
    """ANLS (Biten et al. 2019, ST-VQA; DocVQA): the mean over questions of ``anls_one``."""
    check_references(references)
    check_predictions(predictions)
    ids, coverage = align(predictions, references, allow_partial=allow_partial)
    per_item = {k: {"ANLS": anls_one(predictions[k], references[k], threshold)} for k in ids}
    return EvalResult({"ANLS": sum(v["ANLS"] for v in per_item.values()) / len(ids)}, per_item, coverage)


def anls(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], *,
         threshold: float = 0.5, allow_partial: bool = False) -> float:
    """Average Normalized Levenshtein Similarity in [0, 1], threshold 0.5 as ST-VQA and DocVQA use."""
    return score_anls(predictions, references, threshold=threshold, allow_partial=allow_partial).metrics["ANLS"]


def score_ocr(predictions: Mapping[Hashable, str], references: Mapping[Hashable, str], *,
              allow_partial: bool = False) -> EvalResult:
    """OCR exact match (after stripping outer white space) and character error rate.

    ``CER`` is corpus-level, as speech and OCR toolkits report it: the summed edit distances over
    the summed reference lengths (so it can exceed 1); per item, each text's own rate.
    """
    check_predictions(predictions)
    check_predictions(references, "references")
    ids, coverage = align(predictions, references, allow_partial=allow_partial)
    per_item = {}
    edits = chars = 0
    for k in ids:
        prediction, truth = predictions[k].strip(), references[k].strip()
        distance = levenshtein(prediction, truth)
        edits, chars = edits + distance, chars + len(truth)
        per_item[k] = {"exact_match": float(prediction == truth), "CER": distance / max(len(truth), 1)}
    metrics = {"exact_match": sum(v["exact_match"] for v in per_item.values()) / len(ids),
               "CER": edits / max(chars, 1)}
    return EvalResult(metrics, per_item, coverage)


def ocr_metrics(predictions: Mapping[Hashable, str], references: Mapping[Hashable, str], *,
                allow_partial: bool = False) -> dict[str, float]:
    """``{"exact_match", "CER"}`` of ``{id: read text}`` against ``{id: true text}``."""
    return score_ocr(predictions, references, allow_partial=allow_partial).metrics

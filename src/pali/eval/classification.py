"""Classification accuracy: top-1 and top-5 of ranked label lists."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from .errors import AnnotationFormatError, show_ids
from .ids import align
from .result import EvalResult


def score_classification(predictions: Mapping[Hashable, Sequence[str] | str], references: Mapping[Hashable, str], *,
                         allow_partial: bool = False) -> EvalResult:
    """``predictions``: ``{id: [labels, best first]}`` (a single label counts as a list of one);
    ``references``: ``{id: true label}``. Top-k: the true label among the first k."""
    bad = [k for k, v in references.items() if not isinstance(v, str)]
    if bad:
        raise AnnotationFormatError(f"references: {show_ids(bad)} are not a label string")
    ranked = {k: [v] if isinstance(v, str) else list(v) for k, v in predictions.items()}
    bad = [k for k, v in ranked.items() if not v or not all(isinstance(x, str) for x in v)]
    if bad:
        raise AnnotationFormatError(f"predictions: {show_ids(bad)} are not a label or a non-empty list of labels")
    ids, coverage = align(ranked, references, allow_partial=allow_partial)
    per_item = {k: {"top1": float(references[k] in ranked[k][:1]), "top5": float(references[k] in ranked[k][:5])}
                for k in ids}
    metrics = {name: sum(v[name] for v in per_item.values()) / len(ids) for name in ("top1", "top5")}
    return EvalResult(metrics, per_item, coverage)


def classification_accuracy(predictions: Mapping[Hashable, Sequence[str] | str], references: Mapping[Hashable, str], *,
                            allow_partial: bool = False) -> dict[str, float]:
    """``{"top1", "top5"}`` accuracies in [0, 1]."""
    return score_classification(predictions, references, allow_partial=allow_partial).metrics

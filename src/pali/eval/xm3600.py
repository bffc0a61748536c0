"""Crossmodal-3600: CIDEr per language and averaged, with scripts written without spaces segmented.

The scorer is pycocoevalcap's ``Cider`` (as for COCO). What changes per language is how captions
become tokens: PTB-style tokens (lower-cased, punctuation dropped) for languages written with
spaces, one token per character for Chinese, Japanese and Thai (``tokenize.UNSPACED_LANGUAGES``),
applied to predictions and references alike. See docs/evaluation.md for where this convention comes
from and the alternative (``segmentation="tokenized"``: the release's own ``caption/tokenized``
references, predictions split on the spaces they already have).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from .captions import check_predictions, check_references, scorers
from .errors import AnnotationFormatError
from .ids import Coverage, align
from .result import EvalResult
from .tokenize import tokenize_for_language

SEGMENTATIONS = ("characters", "tokenized")


def _tokens(texts: Sequence[str], lang: str, segmentation: str) -> list[str]:
    if segmentation == "tokenized":  # already segmented: lower-case, one space between tokens
        return [" ".join(t.lower().split()) for t in texts]
    return tokenize_for_language(texts, lang)


def score_xm3600(predictions: Mapping[str, Mapping[Hashable, str]],
                 references: Mapping[str, Mapping[Hashable, Sequence[str]]], *,
                 segmentation: str = "characters", allow_partial: bool = False) -> EvalResult:
    """CIDEr of each language's predictions against its references; see
    [`xm3600_metrics`][pali.eval.xm3600_metrics]. Per item keys are ``(lang, id)``."""
    if segmentation not in SEGMENTATIONS:
        raise ValueError(f"segmentation {segmentation!r}: expected one of {SEGMENTATIONS}")
    unknown = sorted(set(predictions) - set(references))
    if unknown:
        raise AnnotationFormatError(f"predictions: languages {unknown} are not in the references")
    missing = sorted(set(references) - set(predictions))
    if missing and not allow_partial:
        raise AnnotationFormatError(f"predictions: no captions in languages {missing}; pass allow_partial=True "
                                    "(--allow-partial) to score the others")
    cider = scorers()[2]
    per_lang, per_item = {}, {}
    scored = total = 0
    for lang in (lang for lang in references if lang in predictions):
        check_references(references[lang], f"references[{lang}]")
        check_predictions(predictions[lang], f"predictions[{lang}]")
        ids, coverage = align(predictions[lang], references[lang], allow_partial=allow_partial,
                              what=f"predictions[{lang}]")
        gts = {k: _tokens(references[lang][k], lang, segmentation) for k in ids}
        res = {k: _tokens([predictions[lang][k]], lang, segmentation) for k in ids}
        score, each = cider.compute_score(gts, res)
        per_lang[lang] = float(score)
        per_item.update({(lang, k): {"CIDEr": float(s)} for k, s in zip(ids, each)})
        scored, total = scored + coverage.scored, total + coverage.total
    metrics = {"CIDEr": per_lang, "CIDEr_avg": sum(per_lang.values()) / len(per_lang)}
    others = [v for lang, v in per_lang.items() if lang != "en"]
    if "en" in per_lang and others:
        metrics["CIDEr_avg_non_en"] = sum(others) / len(others)
    return EvalResult(metrics, per_item, Coverage(scored, total))


def xm3600_metrics(predictions: Mapping[str, Mapping[Hashable, str]],
                   references: Mapping[str, Mapping[Hashable, Sequence[str]]], *,
                   segmentation: str = "characters", allow_partial: bool = False) -> dict:
    """``{"CIDEr": {lang: score}, "CIDEr_avg": mean over languages, "CIDEr_avg_non_en": mean
    without English}`` (PaliGemma's "en / avg-35 / avg" columns) for ``{lang: {id: caption}}``
    against ``{lang: {id: [references]}}``."""
    return score_xm3600(predictions, references, segmentation=segmentation, allow_partial=allow_partial).metrics

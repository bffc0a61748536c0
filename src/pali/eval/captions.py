"""Caption metrics: CIDEr-D, BLEU-1..4 and ROUGE-L, computed by pycocoevalcap's own scorers.

The scores are the field's own code (``pycocoevalcap``'s ``Cider``, ``Bleu(4)`` and ``Rouge``
classes, the ones the COCO server and big_vision call), not a rewrite: what pali adds is the
reading of files, the checks on ids, and a Java-free tokenizer that gives the scorers the tokens
``PTBTokenizer`` would have (``tokenizer="ptb"`` runs the real one). CIDEr-D's document
frequencies come from the references being scored, as in pycocoevalcap: a subset scores
differently from the whole.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
import contextlib
import io

from .errors import AnnotationFormatError, MissingExtraError, show_ids
from .ids import align
from .result import EvalResult
from .tokenize import tokenize_captions

CAPTION_KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr")


def check_references(references: Mapping[Hashable, Sequence[str]], what: str = "references") -> None:
    """Each value a non-empty list of strings: a bare string would be scored letter by letter."""
    bad = [k for k, v in references.items()
           if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or not v or not all(isinstance(c, str) for c in v)]
    if bad:
        raise AnnotationFormatError(f"{what}: {show_ids(bad)} are not a non-empty list of strings "
                                    "(each id takes a list of reference captions)")


def check_predictions(predictions: Mapping[Hashable, str], what: str = "predictions") -> None:
    bad = [k for k, v in predictions.items() if not isinstance(v, str)]
    if bad:
        raise AnnotationFormatError(f"{what}: {show_ids(bad)} are not strings")


def scorers():
    """pycocoevalcap's scorers, imported when first needed (the ``eval`` extra)."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        raise MissingExtraError('caption metrics use pycocoevalcap: pip install "pali-vlm[eval]"') from None
    return Bleu(4), Rouge(), Cider()


def score_tokenized(gts: Mapping[Hashable, list[str]], res: Mapping[Hashable, list[str]]) -> tuple[dict, dict]:
    """Run the three scorers on tokenized ``{id: [caption]}`` dicts: (corpus metrics, per item)."""
    bleu, rouge, cider = scorers()
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its n-gram counts
        bleu_all, bleu_each = bleu.compute_score(gts, res, verbose=0)
    rouge_all, rouge_each = rouge.compute_score(gts, res)
    cider_all, cider_each = cider.compute_score(gts, res)
    metrics = {f"Bleu_{n + 1}": float(bleu_all[n]) for n in range(4)}
    metrics["ROUGE_L"], metrics["CIDEr"] = float(rouge_all), float(cider_all)
    per_item = {}
    for i, key in enumerate(gts):  # the scorers walk gts.keys() in order
        item = {f"Bleu_{n + 1}": float(bleu_each[n][i]) for n in range(4)}
        item["ROUGE_L"], item["CIDEr"] = float(rouge_each[i]), float(cider_each[i])
        per_item[key] = item
    return metrics, per_item


def score_captions(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], *,
                   tokenizer: str = "python", allow_partial: bool = False) -> EvalResult:
    """CIDEr-D, BLEU-1..4, ROUGE-L of ``{id: caption}`` against ``{id: [reference, ...]}``,
    with per-item scores; see [`caption_metrics`][pali.eval.caption_metrics]."""
    check_references(references)
    check_predictions(predictions)
    ids, coverage = align(predictions, references, allow_partial=allow_partial)
    gts = tokenize_captions({k: references[k] for k in ids}, tokenizer)
    res = tokenize_captions({k: [predictions[k]] for k in ids}, tokenizer)
    metrics, per_item = score_tokenized(gts, res)
    return EvalResult(metrics, per_item, coverage)


def caption_metrics(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], *,
                    tokenizer: str = "python", allow_partial: bool = False) -> dict[str, float]:
    """COCO caption metrics of a set of predictions, as the COCO evaluation server computes them.

    ``predictions``: ``{image id: generated caption}``; ``references``: ``{image id: [reference
    captions]}``. Returns ``{"Bleu_1".."Bleu_4", "ROUGE_L", "CIDEr"}`` (fractions, as
    pycocoevalcap returns them: papers print CIDEr x100). ``tokenizer="ptb"`` uses Stanford's
    PTBTokenizer through Java instead of the built-in equivalent. A reference id with no prediction
    is an error unless ``allow_partial``; a prediction for an unknown id always is.

    Call it from a training loop on a held-out set::

        captions = {i: pipe.caption(image).text for i, image in held_out_images.items()}
        print(pali.eval.caption_metrics(captions, held_out_references)["CIDEr"])
    """
    return score_captions(predictions, references, tokenizer=tokenizer, allow_partial=allow_partial).metrics

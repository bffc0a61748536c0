"""Detection: mean IoU and COCO mAP@0.5, the matching done by ``pycocotools``' own ``COCOeval``.

Boxes are ``[x0, y0, x1, y1]`` in pixels (what ``pipe.detect`` returns), each with a ``label`` and,
for predictions, an optional ``score`` (a generative detector has none: 1.0 is used, so the
precision-recall curve has one point per image order, as everyone scoring PaLI-style detection does).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
import contextlib
import io
from typing import Any

from .errors import AnnotationFormatError, MissingExtraError
from .ids import align
from .result import EvalResult

Box = Mapping[str, Any]  # {"box": [x0, y0, x1, y1], "label": str, "score": float (predictions, optional)}


def _check(boxes: Mapping[Hashable, Sequence[Box]], what: str) -> None:
    for key, items in boxes.items():
        if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
            raise AnnotationFormatError(f"{what}: id {key!r} holds {type(items).__name__}, expected a list of boxes")
        for n, item in enumerate(items):
            box = item.get("box") if isinstance(item, Mapping) else None
            if (not isinstance(box, Sequence) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box)
                    or not isinstance(item.get("label"), str)):
                raise AnnotationFormatError(
                    f"{what}: id {key!r}, box {n}: expected {{\"box\": [x0, y0, x1, y1], \"label\": str}}, got {item!r}")
            if box[2] < box[0] or box[3] < box[1]:
                raise AnnotationFormatError(f"{what}: id {key!r}, box {n}: x1 < x0 or y1 < y0 in {list(box)}")


def _coco_map(predictions: Mapping[Hashable, Sequence[Box]], references: Mapping[Hashable, Sequence[Box]],
              ids: list[Hashable]) -> tuple[float, float]:
    """(AP@0.5, AP@[.5:.95]) from pycocotools' COCOeval on the given ids."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise MissingExtraError('detection mAP uses pycocotools: pip install "pali-vlm[eval]"') from None
    labels = sorted({b["label"] for k in ids for b in references[k]} | {b["label"] for k in ids for b in predictions[k]})
    category = {label: n + 1 for n, label in enumerate(labels)}
    image = {k: n + 1 for n, k in enumerate(ids)}

    def xywh(box):
        return [box[0], box[1], box[2] - box[0], box[3] - box[1]]

    annotations = [{"id": n + 1, "image_id": image[k], "category_id": category[b["label"]], "bbox": xywh(b["box"]),
                    "area": xywh(b["box"])[2] * xywh(b["box"])[3], "iscrowd": 0}
                   for n, (k, b) in enumerate((k, b) for k in ids for b in references[k])]
    results = [{"image_id": image[k], "category_id": category[b["label"]], "bbox": xywh(b["box"]),
                "score": float(b.get("score", 1.0))} for k in ids for b in predictions[k]]
    if not annotations or not results:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # COCO and COCOeval narrate every step
        gt = COCO()
        gt.dataset = {"images": [{"id": i} for i in image.values()], "annotations": annotations,
                      "categories": [{"id": i, "name": n} for n, i in category.items()]}
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    at_50, mean = float(evaluator.stats[1]), float(evaluator.stats[0])
    return max(at_50, 0.0), max(mean, 0.0)  # COCOeval reports -1 where a category has no ground truth


def score_detection(predictions: Mapping[Hashable, Sequence[Box]], references: Mapping[Hashable, Sequence[Box]], *,
                    allow_partial: bool = False) -> EvalResult:
    """``mAP@0.5`` and ``mAP`` (COCO's AP@[.5:.95]) by pycocotools; ``mean_IoU``: each true box's
    best IoU with a predicted box of its label (0 if none), averaged over true boxes."""
    _check(references, "references")
    _check(predictions, "predictions")
    from ..tasks.heads.detect import box_iou  # the demo's and the heads' IoU (imports torch)

    ids, coverage = align(predictions, references, allow_partial=allow_partial)
    per_item = {}
    overlaps: list[float] = []
    for k in ids:
        best = [max((box_iou(t["box"], p["box"]) for p in predictions[k] if p["label"] == t["label"]), default=0.0)
                for t in references[k]]
        overlaps += best
        per_item[k] = {"mean_IoU": sum(best) / len(best) if best else 0.0}
    at_50, mean = _coco_map(predictions, references, ids)
    metrics = {"mAP@0.5": at_50, "mAP": mean, "mean_IoU": sum(overlaps) / len(overlaps) if overlaps else 0.0}
    return EvalResult(metrics, per_item, coverage)


def detection_metrics(predictions: Mapping[Hashable, Sequence[Box]], references: Mapping[Hashable, Sequence[Box]], *,
                      allow_partial: bool = False) -> dict[str, float]:
    """``{"mAP@0.5", "mAP", "mean_IoU"}`` of predicted boxes against true boxes, per image id."""
    return score_detection(predictions, references, allow_partial=allow_partial).metrics

"""ANLS, OCR, detection (against pycocotools' COCOeval on the COCO files), top-k, Crossmodal-3600."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from pali.cli import main
from pali.eval import anls, classification_accuracy, detection_metrics, ocr_metrics, xm3600_metrics
from pali.eval.formats import read_xm3600_references
from pali.tasks.heads.detect import box_iou


def test_anls():
    assert anls({1: "helo"}, {1: ["hello"]}) == pytest.approx(0.8)
    assert anls({1: "  HELLO  world"}, {1: ["xyz", "hello world"]}) == 1.0  # case and spaces, best answer
    assert anls({1: "ab"}, {1: ["ac"]}) == 0.0  # NL = 0.5 is not under the threshold
    assert anls({1: "", 2: "abc"}, {1: [""], 2: ["xyz"]}) == 0.5


def test_ocr_exact_match_and_cer():
    out = ocr_metrics({1: "hello ", 2: "wrld", 3: ""}, {1: "hello", 2: "world", 3: "abc"})
    assert out["exact_match"] == pytest.approx(1 / 3)
    assert out["CER"] == pytest.approx((0 + 1 + 3) / (5 + 5 + 3))


def test_classification_top_k():
    out = classification_accuracy({1: ["cat", "dog"], 2: ["a", "b", "c", "d", "e", "bird"], 3: "fish"},
                                  {1: "dog", 2: "bird", 3: "fish"})
    assert out == {"top1": pytest.approx(1 / 3), "top5": pytest.approx(2 / 3)}


def test_detection_equals_cocoeval_on_the_coco_files(tmp_path, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    instances = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100},
                   {"id": 2, "file_name": "b.jpg", "width": 100, "height": 100},
                   {"id": 3, "file_name": "c.jpg", "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 40, 20], "area": 800, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 0},
            {"id": 4, "image_id": 3, "category_id": 2, "bbox": [20, 20, 20, 20], "area": 400, "iscrowd": 0}],
    }
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [12, 10, 30, 30], "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.8},
        {"image_id": 2, "category_id": 1, "bbox": [5, 5, 50, 50], "score": 0.7},
        {"image_id": 2, "category_id": 2, "bbox": [5, 5, 50, 50], "score": 0.95},
    ]  # image 3: nothing found
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    (tmp_path / "results.json").write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "instances.json"))
        evaluator = COCOeval(gt, gt.loadRes(str(tmp_path / "results.json")), "bbox")
        evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    assert main(["eval", "detect", "--references", str(tmp_path / "instances.json"),
                 "--predictions", str(tmp_path / "results.json"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mAP@0.5"] == pytest.approx(evaluator.stats[1]) and out["mAP"] == pytest.approx(evaluator.stats[0])
    iou_cat1 = box_iou([10, 10, 40, 40], [12, 10, 42, 40])
    iou_cat2 = box_iou([0, 0, 50, 50], [5, 5, 55, 55])
    assert out["mean_IoU"] == pytest.approx((iou_cat1 + 0 + iou_cat2 + 0) / 4)


def test_detection_perfect_is_one():
    boxes = {1: [{"box": [0, 0, 10, 10], "label": "cat"}], 2: [{"box": [5, 5, 20, 30], "label": "dog"}]}
    out = detection_metrics(boxes, boxes)
    assert out["mAP@0.5"] == pytest.approx(1.0) and out["mean_IoU"] == 1.0


def test_xm3600_per_language_and_averages(tmp_path):
    lines = [
        {"image/key": "k1", "en": {"caption": ["A dog on the grass.", "a brown dog"], "caption/tokenized": ["a dog on the grass .", "a brown dog"]},
         "zh": {"caption": ["一只狗在草地上。"], "caption/tokenized": ["一只 狗 在 草地 上 。"]},
         "de": {"caption": ["Ein Hund im Gras."], "caption/tokenized": ["ein hund im gras ."]}},
        {"image/key": "k2", "en": {"caption": ["A cat on a sofa."], "caption/tokenized": ["a cat on a sofa ."]},
         "zh": {"caption": ["沙发上的猫"], "caption/tokenized": ["沙发 上 的 猫"]},
         "de": {"caption": ["Eine Katze auf dem Sofa."], "caption/tokenized": ["eine katze auf dem sofa ."]}},
    ]
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    refs = read_xm3600_references(tmp_path / "captions.jsonl")
    predictions = {"en": {"k1": "a dog on the grass", "k2": "a cat on a sofa"},
                   "zh": {"k1": "一只狗在草地上", "k2": "沙发上的猫"},
                   "de": {"k1": "ein Hund", "k2": "eine Katze"}}
    out = xm3600_metrics(predictions, refs)
    assert set(out["CIDEr"]) == {"en", "zh", "de"}
    # with characters as tokens, the exact Chinese predictions score as the exact English ones do
    assert out["CIDEr"]["zh"] > out["CIDEr"]["de"]
    assert out["CIDEr_avg"] == pytest.approx(sum(out["CIDEr"].values()) / 3)
    assert out["CIDEr_avg_non_en"] == pytest.approx((out["CIDEr"]["zh"] + out["CIDEr"]["de"]) / 2)
    # unsegmented, each Chinese caption would be one token: no n-gram shared with a reworded prediction
    tokenized = read_xm3600_references(tmp_path / "captions.jsonl", ["zh"], tokenized=True)
    assert tokenized["zh"]["k1"] == ["一只 狗 在 草地 上 。"]
    out = xm3600_metrics({"zh": {"k1": "一只 狗 在 草地 上", "k2": "沙发 上 的 猫"}}, tokenized, segmentation="tokenized")
    assert out["CIDEr"]["zh"] > 0
